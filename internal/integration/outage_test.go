package integration_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

func outageCluster(t *testing.T) (*cluster, []*broker.Broker) {
	c := newCluster(t, backends[1], fakeidp.Options{AccessTokenTTL: time.Second}, redistest.WithAppendOnly())
	c.cfg.RefreshTimeout = 500 * time.Millisecond
	c.cfg.LockTTL = time.Second
	c.cfg.LockWait = time.Second
	replicas := []*broker.Broker{c.replica(nil), c.replica(nil)}
	c.credential(replicas[0], "cred")
	for _, b := range replicas {
		if _, err := b.GetToken(context.Background(), "cred", 0); err != nil {
			t.Fatal(err)
		}
	}
	return c, replicas
}

// retryable reports whether err is one of the infrastructure errors a
// caller retries.
func retryable(err error) bool {
	return errors.Is(err, broker.ErrStoreUnavailable) || errors.Is(err, broker.ErrLockTimeout) ||
		errors.Is(err, context.DeadlineExceeded)
}

// checkRecovered checks that every replica serves valid tokens again, that
// the stored credential survived, and that no refresh token was wasted.
func checkRecovered(t *testing.T, c *cluster, replicas []*broker.Broker, gen uint64) {
	t.Helper()
	for i, b := range replicas {
		var tok broker.Token
		eventually(t, "the replica to serve again", func() bool {
			var err error
			tok, err = b.GetToken(context.Background(), "cred", 0)
			return err == nil
		})
		if !c.accepted(tok.AccessToken) {
			t.Fatalf("replica %d serves a refused token", i)
		}
	}
	rec := c.stored("cred")
	if rec.State != broker.StateActive || rec.Generation <= gen {
		t.Fatalf("after the outage: state %v generation %d (was %d)", rec.State, rec.Generation, gen)
	}
	if st := c.idp.Stats(); st.Reuses != 0 || st.Revocations != 0 {
		t.Fatalf("%d reuses, %d revocations", st.Reuses, st.Revocations)
	}
}

func TestRedisDownIsUnavailableAndRecoversWithoutRestart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		down, back func(*redistest.Server)
	}{
		{"stopped", (*redistest.Server).Stop, (*redistest.Server).Restart},
		{"killed with appendonly", (*redistest.Server).Kill, (*redistest.Server).Restart},
		{"paused", (*redistest.Server).Pause, (*redistest.Server).Resume},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, replicas := outageCluster(t)
			gen := c.stored("cred").Generation
			tc.down(c.redis)
			time.Sleep(1100 * time.Millisecond) // the cached tokens expire

			for i, b := range replicas {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				_, err := b.GetToken(ctx, "cred", 0)
				cancel()
				if !retryable(err) {
					t.Fatalf("replica %d with Redis %s: %v; want a retryable error", i, tc.name, err)
				}
			}
			if n := c.idp.Stats().RefreshRequests; n != 1 {
				t.Fatalf("%d refresh requests reached the IdP while Redis was %s; want only the first", n, tc.name)
			}
			tc.back(c.redis)
			checkRecovered(t, c, replicas, gen)
		})
	}
}
