package broker_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// Credentials whose IdP revokes the previous access token on refresh
// (Credential.RevokesPreviousAccessToken): no replica hands out a token the
// IdP already revoked, callers wait only while a refresh is under way, and a
// cache that may have missed events is read again first.

// rotationObserver counts what observer does, and the rotation waits.
type rotationObserver struct {
	observer
	mu    sync.Mutex
	waits []time.Duration
}

func (o *rotationObserver) RotationWaited(d time.Duration) {
	o.mu.Lock()
	o.waits = append(o.waits, d)
	o.mu.Unlock()
}

func (o *rotationObserver) waited() []time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	w := slices.Clone(o.waits)
	slices.Sort(w)
	return w
}

// gateStore is a replica's view of the shared Store that counts its reads,
// can delay the storing of refresh outcomes (Settle), as a slow Redis would,
// can stop passing events on (lost, as over a broken connection) and can
// deliver a Reset.
type gateStore struct {
	broker.Store
	gets        atomic.Int64
	settleDelay time.Duration
	deaf        atomic.Bool
	fn          atomic.Pointer[func(broker.Event)]
	afterGet    atomic.Pointer[func()] // runs once, after the next read, before it returns
}

func (s *gateStore) Get(ctx context.Context, id string) (*broker.Record, error) {
	s.gets.Add(1)
	rec, err := s.Store.Get(ctx, id)
	if f := s.afterGet.Swap(nil); f != nil {
		(*f)()
	}
	return rec, err
}

func (s *gateStore) Settle(ctx context.Context, p *broker.Pending, rec *broker.Record) (uint64, error) {
	if s.settleDelay > 0 {
		time.Sleep(s.settleDelay)
	}
	return s.Store.Settle(ctx, p, rec)
}

func (s *gateStore) Subscribe(fn func(broker.Event)) func() {
	s.fn.Store(&fn)
	return s.Store.Subscribe(func(ev broker.Event) {
		if !s.deaf.Load() {
			fn(ev)
		}
	})
}

func (s *gateStore) reset() { (*s.fn.Load())(broker.Event{Reset: true}) }

// putCredential puts a credential seeded with a new token family, whose IdP
// revokes the previous access token or not, readable by "worker".
func (e *env) putCredential(b *broker.Broker, id string, revokes bool) {
	e.t.Helper()
	admin := broker.NewContext(context.Background(), broker.Caller{ID: "ops", Admin: true})
	if _, err := b.PutCredential(admin, broker.Credential{
		ID: id, TokenURL: e.tokenURL, ClientID: testClientID, ClientSecrets: []string{testSecret},
		AllowedClients: []string{"worker"}, RevokesPreviousAccessToken: revokes,
	}, e.idp.Seed(testClientID)); err != nil {
		e.t.Fatal(err)
	}
}

// live reports whether the IdP would accept tok now.
func (e *env) live(tok string) bool {
	info, ok := e.idp.Lookup(tok)
	return ok && info.Live
}

// rotationLoad runs 30 callers on 3 replicas against an IdP that revokes
// the previous access token, with a Store slow to store refresh outcomes,
// until 6 refreshes happened. It returns how many served tokens the IdP had
// already revoked when they were handed out, how many tokens were served,
// and the observer the replicas share.
func rotationLoad(t *testing.T, revokes bool) (revoked, served int64, obs *rotationObserver) {
	e := newEnv(t, fakeidp.Options{AccessTokenTTL: 2 * time.Second, Latency: 20 * time.Millisecond, RevokePreviousAccessToken: true})
	view := &gateStore{Store: e.store, settleDelay: 30 * time.Millisecond}
	obs = &rotationObserver{}
	replicas := []*broker.Broker{e.brokerOn(view, obs), e.brokerOn(view, obs), e.brokerOn(view, obs)}
	e.putCredential(replicas[0], "cred", revokes)
	ctx := broker.NewContext(context.Background(), broker.Caller{ID: "worker"})
	e.idp.ResetStats()

	var stop atomic.Bool
	var bad, n atomic.Int64
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			for !stop.Load() {
				tok, err := replicas[i%3].GetToken(ctx, "cred", 0)
				if err != nil {
					t.Errorf("caller %d: %v", i, err)
					return
				}
				n.Add(1)
				if !e.live(tok.AccessToken) { // checked the instant it was handed out
					bad.Add(1)
				}
				time.Sleep(time.Duration(5+i%7) * time.Millisecond)
			}
		})
	}
	for e.idp.Stats().Refreshes < 6 {
		time.Sleep(50 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if st := e.idp.Stats(); st.Reuses != 0 {
		t.Fatalf("%d reuses", st.Reuses)
	}
	return bad.Load(), n.Load(), obs
}

func TestRevokingCredentialHandsOutNoRevokedToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		revoked, served, obs := rotationLoad(t, true)
		if revoked != 0 {
			t.Fatalf("%d of %d tokens handed out were already revoked by the IdP", revoked, served)
		}
		waits := obs.waited()
		refreshServed := obs.served[broker.FromRefresh].Load()
		t.Logf("6 refreshes, %d tokens served: %d (%.1f%%) after waiting for a refresh; %d rotation waits, p50 %s, max %s (RevokeNotice %s + IdP 20ms + store 30ms)",
			served, refreshServed, 100*float64(refreshServed)/float64(served), len(waits), waits[len(waits)/2], waits[len(waits)-1], broker.DefaultRevokeNotice)
		if refreshServed == 0 || len(waits) == 0 {
			t.Fatal("no caller waited for a refresh: the load did not meet one")
		}
		if most := broker.DefaultRevokeNotice + 20*time.Millisecond + 30*time.Millisecond + 100*time.Millisecond; waits[len(waits)-1] > most {
			t.Fatalf("a caller waited %s; want at most %s", waits[len(waits)-1], most)
		}
	})
}

