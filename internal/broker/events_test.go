package broker_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// watch runs WatchChanges on b from resume in the background and returns
// the changes it sends, and its end.
func watch(t *testing.T, b *broker.Broker, resume string) (<-chan *broker.Change, <-chan error) {
	t.Helper()
	ch := make(chan *broker.Change, 100)
	done := make(chan error, 1)
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		done <- b.WatchChanges(ctx, resume, func() { close(ready) }, func(c *broker.Change) error { ch <- c; return nil })
	}()
	select {
	case <-ready:
	case err := <-done:
		done <- err
	}
	return ch, done
}

// kinds drains what ch holds now.
func kinds(ch <-chan *broker.Change) (out []*broker.Change) {
	for {
		select {
		case c := <-ch:
			out = append(out, c)
		default:
			return out
		}
	}
}

func TestWatchSeesEveryStateChangeFromAnyReplica(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		a, b := e.broker(nil), e.broker(nil)
		ctx := context.Background()
		ch, _ := watch(t, b, "") // on the replica that makes no change
		c := e.authCredential("crm", "worker")
		rt := e.idp.Seed(testClientID)
		if _, err := a.PutCredential(ctx, c, rt); err != nil {
			t.Fatal(err)
		}
		tok, err := a.GetToken(ctx, "crm", 0)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // a forced refresh skips a credential refreshed since the call began
		e.idp.FailNext(1, 503)
		if _, err := a.RefreshCredential(ctx, "crm"); !errors.Is(err, broker.ErrIdPUnavailable) {
			t.Fatalf("refresh on a 503: %v", err)
		}
		time.Sleep(6 * time.Second) // past the backoff and the force interval
		if _, err := a.RefreshCredential(ctx, "crm"); err != nil {
			t.Fatal(err)
		}
		e.idp.Revoke(tok.AccessToken)
		time.Sleep(6 * time.Second)
		if _, err := a.RefreshCredential(ctx, "crm"); !errors.Is(err, broker.ErrReauthRequired) {
			t.Fatalf("refresh of a revoked grant: %v", err)
		}
		start, err := a.StartAuthorization(broker.NewContext(ctx, broker.Caller{ID: "ops", Admin: true}), "crm", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		cb := e.browse(start.URL)
		if _, err := b.CompleteAuthorization(ctx, cb.Get("state"), cb.Get("code"), "", ""); err != nil {
			t.Fatal(err)
		}
		if err := a.DeleteCredential(ctx, "crm"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		got := kinds(ch)
		want := []broker.ChangeKind{broker.ChangeCreated, broker.ChangeBackingOff, broker.ChangeRecovered, broker.ChangeReauthRequired,
			broker.ChangeAuthorizationStarted, broker.ChangeAuthorized, broker.ChangeDeleted}
		if len(got) != len(want) {
			t.Fatalf("%d changes %v, want %v", len(got), got, want)
		}
		for i, c := range got {
			if c.Kind != want[i] || c.CredentialID != "crm" || c.Seq != uint64(i+1) {
				t.Fatalf("change %d: %+v, want %s", i, c, want[i])
			}
		}
		reauth, started, authorized := got[3], got[4], got[5]
		if reauth.State != broker.StateReauthRequired || reauth.PrevState != broker.StateActive || reauth.OutcomeUnknown || reauth.Detail == "" {
			t.Fatalf("REAUTH_REQUIRED change %+v", reauth)
		}
		if started.State != broker.StatePendingAuthorization || started.Actor != "ops" {
			t.Fatalf("AUTHORIZATION_STARTED change %+v", started)
		}
		if authorized.State != broker.StateActive || authorized.PrevState != broker.StatePendingAuthorization || authorized.Actor != "ops" {
			t.Fatalf("AUTHORIZED change %+v", authorized)
		}

		// A watch resumed after the REAUTH_REQUIRED change sends the rest,
		// once each.
		rch, _ := watch(t, a, reauth.ResumeToken())
		synctest.Wait()
		rest := kinds(rch)
		if len(rest) != 3 || rest[0].Kind != broker.ChangeAuthorizationStarted || rest[2].Kind != broker.ChangeDeleted {
			t.Fatalf("resumed watch: %v", rest)
		}
		// Beyond the last, or not a token: refused.
		for _, tok := range []string{"999", "x", "-1"} {
			_, done := watch(t, a, tok)
			synctest.Wait()
			var be *broker.Error
			if err := <-done; !errors.As(err, &be) || be.Kind != broker.ErrInvalidArgument || be.Field != "resume_token" {
				t.Fatalf("watch from %q: %v, want invalid resume_token", tok, err)
			}
		}
	})
}

func TestWatchNeedsAnAdmin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		e.cfg.Open = false
		b := e.broker(nil)
		err := b.WatchChanges(broker.NewContext(context.Background(), broker.Caller{ID: "worker"}), "", nil, func(*broker.Change) error { return nil })
		if !errors.Is(err, broker.ErrPermissionDenied) {
			t.Fatalf("watch by a non-admin: %v", err)
		}
	})
}
