package integration_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// pausingStore wraps a real Store and pauses its caller at chosen points, as
// a stopped process or a long GC pause would. beforeCommit pauses the write
// of a refresh's outcome (Settle) and of an admin change (Commit).
type pausingStore struct {
	broker.Store
	beforeLock   func()
	afterLock    func()
	beforeCommit func()
	// cut, when set, cuts the replica off the Store for TryLock and lease
	// extensions, as for a stopped process whose other goroutines are
	// stopped too.
	cut *atomic.Bool
}

var errCut = errors.New("pausingStore: cut off")

type pausingLease struct {
	broker.Lease
	cut *atomic.Bool
}

func (l *pausingLease) Extend(ctx context.Context, ttl time.Duration) error {
	if l.cut != nil && l.cut.Load() {
		return errCut
	}
	return l.Lease.Extend(ctx, ttl)
}

func (s *pausingStore) Commit(ctx context.Context, l broker.Lease, rec *broker.Record) (uint64, error) {
	if s.beforeCommit != nil {
		s.beforeCommit()
	}
	return s.Store.Commit(ctx, unwrap(l), rec)
}

func (s *pausingStore) MarkPending(ctx context.Context, l broker.Lease, rec *broker.Record, p *broker.Pending) error {
	return s.Store.MarkPending(ctx, unwrap(l), rec, p)
}

func unwrap(l broker.Lease) broker.Lease {
	if pl, ok := l.(*pausingLease); ok {
		return pl.Lease
	}
	return l
}

func (s *pausingStore) Settle(ctx context.Context, p *broker.Pending, rec *broker.Record) (uint64, error) {
	if s.beforeCommit != nil {
		s.beforeCommit()
	}
	return s.Store.Settle(ctx, p, rec)
}

func (s *pausingStore) TryLock(ctx context.Context, id string, ttl time.Duration) (broker.Lease, error) {
	if s.beforeLock != nil {
		s.beforeLock()
	}
	if s.cut != nil && s.cut.Load() {
		return nil, errCut
	}
	l, err := s.Store.TryLock(ctx, id, ttl)
	if err == nil && s.afterLock != nil {
		s.afterLock()
	}
	if err != nil {
		return nil, err
	}
	return &pausingLease{Lease: l, cut: s.cut}, nil
}

func pausing(afterLock, beforeCommit func()) func(broker.Store) broker.Store {
	return func(s broker.Store) broker.Store {
		return &pausingStore{Store: s, afterLock: afterLock, beforeCommit: beforeCommit}
	}
}

func fencingCluster(t *testing.T, be backend) *cluster {
	c := newCluster(t, be, fakeidp.Options{})
	c.cfg.RefreshTimeout = 200 * time.Millisecond
	c.cfg.LockTTL = 300 * time.Millisecond
	c.cfg.PollInterval = 20 * time.Millisecond
	return c
}

func TestHolderThatLostItsLeaseDoesNotCallTheIdP(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		c := fencingCluster(t, be)
		c.credential(c.replica(nil), "cred")
		obs := &observer{}
		paused, _ := c.replicaOn(pausing(func() {
			time.Sleep(2 * c.cfg.LockTTL) // paused right after obtaining the lease
		}, nil), obs)

		_, err := paused.GetToken(context.Background(), "cred", 0)
		if !errors.Is(err, broker.ErrLockTimeout) {
			t.Fatalf("GetToken: %v; want ErrLockTimeout", err)
		}
		if n := c.idp.Stats().RefreshRequests; n != 0 {
			t.Fatalf("the IdP saw %d refresh requests from a holder past its lease; want 0", n)
		}
		if got := obs.outcomes(); !slices.Equal(got, []string{broker.OutcomeAbandoned}) {
			t.Fatalf("outcomes %v; want [abandoned]", got)
		}
		if rec := c.stored("cred"); rec.Generation != 1 || rec.State != broker.StateActive {
			t.Fatalf("record changed: generation %d, state %v", rec.Generation, rec.State)
		}
	})
}

