package broker_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// pausingStore wraps a real Store and pauses its caller at chosen points, as
// a stopped process or a long GC pause would.
type pausingStore struct {
	broker.Store
	afterLock    func()
	beforeCommit func()
}

func (s *pausingStore) TryLock(ctx context.Context, id string, ttl time.Duration) (broker.Lease, error) {
	l, err := s.Store.TryLock(ctx, id, ttl)
	if err == nil && s.afterLock != nil {
		s.afterLock()
	}
	return l, err
}

func (s *pausingStore) Commit(ctx context.Context, l broker.Lease, rec *broker.Record) (uint64, error) {
	if s.beforeCommit != nil {
		s.beforeCommit()
	}
	return s.Store.Commit(ctx, l, rec)
}

func fencingEnv(t *testing.T) *env {
	e := newEnv(t, fakeidp.Options{})
	e.cfg.RefreshTimeout = 200 * time.Millisecond
	e.cfg.LockTTL = 300 * time.Millisecond
	e.cfg.PollInterval = 20 * time.Millisecond
	return e
}

func TestHolderThatLostItsLeaseDoesNotCallTheIdP(t *testing.T) {
	e := fencingEnv(t)
	e.credential(e.broker(nil), "cred")
	obs := &observer{}
	paused := e.brokerOn(&pausingStore{Store: e.store, afterLock: func() {
		time.Sleep(2 * e.cfg.LockTTL) // paused right after obtaining the lease
	}}, obs)

	_, err := paused.GetToken(context.Background(), "cred", 0)
	if !errors.Is(err, broker.ErrLockTimeout) {
		t.Fatalf("GetToken: %v; want ErrLockTimeout", err)
	}
	if n := e.idp.Stats().RefreshRequests; n != 0 {
		t.Fatalf("the IdP saw %d refresh requests from a holder past its lease; want 0", n)
	}
	if got := obs.outcomes(); !slices.Equal(got, []string{broker.OutcomeAbandoned}) {
		t.Fatalf("outcomes %v; want [abandoned]", got)
	}
	if rec := e.stored("cred"); rec.Generation != 1 || rec.State != broker.StateActive {
		t.Fatalf("record changed: generation %d, state %v", rec.Generation, rec.State)
	}
}

func TestStaleHolderCannotOverwriteNewerState(t *testing.T) {
	e := fencingEnv(t)
	healthy := e.broker(nil)
	e.credential(healthy, "cred")
	gen0 := e.stored("cred").Generation

	other := make(chan struct{})
	obs := &observer{}
	stale := e.brokerOn(&pausingStore{Store: e.store, beforeCommit: func() {
		select { // paused with the IdP's answer in hand, until the other replica moved on
		case <-other:
		case <-time.After(10 * time.Second):
		}
	}}, obs)

	staleErr := make(chan error, 1)
	go func() {
		_, err := stale.GetToken(context.Background(), "cred", 0)
		staleErr <- err
	}()
	eventually(t, "the stale holder's IdP call", func() bool { return e.idp.Stats().Refreshes == 1 })

	// The healthy replica waits out the lease and refreshes from the stored
	// (now spent) refresh token: the strict IdP revokes the family.
	if _, err := healthy.GetToken(context.Background(), "cred", 0); !errors.Is(err, broker.ErrReauthRequired) {
		t.Fatalf("healthy replica: %v; want ErrReauthRequired", err)
	}
	newer := e.stored("cred")
	close(other)

	if err := <-staleErr; !errors.Is(err, broker.ErrLockTimeout) {
		t.Fatalf("stale holder: %v; want ErrLockTimeout", err)
	}
	got := e.stored("cred")
	if got.Generation != newer.Generation || got.State != broker.StateReauthRequired || got.Generation != gen0+1 {
		t.Fatalf("stored generation %d state %v; want the healthy replica's %d REAUTH_REQUIRED", got.Generation, got.State, newer.Generation)
	}
	if outcomes := obs.outcomes(); !slices.Equal(outcomes, []string{broker.OutcomeLost}) {
		t.Fatalf("stale holder outcomes %v; want [lost]", outcomes)
	}
}

