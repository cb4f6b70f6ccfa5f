package grpcapi

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// pendingView is an open authorization flow as the API shows it: never the
// device code.
func pendingView(a *broker.AuthorizationFlow) *pb.PendingAuthorization {
	v := &pb.PendingAuthorization{
		StartTime:               timestamp(a.StartedAt),
		ExpireTime:              timestamp(a.ExpiresAt),
		StartedBy:               a.StartedBy,
		UserCode:                a.UserCode,
		VerificationUri:         a.VerificationURI,
		VerificationUriComplete: a.VerificationURIComplete,
	}
	switch a.Kind {
	case broker.FlowCode:
		v.Flow = pb.PendingAuthorization_AUTHORIZATION_CODE
	case broker.FlowDevice:
		v.Flow = pb.PendingAuthorization_DEVICE_CODE
		v.Interval = durationpb.New(a.Interval)
	}
	return v
}

func (s *adminService) StartAuthorization(ctx context.Context, req *pb.StartAuthorizationRequest) (*pb.StartAuthorizationResponse, error) {
	start, err := s.b.StartAuthorization(ctx, req.GetId(), req.GetScopes(), req.GetExtraParams())
	if err != nil {
		return nil, err
	}
	return &pb.StartAuthorizationResponse{
		AuthorizationUrl: start.URL,
		ExpireTime:       timestamp(start.ExpiresAt),
		Credential:       publicView(start.Record),
	}, nil
}

func (s *adminService) StartDeviceAuthorization(ctx context.Context, req *pb.StartDeviceAuthorizationRequest) (*pb.StartDeviceAuthorizationResponse, error) {
	rec, err := s.b.StartDeviceAuthorization(ctx, req.GetId(), req.GetScopes())
	if err != nil {
		return nil, err
	}
	a := rec.Authorization
	return &pb.StartDeviceAuthorizationResponse{
		UserCode:                a.UserCode,
		VerificationUri:         a.VerificationURI,
		VerificationUriComplete: a.VerificationURIComplete,
		ExpireTime:              timestamp(a.ExpiresAt),
		Interval:                durationpb.New(a.Interval),
		Credential:              publicView(rec),
	}, nil
}

// stateArg converts a State filter: unset is 0 (no filter).
func stateArg(field string, s pb.State) (broker.State, error) {
	switch s {
	case pb.State_STATE_UNSPECIFIED:
		return 0, nil
	case pb.State_ACTIVE:
		return broker.StateActive, nil
	case pb.State_REAUTH_REQUIRED:
		return broker.StateReauthRequired, nil
	case pb.State_UNREADABLE:
		return broker.StateUnreadable, nil
	case pb.State_PENDING_AUTHORIZATION:
		return broker.StatePendingAuthorization, nil
	}
	return 0, invalidArg(field, "unknown state %d", int32(s))
}

// filterState keeps the records shown in state (0: all).
func filterState(recs []*broker.Record, state broker.State) []*broker.Record {
	if state == 0 {
		return recs
	}
	now := time.Now()
	kept := recs[:0]
	for _, r := range recs {
		if r.ViewState(now) == state {
			kept = append(kept, r)
		}
	}
	return kept
}
