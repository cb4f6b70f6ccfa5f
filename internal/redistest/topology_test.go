package redistest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

// within returns a context that ends after d and when the test does.
func within(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls f every 20ms until it returns nil, or fails the test when
// ctx ends.
func eventually(t *testing.T, ctx context.Context, what string, f func(ctx context.Context) error) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		attempt, cancel := context.WithTimeout(ctx, time.Second)
		err := f(attempt)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v (last error: %v)", what, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

func storeClient(t *testing.T, url string) redis.UniversalClient {
	t.Helper()
	c, err := redisstore.NewClient(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func mustGet(t *testing.T, ctx context.Context, c redis.Cmdable, key, want string) {
	t.Helper()
	got, err := c.Get(ctx, key).Result()
	if err != nil || got != want {
		t.Fatalf("GET %s: %q, %v; want %q", key, got, err, want)
	}
}

// setAndWait sets key to "1" and then, on the same connection, waits up to
// timeout for one replica to acknowledge it; it returns WAIT's count.
func setAndWait(ctx context.Context, c redis.UniversalClient, key string, timeout time.Duration) (int64, error) {
	var wait *redis.Cmd
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, key, "1", 0)
		wait = p.Do(ctx, "wait", 1, timeout.Milliseconds())
		return nil
	})
	if err != nil {
		return 0, err
	}
	return wait.Int64()
}

func TestSentinelFailover(t *testing.T) {
	start := time.Now()
	s := redistest.StartSentinel(t)
	t.Logf("sentinel set ready in %v", time.Since(start).Round(time.Millisecond))
	ctx := within(t, time.Minute)
	c := storeClient(t, s.URL())
	oldMaster, replica := s.Master(), s.Replica()
	if oldMaster == replica || oldMaster != s.Nodes()[0] {
		t.Fatalf("master %s, replica %s", oldMaster.Addr(), replica.Addr())
	}

	// A write through the sentinel client lands on the master and reaches
	// the replica, which acknowledges it.
	if n, err := setAndWait(ctx, c, "before", 5*time.Second); err != nil || n != 1 {
		t.Fatalf("SET and WAIT 1: %d, %v", n, err)
	}
	mustGet(t, ctx, oldMaster.NewClient(t), "before", "1")
	mustGet(t, ctx, replica.NewClient(t), "before", "1")

	// A stopped replica acknowledges nothing, until it runs again.
	stopped := s.StopReplica()
	if stopped != replica {
		t.Fatalf("StopReplica stopped %s, not the replica %s", stopped.Addr(), replica.Addr())
	}
	if n, err := setAndWait(ctx, c, "unacked", 200*time.Millisecond); err != nil || n != 0 {
		t.Fatalf("SET and WAIT 1 with the replica stopped: %d, %v; want 0", n, err)
	}
	s.ContReplica()
	if n, err := setAndWait(ctx, c, "acked", 5*time.Second); err != nil || n != 1 {
		t.Fatalf("SET and WAIT 1 after ContReplica: %d, %v", n, err)
	}

	// Kill the master: the sentinels promote the replica, and a write
	// through the same client lands there.
	killed := s.KillMaster()
	if killed != oldMaster || killed.PID() != 0 {
		t.Fatalf("KillMaster killed %s (pid %d), want %s", killed.Addr(), killed.PID(), oldMaster.Addr())
	}
	t0 := time.Now()
	newAddr := s.WaitForFailover(ctx)
	t.Logf("failover in %v", time.Since(t0).Round(time.Millisecond))
	if newAddr != replica.Addr() {
		t.Fatalf("new master %s, want the replica %s", newAddr, replica.Addr())
	}
	if s.Master() != replica {
		t.Fatalf("Master() is %s after the failover", s.Master().Addr())
	}
	eventually(t, ctx, "write through the sentinel client after failover", func(ctx context.Context) error {
		return c.Set(ctx, "after", "2", 0).Err()
	})
	direct := replica.NewClient(t)
	mustGet(t, ctx, direct, "after", "2")
	mustGet(t, ctx, direct, "before", "1")

	// The killed master comes back as a replica of the new one and copies
	// it; the set can fail over again.
	s.RestartAsReplica(killed)
	if s.Replica() != killed {
		t.Fatalf("Replica() is %s after RestartAsReplica", s.Replica().Addr())
	}
	back := killed.NewClient(t)
	mustGet(t, ctx, back, "after", "2")
	if role, err := back.Do(ctx, "role").Slice(); err != nil || role[0] != "slave" {
		t.Fatalf("ROLE of the restarted node: %v, %v", role, err)
	}
	s.KillMaster()
	if got := s.WaitForFailover(ctx); got != killed.Addr() {
		t.Fatalf("second failover to %s, want %s", got, killed.Addr())
	}
	eventually(t, ctx, "write after the second failover", func(ctx context.Context) error {
		return c.Set(ctx, "again", "3", 0).Err()
	})
	mustGet(t, ctx, back, "again", "3")
}