// A holder whose lease ran out while the IdP answered stores the pair anyway
// when nobody else took the lease: the generation fence proves nobody else
// refreshed, and losing the pair would strand the credential.
func TestLeaseLostDuringCallIsRetakenWhenNobodyElseMoved(t *testing.T) {
	e := fencingEnv(t)
	e.credential(e.broker(nil), "cred")
	once := true
	b := e.brokerOn(&pausingStore{Store: e.store, beforeCommit: func() {
		if once {
			once = false
			time.Sleep(2 * e.cfg.LockTTL)
		}
	}}, nil)
	tok, err := b.GetToken(context.Background(), "cred", 0)
	if err != nil {
		t.Fatal(err)
	}
	if rec := e.stored("cred"); rec.Token.AccessToken != tok.AccessToken || rec.Generation != 2 {
		t.Fatalf("the pair was not stored (generation %d)", rec.Generation)
	}
	if !e.accepted(tok.AccessToken) {
		t.Fatal("token refused")
	}
}

func TestPutWaitsForARefreshInFlight(t *testing.T) {
	e := newEnv(t, fakeidp.Options{Latency: 200 * time.Millisecond})
	b := e.broker(nil)
	e.credential(b, "cred")
	ctx := context.Background()

	done := make(chan error, 1)
	go func() {
		_, err := b.GetToken(ctx, "cred", 0)
		done <- err
	}()
	eventually(t, "the refresh to start", func() bool { return e.idp.Stats().RefreshRequests == 1 })
	// A configuration change during the refresh must not drop the rotated
	// refresh token.
	if _, err := b.PutCredential(ctx, broker.Credential{ID: "cred", TokenURL: e.idp.TokenURL(), ClientID: testClientID,
		Scopes: nil, RefreshAhead: time.Minute}, ""); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	rec := e.stored("cred")
	if rec.RefreshAhead != time.Minute || len(rec.ClientSecrets) != 1 {
		t.Fatalf("put did not apply (ahead %v) or dropped the secret (%d)", rec.RefreshAhead, len(rec.ClientSecrets))
	}
	e.idp.SetLatency(0)
	if _, err := b.RefreshCredential(ctx, "cred"); err != nil {
		t.Fatalf("refresh after the put: %v", err)
	}
	if st := e.idp.Stats(); st.Reuses != 0 || st.Refreshes != 2 {
		t.Fatalf("%d reuses, %d refreshes; want 0, 2", st.Reuses, st.Refreshes)
	}
}

func TestEnsureCredentialNeverReseedsAnExistingOne(t *testing.T) {
	e := newEnv(t, fakeidp.Options{})
	b := e.broker(nil)
	ctx := context.Background()
	seed := e.idp.Seed(testClientID)
	c := broker.Credential{ID: "cred", TokenURL: e.idp.TokenURL(), ClientID: testClientID, ClientSecrets: []string{testSecret}}
	if _, err := b.EnsureCredential(ctx, c, seed); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetToken(ctx, "cred", 0); err != nil { // spends the seed
		t.Fatal(err)
	}
	// A restart loads the same file again.
	c.Scopes = []string{}
	if _, err := b.EnsureCredential(ctx, c, seed); err != nil {
		t.Fatal(err)
	}
	if rec := e.stored("cred"); rec.RefreshToken == seed || rec.Token.AccessToken == "" {
		t.Fatal("EnsureCredential re-seeded an existing credential with a spent token")
	}
	if _, err := b.RefreshCredential(ctx, "cred"); err != nil {
		t.Fatal(err)
	}
	if st := e.idp.Stats(); st.Reuses != 0 {
		t.Fatalf("%d reuses", st.Reuses)
	}
}
