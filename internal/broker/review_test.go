package broker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
)

func memstoreNew() broker.Store { return memstore.New() }

// Defects found in review (issue 10), each with the test that failed before
// its fix.

// GetToken for IDs that do not exist, or that the caller may not read, keeps
// nothing in memory; the cache of real credentials is bounded.
func TestUnknownIDsKeepNothingInMemory(t *testing.T) {
	e := newEnv(t, fakeidp.Options{})
	e.cfg.Open = false
	b := e.broker(nil)
	admin := broker.NewContext(context.Background(), broker.Caller{ID: "ops", Admin: true})
	reader := broker.NewContext(context.Background(), broker.Caller{ID: "worker"})
	if _, err := b.PutCredential(admin, broker.Credential{ID: "real", TokenURL: e.tokenURL, ClientID: testClientID,
		ClientSecrets: []string{testSecret}, AllowedClients: []string{"someone-else"}}, e.idp.Seed(testClientID)); err != nil {
		t.Fatal(err)
	}
	base := b.Cached()
	for i := range 20000 {
		if _, err := b.GetToken(reader, fmt.Sprintf("unknown-%d", i), 0); !errors.Is(err, broker.ErrPermissionDenied) {
			t.Fatalf("GetToken of an unknown ID: %v; want ErrPermissionDenied", err)
		}
		if _, err := b.InvalidateToken(reader, fmt.Sprintf("unknown-%d", i), "x", 0); !errors.Is(err, broker.ErrPermissionDenied) {
			t.Fatalf("InvalidateToken of an unknown ID: %v; want ErrPermissionDenied", err)
		}
	}
	if n := b.Cached(); n != base {
		t.Fatalf("%d credentials cached after 40,000 calls for unknown IDs; want %d", n, base)
	}
}

func TestCacheIsBounded(t *testing.T) {
	e := newEnv(t, fakeidp.Options{})
	e.cfg.MaxCached = 10
	b := e.broker(nil)
	ctx := context.Background()
	for i := range 50 {
		e.credential(b, fmt.Sprintf("cred-%d", i))
	}
	for round := range 2 {
		for i := range 50 {
			if _, err := b.GetToken(ctx, fmt.Sprintf("cred-%d", i), 0); err != nil {
				t.Fatalf("round %d, cred-%d: %v", round, i, err)
			}
			if n := b.Cached(); n > 10 {
				t.Fatalf("%d credentials cached; want at most MaxCached, 10", n)
			}
		}
	}
	// Evicted credentials are read again, never refreshed again.
	if st := e.idp.Stats(); st.RefreshRequests != 50 {
		t.Fatalf("%d refresh requests for 50 credentials; want 50", st.RefreshRequests)
	}
}

// Switching an existing credential to the refresh_token grant needs a
// refresh token in the same request.
func TestGrantSwitchNeedsARefreshToken(t *testing.T) {
	e := newEnv(t, fakeidp.Options{})
	b := e.broker(nil)
	ctx := context.Background()
	cc := broker.Credential{ID: "cred", TokenURL: e.tokenURL, ClientID: testClientID, ClientSecrets: []string{testSecret},
		GrantType: broker.GrantClientCredentials}
	if _, err := b.PutCredential(ctx, cc, ""); err != nil {
		t.Fatal(err)
	}
	rt := cc
	rt.GrantType = broker.GrantRefreshToken
	_, err := b.PutCredential(ctx, rt, "")
	var be *broker.Error
	if !errors.Is(err, broker.ErrInvalidArgument) || !errors.As(err, &be) || be.Field != "credential.refresh_token" {
		t.Fatalf("switch to refresh_token without a refresh token: %v; want INVALID_ARGUMENT on credential.refresh_token", err)
	}
	if rec := e.stored("cred"); rec.GrantType != broker.GrantClientCredentials {
		t.Fatal("the refused switch changed the credential")
	}
	if _, err := b.PutCredential(ctx, rt, e.idp.Seed(testClientID)); err != nil {
		t.Fatalf("switch with a refresh token: %v", err)
	}
	if tok, err := b.GetToken(ctx, "cred", 0); err != nil || !e.accepted(tok.AccessToken) {
		t.Fatalf("after the switch: %v", err)
	}
}