// Without the profile the same load is handed tokens the IdP already
// revoked: the check above can fail.
func TestNonRevokingProfileHandsOutRevokedTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		revoked, served, obs := rotationLoad(t, false)
		t.Logf("without revokes_previous_access_token: %d of %d tokens handed out were already revoked", revoked, served)
		if revoked == 0 {
			t.Fatal("no revoked token was handed out: the load cannot tell the profile works")
		}
		if len(obs.waited()) != 0 {
			t.Fatal("callers of a credential without the profile waited for a rotation")
		}
	})
}

// The old token is handed out until the refresh is announced (min_valid
// permitting), then on no replica until its successor is stored; the IdP
// is called RevokeNotice after the announcement, while the old token still
// works.
func TestRevokingCredentialOldTokenUntilAnnounced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Hour, RevokePreviousAccessToken: true})
		a, b := e.broker(nil), e.broker(nil)
		e.putCredential(a, "cred", true)
		ctx := broker.NewContext(context.Background(), broker.Caller{ID: "worker"})
		old, err := a.GetToken(ctx, "cred", 0)
		if err != nil {
			t.Fatal(err)
		}
		if tok, err := b.GetToken(ctx, "cred", 0); err != nil || tok != old {
			t.Fatalf("replica b before any refresh: %v; want the current token", err)
		}
		e.idp.ResetStats()
		e.idp.Pause() // the IdP holds refresh requests until Resume

		type result struct {
			tok broker.Token
			err error
		}
		invalidated := make(chan result, 1)
		go func() {
			tok, err := a.InvalidateToken(ctx, "cred", old.AccessToken, 0)
			invalidated <- result{tok, err}
		}()
		synctest.Wait() // announced; the IdP call waits out the notice
		if st := e.idp.Stats(); st.TokenRequests != 0 || !e.live(old.AccessToken) {
			t.Fatalf("during the notice: %d token requests, old token live %v; want none sent yet", st.TokenRequests, e.live(old.AccessToken))
		}
		got := make(chan result, 2)
		for _, r := range []*broker.Broker{a, b} {
			go func() {
				tok, err := r.GetToken(ctx, "cred", 0)
				got <- result{tok, err}
			}()
		}
		synctest.Wait()
		if len(got) != 0 {
			t.Fatal("a replica handed out the old token after the refresh was announced")
		}
		time.Sleep(broker.DefaultRevokeNotice)
		synctest.Wait()
		if st := e.idp.Stats(); st.TokenRequests != 1 {
			t.Fatalf("after the notice: %d token requests; want 1", st.TokenRequests)
		}
		e.idp.Resume()
		inv := <-invalidated
		if inv.err != nil || inv.tok.AccessToken == old.AccessToken {
			t.Fatalf("InvalidateToken: %v; want the new token", inv.err)
		}
		for range 2 {
			r := <-got
			if r.err != nil || r.tok != inv.tok {
				t.Fatalf("a waiting GetToken: %v; want the new token", r.err)
			}
		}
		if e.live(old.AccessToken) || !e.live(inv.tok.AccessToken) {
			t.Fatal("the IdP did not revoke the old token for the new one")
		}
	})
}

