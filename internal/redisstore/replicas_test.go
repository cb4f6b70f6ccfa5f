package redisstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

const ackTimeout = 300 * time.Millisecond

// storedGen returns the generation of id's record on one server, read
// directly (READONLY, for a Cluster replica), or 0.
func storedGen(t *testing.T, srv *redistest.Server, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var get *redis.StringCmd
	_, _ = srv.NewClient(t).Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ReadOnly(ctx) // an error outside a Cluster
		get = p.HGet(ctx, recordKey(t, id), "gen")
		return nil
	})
	g, err := get.Result()
	if errors.Is(err, redis.Nil) {
		return "0"
	}
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// notReplicated checks that err is ErrNotReplicated and not one of the
// broker's lock or conflict errors, which the broker handles differently.
func notReplicated(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, redisstore.ErrNotReplicated) {
		t.Fatalf("%s: %v, want ErrNotReplicated", what, err)
	}
	for _, e := range []error{broker.ErrLockLost, broker.ErrConflict, broker.ErrLockHeld, broker.ErrNotFound} {
		if errors.Is(err, e) {
			t.Fatalf("%s: %v matches %v", what, err, e)
		}
	}
}

// timed runs f and returns how long it took and its error.
func timed(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	return time.Since(start), err
}

func TestCommitWaitsForReplica(t *testing.T) {
	for _, tc := range []struct {
		name string
		acks int
	}{{"one", 1}, {"auto", redisstore.AutoReplicaAcks}} {
		t.Run(tc.name, func(t *testing.T) {
			st := redistest.StartSentinel(t)
			s, _ := storeOn(t, st.URL(), redisstore.Options{MinReplicaAcks: tc.acks, ReplicaAckTimeout: ackTimeout})
			ev := subscribe(t, s)
			ev.awaitReset()
			ctx := ctxT(t)
			master, replica := st.Master(), st.Replica()
			put(t, s, newRecord("a"))
			// Acknowledged: the replica has it as the Commit returns.
			if g := storedGen(t, replica, "a"); g != "1" {
				t.Fatalf("generation on the replica after Commit: %s, want 1", g)
			}

			l, err := s.TryLock(ctx, "a", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Release(ctx)
			rec, err := s.Get(ctx, "a")
			if err != nil {
				t.Fatal(err)
			}
			rec.RefreshToken = "rotated"

			st.StopReplica()
			took, err := timed(func() error { _, err := s.Commit(ctx, l, rec); return err })
			notReplicated(t, "Commit with the replica stopped", err)
			if took < ackTimeout || took > ackTimeout+2*time.Second {
				t.Errorf("Commit with the replica stopped took %v, timeout %v", took, ackTimeout)
			}
			if g := storedGen(t, master, "a"); g != "2" {
				t.Fatalf("generation on the master after ErrNotReplicated: %s, want 2", g)
			}
			// The retry runs on a new connection (the master dropped the
			// Store's), which wrote nothing yet: it must still wait for the
			// first attempt's write.
			if err := master.NewClient(t).Do(ctx, "client", "kill", "type", "normal").Err(); err != nil {
				t.Fatal(err)
			}
			_, err = s.Commit(ctx, l, rec)
			notReplicated(t, "retry on a new connection with the replica stopped", err)

			st.ContReplica()
			gen, err := s.Commit(ctx, l, rec)
			if err != nil || gen != 2 {
				t.Fatalf("retry after ContReplica: %d, %v; want 2", gen, err)
			}
			if g := storedGen(t, replica, "a"); g != "2" {
				t.Fatalf("generation on the replica after the retry: %s, want 2", g)
			}
			got, err := s.Get(ctx, "a")
			if err != nil || got.Generation != 2 || got.RefreshToken != "rotated" {
				t.Fatalf("Get: %+v, %v", got, err)
			}
			// The retries did not write again: one event for generation 2.
			ev.await("commit 1", func(e broker.Event) bool { return e.ID == "a" && e.Generation == 1 })
			ev.await("commit 2", func(e broker.Event) bool { return e.ID == "a" && e.Generation == 2 })
			rec2 := got.Clone()
			if gen, err := s.Commit(ctx, l, rec2); err != nil || gen != 3 {
				t.Fatalf("next Commit: %d, %v", gen, err)
			}
			e := ev.await("commit 3", func(e broker.Event) bool { return e.ID == "a" && e.Generation != 0 })
			if e.Generation != 3 {
				t.Fatalf("event after generation 2 is for %d, want 3 (a retry published again)", e.Generation)
			}

			if tc.acks == redisstore.AutoReplicaAcks {
				// A replica that is gone (not frozen) is not waited for.
				replica.Kill()
				rec3, err := s.Get(ctx, "a")
				if err != nil {
					t.Fatal(err)
				}
				if gen, err := s.Commit(ctx, l, rec3); err != nil || gen != 4 {
					t.Fatalf("auto with the replica killed: %d, %v; want 4", gen, err)
				}
			}
		})
	}
}

// TestCommitReplicaAcksSingleNode: without replicas, auto waits for none and
// costs no command per Commit beyond a cached INFO; a fixed count fails.
func TestCommitReplicaAcksSingleNode(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.NewClient(t)
	auto, err := redisstore.New(c, redisstore.Options{Prefix: prefix(t), Keyring: testKeyring(t), MinReplicaAcks: redisstore.AutoReplicaAcks})
	if err != nil {
		t.Fatal(err)
	}
	n := redistest.CountCommands(c)
	put(t, auto, newRecord("a"))
	if n.Get("info") != 1 || n.Get("wait") != 0 {
		t.Fatalf("first Commit with auto acks: %d INFO, %d WAIT; want 1, 0", n.Get("info"), n.Get("wait"))
	}
	n.Reset()
	put(t, auto, newRecord("b"))
	if n.Total() != 4 || n.Get("info") != 0 {
		t.Fatalf("second Commit with auto acks sent %d commands (%d INFO), want 4 as without", n.Total(), n.Get("info"))
	}

	one, err := redisstore.New(srv.NewClient(t), redisstore.Options{Prefix: prefix(t), Keyring: testKeyring(t),
		MinReplicaAcks: 1, ReplicaAckTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	l, err := one.TryLock(ctx, "c", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	_, err = one.Commit(ctx, l, newRecord("c"))
	notReplicated(t, "Commit with MinReplicaAcks 1 and no replica", err)
	if got, err := one.Get(ctx, "c"); err != nil || got.Generation != 1 {
		t.Fatalf("the unacknowledged Commit is on the master: %v, %v", got, err)
	}
	// Lock and conflict errors still come first.
	stale := newRecord("a")
	if _, err := one.Commit(ctx, l, &broker.Record{Credential: broker.Credential{ID: "c"}, Generation: 5}); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("conflicting Commit: %v, want ErrConflict", err)
	}
	la, err := one.TryLock(ctx, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := one.Commit(ctx, la, stale); !errors.Is(err, broker.ErrLockLost) {
		t.Fatalf("Commit under a released lease: %v, want ErrLockLost", err)
	}

	if _, err := redisstore.New(c, redisstore.Options{AllowPlaintext: true, ReplicaAckTimeout: -time.Second}); err == nil {
		t.Fatal("New accepted a negative ReplicaAckTimeout")
	}
}

// TestClusterWaitOnTheSlotsMaster: in a Cluster, WAIT goes to the master
// that ran the script. With one master's replica frozen, Commits of that
// master's credentials fail with ErrNotReplicated and those of the others
// succeed. A WAIT sent to another master (over a connection that wrote
// nothing) would answer at once and hide the missing acknowledgement.
func TestClusterWaitOnTheSlotsMaster(t *testing.T) {
	cl := redistest.StartCluster(t, 1)
	s, _ := storeOn(t, cl.URL(), redisstore.Options{MinReplicaAcks: 1, ReplicaAckTimeout: ackTimeout})
	ctx := ctxT(t)
	masters := cl.Masters()
	if len(masters) != 3 {
		t.Fatalf("%d masters", len(masters))
	}
	m := masters[0]
	replicas := cl.ReplicasOf(m)
	if len(replicas) != 1 {
		t.Fatalf("%d replicas of %s", len(replicas), m.Addr())
	}
	on, off := idsOn(t, cl, m, 2)
	for _, id := range append(on[:1:1], off...) {
		if _, err := commitWithin(t, s, newRecord(id), 5*time.Second); err != nil {
			t.Fatalf("Commit(%s): %v", id, err)
		}
	}

	replicas[0].Pause()
	l, err := s.TryLock(ctx, on[1], time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	rec := newRecord(on[1])
	_, err = s.Commit(ctx, l, rec)
	notReplicated(t, "Commit on the master whose replica is frozen", err)
	for _, id := range off {
		rec, err := s.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if gen, err := commitWithin(t, s, rec, 5*time.Second); err != nil || gen != 2 {
			t.Fatalf("Commit(%s) on another master: %d, %v", id, gen, err)
		}
	}
	replicas[0].Resume()
	if gen, err := s.Commit(ctx, l, rec); err != nil || gen != 1 {
		t.Fatalf("retry after the replica is back: %d, %v", gen, err)
	}
	if g := storedGen(t, replicas[0], on[1]); g != "1" {
		t.Fatalf("generation on the replica: %s, want 1", g)
	}
}
