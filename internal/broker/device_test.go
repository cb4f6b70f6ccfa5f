package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// pollGaps returns the time between successive device polls the IdP saw.
func pollGaps(idp *fakeidp.Server) []time.Duration {
	times := idp.AuthStats().PollTimes
	var gaps []time.Duration
	for i := 1; i < len(times); i++ {
		gaps = append(gaps, times[i].Sub(times[i-1]))
	}
	return gaps
}

func TestDeviceFlowHonoursSlowDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		e.idp.SetDeviceInterval(2 * time.Second)
		b := e.broker(nil)
		ctx := context.Background()
		if _, err := b.PutCredential(ctx, e.authCredential("crm", "worker"), ""); err != nil {
			t.Fatal(err)
		}
		rec, err := b.StartDeviceAuthorization(ctx, "crm", nil)
		if err != nil {
			t.Fatal(err)
		}
		a := rec.Authorization
		if a == nil || a.Kind != broker.FlowDevice || a.UserCode == "" || a.Interval != 2*time.Second ||
			!strings.Contains(a.VerificationURIComplete, "user_code=") || rec.ViewState(time.Now()) != broker.StatePendingAuthorization {
			t.Fatalf("StartDeviceAuthorization = %+v", a)
		}
		if !a.ExpiresAt.Equal(time.Now().Add(fakeidp.DefaultDeviceCodeTTL)) {
			t.Fatalf("expires at %v, want the IdP's expires_in", a.ExpiresAt)
		}
		again, err := b.StartDeviceAuthorization(ctx, "crm", nil)
		if err != nil || again.Authorization.UserCode != a.UserCode || again.Generation != rec.Generation {
			t.Fatalf("second StartDeviceAuthorization: %v; want the open one, unchanged", err)
		}

		time.Sleep(5 * time.Second) // polls at 2 s and 4 s: pending
		synctest.Wait()
		if n := e.idp.AuthStats().DevicePolls; n != 2 {
			t.Fatalf("%d polls after 5 s at a 2 s interval, want 2", n)
		}
		e.idp.SlowDownNext(1)
		time.Sleep(2 * time.Second) // the poll at 6 s: slow_down
		synctest.Wait()
		if got := e.stored("crm").Authorization.Interval; got != 7*time.Second {
			t.Fatalf("interval %v after slow_down, want 7s", got)
		}
		time.Sleep(7 * time.Second) // the poll at 13 s: pending
		synctest.Wait()
		if !e.idp.ApproveDevice(a.UserCode) {
			t.Fatal("the IdP knows no pending user code")
		}
		time.Sleep(7 * time.Second) // the poll at 20 s: the grant
		synctest.Wait()

		got := e.stored("crm")
		if got.State != broker.StateActive || got.Authorization != nil || got.RefreshToken == "" || strings.Join(got.AllowedClients, ",") != "worker" {
			t.Fatalf("after approval: state %v, authorization %+v", got.State, got.Authorization)
		}
		tok, err := b.GetToken(ctx, "crm", 0)
		if err != nil || !e.accepted(tok.AccessToken) {
			t.Fatalf("GetToken after the device flow: %v", err)
		}
		st := e.idp.AuthStats()
		if st.DevicePolls != 5 || st.SlowDowns != 1 {
			t.Fatalf("%d polls, %d slow_downs; want 5, 1 (the one asked for: never too early)", st.DevicePolls, st.SlowDowns)
		}
		want := []time.Duration{2 * time.Second, 2 * time.Second, 7 * time.Second, 7 * time.Second}
		for i, g := range pollGaps(e.idp) {
			if g != want[i] {
				t.Fatalf("poll gaps %v, want %v", pollGaps(e.idp), want)
			}
		}
		time.Sleep(time.Minute)
		if n := e.idp.AuthStats().DevicePolls; n != 5 {
			t.Fatalf("%d polls after the flow ended, want 5", n)
		}
	})
}