// Changing the token URL's scheme or host must bring the secrets along: the
// stored ones are not sent to a new host.
func TestSecretsDoNotFollowAMovedTokenURL(t *testing.T) {
	e := newEnv(t, fakeidp.Options{})
	b := e.broker(nil)
	ctx := context.Background()
	e.credential(b, "cred")
	moved := broker.Credential{ID: "cred", TokenURL: "https://elsewhere.example/token", ClientID: testClientID}
	for _, tc := range []struct {
		name    string
		secrets []string
		rt      string
		field   string
	}{
		{"neither", nil, "", "credential.client_secret"},
		{"secret only", []string{"new-secret"}, "", "credential.refresh_token"},
	} {
		c := moved
		c.ClientSecrets = tc.secrets
		_, err := b.PutCredential(ctx, c, tc.rt)
		var be *broker.Error
		if !errors.Is(err, broker.ErrInvalidArgument) || !errors.As(err, &be) || be.Field != tc.field {
			t.Fatalf("%s: %v; want INVALID_ARGUMENT on %s", tc.name, err, tc.field)
		}
	}
	if rec := e.stored("cred"); rec.TokenURL != e.tokenURL {
		t.Fatal("a refused move changed the token URL")
	}
	// Another path on the same host keeps the secrets.
	samehost := broker.Credential{ID: "cred", TokenURL: e.tokenURL + "/v2", ClientID: testClientID}
	if _, err := b.PutCredential(ctx, samehost, ""); err != nil {
		t.Fatalf("a path change on the same host: %v", err)
	}
	c := moved
	c.ClientSecrets = []string{"new-secret"}
	if _, err := b.PutCredential(ctx, c, "rt-from-the-new-idp"); err != nil {
		t.Fatalf("a move with both secrets: %v", err)
	}
	if rec := e.stored("cred"); rec.ClientSecrets[0] != "new-secret" || rec.RefreshToken != "rt-from-the-new-idp" {
		t.Fatal("the move did not store the new secrets")
	}
}

// unreadableStore answers Get with ErrUnreadable, as a Redis record sealed
// under a key no longer configured does.
type unreadableStore struct{ broker.Store }

func (unreadableStore) Get(context.Context, string) (*broker.Record, error) {
	return nil, fmt.Errorf("sealed under an unknown key: %w", broker.ErrUnreadable)
}

// A caller who may not read a credential learns nothing of it, not even
// that its record is unreadable; an admin is told.
func TestUnreadableRecordDoesNotLeakExistence(t *testing.T) {
	e := newEnv(t, fakeidp.Options{})
	e.cfg.Open = false
	b := e.brokerOn(unreadableStore{e.store}, nil)
	reader := broker.NewContext(context.Background(), broker.Caller{ID: "worker"})
	admin := broker.NewContext(context.Background(), broker.Caller{ID: "ops", Admin: true})
	if _, err := b.GetToken(reader, "cred", 0); !errors.Is(err, broker.ErrPermissionDenied) {
		t.Fatalf("reader: %v; want ErrPermissionDenied", err)
	}
	if _, err := b.InvalidateToken(reader, "cred", "x", 0); !errors.Is(err, broker.ErrPermissionDenied) {
		t.Fatalf("reader invalidating: %v; want ErrPermissionDenied", err)
	}
	if _, err := b.GetCredential(admin, "cred"); !errors.Is(err, broker.ErrUnreadable) {
		t.Fatalf("admin: %v; want ErrUnreadable", err)
	}
}

// lostSettleStore applies the first Settle and loses its reply, then
// refuses the repeat as a conflict (as a Store without the repeat's
// memory would): the broker must recognise its own write.
type lostSettleStore struct {
	broker.Store
	n atomic.Int32
}

func (s *lostSettleStore) Settle(ctx context.Context, p *broker.Pending, rec *broker.Record) (uint64, error) {
	switch s.n.Add(1) {
	case 1:
		if _, err := s.Store.Settle(ctx, p, rec); err != nil {
			return 0, err
		}
		return 0, context.DeadlineExceeded
	case 2:
		return 0, broker.ErrConflict
	}
	return s.Store.Settle(ctx, p, rec)
}

func TestSettleAppliedButReplyLostIsSuccess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		b := e.brokerOn(&lostSettleStore{Store: e.store}, nil)
		e.credential(e.broker(nil), "cred")
		tok, err := b.GetToken(context.Background(), "cred", 0)
		if err != nil {
			// The first write failed: callers are told to retry, and the
			// write is recognised on the next try.
			if !errors.Is(err, broker.ErrStoreUnavailable) {
				t.Fatalf("GetToken: %v", err)
			}
			time.Sleep(time.Second)
			if tok, err = b.GetToken(context.Background(), "cred", 0); err != nil {
				t.Fatalf("GetToken after the write was recognised: %v", err)
			}
		}
		if rec := e.stored("cred"); rec.Token.AccessToken != tok.AccessToken || !e.accepted(tok.AccessToken) {
			t.Fatal("not the stored token")
		}
		e.rotatedOnce()
	})
}

