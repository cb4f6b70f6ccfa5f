package broker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// Invariant 3, no loss: once the IdP has rotated the refresh token, its
// successor is stored, whatever happens to the Store, the lease or the
// replica in between; where it provably cannot be, the credential says
// REFRESH_OUTCOME_UNKNOWN. Each test counts the IdP's refresh requests and
// the presentations of spent refresh tokens (Reuses).

var errDown = errors.New("faultystore: store unreachable")

// faultyStore is a replica's view of a shared Store that can be cut off:
// while down, every call fails as an unreachable Redis would. Faults are
// injected around the real store, which keeps its contract.
type faultyStore struct {
	broker.Store
	down atomic.Bool
}

func (s *faultyStore) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.down.Load() {
		return errDown
	}
	return nil
}

func (s *faultyStore) Get(ctx context.Context, id string) (*broker.Record, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	return s.Store.Get(ctx, id)
}

func (s *faultyStore) TryLock(ctx context.Context, id string, ttl time.Duration) (broker.Lease, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	l, err := s.Store.TryLock(ctx, id, ttl)
	if err != nil {
		return nil, err
	}
	return &faultyLease{Lease: l, s: s}, nil
}

func (s *faultyStore) Commit(ctx context.Context, l broker.Lease, rec *broker.Record) (uint64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	return s.Store.Commit(ctx, l.(*faultyLease).Lease, rec)
}

func (s *faultyStore) MarkPending(ctx context.Context, l broker.Lease, rec *broker.Record, p *broker.Pending) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	return s.Store.MarkPending(ctx, l.(*faultyLease).Lease, rec, p)
}

func (s *faultyStore) Settle(ctx context.Context, p *broker.Pending, rec *broker.Record) (uint64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	return s.Store.Settle(ctx, p, rec)
}

type faultyLease struct {
	broker.Lease
	s *faultyStore
}

func (l *faultyLease) Extend(ctx context.Context, ttl time.Duration) error {
	if err := l.s.check(ctx); err != nil {
		return err
	}
	return l.Lease.Extend(ctx, ttl)
}

func (l *faultyLease) Release(ctx context.Context) error {
	if err := l.s.check(ctx); err != nil {
		return err
	}
	return l.Lease.Release(ctx)
}

// memJournal is a Journal in memory that survives the Broker that wrote it,
// as a directory survives a restarted process.
type memJournal struct {
	mu      sync.Mutex // guards entries
	entries map[string]broker.JournalEntry
}

func (j *memJournal) Save(_ context.Context, p *broker.Pending, rec *broker.Record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.entries == nil {
		j.entries = make(map[string]broker.JournalEntry)
	}
	j.entries[p.ID] = broker.JournalEntry{Pending: p, Record: rec.Clone()}
	return nil
}

func (j *memJournal) Remove(_ context.Context, p *broker.Pending) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.entries, p.ID)
	return nil
}

func (j *memJournal) Load(context.Context) ([]broker.JournalEntry, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []broker.JournalEntry
	for _, e := range j.entries {
		out = append(out, e)
	}
	return out, nil
}

func (j *memJournal) len() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.entries)
}

// onRotation returns an IdP option that calls f once the IdP has answered
// its next refresh with a new pair, before the answer is on the wire.
func onRotation(f func()) func(fakeidp.Event) {
	var once sync.Once
	return func(ev fakeidp.Event) {
		if ev.Path == fakeidp.TokenPath && ev.GrantType == "refresh_token" && ev.Status == 200 {
			once.Do(f)
		}
	}
}