func TestDeviceFlowOneReplicaPollsAtATime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		e.idp.SetDeviceInterval(time.Second)
		replicas := []*broker.Broker{e.broker(nil), e.broker(nil), e.broker(nil)}
		ctx := context.Background()
		if _, err := replicas[0].PutCredential(ctx, e.authCredential("crm"), ""); err != nil {
			t.Fatal(err)
		}
		rec, err := replicas[1].StartDeviceAuthorization(ctx, "crm", nil)
		if err != nil {
			t.Fatal(err)
		}
		// Every replica that reads the record polls too (takeover).
		for _, r := range replicas {
			if _, err := r.GetCredential(ctx, "crm"); err != nil {
				t.Fatal(err)
			}
			if _, err := r.GetToken(ctx, "crm", 0); !errors.Is(err, broker.ErrReauthRequired) {
				t.Fatalf("GetToken while pending: %v, want ErrReauthRequired", err)
			}
		}
		time.Sleep(10*time.Second + 500*time.Millisecond)
		synctest.Wait()
		st := e.idp.AuthStats()
		if st.DevicePolls != 10 || st.SlowDowns != 0 {
			t.Fatalf("three replicas for 10.5 s at a 1 s interval: %d polls, %d slow_downs; want 10, 0", st.DevicePolls, st.SlowDowns)
		}
		for _, g := range pollGaps(e.idp) {
			if g < time.Second {
				t.Fatalf("polls %v apart: sooner than the interval", g)
			}
		}
		// The replica that started the flow stops; the others finish it.
		_ = replicas[1].Close()
		e.idp.ApproveDevice(rec.Authorization.UserCode)
		time.Sleep(1500 * time.Millisecond)
		synctest.Wait()
		if got := e.stored("crm"); got.State != broker.StateActive || got.Authorization != nil {
			t.Fatalf("after approval with the starter gone: state %v", got.State)
		}
		if _, err := replicas[2].GetToken(ctx, "crm", 0); err != nil {
			t.Fatal(err)
		}
	})
}

func TestDeviceFlowDeniedOrExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		e.idp.SetDeviceInterval(time.Second)
		e.idp.SetDeviceCodeTTL(5 * time.Second)
		b := e.broker(nil)
		ctx := context.Background()
		if _, err := b.PutCredential(ctx, e.authCredential("crm"), ""); err != nil {
			t.Fatal(err)
		}
		rec, err := b.StartDeviceAuthorization(ctx, "crm", nil)
		if err != nil {
			t.Fatal(err)
		}
		e.idp.DenyDevice(rec.Authorization.UserCode)
		time.Sleep(1500 * time.Millisecond)
		synctest.Wait()
		got := e.stored("crm")
		if got.Authorization != nil || got.ViewState(time.Now()) != broker.StateReauthRequired || !strings.Contains(got.LastError, "denied") {
			t.Fatalf("after denial: authorization %+v, last error %q", got.Authorization, got.LastError)
		}

		// A new flow after the denial; nobody approves it.
		if _, err := b.StartDeviceAuthorization(ctx, "crm", nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		got = e.stored("crm")
		if got.Authorization != nil || !strings.Contains(got.LastError, "expired") {
			t.Fatalf("after expiry: authorization %+v, last error %q", got.Authorization, got.LastError)
		}
		polls := e.idp.AuthStats().DevicePolls
		time.Sleep(time.Minute)
		if n := e.idp.AuthStats().DevicePolls; n != polls {
			t.Fatalf("%d more polls after the flow expired", n-polls)
		}
	})
}

func TestDeviceFlowBadInput(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		b := e.broker(nil)
		ctx := context.Background()
		e.credential(b, "seeded") // no device_authorization_url
		gen := e.stored("seeded").Generation
		if _, err := b.StartDeviceAuthorization(ctx, "seeded", nil); !isInvalid(err, "credential.device_authorization_url") {
			t.Fatalf("without a device URL: %v", err)
		}
		if _, err := b.StartDeviceAuthorization(ctx, "seeded", []string{"a b"}); !isInvalid(err, "scopes") {
			t.Fatalf("bad scopes: %v", err)
		}
		if _, err := b.StartDeviceAuthorization(ctx, "missing", nil); !errors.Is(err, broker.ErrNotFound) {
			t.Fatalf("missing credential: %v", err)
		}
		if got := e.stored("seeded").Generation; got != gen {
			t.Fatal("refused calls changed the record")
		}
		// An IdP that refuses the client: IDP_REJECTED, nothing stored.
		c := e.authCredential("crm")
		c.ClientSecrets = []string{"wrong-secret"}
		if _, err := b.PutCredential(ctx, c, ""); err != nil {
			t.Fatal(err)
		}
		gen = e.stored("crm").Generation
		if _, err := b.StartDeviceAuthorization(ctx, "crm", nil); !errors.Is(err, broker.ErrIdPRejected) {
			t.Fatalf("rejected client: %v, want ErrIdPRejected", err)
		}
		if got := e.stored("crm"); got.Generation != gen || got.Authorization != nil {
			t.Fatal("a refused device authorization changed the record")
		}
	})
}
