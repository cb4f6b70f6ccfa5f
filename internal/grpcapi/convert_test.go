package grpcapi

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

func TestCredentialFromProtoReuseGrace(t *testing.T) {
	base := func(grace *durationpb.Duration) *pb.Credential {
		return &pb.Credential{Id: "c", TokenUrl: "https://idp.example/token", ClientId: "cl", ReuseGrace: grace}
	}
	for _, tc := range []struct {
		name  string
		grace *durationpb.Duration
		want  time.Duration
		bad   bool
	}{
		{name: "unset is strict", grace: nil, want: 0},
		{name: "zero", grace: durationpb.New(0), want: 0},
		{name: "Dex default", grace: durationpb.New(3 * time.Second), want: 3 * time.Second},
		{name: "Okta maximum", grace: durationpb.New(time.Minute), want: time.Minute},
		{name: "24h", grace: durationpb.New(broker.MaxDuration), want: broker.MaxDuration},
		{name: "negative", grace: durationpb.New(-time.Second), bad: true},
		{name: "over 24h", grace: durationpb.New(broker.MaxDuration + time.Nanosecond), bad: true},
		{name: "not a duration", grace: &durationpb.Duration{Seconds: 1, Nanos: -1}, bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := CredentialFromProto(base(tc.grace))
			if tc.bad {
				var be *broker.Error
				if !errors.As(err, &be) || !errors.Is(err, broker.ErrInvalidArgument) || be.Field != "credential.reuse_grace" {
					t.Fatalf("err = %v; want ErrInvalidArgument naming credential.reuse_grace", err)
				}
				return
			}
			if err != nil || got.ReuseGrace != tc.want {
				t.Fatalf("ReuseGrace = %v, %v; want %v", got.ReuseGrace, err, tc.want)
			}
			if err := broker.ValidateCredential(got, "rt"); err != nil {
				t.Fatalf("the broker refuses the converted credential: %v", err)
			}
		})
	}
}

func TestPublicViewReuseGraceAndReauthReason(t *testing.T) {
	rec := func(state broker.State, unknown bool, grace time.Duration) *broker.Record {
		return &broker.Record{
			Credential:     broker.Credential{ID: "c", TokenURL: "https://idp.example/token", ClientID: "cl", ReuseGrace: grace},
			State:          state,
			OutcomeUnknown: unknown,
		}
	}
	for _, tc := range []struct {
		name   string
		rec    *broker.Record
		state  pb.State
		reason string
		grace  *durationpb.Duration
	}{
		{"active", rec(broker.StateActive, false, 0), pb.State_ACTIVE, "", nil},
		{"active with grace", rec(broker.StateActive, false, 30*time.Second), pb.State_ACTIVE, "", durationpb.New(30 * time.Second)},
		{"IdP verdict", rec(broker.StateReauthRequired, false, 0), pb.State_REAUTH_REQUIRED, "REAUTH_REQUIRED", nil},
		{"outcome unknown", rec(broker.StateReauthRequired, true, 3*time.Second), pb.State_REAUTH_REQUIRED, "REFRESH_OUTCOME_UNKNOWN", durationpb.New(3 * time.Second)},
		// OutcomeUnknown only qualifies REAUTH_REQUIRED.
		{"stale flag on an active record", rec(broker.StateActive, true, 0), pb.State_ACTIVE, "", nil},
		{"unreadable", &broker.Record{Credential: broker.Credential{ID: "c"}, State: broker.StateUnreadable}, pb.State_UNREADABLE, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := publicView(tc.rec)
			if c.GetState() != tc.state || c.GetReauthReason() != tc.reason {
				t.Errorf("state %v, reauth_reason %q; want %v, %q", c.GetState(), c.GetReauthReason(), tc.state, tc.reason)
			}
			if (c.GetReuseGrace() == nil) != (tc.grace == nil) || c.GetReuseGrace().AsDuration() != tc.grace.AsDuration() {
				t.Errorf("reuse_grace = %v; want %v", c.GetReuseGrace(), tc.grace)
			}
			if r := c.GetReauthReason(); r != "" {
				if _, ok := pb.ErrorReasonEnum_ErrorReason_value[r]; !ok {
					t.Errorf("reauth_reason %q is no ErrorReason", r)
				}
			}
		})
	}
}

// TestReuseGraceRoundTrip: what PutCredential takes is what the broker
// stores and what GetCredential and ListCredentials show.
func TestReuseGraceRoundTrip(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t)
	c := e.credential("graceful")
	c.ReuseGrace = durationpb.New(3 * time.Second)
	put := e.put(t, c)
	if put.GetReuseGrace().AsDuration() != 3*time.Second {
		t.Errorf("PutCredential reuse_grace = %v; want 3s", put.GetReuseGrace())
	}
	if rec := e.stored(t, "graceful"); rec.ReuseGrace != 3*time.Second {
		t.Errorf("stored ReuseGrace = %v; want 3s", rec.ReuseGrace)
	}
	get, err := e.adm.GetCredential(ctx, &pb.GetCredentialRequest{Id: "graceful"})
	if err != nil {
		t.Fatal(err)
	}
	if get.GetCredential().GetReuseGrace().AsDuration() != 3*time.Second || get.GetCredential().GetReauthReason() != "" {
		t.Errorf("GetCredential = %v; want reuse_grace 3s, no reauth_reason", get.GetCredential())
	}
	list, err := e.adm.ListCredentials(ctx, &pb.ListCredentialsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if cs := list.GetCredentials(); len(cs) != 1 || cs[0].GetReuseGrace().AsDuration() != 3*time.Second {
		t.Errorf("ListCredentials = %v; want the one credential with reuse_grace 3s", cs)
	}

	// Putting it again without reuse_grace makes it strict.
	c.ReuseGrace, c.RefreshToken = nil, ""
	if put := e.put(t, c); put.GetReuseGrace() != nil {
		t.Errorf("reuse_grace after a put without it = %v; want unset", put.GetReuseGrace())
	}
	if rec := e.stored(t, "graceful"); rec.ReuseGrace != 0 {
		t.Errorf("stored ReuseGrace = %v; want 0", rec.ReuseGrace)
	}
}

func TestRevokesPreviousAccessTokenBothWays(t *testing.T) {
	for _, on := range []bool{false, true} {
		got, _, err := CredentialFromProto(&pb.Credential{Id: "c", TokenUrl: "https://idp.example/token", ClientId: "cl", RevokesPreviousAccessToken: on})
		if err != nil || got.RevokesPreviousAccessToken != on {
			t.Fatalf("CredentialFromProto(revokes %v) = %v, %v", on, got.RevokesPreviousAccessToken, err)
		}
		if view := publicView(&broker.Record{Credential: got}); view.GetRevokesPreviousAccessToken() != on {
			t.Fatalf("publicView(revokes %v) shows %v", on, view.GetRevokesPreviousAccessToken())
		}
	}
}