// After a Reset (events may have been missed) a replica reads the record of
// such a credential again before handing out its cached token: once for all
// its callers. Without the profile it serves the cached token (and verifies
// it in the background), which the IdP revoked meanwhile.
func TestRevokingCredentialVerifiedAfterReset(t *testing.T) {
	for _, revokes := range []bool{true, false} {
		t.Run(map[bool]string{true: "revokes", false: "profile off"}[revokes], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Hour, RevokePreviousAccessToken: true})
				view := &gateStore{Store: e.store}
				b := e.brokerOn(view, nil)
				other := e.broker(nil)
				e.putCredential(other, "cred", revokes)
				ctx := broker.NewContext(context.Background(), broker.Caller{ID: "worker"})
				old, err := b.GetToken(ctx, "cred", 0)
				if err != nil {
					t.Fatal(err)
				}
				// The connection to the Store's events breaks; another
				// replica refreshes meanwhile.
				view.deaf.Store(true)
				if _, err := other.InvalidateToken(ctx, "cred", old.AccessToken, 0); err != nil {
					t.Fatal(err)
				}
				view.deaf.Store(false)
				view.reset()
				reads := view.gets.Load()
				if !revokes {
					tok, err := b.GetToken(ctx, "cred", 0)
					if err != nil || tok != old || e.live(old.AccessToken) {
						t.Fatalf("without the profile: %v; want the cached token, which the IdP revoked", err)
					}
					return
				}

				toks := make([]broker.Token, 50)
				var wg sync.WaitGroup
				for i := range toks {
					wg.Go(func() {
						var err error
						if toks[i], err = b.GetToken(ctx, "cred", 0); err != nil {
							t.Error(err)
						}
					})
				}
				wg.Wait()
				cur := e.stored("cred").Token
				for i, tok := range toks {
					if tok != cur {
						t.Fatalf("caller %d after the Reset: not the stored token", i)
					}
				}
				if n := view.gets.Load() - reads; n != 1 {
					t.Fatalf("50 callers after the Reset read the Store %d times; want 1", n)
				}
			})
		})
	}
}

// RevokeNotice must leave the lease to outlive the IdP call.
func TestRevokeNoticeBounded(t *testing.T) {
	ok := broker.Config{RefreshTimeout: 2 * time.Second, LockTTL: 6 * time.Second, RevokeNotice: time.Second}
	if err := ok.Validate(); err != nil {
		t.Fatalf("a quarter of LockTTL - RefreshTimeout: %v", err)
	}
	for _, bad := range []broker.Config{
		{RefreshTimeout: 2 * time.Second, LockTTL: 6 * time.Second, RevokeNotice: time.Second + time.Nanosecond},
		{RevokeNotice: -time.Second},
	} {
		if err := bad.Validate(); err == nil {
			t.Fatalf("RevokeNotice %s with LockTTL %s, RefreshTimeout %s accepted", bad.RevokeNotice, bad.LockTTL, bad.RefreshTimeout)
		}
	}
	for _, c := range []broker.Config{{}, {RefreshTimeout: 100 * time.Millisecond, LockTTL: 200 * time.Millisecond}} {
		if err := c.Validate(); err != nil {
			t.Fatalf("the default RevokeNotice with LockTTL %s, RefreshTimeout %s: %v", c.LockTTL, c.RefreshTimeout, err)
		}
	}
}

// A replica's first read of a credential that straddles the announcement of
// a refresh (its event came before the replica had a slot for it) does not
// leave the old token cached as if nothing were under way: it is read again
// before it is handed out, and the caller waits for the successor.
func TestRevokingCredentialFirstReadStraddlingTheAnnouncement(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Hour, RevokePreviousAccessToken: true})
		a := e.broker(nil)
		view := &gateStore{Store: e.store}
		b := e.brokerOn(view, nil)
		e.putCredential(a, "cred", true)
		ctx := broker.NewContext(context.Background(), broker.Caller{ID: "worker"})
		old, err := a.GetToken(ctx, "cred", 0)
		if err != nil {
			t.Fatal(err)
		}
		refreshed := make(chan broker.Token, 1)
		announce := func() { // while b's read is under way, a announces a refresh
			go func() {
				tok, err := a.InvalidateToken(ctx, "cred", old.AccessToken, 0)
				if err != nil {
					t.Error(err)
				}
				refreshed <- tok
			}()
			time.Sleep(time.Millisecond) // a is in its notice by now
		}
		view.afterGet.Store(&announce)
		if tok, err := b.GetToken(ctx, "cred", 0); err != nil || tok != old {
			t.Fatalf("b's first call, whose read began before the announcement: %v; want the old token", err)
		}
		tok, err := b.GetToken(ctx, "cred", 0) // within the notice
		if err != nil {
			t.Fatal(err)
		}
		if tok == old || tok != <-refreshed || !e.live(tok.AccessToken) {
			t.Fatal("b handed out the old token after the refresh was announced")
		}
	})
}