// A holder paused with the IdP's answer in hand until its lease is long
// gone (a GC pause, a stopped process) still stores the successor; the other
// replica, which takes the lease meanwhile, sees the pending refresh and
// does not present the spent refresh token.
func TestStaleHolderStoresItsOutcomeAndOthersWait(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		c := fencingCluster(t, be)
		healthy := c.replica(nil)
		c.credential(healthy, "cred")
		gen0 := c.stored("cred").Generation

		other := make(chan struct{})
		obs := &observer{}
		var cut atomic.Bool
		stale, _ := c.replicaOn(func(s broker.Store) broker.Store {
			return &pausingStore{Store: s, cut: &cut, beforeCommit: func() {
				cut.Store(true)
				select { // stopped with the IdP's answer in hand, until the other replica tried
				case <-other:
				case <-time.After(10 * time.Second):
				}
				cut.Store(false)
			}}
		}, obs)

		staleTok := make(chan broker.Token, 1)
		go func() {
			tok, err := stale.GetToken(context.Background(), "cred", 0)
			if err != nil {
				t.Errorf("stale holder's caller: %v", err)
			}
			staleTok <- tok
		}()
		eventually(t, "the stale holder's IdP call", func() bool { return c.idp.Stats().Refreshes == 1 && cut.Load() })
		time.Sleep(2 * c.cfg.LockTTL) // the stale holder's lease runs out

		if _, err := healthy.GetToken(context.Background(), "cred", 0); !errors.Is(err, broker.ErrStoreUnavailable) {
			t.Fatalf("healthy replica: %v; want ErrStoreUnavailable while the refresh is pending", err)
		}
		if st := c.idp.Stats(); st.RefreshRequests != 1 || st.Reuses != 0 {
			t.Fatalf("IdP saw %d refresh requests and %d reuses; want 1 and 0", st.RefreshRequests, st.Reuses)
		}
		close(other)
		got := <-staleTok
		if c.stored("cred").Generation != gen0+1 {
			t.Fatal("the stale holder's caller got a token before it was stored")
		}
		tok, err := healthy.GetToken(context.Background(), "cred", 0)
		if err != nil || !c.accepted(tok.AccessToken) || tok.AccessToken != got.AccessToken {
			t.Fatalf("healthy replica after the outcome was stored: %v", err)
		}
		if got := c.stored("cred"); got.State != broker.StateActive || got.Pending != nil {
			t.Fatalf("stored state %v, pending %v", got.State, got.Pending)
		}
		if st := c.idp.Stats(); st.RefreshRequests != 1 || st.Reuses != 0 {
			t.Fatalf("IdP saw %d refresh requests and %d reuses; want 1 and 0", st.RefreshRequests, st.Reuses)
		}
		if outcomes := obs.outcomes(); !slices.Equal(outcomes, []string{broker.OutcomeOK}) {
			t.Fatalf("stale holder outcomes %v; want [ok]", outcomes)
		}
	})
}

// A holder whose lease ran out while the IdP answered stores the pair anyway
// when nobody else took the lease: the generation fence proves nobody else
// refreshed, and losing the pair would strand the credential.
func TestLeaseLostDuringCallIsRetakenWhenNobodyElseMoved(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		c := fencingCluster(t, be)
		c.credential(c.replica(nil), "cred")
		once := true
		b, _ := c.replicaOn(pausing(nil, func() {
			if once {
				once = false
				time.Sleep(2 * c.cfg.LockTTL)
			}
		}), nil)
		tok, err := b.GetToken(context.Background(), "cred", 0)
		if err != nil {
			t.Fatal(err)
		}
		if rec := c.stored("cred"); rec.Token.AccessToken != tok.AccessToken || rec.Generation != 2 {
			t.Fatalf("the pair was not stored (generation %d)", rec.Generation)
		}
		if !c.accepted(tok.AccessToken) {
			t.Fatal("token refused")
		}
	})
}

