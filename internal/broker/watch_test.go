package broker_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// WatchToken: the current token, then each new one once stored, on any
// replica; the Rotating notice for credentials that revoke the previous
// access token; one Store read per refresh per replica however many watch;
// and the errors that end it.

var (
	worker = broker.NewContext(context.Background(), broker.Caller{ID: "worker"})
	ops    = broker.NewContext(context.Background(), broker.Caller{ID: "ops", Admin: true})
)

// watchLog is one WatchToken call running in the background.
type watchLog struct {
	ups    chan update
	done   chan error
	cancel context.CancelFunc
}

type update struct {
	broker.TokenUpdate
	at time.Time
}

func startWatch(ctx context.Context, b *broker.Broker, id string, minValid time.Duration) *watchLog {
	ctx, cancel := context.WithCancel(ctx)
	w := &watchLog{ups: make(chan update, 64), done: make(chan error, 1), cancel: cancel}
	go func() {
		w.done <- b.WatchToken(ctx, id, minValid, func(u broker.TokenUpdate) error {
			w.ups <- update{u, time.Now()}
			return nil
		})
	}()
	return w
}

// next returns the next update, or fails the test when the watch ended.
func (w *watchLog) next(t *testing.T) update {
	t.Helper()
	select {
	case u := <-w.ups:
		return u
	case err := <-w.done:
		t.Fatalf("watch ended: %v", err)
	}
	panic("unreachable")
}

// end returns the error the watch ended with; it must have sent nothing
// more.
func (w *watchLog) end(t *testing.T) error {
	t.Helper()
	select {
	case u := <-w.ups:
		t.Fatalf("update %+v where the watch should end", u.TokenUpdate)
	case err := <-w.done:
		return err
	}
	panic("unreachable")
}

// Watchers alone keep the credential refreshed ahead of expiry (no GetToken
// calls): each new token arrives once stored, before the one it replaces
// has less than min_valid left, with growing generations.
func TestWatchTokenSendsEachNewToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: 2 * time.Second, Latency: 20 * time.Millisecond})
		a, b := e.broker(nil), e.broker(nil)
		e.putCredential(a, "cred", false)
		w := startWatch(worker, b, "cred", 0)
		defer w.cancel()
		first := w.next(t)
		if first.Rotating || first.Token != e.stored("cred").Token || first.Generation != e.stored("cred").Generation {
			t.Fatalf("first update %+v; want the stored token and generation", first.TokenUpdate)
		}
		prev := first
		for range 6 {
			u := w.next(t)
			if u.Rotating || u.Generation <= prev.Generation || u.Token.AccessToken == prev.Token.AccessToken {
				t.Fatalf("update %+v after generation %d; want a new token of a higher generation", u.TokenUpdate, prev.Generation)
			}
			if !e.live(u.Token.AccessToken) || !u.Token.Valid(u.at, 500*time.Millisecond) {
				t.Fatal("a token sent is not live or has less than min_valid (0.5s, a quarter of its life) left")
			}
			if !prev.Token.Valid(u.at, 500*time.Millisecond) {
				t.Fatalf("the new token came %s before the old one expired; want its refresh ahead of expiry", prev.Token.Expiry.Sub(u.at))
			}
			prev = u
		}
		if st := e.idp.Stats(); st.Refreshes > 8 {
			t.Fatalf("%d IdP refreshes for 6 new tokens", st.Refreshes)
		}
	})
}