// TestSentinelLaggingReplica shows that LagReplica makes replication lag for
// real: a write acknowledged by the master after it is lost when the master
// dies and the replica is promoted.
func TestSentinelLaggingReplica(t *testing.T) {
	s := redistest.StartSentinel(t)
	ctx := within(t, time.Minute)
	c := storeClient(t, s.URL())
	if n, err := setAndWait(ctx, c, "kept", 5*time.Second); err != nil || n != 1 {
		t.Fatalf("SET and WAIT 1: %d, %v", n, err)
	}
	replica := s.LagReplica()
	if err := c.Set(ctx, "lost", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.KillMaster()
	s.ContReplica()
	if got := s.WaitForFailover(ctx); got != replica.Addr() {
		t.Fatalf("failover to %s, want %s", got, replica.Addr())
	}
	direct := replica.NewClient(t)
	mustGet(t, ctx, direct, "kept", "1")
	if err := direct.Get(ctx, "lost").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET lost on the promoted replica: %v, want redis.Nil (the write should have been lost)", err)
	}
}

func TestClusterMasterOutage(t *testing.T) {
	start := time.Now()
	cl := redistest.StartCluster(t, 0)
	t.Logf("cluster ready in %v", time.Since(start).Round(time.Millisecond))
	ctx := within(t, time.Minute)
	masters := cl.Masters()
	if len(masters) != 3 || len(cl.Nodes()) != 3 {
		t.Fatalf("%d masters of %d nodes, want 3 of 3", len(masters), len(cl.Nodes()))
	}
	// One key per master.
	keyOn := make(map[*redistest.Server]string)
	for i := 0; len(keyOn) < 3; i++ {
		if i > 1000 {
			t.Fatal("no key found for every master")
		}
		k := fmt.Sprintf("key-%d", i)
		if m := cl.MasterOf(k); keyOn[m] == "" {
			keyOn[m] = k
		}
	}
	c := storeClient(t, cl.URL())
	for _, k := range keyOn {
		if err := c.Set(ctx, k, "1", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	down := masters[0]
	if cl.StopMasterOf(keyOn[down]) != down {
		t.Fatal("StopMasterOf stopped another master")
	}
	// Once the other nodes flag it as failed (where
	// cluster-require-full-coverage yes would stop the whole cluster), only
	// its slots fail.
	cl.WaitFailed(down)
	for m, k := range keyOn {
		short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		err := c.Set(short, k, "2", 0).Err()
		cancel()
		if m == down && err == nil {
			t.Errorf("SET %s on the stopped master succeeded", k)
		}
		if m != down && err != nil {
			t.Errorf("SET %s on a running master: %v", k, err)
		}
	}
	down.Resume()
	cl.WaitOK()
	eventually(t, ctx, "write to the resumed master", func(ctx context.Context) error {
		return c.Set(ctx, keyOn[down], "3", 0).Err()
	})

	// Killed and restarted: back with its slots (and, without the
	// append-only file, without its data).
	killed := cl.KillMasterOf(keyOn[masters[1]])
	if killed != masters[1] || killed.PID() != 0 {
		t.Fatal("KillMasterOf killed another master")
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	if err := c.Set(short, keyOn[killed], "4", 0).Err(); err == nil {
		t.Error("SET on the killed master succeeded")
	}
	cancel()
	mustGet(t, ctx, c, keyOn[masters[2]], "2")
	cl.Restart(killed)
	if cl.MasterOf(keyOn[killed]) != killed {
		t.Fatal("the restarted master lost its slots")
	}
	eventually(t, ctx, "write to the restarted master", func(ctx context.Context) error {
		return c.Set(ctx, keyOn[killed], "5", 0).Err()
	})
	mustGet(t, ctx, killed.NewClient(t), keyOn[killed], "5")
}