func TestPutWaitsForARefreshInFlight(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		c := newCluster(t, be, fakeidp.Options{Latency: 200 * time.Millisecond})
		a, b := c.replica(nil), c.replica(nil)
		c.credential(a, "cred")

		done := make(chan error, 1)
		go func() {
			_, err := a.GetToken(context.Background(), "cred", 0)
			done <- err
		}()
		eventually(t, "the refresh to start", func() bool { return c.idp.Stats().RefreshRequests == 1 })
		// A configuration change on another replica during the refresh must
		// not drop the rotated refresh token.
		if _, err := b.PutCredential(c.admin, broker.Credential{ID: "cred", TokenURL: c.idp.TokenURL(), ClientID: clientID,
			RefreshAhead: time.Minute}, ""); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		rec := c.stored("cred")
		if rec.RefreshAhead != time.Minute || len(rec.ClientSecrets) != 1 {
			t.Fatalf("put did not apply (ahead %v) or dropped the secret (%d)", rec.RefreshAhead, len(rec.ClientSecrets))
		}
		c.idp.SetLatency(0)
		if _, err := b.RefreshCredential(c.admin, "cred"); err != nil {
			t.Fatalf("refresh after the put: %v", err)
		}
		if st := c.idp.Stats(); st.Reuses != 0 || st.Refreshes != 2 {
			t.Fatalf("%d reuses, %d refreshes; want 0, 2", st.Reuses, st.Refreshes)
		}
	})
}

func TestEnsureCredentialNeverReseedsAnExistingOne(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		c := newCluster(t, be, fakeidp.Options{})
		a, b := c.replica(nil), c.replica(nil)
		seed := c.idp.Seed(clientID)
		cred := broker.Credential{ID: "cred", TokenURL: c.idp.TokenURL(), ClientID: clientID, ClientSecrets: []string{secret}}
		if _, err := a.EnsureCredential(c.admin, cred, seed); err != nil {
			t.Fatal(err)
		}
		if _, err := a.GetToken(context.Background(), "cred", 0); err != nil { // spends the seed
			t.Fatal(err)
		}
		// Another replica starts and loads the same file.
		if _, err := b.EnsureCredential(c.admin, cred, seed); err != nil {
			t.Fatal(err)
		}
		if rec := c.stored("cred"); rec.RefreshToken == seed || rec.Token.AccessToken == "" {
			t.Fatal("EnsureCredential re-seeded an existing credential with a spent token")
		}
		if _, err := b.RefreshCredential(c.admin, "cred"); err != nil {
			t.Fatal(err)
		}
		if st := c.idp.Stats(); st.Reuses != 0 {
			t.Fatalf("%d reuses", st.Reuses)
		}
	})
}

// A replica that read a stale record, and gets the lease only after another
// replica refreshed and let go, must see the refresh under the lease and not
// call the IdP again.
func TestLateLeaseHolderDoesNotRefreshAgain(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		c := newCluster(t, be, fakeidp.Options{})
		fast := c.replica(nil)
		c.credential(fast, "cred")

		blocked, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		late, _ := c.replicaOn(func(s broker.Store) broker.Store {
			return &pausingStore{Store: s, beforeLock: func() {
				once.Do(func() { // first attempt only: it has just read the stale record
					close(blocked)
					<-release
				})
			}}
		}, nil)

		lateTok := make(chan broker.Token, 1)
		go func() {
			tok, err := late.GetToken(context.Background(), "cred", 0)
			if err != nil {
				t.Error(err)
			}
			lateTok <- tok
		}()
		<-blocked
		tok, err := fast.GetToken(context.Background(), "cred", 0) // refreshes, stores, lets go
		if err != nil {
			t.Fatal(err)
		}
		close(release)
		if got := <-lateTok; got.AccessToken != tok.AccessToken {
			t.Fatal("the late replica did not serve the refreshed token")
		}
		if st := c.idp.Stats(); st.RefreshRequests != 1 || st.Reuses != 0 {
			t.Fatalf("%d refresh requests, %d reuses; want 1, 0", st.RefreshRequests, st.Reuses)
		}
	})
}