// A min_valid above the refresh-ahead window refreshes before the token has
// less than that left.
func TestWatchTokenHonoursMinValid(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: 4 * time.Second})
		b := e.broker(nil)
		if _, err := b.PutCredential(ops, broker.Credential{ID: "cred", TokenURL: e.tokenURL, ClientID: testClientID,
			ClientSecrets: []string{testSecret}, AllowedClients: []string{"worker"}, RefreshAhead: 200 * time.Millisecond,
		}, e.idp.Seed(testClientID)); err != nil {
			t.Fatal(err)
		}
		w := startWatch(worker, b, "cred", 1500*time.Millisecond)
		defer w.cancel()
		prev := w.next(t)
		for range 3 {
			u := w.next(t)
			if !u.Token.Valid(u.at, 1500*time.Millisecond) || !prev.Token.Valid(u.at, 1500*time.Millisecond-50*time.Millisecond) {
				t.Fatalf("update with %s left, the previous token with %s; want both about min_valid (1.5s) or more",
					u.Token.Expiry.Sub(u.at), prev.Token.Expiry.Sub(u.at))
			}
			prev = u
		}
	})
}

// For a credential whose IdP revokes the previous access token, a watcher on
// another replica is told to stop using the old token while it still works
// (before the IdP is called), then gets its successor.
func TestWatchTokenRotatingNotice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Hour, Latency: 20 * time.Millisecond, RevokePreviousAccessToken: true})
		a, b := e.broker(nil), e.broker(nil)
		e.putCredential(a, "cred", true)
		w := startWatch(worker, b, "cred", 0)
		defer w.cancel()
		first := w.next(t)
		e.idp.ResetStats()
		go func() { _, _ = a.InvalidateToken(worker, "cred", first.Token.AccessToken, 0) }()
		notice := w.next(t)
		if !notice.Rotating || notice.Generation != first.Generation || notice.Token != (broker.Token{}) {
			t.Fatalf("update %+v; want the Rotating notice of generation %d", notice.TokenUpdate, first.Generation)
		}
		if !e.live(first.Token.AccessToken) || e.idp.Stats().TokenRequests != 0 {
			t.Fatal("the notice came after the IdP was called")
		}
		next := w.next(t)
		if next.Rotating || next.Generation <= first.Generation || !e.live(next.Token.AccessToken) || e.live(first.Token.AccessToken) {
			t.Fatalf("update %+v; want the successor, live, with the old token revoked", next.TokenUpdate)
		}
		if d := next.at.Sub(notice.at); d < broker.DefaultRevokeNotice {
			t.Fatalf("successor %s after the notice; want RevokeNotice (%s) at least", d, broker.DefaultRevokeNotice)
		}
	})
}

// A thousand watchers of one credential on each of two replicas cost each
// replica one Store read per refresh, as many as one watcher costs: the
// token is fanned out from the replica's cache.
func TestWatchTokenFanOutCostsOneReadPerRefresh(t *testing.T) {
	for _, revokes := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "revokes"}[revokes], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Hour, RevokePreviousAccessToken: revokes})
				e.cfg.ForceInterval = time.Nanosecond // invalidations in a row all refresh
				va, vb := &gateStore{Store: e.store}, &gateStore{Store: e.store}
				a, b := e.brokerOn(va, nil), e.brokerOn(vb, nil)
				e.putCredential(a, "cred", revokes)
				ctx := worker

				// rotate refreshes through a and waits until every
				// watcher has the new generation; it returns the reads of
				// each replica's Store meanwhile.
				var watchers []*fanWatcher
				rotate := func() (ra, rb int64) {
					tok, err := a.GetToken(ctx, "cred", 0)
					if err != nil {
						t.Fatal(err)
					}
					tokGen := e.stored("cred").Generation
					time.Sleep(time.Millisecond)
					synctest.Wait()
					a0, b0 := va.gets.Load(), vb.gets.Load()
					if _, err := a.InvalidateToken(ctx, "cred", tok.AccessToken, 0); err != nil {
						t.Fatal(err)
					}
					gen := e.stored("cred").Generation
					if gen != tokGen+1 {
						t.Fatalf("generation %d after the invalidation; want %d", gen, tokGen+1)
					}
					synctest.Wait()
					for i, w := range watchers {
						if got := w.gen.Load(); got != gen {
							t.Fatalf("watcher %d at generation %d; want %d", i, got, gen)
						}
					}
					return va.gets.Load() - a0, vb.gets.Load() - b0
				}

				a1, b1 := rotate() // no watcher: what a refresh costs anyway
				for range 1000 {
					watchers = append(watchers, startFanWatcher(ctx, a), startFanWatcher(ctx, b))
				}
				synctest.Wait()
				var totalA, totalB int64
				const rotations = 5
				for range rotations {
					ra, rb := rotate()
					totalA, totalB = totalA+ra, totalB+rb
				}
				t.Logf("Store reads per refresh: refreshing replica %d without watchers, %.1f with 1000; other replica %d without, %.1f with 1000",
					a1, float64(totalA)/rotations, b1, float64(totalB)/rotations)
				if totalB != rotations {
					t.Fatalf("the other replica read the Store %d times for %d refreshes with 1000 watchers; want one per refresh", totalB, rotations)
				}
				if totalA > rotations*(a1+1) {
					t.Fatalf("the refreshing replica read the Store %d times for %d refreshes with 1000 watchers; want at most %d", totalA, rotations, rotations*(a1+1))
				}
				for i, w := range watchers {
					if n := w.sent.Load(); n < rotations+1 {
						t.Fatalf("watcher %d got %d tokens; want %d", i, n, rotations+1)
					}
					w.cancel()
				}
			})
		})
	}
}

