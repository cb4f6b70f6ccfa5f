package integration_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

// Three replicas, 300 concurrent callers, eight refreshes of a 1 s access
// token (however long they take on this machine), the strict IdP: every refresh the IdP saw produced exactly
// one token that was served, none was wasted, no refresh token was
// presented twice, and every caller got a valid token.
func TestReplicasSpendEachRefreshTokenOnce(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		c := newCluster(t, be, fakeidp.Options{AccessTokenTTL: time.Second, Latency: 20 * time.Millisecond})
		replicas := []*broker.Broker{c.replica(nil), c.replica(nil), c.replica(nil)}
		c.credential(replicas[0], "cred")
		gen0 := c.stored("cred").Generation

		var (
			calls, failures atomic.Int64
			mu              sync.Mutex
			served          = map[string]bool{}
		)
		ctx := context.Background()
		// The load runs until the IdP refreshed `rounds` times, however
		// long that takes on this machine; the deadline only stops a hang.
		const rounds = 8
		deadline := time.Now().Add(60 * time.Second)
		done := func() bool { return c.idp.Stats().Refreshes >= rounds || time.Now().After(deadline) }
		var wg sync.WaitGroup
		for i := range 300 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b := replicas[i%3]
				seen := ""
				for n := 0; n < 20000 && !done(); n++ {
					tok, err := b.GetToken(ctx, "cred", 100*time.Millisecond)
					calls.Add(1)
					if err != nil {
						failures.Add(1)
						t.Errorf("replica %d: %v", i%3, err)
						return
					}
					if left := time.Until(tok.Expiry); left < 0 {
						failures.Add(1)
						t.Errorf("served a token that expired %v ago", -left)
						return
					}
					if tok.AccessToken != seen {
						seen = tok.AccessToken
						mu.Lock()
						served[seen] = true
						mu.Unlock()
					}
					time.Sleep(time.Duration(10+rand.IntN(20)) * time.Millisecond)
				}
			}()
		}
		wg.Wait()
		// A refresh-ahead started by one of the last calls may land after
		// every caller stopped: wait for it, so the counts below are final.
		for _, b := range replicas {
			_ = b.Close()
		}

		st := c.idp.Stats()
		final := c.stored("cred")
		gens := final.Generation - gen0
		t.Logf("%d calls, %d IdP refreshes, %d tokens served, %d generations, %d reuses", calls.Load(), st.Refreshes, len(served), gens, st.Reuses)
		if failures.Load() != 0 {
			t.Fatalf("%d calls failed", failures.Load())
		}
		if st.Reuses != 0 || st.Revocations != 0 {
			t.Fatalf("%d reuses, %d revocations; want 0", st.Reuses, st.Revocations)
		}
		if st.Refreshes < rounds {
			t.Fatalf("only %d refreshes before the deadline; want %d", st.Refreshes, rounds)
		}
		// Every refresh made a generation, and every generation's token was
		// served, except perhaps the last one if it landed after the last
		// call: no refresh was wasted.
		unserved := int(gens) - len(served)
		if st.RefreshRequests != st.Refreshes || uint64(st.Refreshes) != gens ||
			unserved < 0 || unserved > 1 || (unserved == 1 && served[final.Token.AccessToken]) {
			t.Fatalf("%d refresh requests, %d refreshes, %d generations, %d distinct tokens served (the last one served: %v); want one token served per refresh",
				st.RefreshRequests, st.Refreshes, gens, len(served), served[final.Token.AccessToken])
		}
		// Every served token was unexpired when served; the current one is
		// also accepted by the resource server.
		if !c.accepted(final.Token.AccessToken) {
			t.Fatal("the current token is refused by the resource server")
		}
	})
}