// resettableStore lets a test deliver a Reset, as redisstore does after its
// event connection was lost.
type resettableStore struct {
	faultyStore
	fn atomic.Pointer[func(broker.Event)]
}

func (s *resettableStore) Subscribe(fn func(broker.Event)) func() {
	s.fn.Store(&fn)
	return s.faultyStore.Subscribe(fn)
}

func (s *resettableStore) reset() { (*s.fn.Load())(broker.Event{Reset: true}) }

// A store outage (events lost, Reset) does not fail calls that a cached
// token still answers; once the Store answers, the cache is verified and a
// change missed meanwhile is picked up.
func TestStoreOutageKeepsServingValidCachedTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Hour})
		view := &resettableStore{faultyStore: faultyStore{Store: e.store}}
		b := e.brokerOn(view, nil)
		admin := e.broker(nil)
		e.credential(admin, "cred")
		ctx := context.Background()
		first, err := b.GetToken(ctx, "cred", 0)
		if err != nil {
			t.Fatal(err)
		}

		view.down.Store(true)
		view.reset()
		for range 100 {
			tok, err := b.GetToken(ctx, "cred", 0)
			if err != nil || tok.AccessToken != first.AccessToken {
				t.Fatalf("during the outage: %v; want the cached token", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// Meanwhile another replica refreshed; this one missed the event.
		if _, err := admin.RefreshCredential(ctx, "cred"); err != nil {
			t.Fatal(err)
		}
		view.down.Store(false)
		if _, err := b.GetToken(ctx, "cred", 0); err != nil { // still cached; verifies in the background
			t.Fatal(err)
		}
		synctest.Wait()
		tok, err := b.GetToken(ctx, "cred", 0)
		if err != nil || tok.AccessToken == first.AccessToken || tok.AccessToken != e.stored("cred").Token.AccessToken {
			t.Fatalf("after the outage: %v; want the token stored meanwhile", err)
		}
	})
}

// failoverStore is a primary and a replica that gets every write but the
// outcomes of refreshes (Settle), as a Redis replica that lagged behind the
// last commit; fail promotes the replica and announces a Reset, as the
// event connection's reconnect does.
type failoverStore struct {
	primary, replica broker.Store
	failed           atomic.Bool
	// lagging stops the replication of outcomes (Settle) only from when it
	// is set; nil: never replicated.
	lagging *atomic.Bool
	subs    []func(broker.Event)
}

func (s *failoverStore) cur() broker.Store {
	if s.failed.Load() {
		return s.replica
	}
	return s.primary
}

func (s *failoverStore) Get(ctx context.Context, id string) (*broker.Record, error) {
	return s.cur().Get(ctx, id)
}

func (s *failoverStore) TryLock(ctx context.Context, id string, ttl time.Duration) (broker.Lease, error) {
	return s.cur().TryLock(ctx, id, ttl)
}

func (s *failoverStore) Commit(ctx context.Context, l broker.Lease, rec *broker.Record) (uint64, error) {
	gen, err := s.cur().Commit(ctx, l, rec)
	if err == nil && !s.failed.Load() {
		rl, _ := s.replica.TryLock(ctx, rec.ID, time.Minute)
		_, _ = s.replica.Commit(ctx, rl, rec)
		_ = rl.Release(ctx)
	}
	return gen, err
}

func (s *failoverStore) MarkPending(ctx context.Context, l broker.Lease, rec *broker.Record, p *broker.Pending) error {
	err := s.cur().MarkPending(ctx, l, rec, p)
	if err == nil && !s.failed.Load() {
		rl, _ := s.replica.TryLock(ctx, rec.ID, time.Minute)
		_ = s.replica.MarkPending(ctx, rl, rec, p)
		_ = rl.Release(ctx)
	}
	return err
}

func (s *failoverStore) Settle(ctx context.Context, p *broker.Pending, rec *broker.Record) (uint64, error) {
	gen, err := s.cur().Settle(ctx, p, rec)
	if err == nil && !s.failed.Load() && s.lagging != nil && !s.lagging.Load() {
		_, _ = s.replica.Settle(ctx, p, rec)
	}
	return gen, err // from lagging on, not replicated: lost in the failover
}

func (s *failoverStore) List(ctx context.Context, after string, limit int) ([]*broker.Record, error) {
	return s.cur().List(ctx, after, limit)
}

func (s *failoverStore) Delete(ctx context.Context, id string) error { return s.cur().Delete(ctx, id) }

func (s *failoverStore) Subscribe(fn func(broker.Event)) func() {
	s.subs = append(s.subs, fn)
	stop1, stop2 := s.primary.Subscribe(fn), s.replica.Subscribe(fn)
	return func() { stop1(); stop2() }
}

