package redisstore_test

import (
	"errors"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

func indexKey(t testing.TB) string { return prefix(t) + ":index" }

// breakIndex makes every write to the index fail (WRONGTYPE) while the
// records' keys keep working, as when the index's Cluster master is down.
func breakIndex(t *testing.T, srv *redistest.Server) (repair func()) {
	t.Helper()
	c := srv.NewClient(t)
	ctx := ctxT(t)
	if err := c.Set(ctx, indexKey(t), "not a sorted set", 0).Err(); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if err := c.Del(ctx, indexKey(t)).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCommitSucceedsWhenTheIndexFails(t *testing.T) {
	srv := redistest.Start(t)
	s, _ := newStore(t, srv)
	other, _ := newStore(t, srv)
	redisstore.SetIndexTiming(s, 200*time.Millisecond, 10*time.Millisecond, 50*time.Millisecond)
	ctx := ctxT(t)
	put(t, s, newRecord("old"))

	repair := breakIndex(t, srv)
	for _, id := range []string{"a", "b"} {
		if gen := put(t, s, newRecord(id)); gen != 1 {
			t.Fatalf("Commit(%s) with the index broken: generation %d", id, gen)
		}
		if rec, err := s.Get(ctx, id); err != nil || rec.Generation != 1 {
			t.Fatalf("Get(%s): %v, %v", id, rec, err)
		}
	}
	st := s.IndexStats()
	if st.Pending != 2 || st.Failures == 0 {
		t.Fatalf("IndexStats with the index broken: %+v, want 2 pending and failures", st)
	}
	if _, err := s.List(ctx, "", 10); err == nil {
		t.Fatal("List succeeded on a broken index")
	}

	repair() // the index is gone: the retry rebuilds the entries it holds
	eventually(t, "queued index entries written", func() bool { return s.IndexStats().Pending == 0 })
	if list, err := other.List(ctx, "", 10); err != nil || idsOf(list) != "a b" {
		t.Fatalf("List on another store after the retry: %q, %v; want \"a b\" (old was lost with the index)", idsOf(list), err)
	}
	// The next Commit of a credential puts it back, too.
	rec, err := s.Get(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, rec)
	if list, err := other.List(ctx, "", 10); err != nil || idsOf(list) != "a b old" {
		t.Fatalf("List after old's next Commit: %q, %v", idsOf(list), err)
	}
}

func TestListWritesQueuedIndexEntries(t *testing.T) {
	srv := redistest.Start(t)
	s, _ := newStore(t, srv)
	other, _ := newStore(t, srv)
	// No background retry within the test: only List can write the entry.
	redisstore.SetIndexTiming(s, 200*time.Millisecond, time.Hour, time.Hour)
	ctx := ctxT(t)
	repair := breakIndex(t, srv)
	put(t, s, newRecord("a"))
	repair()
	if list, err := other.List(ctx, "", 10); err != nil || len(list) != 0 {
		t.Fatalf("List on another store before the entry is written: %q, %v", idsOf(list), err)
	}
	if list, err := s.List(ctx, "", 10); err != nil || idsOf(list) != "a" {
		t.Fatalf("List on the committing store: %q, %v; want its own Commit", idsOf(list), err)
	}
	if st := s.IndexStats(); st.Pending != 0 {
		t.Fatalf("IndexStats after List: %+v", st)
	}
	if list, err := other.List(ctx, "", 10); err != nil || idsOf(list) != "a" {
		t.Fatalf("List on another store after: %q, %v", idsOf(list), err)
	}
}

func TestDeleteSucceedsWhenTheIndexFails(t *testing.T) {
	srv := redistest.Start(t)
	s, _ := newStore(t, srv)
	ctx := ctxT(t)
	put(t, s, newRecord("a"))
	put(t, s, newRecord("b"))
	repair := breakIndex(t, srv)
	before := s.IndexStats().Failures
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatalf("Delete with the index broken: %v", err)
	}
	if _, err := s.Get(ctx, "a"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Get after Delete: %v", err)
	}
	if got := s.IndexStats().Failures; got != before+1 {
		t.Fatalf("index failures %d, want %d", got, before+1)
	}
	repair()
	if n, err := s.RepairIndex(ctx); err != nil || n != 1 {
		t.Fatalf("RepairIndex: %d, %v; want 1 (b)", n, err)
	}
	if list, err := s.List(ctx, "", 10); err != nil || idsOf(list) != "b" {
		t.Fatalf("List: %q, %v", idsOf(list), err)
	}
}

func TestRepairIndex(t *testing.T) {
	srv := redistest.Start(t)
	s, c := newStore(t, srv)
	ctx := ctxT(t)
	for _, id := range []string{"a", "b", "c:d", "e"} {
		put(t, s, newRecord(id))
	}
	if err := s.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	// Keys that are not records of this prefix are ignored.
	for _, k := range []string{prefix(t) + "x:{f}:cred", "other:{g}:cred", prefix(t) + ":{h}:lock"} {
		if err := c.HSet(ctx, k, "gen", "1").Err(); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.RepairIndex(ctx); err != nil || n != 0 {
		t.Fatalf("RepairIndex of an intact index: %d, %v", n, err)
	}
	if err := c.Del(ctx, indexKey(t)).Err(); err != nil { // as a master restarted without its data
		t.Fatal(err)
	}
	if list, err := s.List(ctx, "", 10); err != nil || len(list) != 0 {
		t.Fatalf("List without the index: %q, %v", idsOf(list), err)
	}
	if n, err := s.RepairIndex(ctx); err != nil || n != 3 {
		t.Fatalf("RepairIndex: %d, %v; want 3", n, err)
	}
	if list, err := s.List(ctx, "", 10); err != nil || idsOf(list) != "a c:d e" {
		t.Fatalf("List after RepairIndex: %q, %v", idsOf(list), err)
	}
}