// fanWatcher is a watcher that only keeps the last generation it got.
type fanWatcher struct {
	gen    atomic.Uint64
	sent   atomic.Int64
	cancel context.CancelFunc
}

func startFanWatcher(ctx context.Context, b *broker.Broker) *fanWatcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &fanWatcher{cancel: cancel}
	go func() {
		_ = b.WatchToken(ctx, "cred", 0, func(u broker.TokenUpdate) error {
			if !u.Rotating {
				w.gen.Store(u.Generation)
				w.sent.Add(1)
			}
			return nil
		})
	}()
	return w
}

// After a Reset a watcher gets a change its replica missed, with one read.
func TestWatchTokenPicksUpChangesMissedBeforeReset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Hour})
		view := &gateStore{Store: e.store}
		b := e.brokerOn(view, nil)
		other := e.broker(nil)
		e.putCredential(other, "cred", false)
		w := startWatch(worker, b, "cred", 0)
		defer w.cancel()
		first := w.next(t)
		view.deaf.Store(true)
		if _, err := other.InvalidateToken(worker, "cred", first.Token.AccessToken, 0); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if len(w.ups) != 0 {
			t.Fatal("an update came through while the replica heard no events")
		}
		view.deaf.Store(false)
		reads := view.gets.Load()
		view.reset()
		u := w.next(t)
		if u.Token != e.stored("cred").Token || u.Generation != first.Generation+1 {
			t.Fatalf("after the Reset: %+v; want the token stored meanwhile", u.TokenUpdate)
		}
		synctest.Wait()
		if n := view.gets.Load() - reads; n != 1 {
			t.Fatalf("%d Store reads after the Reset; want 1", n)
		}
	})
}