// A Store outage right after the IdP answered: the replica keeps the
// successor, callers get STORE_UNAVAILABLE meanwhile, and it is stored once
// the Store answers again, 30 s later, well past the lease.
func TestSuccessorKeptThroughStoreOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		view := &faultyStore{}
		e := newEnv(t, fakeidp.Options{OnEvent: onRotation(func() { view.down.Store(true) })})
		view.Store = e.store
		b := e.brokerOn(view, nil)
		e.credential(e.broker(nil), "cred")
		seed := e.stored("cred").RefreshToken

		_, err := b.GetToken(context.Background(), "cred", 0)
		var be *broker.Error
		if !errors.Is(err, broker.ErrStoreUnavailable) || !errors.As(err, &be) || be.RetryAfter <= 0 {
			t.Fatalf("GetToken with the store down after the IdP answered: %v; want ErrStoreUnavailable with a retry delay", err)
		}
		time.Sleep(30 * time.Second)
		if _, err := b.GetToken(context.Background(), "cred", 0); !errors.Is(err, broker.ErrStoreUnavailable) {
			t.Fatalf("GetToken 30 s into the outage: %v; want ErrStoreUnavailable", err)
		}
		if rec := e.stored("cred"); rec.RefreshToken != seed || rec.Pending == nil {
			t.Fatalf("during the outage: stored refresh token changed %v, pending %v", rec.RefreshToken != seed, rec.Pending)
		}

		view.down.Store(false)
		time.Sleep(5 * time.Second) // the next retry of the write lands
		synctest.Wait()
		rec := e.stored("cred")
		if rec.RefreshToken == seed || rec.Pending != nil || rec.State != broker.StateActive {
			t.Fatalf("after the outage: successor stored %v, pending %v, state %v", rec.RefreshToken != seed, rec.Pending, rec.State)
		}
		tok, err := b.GetToken(context.Background(), "cred", 0)
		if err != nil || tok.AccessToken != rec.Token.AccessToken || !e.accepted(tok.AccessToken) {
			t.Fatalf("after the outage: %v; want the stored, valid token", err)
		}
		e.rotatedOnce()
	})
}

// An IdP that answers after RefreshTimeout: callers are told it is
// unavailable, and the late answer is still read and stored, so the next
// refresh does not present the token the IdP rotated meanwhile.
func TestLateAnswerIsStored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{Latency: 3500 * time.Millisecond})
		e.cfg.RefreshTimeout = 3 * time.Second
		b := e.broker(nil)
		e.credential(b, "cred")
		seed := e.stored("cred").RefreshToken
		start := time.Now()
		_, err := b.GetToken(context.Background(), "cred", 0)
		if !errors.Is(err, broker.ErrIdPUnavailable) {
			t.Fatalf("GetToken: %v; want ErrIdPUnavailable", err)
		}
		if waited := time.Since(start); waited != 3*time.Second {
			t.Fatalf("the caller waited %v; want RefreshTimeout, 3s", waited)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if rec := e.stored("cred"); rec.RefreshToken == seed || rec.State != broker.StateActive {
			t.Fatalf("the late answer was not stored (state %v)", rec.State)
		}
		e.idp.SetLatency(0)
		tok, err := b.GetToken(context.Background(), "cred", 0)
		if err != nil || !e.accepted(tok.AccessToken) {
			t.Fatalf("after the late answer: %v", err)
		}
		e.rotatedOnce()
	})
}

// Another replica that takes the lease while a holder's outcome is still on
// its way (the holder's own Store connection is down) sees the pending
// marker and waits for it instead of presenting the refresh token again.
func TestPendingRefreshHoldsOffOtherReplicas(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		viewA := &faultyStore{}
		e := newEnv(t, fakeidp.Options{OnEvent: onRotation(func() { viewA.down.Store(true) })})
		viewA.Store = e.store
		a := e.brokerOn(viewA, nil)
		b := e.broker(nil)
		e.credential(b, "cred")

		if _, err := a.GetToken(context.Background(), "cred", 0); !errors.Is(err, broker.ErrStoreUnavailable) {
			t.Fatalf("replica A: %v; want ErrStoreUnavailable", err)
		}
		time.Sleep(e.cfg.LockTTL + 20*time.Second) // A's lease is long gone
		_, err := b.GetToken(context.Background(), "cred", 0)
		if !errors.Is(err, broker.ErrStoreUnavailable) || !strings.Contains(err.Error(), "not stored yet") {
			t.Fatalf("replica B while A's refresh is pending: %v; want ErrStoreUnavailable", err)
		}
		if n := e.idp.Stats().RefreshRequests; n != 1 {
			t.Fatalf("replica B presented the refresh token again: %d requests", n)
		}

		viewA.down.Store(false)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		tok, err := b.GetToken(context.Background(), "cred", 0)
		if err != nil || !e.accepted(tok.AccessToken) {
			t.Fatalf("replica B after A stored its outcome: %v", err)
		}
		e.rotatedOnce()
	})
}