// Once a replica holds a valid token, serving it costs no Redis command.
func TestSteadyStateGetTokenIssuesNoRedisCommands(t *testing.T) {
	c := newCluster(t, backends[1], fakeidp.Options{})
	var counters []*redistest.Counter
	var replicas []*broker.Broker
	for range 3 {
		b, client := c.replicaOn(func(s broker.Store) broker.Store { return s }, nil)
		replicas = append(replicas, b)
		counters = append(counters, redistest.CountCommands(client))
	}
	c.credential(replicas[0], "cred")
	ctx := context.Background()
	for _, b := range replicas { // warm every replica's cache
		if _, err := b.GetToken(ctx, "cred", 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range counters {
		n.Reset()
	}
	for i := range 3000 {
		if _, err := replicas[i%3].GetToken(ctx, "cred", 0); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range counters {
		if n.Total() != 0 {
			t.Fatalf("replica %d sent %d Redis commands for cached tokens; want 0", i, n.Total())
		}
	}
}

// What an operator does on one replica is seen by the others at once.
func TestAdminChangesReachEveryReplica(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		c := newCluster(t, be, fakeidp.Options{})
		a, b := c.replica(nil), c.replica(nil)
		ctx := context.Background()

		c.credential(a, "cred")
		tokB, err := b.GetToken(ctx, "cred", 0)
		if err != nil {
			t.Fatalf("a credential put on one replica is not served by another: %v", err)
		}
		// Re-seeding on a: b must drop its cached token.
		c.credential(a, "cred")
		eventually(t, "b to serve the re-seeded credential's token", func() bool {
			tok, err := b.GetToken(ctx, "cred", 0)
			return err == nil && tok.AccessToken != tokB.AccessToken
		})
		// A forced refresh on a: b follows.
		tokA, err := a.GetToken(ctx, "cred", 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.RefreshCredential(c.admin, "cred"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "b to serve the refreshed token", func() bool {
			tok, err := b.GetToken(ctx, "cred", 0)
			return err == nil && tok.AccessToken != tokA.AccessToken
		})
		// Delete on a: b stops serving.
		if err := a.DeleteCredential(c.admin, "cred"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "b to forget the deleted credential", func() bool {
			_, err := b.GetToken(ctx, "cred", 0)
			return errors.Is(err, broker.ErrNotFound)
		})
		if st := c.idp.Stats(); st.Reuses != 0 {
			t.Fatalf("%d reuses", st.Reuses)
		}
	})
}

// A credential that needs re-authentication on one replica does so on all.
func TestReauthRequiredReachesEveryReplica(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		c := newCluster(t, be, fakeidp.Options{})
		a, b := c.replica(nil), c.replica(nil)
		c.credential(a, "cred")
		ctx := context.Background()
		tok, err := b.GetToken(ctx, "cred", 0)
		if err != nil {
			t.Fatal(err)
		}
		c.idp.Revoke(tok.AccessToken) // the IdP's admin revokes the family
		if _, err := a.RefreshCredential(c.admin, "cred"); !errors.Is(err, broker.ErrReauthRequired) {
			t.Fatalf("refresh of a revoked family: %v", err)
		}
		eventually(t, "b to report REAUTH_REQUIRED", func() bool {
			_, err := b.GetToken(ctx, "cred", 0)
			return errors.Is(err, broker.ErrReauthRequired)
		})
	})
}

// A lock that stays held past the wait fails with LOCK_TIMEOUT, which is
// retryable and leaves the credential ACTIVE.
func TestLockWaitTimeoutIsRetryable(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be backend) {
		c := newCluster(t, be, fakeidp.Options{})
		c.cfg.LockWait = 200 * time.Millisecond
		b := c.replica(nil)
		c.credential(b, "cred")
		s, _ := c.newStore()
		lease, err := s.TryLock(context.Background(), "cred", 5*time.Second) // a stuck holder
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.GetToken(context.Background(), "cred", 0); !errors.Is(err, broker.ErrLockTimeout) {
			t.Fatalf("GetToken: %v; want ErrLockTimeout", err)
		}
		if rec := c.stored("cred"); rec.State != broker.StateActive || rec.LastError != "" {
			t.Fatalf("state %v, last error %q after a lock timeout", rec.State, rec.LastError)
		}
		if err := lease.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := b.GetToken(context.Background(), "cred", 0); err != nil {
			t.Fatalf("after the holder let go: %v", err)
		}
	})
}