// The watch ends as a GetToken would fail: unknown credential, not allowed,
// deleted, allowed_clients changed, REAUTH_REQUIRED; and on Close and when
// its context ends.
func TestWatchTokenEnds(t *testing.T) {
	type tc struct {
		name string
		ctx  context.Context
		// act makes the watch end, given the env, the broker and the
		// first update (none when the watch must fail at once).
		act  func(t *testing.T, e *env, b *broker.Broker, first update)
		want error
	}
	for _, c := range []tc{
		{name: "unknown credential, not admin", ctx: worker, want: broker.ErrPermissionDenied},
		{name: "unknown credential, admin", ctx: ops, want: broker.ErrNotFound},
		{name: "not allowed", ctx: broker.NewContext(context.Background(), broker.Caller{ID: "stranger"}), want: broker.ErrPermissionDenied},
		{name: "deleted, not admin", ctx: worker, want: broker.ErrPermissionDenied, act: deleteCred},
		{name: "deleted, admin", ctx: ops, want: broker.ErrNotFound, act: deleteCred},
		{name: "no longer allowed", ctx: worker, want: broker.ErrPermissionDenied, act: func(t *testing.T, e *env, b *broker.Broker, _ update) {
			if _, err := b.PutCredential(ops, broker.Credential{ID: "cred", TokenURL: e.tokenURL, ClientID: testClientID,
				AllowedClients: []string{"ops"}}, ""); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "reauth required", ctx: worker, want: broker.ErrReauthRequired, act: func(t *testing.T, e *env, b *broker.Broker, first update) {
			e.idp.Revoke(first.Token.AccessToken) // the grant dies at the IdP
			time.Sleep(time.Millisecond)          // a refresh that finished before the call began does not count
			if _, err := b.RefreshCredential(ops, "cred"); !errors.Is(err, broker.ErrReauthRequired) {
				t.Fatalf("RefreshCredential: %v", err)
			}
		}},
		{name: "broker closed", ctx: worker, want: broker.ErrShuttingDown, act: func(t *testing.T, e *env, b *broker.Broker, _ update) {
			_ = b.Close()
		}},
		{name: "context ended", ctx: worker, want: context.Canceled},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Hour})
				e.cfg.Open = false
				b := e.broker(nil)
				id := "cred"
				if c.act == nil && c.want != context.Canceled && c.name != "not allowed" {
					id = "missing"
				}
				if _, err := b.PutCredential(ops, broker.Credential{ID: "cred", TokenURL: e.tokenURL, ClientID: testClientID,
					ClientSecrets: []string{testSecret}, AllowedClients: []string{"worker", "ops"}}, e.idp.Seed(testClientID)); err != nil {
					t.Fatal(err)
				}
				w := startWatch(c.ctx, b, id, 0)
				defer w.cancel()
				switch {
				case c.want == context.Canceled:
					w.next(t)
					w.cancel()
				case c.act != nil:
					c.act(t, e, b, w.next(t))
				}
				if err := w.end(t); !errors.Is(err, c.want) {
					t.Fatalf("watch ended with %v; want %v", err, c.want)
				}
			})
		})
	}
	t.Run("invalid arguments", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, fakeidp.Options{})
			b := e.broker(nil)
			for _, args := range []struct {
				id       string
				minValid time.Duration
			}{{"", 0}, {"bad id!", 0}, {"cred", -time.Second}} {
				err := b.WatchToken(worker, args.id, args.minValid, func(broker.TokenUpdate) error { return nil })
				if !errors.Is(err, broker.ErrInvalidArgument) {
					t.Fatalf("WatchToken(%q, %s): %v; want ErrInvalidArgument", args.id, args.minValid, err)
				}
			}
		})
	})
}

func deleteCred(t *testing.T, _ *env, b *broker.Broker, _ update) {
	if err := b.DeleteCredential(ops, "cred"); err != nil {
		t.Fatal(err)
	}
}

// A send that fails ends the watch with its error; the hub goes once its
// last watcher left, and a later watch starts a new one.
func TestWatchTokenSendFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Hour})
		b := e.broker(nil)
		e.putCredential(b, "cred", false)
		broken := errors.New("stream broken")
		var mu sync.Mutex
		calls := 0
		err := b.WatchToken(worker, "cred", 0, func(broker.TokenUpdate) error {
			mu.Lock()
			defer mu.Unlock()
			calls++
			return broken
		})
		if !errors.Is(err, broken) || calls != 1 {
			t.Fatalf("WatchToken: %v after %d sends; want the send's error after 1", err, calls)
		}
		w := startWatch(worker, b, "cred", 0)
		defer w.cancel()
		if u := w.next(t); u.Token != e.stored("cred").Token {
			t.Fatal("a watch after the first one ended did not get the current token")
		}
	})
}
