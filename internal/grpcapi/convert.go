package grpcapi

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

func invalidArg(field, format string, args ...any) error {
	return &broker.Error{Kind: broker.ErrInvalidArgument, Field: field, Detail: fmt.Sprintf(format, args...)}
}

// durationArg converts a request's Duration: unset is 0 (the broker's
// default); one that is not a valid Duration is refused naming the field.
// The range (not negative, not absurd) is the broker's to check.
func durationArg(field string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalidArg(field, "not a valid duration")
	}
	return d.AsDuration(), nil
}

// CredentialFromProto converts an API Credential, as PutCredential takes it,
// into the broker's configuration and the refresh token to seed it with:
// client_secret then fallback_client_secrets become ClientSecrets, the enums
// their broker constants. Output-only fields are ignored. Its errors are
// *broker.Error with ErrInvalidArgument naming the field; it checks the
// range of reuse_grace (0 to broker.MaxDuration), and the broker checks
// everything else when the credential is put.
func CredentialFromProto(c *pb.Credential) (broker.Credential, string, error) {
	if c == nil {
		return broker.Credential{}, "", invalidArg("credential", "must be set")
	}
	out := broker.Credential{
		ID:                     c.GetId(),
		TokenURL:               c.GetTokenUrl(),
		ClientID:               c.GetClientId(),
		Scopes:                 c.GetScopes(),
		AllowedClients:         c.GetAllowedClients(),
		AuthorizationURL:       c.GetAuthorizationUrl(),
		DeviceAuthorizationURL: c.GetDeviceAuthorizationUrl(),
		RedirectURL:            c.GetRedirectUrl(),
	}
	switch c.GetAuthStyle() {
	case pb.AuthStyle_AUTH_STYLE_UNSPECIFIED, pb.AuthStyle_AUTH_STYLE_BASIC:
		out.AuthStyle = broker.AuthStyleBasic
	case pb.AuthStyle_AUTH_STYLE_POST:
		out.AuthStyle = broker.AuthStylePost
	default:
		return out, "", invalidArg("credential.auth_style", "unknown value %d", int32(c.GetAuthStyle()))
	}
	switch c.GetGrantType() {
	case pb.GrantType_GRANT_TYPE_UNSPECIFIED, pb.GrantType_GRANT_TYPE_REFRESH_TOKEN:
		out.GrantType = broker.GrantRefreshToken
	case pb.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS:
		out.GrantType = broker.GrantClientCredentials
	default:
		return out, "", invalidArg("credential.grant_type", "unknown value %d", int32(c.GetGrantType()))
	}
	switch {
	case c.GetClientSecret() != "":
		out.ClientSecrets = append([]string{c.GetClientSecret()}, c.GetFallbackClientSecrets()...)
	case len(c.GetFallbackClientSecrets()) > 0:
		return out, "", invalidArg("credential.client_secret", "required when fallback_client_secrets are set")
	}
	ahead, err := durationArg("credential.refresh_ahead", c.GetRefreshAhead())
	if err != nil {
		return out, "", err
	}
	out.RefreshAhead = ahead
	grace, err := durationArg("credential.reuse_grace", c.GetReuseGrace())
	if err != nil {
		return out, "", err
	}
	// The broker's validateCredential checks refresh_ahead but not yet
	// reuse_grace, so its range is checked here.
	switch {
	case grace < 0:
		return out, "", invalidArg("credential.reuse_grace", "must not be negative")
	case grace > broker.MaxDuration:
		return out, "", invalidArg("credential.reuse_grace", "must be at most %s", broker.MaxDuration)
	}
	out.ReuseGrace = grace
	out.RevokesPreviousAccessToken = c.GetRevokesPreviousAccessToken()
	return out, c.GetRefreshToken(), nil
}

// publicView is a record as the API shows it: never a refresh token, a client
// secret or an access token. A credential in REAUTH_REQUIRED says why in
// reauth_reason: REFRESH_OUTCOME_UNKNOWN when no IdP verdict put it there
// (Record.OutcomeUnknown), REAUTH_REQUIRED otherwise.
func publicView(r *broker.Record) *pb.Credential {
	c := &pb.Credential{
		Id:                r.ID,
		TokenUrl:          r.TokenURL,
		ClientId:          r.ClientID,
		Scopes:            append([]string(nil), r.Scopes...),
		AllowedClients:    append([]string(nil), r.AllowedClients...),
		Generation:        r.Generation,
		LastError:         r.LastError,
		HasRefreshToken:   r.RefreshToken != "",
		ClientSecretCount: int32(len(r.ClientSecrets)),
		ExpiresAt:         timestamp(r.Token.Expiry),
		LastRefreshAt:     timestamp(r.LastRefreshAt),
		LastErrorAt:       timestamp(r.LastErrorAt),
		CreateTime:        timestamp(r.CreatedAt),
		UpdateTime:        timestamp(r.UpdatedAt),
		NextAttemptAt:     timestamp(r.NextAttemptAt),

		RevokesPreviousAccessToken: r.RevokesPreviousAccessToken,
		AuthorizationUrl:           r.AuthorizationURL,
		DeviceAuthorizationUrl:     r.DeviceAuthorizationURL,
		RedirectUrl:                r.RedirectURL,
	}
	now := time.Now()
	if a := r.Authorization; a.Open(now) {
		c.PendingAuthorization = pendingView(a)
	}
	if r.RefreshAhead != 0 {
		c.RefreshAhead = durationpb.New(r.RefreshAhead)
	}
	if r.ReuseGrace != 0 {
		c.ReuseGrace = durationpb.New(r.ReuseGrace)
	}
	switch r.AuthStyle {
	case broker.AuthStyleBasic:
		c.AuthStyle = pb.AuthStyle_AUTH_STYLE_BASIC
	case broker.AuthStylePost:
		c.AuthStyle = pb.AuthStyle_AUTH_STYLE_POST
	}
	switch r.GrantType {
	case broker.GrantRefreshToken:
		c.GrantType = pb.GrantType_GRANT_TYPE_REFRESH_TOKEN
	case broker.GrantClientCredentials:
		c.GrantType = pb.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS
	}
	switch r.ViewState(now) {
	case broker.StatePendingAuthorization:
		c.State = pb.State_PENDING_AUTHORIZATION
		c.ReauthReason = pb.ErrorReasonEnum_REAUTH_REQUIRED.String()
		if r.OutcomeUnknown {
			c.ReauthReason = pb.ErrorReasonEnum_REFRESH_OUTCOME_UNKNOWN.String()
		}
	case broker.StateActive:
		c.State = pb.State_ACTIVE
	case broker.StateReauthRequired:
		c.State = pb.State_REAUTH_REQUIRED
		c.ReauthReason = pb.ErrorReasonEnum_REAUTH_REQUIRED.String()
		if r.OutcomeUnknown {
			c.ReauthReason = pb.ErrorReasonEnum_REFRESH_OUTCOME_UNKNOWN.String()
		}
	case broker.StateUnreadable:
		c.State = pb.State_UNREADABLE
	}
	return c
}

// timestamp is t as a Timestamp, or nil (unset) for the zero time.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
