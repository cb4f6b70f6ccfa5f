package grpcapi

import (
	"google.golang.org/grpc/metadata"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// WatchCredentials streams the broker's changes. The response headers go
// out once the watch's starting point is fixed, so a client that has them
// misses no later change.
func (s *adminService) WatchCredentials(req *pb.WatchCredentialsRequest, stream pb.AdminService_WatchCredentialsServer) error {
	ready := func() { _ = stream.SendHeader(metadata.MD{}) }
	return s.b.WatchChanges(stream.Context(), req.GetResumeToken(), ready, func(c *broker.Change) error {
		return stream.Send(&pb.WatchCredentialsResponse{Event: ChangeView(c), ResumeToken: c.ResumeToken()})
	})
}

// changeKinds are the API's names of the broker's change kinds.
var changeKinds = map[broker.ChangeKind]pb.CredentialEvent_Kind{
	broker.ChangeCreated:                pb.CredentialEvent_CREATED,
	broker.ChangeDeleted:                pb.CredentialEvent_DELETED,
	broker.ChangeReauthRequired:         pb.CredentialEvent_REAUTH_REQUIRED,
	broker.ChangeBackingOff:             pb.CredentialEvent_BACKING_OFF,
	broker.ChangeRecovered:              pb.CredentialEvent_RECOVERED,
	broker.ChangeAuthorizationStarted:   pb.CredentialEvent_AUTHORIZATION_STARTED,
	broker.ChangeAuthorized:             pb.CredentialEvent_AUTHORIZED,
	broker.ChangeAuthorizationAbandoned: pb.CredentialEvent_AUTHORIZATION_ABANDONED,
	broker.ChangeReseeded:               pb.CredentialEvent_RESEEDED,
}

// ChangeView is a change as the API (and the webhooks) show it.
func ChangeView(c *broker.Change) *pb.CredentialEvent {
	ev := &pb.CredentialEvent{
		CredentialId:  c.CredentialID,
		Kind:          changeKinds[c.Kind],
		State:         stateView(c.State),
		PreviousState: stateView(c.PrevState),
		Detail:        c.Detail,
		Generation:    c.Generation,
		EventTime:     timestamp(c.Time),
		Actor:         c.Actor,
		Replica:       c.Replica,
	}
	if c.Kind == broker.ChangeReauthRequired {
		ev.Reason = pb.ErrorReasonEnum_REAUTH_REQUIRED.String()
		if c.OutcomeUnknown {
			ev.Reason = pb.ErrorReasonEnum_REFRESH_OUTCOME_UNKNOWN.String()
		}
	}
	return ev
}

// stateView is a state as the API names it.
func stateView(s broker.State) pb.State {
	switch s {
	case broker.StateActive:
		return pb.State_ACTIVE
	case broker.StateReauthRequired:
		return pb.State_REAUTH_REQUIRED
	case broker.StateUnreadable:
		return pb.State_UNREADABLE
	case broker.StatePendingAuthorization:
		return pb.State_PENDING_AUTHORIZATION
	}
	return pb.State_STATE_UNSPECIFIED
}