func (s *failoverStore) fail() {
	s.failed.Store(true)
	for _, fn := range s.subs {
		fn(broker.Event{Reset: true})
	}
}

// regressions records the generation regressions a Broker reports.
type regressions struct {
	observer
	mu  sync.Mutex
	evs []broker.RegressionEvent
}

func (o *regressions) Regressed(ev broker.RegressionEvent) {
	o.mu.Lock()
	o.evs = append(o.evs, ev)
	o.mu.Unlock()
}

func (o *regressions) all() []broker.RegressionEvent {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]broker.RegressionEvent(nil), o.evs...)
}

// A failover to a replica that missed the last refresh's outcome sends the
// record back to a spent refresh token. The replica that stored the outcome
// notices the generation going back, reports it, and writes the outcome
// back, so the next refresh presents the valid token.
func TestGenerationRegressionIsDetectedAndRepaired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		fs := &failoverStore{primary: e.store, replica: memstoreNew()}
		obs := &regressions{}
		b := e.brokerOn(fs, obs)
		e.credential(b, "cred")
		ctx := context.Background()
		tok, err := b.GetToken(ctx, "cred", 0) // refreshes; the outcome reaches the primary only
		if err != nil {
			t.Fatal(err)
		}
		fs.fail()
		if got, err := b.GetToken(ctx, "cred", 0); err != nil || got.AccessToken != tok.AccessToken {
			t.Fatalf("right after the failover: %v; want the cached token", err)
		}
		synctest.Wait() // the cached entry is verified, the regression found and repaired
		evs := obs.all()
		if len(evs) != 1 || !evs[0].Repaired || evs[0].Seen != evs[0].Stored+1 || evs[0].Err != nil {
			t.Fatalf("regression events %+v; want one, repaired", evs)
		}
		rec, err := fs.replica.Get(ctx, "cred")
		if err != nil || rec.Token.AccessToken != tok.AccessToken || rec.Pending != nil {
			t.Fatalf("the promoted replica holds %v (pending %v); want the repaired outcome", err, rec.Pending)
		}
		if _, err := b.RefreshCredential(ctx, "cred"); err != nil {
			t.Fatalf("a refresh after the repair: %v", err)
		}
		if st := e.idp.Stats(); st.Reuses != 0 {
			t.Fatalf("%d spent refresh tokens presented; want 0", st.Reuses)
		}
	})
}

// A replica that saw the outcome's generation never presents the older,
// spent refresh token the failover brought back, even when the pending
// marker the failover brought back with it is past its bound: it waits for
// the replica that stored the outcome to write it again.
func TestReplicaThatSawTheNewerGenerationDoesNotPresentTheOlder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: 4 * time.Second})
		var lagging atomic.Bool
		fs := &failoverStore{primary: e.store, replica: memstoreNew(), lagging: &lagging}
		holder, other := e.brokerOn(fs, nil), e.brokerOn(fs, nil)
		e.credential(holder, "cred")
		ctx := context.Background()
		if _, err := other.GetToken(ctx, "cred", 0); err != nil { // the first refresh, replicated
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second) // past the refresh-ahead point
		lagging.Store(true)
		tok, err := holder.RefreshCredential(ctx, "cred") // its outcome reaches the primary only
		if err != nil {
			t.Fatal(err)
		}
		if got, err := other.GetToken(ctx, "cred", 0); err != nil || got.AccessToken != tok.Token.AccessToken {
			t.Fatalf("other replica before the failover: %v; want the new token", err)
		}
		fs.fail()
		time.Sleep(2 * time.Minute) // the marker the failover brought back is long past its bound (RefreshReplyWait 60s + LockTTL)
		// The other replica's token has expired: it needs a refresh, and
		// the store holds the spent refresh token with a stale marker.
		_, err = other.GetToken(ctx, "cred", 0)
		if err != nil && !errors.Is(err, broker.ErrStoreUnavailable) {
			t.Fatalf("other replica after the failover: %v", err)
		}
		if _, err := holder.GetToken(ctx, "cred", 0); err != nil && !errors.Is(err, broker.ErrStoreUnavailable) {
			t.Fatalf("holder after the failover: %v", err) // its read finds the regression and repairs it
		}
		synctest.Wait()
		if _, err := other.GetToken(ctx, "cred", 0); err != nil {
			t.Fatalf("other replica after the repair: %v", err)
		}
		if st := e.idp.Stats(); st.Reuses != 0 {
			t.Fatalf("%d spent refresh tokens presented; want 0", st.Reuses)
		}
	})
}
