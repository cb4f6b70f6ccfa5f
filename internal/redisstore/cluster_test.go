package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

// storeOn returns a sealing Store on a client of url made by NewClient, with
// its options.
func storeOn(t testing.TB, url string, opts redisstore.Options) (*redisstore.Store, redis.UniversalClient) {
	t.Helper()
	c, err := redisstore.NewClient(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	opts.Prefix, opts.Keyring = prefix(t), testKeyring(t)
	s, err := redisstore.New(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, c
}

// commitWithin creates or updates rec under a fresh lease, all within d,
// and returns the new generation. The lease is released in the background
// of the test's end, so a slow release does not count.
func commitWithin(t *testing.T, s *redisstore.Store, rec *broker.Record, d time.Duration) (uint64, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	l, err := s.TryLock(ctx, rec.ID, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = l.Release(rctx)
	}()
	return s.Commit(ctx, l, rec)
}

// idsOn returns n credential ids whose slot is served by master, and n
// whose slot is not.
func idsOn(t *testing.T, cl *redistest.Cluster, master *redistest.Server, n int) (on, off []string) {
	t.Helper()
	for i := 0; len(on) < n || len(off) < n; i++ {
		if i > 1000 {
			t.Fatal("not enough ids found")
		}
		id := fmt.Sprintf("cred-%03d", i)
		// The record's key {id} has the slot of id.
		if cl.MasterOf(id) == master {
			if len(on) < n {
				on = append(on, id)
			}
		} else if len(off) < n {
			off = append(off, id)
		}
	}
	return on, off
}

// TestClusterIndexMasterDown freezes the master that holds the index of a
// real 3-master cluster: credentials on the other masters are still created
// and refreshed, only List (and the index master's own credentials) fail,
// and once it is back the index lists them all.
func TestClusterIndexMasterDown(t *testing.T) {
	cl := redistest.StartCluster(t, 0)
	s, _ := storeOn(t, cl.URL(), redisstore.Options{})
	other, _ := storeOn(t, cl.URL(), redisstore.Options{})
	redisstore.SetIndexTiming(s, 300*time.Millisecond, 20*time.Millisecond, 200*time.Millisecond)
	ctx := ctxT(t)

	indexMaster := cl.MasterOf(indexKey(t))
	on, off := idsOn(t, cl, indexMaster, 4)
	existing, created := off[:2], off[2:]
	for _, id := range []string{existing[0], existing[1], on[0]} {
		if _, err := commitWithin(t, s, newRecord(id), 5*time.Second); err != nil {
			t.Fatalf("Commit(%s): %v", id, err)
		}
	}

	// A ClusterClient loads command information from a random node on its
	// first command; a broker's client has done that long before an outage.
	if _, err := other.List(ctx, "", 1); err != nil {
		t.Fatal(err)
	}

	cl.StopMasterOf(indexKey(t))
	start := time.Now()
	for _, id := range created {
		if gen, err := commitWithin(t, s, newRecord(id), 5*time.Second); err != nil || gen != 1 {
			t.Fatalf("creating %s with the index master down: %d, %v", id, gen, err)
		}
	}
	for _, id := range existing {
		rec, err := s.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		rec.RefreshToken = "rotated"
		if gen, err := commitWithin(t, s, rec, 5*time.Second); err != nil || gen != 2 {
			t.Fatalf("refreshing %s with the index master down: %d, %v", id, gen, err)
		}
	}
	// One index write waits for the frozen master, the others do not.
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("4 commits with the index master down took %v", d)
	}
	for _, id := range off {
		if rec, err := other.Get(ctx, id); err != nil || rec.Generation == 0 {
			t.Fatalf("Get(%s) on another store: %v, %v", id, rec, err)
		}
	}
	if st := s.IndexStats(); st.Pending != len(off) || st.Failures == 0 {
		t.Fatalf("IndexStats with the index master down: %+v, want %d pending", st, len(off))
	}
	// The frozen master's own credentials are unavailable.
	if _, err := commitWithin(t, s, newRecord(on[1]), 500*time.Millisecond); err == nil {
		t.Fatalf("Commit(%s) on the frozen master succeeded", on[1])
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err := other.List(short, "", 100)
	cancel()
	if err == nil {
		t.Fatal("List succeeded with the index master frozen")
	}

	indexMaster.Resume()
	cl.WaitOK()
	eventually(t, "the queued index entries written", func() bool { return s.IndexStats().Pending == 0 })
	want := []string{existing[0], existing[1], created[0], created[1], on[0]}
	if list, err := other.List(ctx, "", 100); err != nil || !sameIDs(list, want) {
		t.Fatalf("List after the index master is back: %q, %v; want %q", idsOf(list), err, want)
	}

	// Killed and restarted without its data, the index master comes back
	// with an empty index; RepairIndex rebuilds it from the records on every
	// master (the killed master's own records are gone with it).
	cl.KillMasterOf(indexKey(t))
	cl.Restart(indexMaster)
	var list []*broker.Record
	eventually(t, "List after the restart", func() bool {
		list, err = other.List(ctx, "", 100)
		return err == nil
	})
	if len(list) != 0 {
		t.Fatalf("List with the index lost: %q", idsOf(list))
	}
	if n, err := other.RepairIndex(ctx); err != nil || n != len(off) {
		t.Fatalf("RepairIndex: %d, %v; want %d", n, err, len(off))
	}
	if list, err := other.List(ctx, "", 100); err != nil || !sameIDs(list, off) {
		t.Fatalf("List after RepairIndex: %q, %v; want %q", idsOf(list), err, off)
	}
	if _, err := other.Get(ctx, on[0]); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Get(%s) from the restarted master: %v, want ErrNotFound", on[0], err)
	}
}

func sameIDs(recs []*broker.Record, want []string) bool {
	got := make(map[string]bool)
	for _, r := range recs {
		got[r.ID] = true
	}
	if len(got) != len(recs) || len(got) != len(want) {
		return false
	}
	for _, id := range want {
		if !got[id] {
			return false
		}
	}
	return true
}