// A holder that dies between its IdP call and storing the outcome, without
// a journal: a survivor presents the refresh token once its pending bound
// has passed. If the holder died before the IdP rotated, that saves the
// credential; if it rotated, the credential says REFRESH_OUTCOME_UNKNOWN,
// naming the replica, and nothing more is presented.
func TestDeadHolderTakenOverPastItsBound(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rotated bool // the IdP rotated before the holder died
	}{
		{"died after the IdP rotated", true},
		{"died before the IdP looked", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				dead := &faultyStore{}
				e := newEnv(t, fakeidp.Options{OnEvent: func(ev fakeidp.Event) {
					if ev.Path == fakeidp.TokenPath {
						dead.down.Store(true) // the holder is gone from its first IdP call on
					}
				}})
				e.cfg.RefreshReplyWait = 10 * time.Second
				dead.Store = e.store
				holder := e.brokerOn(dead, nil)
				survivor := e.broker(nil)
				e.credential(survivor, "cred")
				if !tc.rotated {
					e.idp.FailNext(1, 503) // the IdP did not act on the holder's request
				}
				_, _ = holder.GetToken(context.Background(), "cred", 0)

				time.Sleep(e.cfg.LockTTL + time.Second) // the holder's lease has expired
				if _, err := survivor.GetToken(context.Background(), "cred", 0); !errors.Is(err, broker.ErrStoreUnavailable) {
					t.Fatalf("survivor within the bound: %v; want ErrStoreUnavailable", err)
				}
				time.Sleep(e.cfg.RefreshReplyWait + e.cfg.LockTTL) // past the bound
				tok, err := survivor.GetToken(context.Background(), "cred", 0)
				st := e.idp.Stats()
				if st.TokenRequests != 2 {
					t.Fatalf("IdP saw %d token requests; want the holder's and one from the survivor", st.TokenRequests)
				}
				if !tc.rotated {
					if err != nil || !e.accepted(tok.AccessToken) || st.Reuses != 0 {
						t.Fatalf("takeover of an unspent token: %v, %d reuses", err, st.Reuses)
					}
					return
				}
				rec := e.stored("cred")
				if !errors.Is(err, broker.ErrOutcomeUnknown) || !rec.OutcomeUnknown || !strings.Contains(rec.LastError, "died mid-refresh") {
					t.Fatalf("takeover of a spent token: %v, last error %q; want ErrOutcomeUnknown naming the dead replica", err, rec.LastError)
				}
				if _, err := survivor.GetToken(context.Background(), "cred", 0); !errors.Is(err, broker.ErrOutcomeUnknown) {
					t.Fatalf("GetToken again: %v", err)
				}
				if n := e.idp.Stats().TokenRequests; n != 2 {
					t.Fatalf("%d token requests; want no presentation beyond the one unknown", n)
				}
			})
		})
	}
}

// With a journal, a holder killed (or restarted) after the IdP answered
// stores the successor when it starts again: no survivor presents the spent
// token.
func TestJournaledSuccessorStoredAfterRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		view := &faultyStore{}
		e := newEnv(t, fakeidp.Options{OnEvent: onRotation(func() { view.down.Store(true) })})
		view.Store = e.store
		journal := &memJournal{}
		e.cfg.Journal = journal
		first := e.brokerOn(view, nil)
		e.credential(e.broker(nil), "cred")
		seed := e.stored("cred").RefreshToken

		if _, err := first.GetToken(context.Background(), "cred", 0); !errors.Is(err, broker.ErrStoreUnavailable) {
			t.Fatalf("GetToken: %v; want ErrStoreUnavailable", err)
		}
		if journal.len() != 1 {
			t.Fatalf("%d journal entries after the IdP answered; want 1", journal.len())
		}
		if err := first.Close(); err != nil { // the journal keeps the outcome
			t.Fatal(err)
		}
		if journal.len() != 1 || e.stored("cred").RefreshToken != seed {
			t.Fatal("Close dropped the journaled outcome, or stored it through a dead store")
		}

		restarted := e.broker(nil) // same journal, the store answers again
		synctest.Wait()
		rec := e.stored("cred")
		if rec.RefreshToken == seed || rec.Pending != nil || journal.len() != 0 {
			t.Fatalf("after the restart: successor stored %v, pending %v, %d journal entries", rec.RefreshToken != seed, rec.Pending, journal.len())
		}
		tok, err := restarted.GetToken(context.Background(), "cred", 0)
		if err != nil || !e.accepted(tok.AccessToken) {
			t.Fatalf("after the restart: %v", err)
		}
		e.rotatedOnce()
	})
}

// A journaled outcome whose record moved on meanwhile (an operator put a
// new refresh token in) is dropped, not written over the new one.
func TestJournaledOutcomeOfAMovedRecordIsDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		view := &faultyStore{}
		e := newEnv(t, fakeidp.Options{OnEvent: onRotation(func() { view.down.Store(true) })})
		view.Store = e.store
		journal := &memJournal{}
		e.cfg.Journal = journal
		first := e.brokerOn(view, nil)
		e.cfg.Journal = nil
		admin := e.broker(nil)
		e.credential(admin, "cred")
		_, _ = first.GetToken(context.Background(), "cred", 0)
		_ = first.Close()

		reseed := e.idp.Seed(testClientID)
		if _, err := admin.PutCredential(context.Background(), broker.Credential{
			ID: "cred", TokenURL: e.tokenURL, ClientID: testClientID, ClientSecrets: []string{testSecret},
		}, reseed); err != nil {
			t.Fatal(err)
		}
		e.cfg.Journal = journal
		e.broker(nil)
		synctest.Wait()
		if rec := e.stored("cred"); rec.RefreshToken != reseed || journal.len() != 0 {
			t.Fatalf("the journaled outcome overwrote the operator's refresh token (%v) or stayed (%d)", rec.RefreshToken != reseed, journal.len())
		}
	})
}

// A client_credentials grant has no refresh token at stake: a lost answer
// is retried later like any transient failure, never REFRESH_OUTCOME_UNKNOWN.
func TestLostReplyOfClientCredentialsIsTransient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		b := e.broker(nil)
		ctx := context.Background()
		if _, err := b.PutCredential(ctx, broker.Credential{ID: "cc", TokenURL: e.tokenURL, ClientID: testClientID,
			ClientSecrets: []string{testSecret}, GrantType: broker.GrantClientCredentials}, ""); err != nil {
			t.Fatal(err)
		}
		e.idp.LoseReplyNext(1)
		if _, err := b.GetToken(ctx, "cc", 0); !errors.Is(err, broker.ErrIdPUnavailable) {
			t.Fatalf("lost answer: %v; want ErrIdPUnavailable", err)
		}
		time.Sleep(time.Second) // the backoff
		tok, err := b.GetToken(ctx, "cc", 0)
		if err != nil || !e.accepted(tok.AccessToken) {
			t.Fatalf("after the backoff: %v", err)
		}
	})
}

// Shutdown gives up on an outcome it cannot store before its context ends,
// says so, and leaves the pending marker for the other replicas.
func TestShutdownIsBoundedAndSaysWhatItAbandoned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		view := &faultyStore{}
		e := newEnv(t, fakeidp.Options{OnEvent: onRotation(func() { view.down.Store(true) })})
		view.Store = e.store
		b := e.brokerOn(view, nil)
		e.credential(e.broker(nil), "cred")
		_, _ = b.GetToken(context.Background(), "cred", 0)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		start := time.Now()
		err := b.Shutdown(ctx)
		if !errors.Is(err, broker.ErrShuttingDown) || !strings.Contains(err.Error(), "1 refreshes abandoned") {
			t.Fatalf("Shutdown: %v; want ErrShuttingDown naming one abandoned refresh", err)
		}
		if took := time.Since(start); took != 3*time.Second {
			t.Fatalf("Shutdown took %v; want its context's 3s", took)
		}
		if rec := e.stored("cred"); rec.Pending == nil {
			t.Fatal("the pending marker is gone")
		}
	})
}
