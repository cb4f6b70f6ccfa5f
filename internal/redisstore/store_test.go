package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

func recordKey(t testing.TB, id string) string { return prefix(t) + ":{" + id + "}:cred" }
func lockKey(t testing.TB, id string) string   { return prefix(t) + ":{" + id + "}:lock" }

func TestRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	s, _ := newStore(t, srv)
	ctx := ctxT(t)

	if _, err := s.Get(ctx, "a"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Get of a missing credential: %v, want ErrNotFound", err)
	}
	want := newRecord("a")
	if gen := put(t, s, want); gen != 1 {
		t.Fatalf("first Commit: generation %d, want 1", gen)
	}
	got, err := s.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	want.Generation = 1
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Get:\n got %+v\nwant %+v", got, want)
	}

	got.RefreshToken = "next"
	if gen := put(t, s, got); gen != 2 {
		t.Fatalf("second Commit: generation %d, want 2", gen)
	}
	if got, err = s.Get(ctx, "a"); err != nil || got.Generation != 2 || got.RefreshToken != "next" {
		t.Fatalf("Get after second Commit: %+v, %v", got, err)
	}

	put(t, s, newRecord("b"))
	list, err := s.List(ctx, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if ids := idsOf(list); ids != "a b" {
		t.Fatalf("List: %q, want \"a b\"", ids)
	}

	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "a"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatalf("Delete of a missing credential: %v", err)
	}
	if list, err = s.List(ctx, "", 10); err != nil || idsOf(list) != "b" {
		t.Fatalf("List after Delete: %q, %v", idsOf(list), err)
	}
	// A deleted credential starts again at generation 1.
	if gen := put(t, s, newRecord("a")); gen != 1 {
		t.Fatalf("Commit after Delete: generation %d, want 1", gen)
	}
}

func idsOf(recs []*broker.Record) string {
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.ID
	}
	return strings.Join(ids, " ")
}

func TestListPages(t *testing.T) {
	srv := redistest.Start(t)
	s, c := newStore(t, srv)
	ctx := ctxT(t)

	var want []string
	for i := range 25 {
		id := fmt.Sprintf("cred-%02d", i)
		put(t, s, newRecord(id))
		if i%5 == 3 {
			if err := s.Delete(ctx, id); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want = append(want, id)
	}
	// Index entries whose record is gone, as a Delete whose index write
	// failed leaves them, are skipped.
	for _, id := range []string{"cred-00x", "cred-10x", "cred-10y", "cred-10z", "zzz"} {
		if err := c.ZAdd(ctx, prefix(t)+":index", redisZ(id)).Err(); err != nil {
			t.Fatal(err)
		}
	}

	var got []string
	after := ""
	for page := 0; ; page++ {
		if page > 10 {
			t.Fatal("List does not end")
		}
		recs, err := s.List(ctx, after, 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) > 7 {
			t.Fatalf("page of %d records, limit 7", len(recs))
		}
		for _, r := range recs {
			if r.Generation != 1 || r.RefreshToken != refreshSecret {
				t.Fatalf("listed record %s: generation %d", r.ID, r.Generation)
			}
			got = append(got, r.ID)
		}
		if len(recs) < 7 {
			break
		}
		after = recs[len(recs)-1].ID
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("pages:\n got %v\nwant %v", got, want)
	}
	if recs, err := s.List(ctx, "", 0); err != nil || len(recs) != 0 {
		t.Fatalf("List with limit 0: %d records, %v", len(recs), err)
	}
}

func TestCommitWithLostLease(t *testing.T) {
	srv := redistest.Start(t)
	s, c := newStore(t, srv)
	ctx := ctxT(t)
	put(t, s, newRecord("a"))
	before, err := c.HGetAll(ctx, recordKey(t, "a")).Result()
	if err != nil {
		t.Fatal(err)
	}
	unchanged := func(when string) {
		t.Helper()
		after, err := c.HGetAll(ctx, recordKey(t, "a")).Result()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(before, after) {
			t.Fatalf("%s: the record was written", when)
		}
	}
	rec, err := s.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	rec.RefreshToken = "stale"

	// Stolen: the lock expired in Redis (deleted here) and another holder
	// took it, while the old holder's own clock says it still holds it.
	old, err := s.TryLock(ctx, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Del(ctx, lockKey(t, "a")).Err(); err != nil {
		t.Fatal(err)
	}
	thief, err := s.TryLock(ctx, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx, old, rec); !errors.Is(err, broker.ErrLockLost) {
		t.Fatalf("Commit with a stolen lease: %v, want ErrLockLost", err)
	}
	unchanged("stolen lease")
	if err := old.Release(ctx); err != nil {
		t.Fatalf("Release of a lost lease: %v", err)
	}
	if n, err := c.Exists(ctx, lockKey(t, "a")).Result(); err != nil || n != 1 {
		t.Fatalf("releasing the stolen lease removed the thief's lock: %d, %v", n, err)
	}
	if err := thief.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// Expired, with nobody else holding it.
	short, err := s.TryLock(ctx, "a", 30*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "lease past its deadline", func() bool { return time.Now().After(short.Deadline()) })
	if _, err := s.Commit(ctx, short, rec); !errors.Is(err, broker.ErrLockLost) {
		t.Fatalf("Commit with an expired lease: %v, want ErrLockLost", err)
	}
	unchanged("expired lease")

	// Released.
	var l broker.Lease
	eventually(t, "expired lock free in Redis", func() bool {
		l, err = s.TryLock(ctx, "a", time.Minute)
		return err == nil
	})
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx, l, rec); !errors.Is(err, broker.ErrLockLost) {
		t.Fatalf("Commit with a released lease: %v, want ErrLockLost", err)
	}
	unchanged("released lease")

	// A lease of another credential.
	lb, err := s.TryLock(ctx, "b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Release(ctx)
	if _, err := s.Commit(ctx, lb, rec); err == nil || errors.Is(err, broker.ErrConflict) {
		t.Fatalf("Commit of a under the lease of b: %v", err)
	}
	unchanged("lease of another credential")
}

func TestCommitWithStaleGeneration(t *testing.T) {
	srv := redistest.Start(t)
	s, c := newStore(t, srv)
	ctx := ctxT(t)
	put(t, s, newRecord("a"))
	stale, err := s.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, stale.Clone()) // generation 2
	before, err := c.HGetAll(ctx, recordKey(t, "a")).Result()
	if err != nil {
		t.Fatal(err)
	}

	l, err := s.TryLock(ctx, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	stale.RefreshToken = "stale"
	if _, err := s.Commit(ctx, l, stale); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("Commit at generation 1 over 2: %v, want ErrConflict", err)
	}
	fresh := newRecord("a") // generation 0: creating what exists
	if _, err := s.Commit(ctx, l, fresh); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("Commit at generation 0 over 2: %v, want ErrConflict", err)
	}
	after, err := c.HGetAll(ctx, recordKey(t, "a")).Result()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Fatal("a refused Commit wrote the record")
	}

	// A Commit over a deleted record conflicts too.
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	stale.Generation = 2
	if _, err := s.Commit(ctx, l, stale); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("Commit at generation 2 over a deleted record: %v, want ErrConflict", err)
	}
	if _, err := s.Get(ctx, "a"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Get: %v, want ErrNotFound", err)
	}
}

func TestCommitRepeated(t *testing.T) {
	srv := redistest.Start(t)
	s, _ := newStore(t, srv)
	ctx := ctxT(t)
	ev := subscribe(t, s)
	ev.awaitReset()

	l, err := s.TryLock(ctx, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	rec := newRecord("a")
	for i := range 2 { // as after a reply lost to a timeout
		gen, err := s.Commit(ctx, l, rec)
		if err != nil || gen != 1 {
			t.Fatalf("Commit #%d: %d, %v; want 1", i+1, gen, err)
		}
	}
	got, err := s.Get(ctx, "a")
	if err != nil || got.Generation != 1 {
		t.Fatalf("Get: %+v, %v", got, err)
	}
	// The same lease moves on from there; a third repeat of the first
	// Commit then conflicts.
	got.RefreshToken = "next"
	if gen, err := s.Commit(ctx, l, got); err != nil || gen != 2 {
		t.Fatalf("Commit at generation 1: %d, %v", gen, err)
	}
	if _, err := s.Commit(ctx, l, rec); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("repeat of the first Commit after the second: %v, want ErrConflict", err)
	}
	// Another lease may not pass off its Commit as a repeat.
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	l2, err := s.TryLock(ctx, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release(ctx)
	if _, err := s.Commit(ctx, l2, got); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("Commit at generation 1 under a new lease: %v, want ErrConflict", err)
	}
	// One event per applied Commit.
	ev.await("commit 1", func(e broker.Event) bool { return e.ID == "a" && e.Generation != 0 })
	e := ev.await("commit 2", func(e broker.Event) bool { return e.ID == "a" && e.Generation != 0 })
	if e.Generation != 2 {
		t.Fatalf("second commit event has generation %d, want 2", e.Generation)
	}
}

func TestLockExclusiveAcrossStores(t *testing.T) {
	srv := redistest.Start(t)
	s1, _ := newStore(t, srv)
	s2, _ := newStore(t, srv)
	stores := []*redisstore.Store{s1, s2}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Each goroutine tries at least minAttempts times, and goes on up to
	// maxAttempts until the time budget is spent.
	const (
		goroutines  = 16
		minAttempts = 20
		maxAttempts = 200
		budget      = 2 * time.Second
	)
	stopAt := time.Now().Add(budget)
	var holders, overlaps, held, refused atomic.Int64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			s := stores[g%2]
			for i := range maxAttempts {
				if i >= minAttempts && time.Now().After(stopAt) {
					return
				}
				// The TTL outlasts any stall of a loaded machine: an
				// expiry would be a legitimate second holder.
				l, err := s.TryLock(ctx, "a", time.Minute)
				if errors.Is(err, broker.ErrLockHeld) {
					refused.Add(1)
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				if holders.Add(1) > 1 {
					overlaps.Add(1)
				}
				held.Add(1)
				time.Sleep(50 * time.Microsecond)
				holders.Add(-1)
				if err := l.Release(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("held %d times, refused %d times", held.Load(), refused.Load())
	if overlaps.Load() != 0 {
		t.Fatalf("%d times two holders at once", overlaps.Load())
	}
	if held.Load() == 0 || refused.Load() == 0 {
		t.Fatalf("no contention: held %d, refused %d", held.Load(), refused.Load())
	}
}

func TestEventsAcrossStores(t *testing.T) {
	srv := redistest.Start(t)
	writer, c := newStore(t, srv)
	reader, _ := newStore(t, srv)
	ev := subscribe(t, reader)
	ev.awaitReset() // subscribed: nothing is missed from here on
	ctx := ctxT(t)

	l, err := writer.TryLock(ctx, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Commit(ctx, l, newRecord("a")); err != nil {
		t.Fatal(err)
	}
	if e := ev.await("commit", func(e broker.Event) bool { return e.ID == "a" }); e != (broker.Event{ID: "a", Generation: 1}) {
		t.Fatalf("commit event %+v", e)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if e := ev.await("release", func(e broker.Event) bool { return e.ID == "a" }); e != (broker.Event{ID: "a", Released: true}) {
		t.Fatalf("release event %+v", e)
	}
	// Malformed payloads on the channel are ignored.
	for _, p := range []string{"", "x", "c 1", "c x a", "c 0 a", "q 1 a", "c -1 a"} {
		if err := c.Publish(ctx, prefix(t)+":events", p).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := writer.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if e := ev.await("delete", func(e broker.Event) bool { return !e.Reset }); e != (broker.Event{ID: "a", Deleted: true}) {
		t.Fatalf("after malformed payloads, event %+v, want the delete", e)
	}

	// A second subscriber shares the connection; stopping one leaves the
	// other.
	var n atomic.Int64
	stop := reader.Subscribe(func(broker.Event) { n.Add(1) })
	put(t, writer, newRecord("b"))
	ev.await("commit of b", func(e broker.Event) bool { return e.ID == "b" && e.Generation == 1 })
	eventually(t, "second subscriber sees commit and release", func() bool { return n.Load() >= 2 })
	stop()
	seen := n.Load()
	put(t, writer, newRecord("c"))
	ev.await("commit of c", func(e broker.Event) bool { return e.ID == "c" && e.Generation == 1 })
	ev.await("release of c", func(e broker.Event) bool { return e.ID == "c" && e.Released })
	if n.Load() != seen {
		t.Fatal("a stopped subscriber got an event")
	}

	// After Close nothing is delivered.
	if err := reader.Close(); err != nil {
		t.Fatal(err)
	}
	put(t, writer, newRecord("d"))
	select {
	case e := <-ev.ch:
		t.Fatalf("event after Close: %+v", e)
	case <-time.After(100 * time.Millisecond):
	}
	if stop := reader.Subscribe(func(broker.Event) { t.Error("event to a closed Store's subscriber") }); stop == nil {
		t.Fatal("Subscribe on a closed Store returned a nil stop")
	} else {
		stop()
	}
}

func TestEventsResetAfterRestart(t *testing.T) {
	srv := redistest.Start(t)
	writer, _ := newStore(t, srv)
	reader, _ := newStore(t, srv)
	redisstore.SetEventTiming(reader, 200*time.Millisecond, 10*time.Millisecond, 100*time.Millisecond)
	ev := subscribe(t, reader)
	ev.awaitReset()

	for round := range 2 {
		srv.Restart()
		// One Reset when the connection fails, one when the subscription
		// is back; from then on events flow.
		ev.awaitReset()
		ev.awaitReset()
		id := fmt.Sprintf("r%d", round)
		put(t, writer, newRecord(id))
		ev.await("commit after restart", func(e broker.Event) bool { return e.ID == id && e.Generation == 1 })
	}
}

func TestEventsResetAfterPause(t *testing.T) {
	srv := redistest.Start(t)
	reader, _ := newStore(t, srv)
	redisstore.SetEventTiming(reader, 100*time.Millisecond, 10*time.Millisecond, 100*time.Millisecond)
	ev := subscribe(t, reader)
	ev.awaitReset()
	// A frozen Redis does not drop the connection; the listener's PING
	// finds out.
	srv.Pause()
	ev.awaitReset()
	srv.Resume()
	ev.awaitReset() // subscribed again
	writer, _ := newStore(t, srv)
	put(t, writer, newRecord("a"))
	ev.await("commit after resume", func(e broker.Event) bool { return e.ID == "a" && e.Generation == 1 })
}

func TestLeaseExpiry(t *testing.T) {
	srv := redistest.Start(t)
	s1, _ := newStore(t, srv)
	s2, _ := newStore(t, srv)
	ctx := ctxT(t)

	old, err := s1.TryLock(ctx, "a", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.TryLock(ctx, "a", time.Minute); !errors.Is(err, broker.ErrLockHeld) {
		t.Fatalf("TryLock while held: %v, want ErrLockHeld", err)
	}
	var next broker.Lease
	eventually(t, "lock free after the TTL", func() bool {
		next, err = s2.TryLock(ctx, "a", time.Minute)
		if err != nil && !errors.Is(err, broker.ErrLockHeld) {
			t.Fatal(err)
		}
		return err == nil
	})
	defer next.Release(ctx)
	if time.Now().Before(old.Deadline()) {
		t.Fatal("another holder got the lock before the old lease's deadline")
	}
	if _, err := s1.Commit(ctx, old, newRecord("a")); !errors.Is(err, broker.ErrLockLost) {
		t.Fatalf("old holder's Commit: %v, want ErrLockLost", err)
	}
	if gen, err := s2.Commit(ctx, next, newRecord("a")); err != nil || gen != 1 {
		t.Fatalf("new holder's Commit: %d, %v", gen, err)
	}
	if err := old.Release(ctx); err != nil {
		t.Fatalf("Release of an expired lease: %v", err)
	}
	if _, err := s1.TryLock(ctx, "a", time.Minute); !errors.Is(err, broker.ErrLockHeld) {
		t.Fatalf("the old holder's Release freed the new holder's lock: %v", err)
	}
}

type extender interface {
	Extend(ctx context.Context, ttl time.Duration) error
}

func TestLeaseExtend(t *testing.T) {
	srv := redistest.Start(t)
	s, c := newStore(t, srv)
	ctx := ctxT(t)

	l, err := s.TryLock(ctx, "a", 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	first := l.Deadline()
	if err := l.(extender).Extend(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if !l.Deadline().After(first) {
		t.Fatal("Extend did not move the deadline")
	}
	eventually(t, "past the first deadline", func() bool { return time.Now().After(first.Add(100 * time.Millisecond)) })
	if _, err := s.TryLock(ctx, "a", time.Minute); !errors.Is(err, broker.ErrLockHeld) {
		t.Fatalf("TryLock after Extend: %v, want ErrLockHeld", err)
	}
	if gen, err := s.Commit(ctx, l, newRecord("a")); err != nil || gen != 1 {
		t.Fatalf("Commit under an extended lease: %d, %v", gen, err)
	}
	if err := c.Del(ctx, lockKey(t, "a")).Err(); err != nil {
		t.Fatal(err)
	}
	if err := l.(extender).Extend(ctx, time.Minute); !errors.Is(err, broker.ErrLockLost) {
		t.Fatalf("Extend of a lost lease: %v, want ErrLockLost", err)
	}
}

// bounded runs f, failing the test if it outlives its context by far: a
// frozen Redis must not hold a caller past its deadline.
func bounded(t *testing.T, what string, timeout time.Duration, f func(ctx context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout + wait):
		t.Fatalf("%s: still running %v after its deadline", what, wait)
		return nil
	}
}

func TestRedisPaused(t *testing.T) {
	srv := redistest.Start(t)
	s, _ := newStore(t, srv)
	put(t, s, newRecord("a"))
	held, err := s.TryLock(ctxT(t), "b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	srv.Pause()
	calls := map[string]func(ctx context.Context) error{
		"Get":  func(ctx context.Context) error { _, err := s.Get(ctx, "a"); return err },
		"List": func(ctx context.Context) error { _, err := s.List(ctx, "", 10); return err },
		"TryLock": func(ctx context.Context) error {
			_, err := s.TryLock(ctx, "a", time.Minute)
			return err
		},
		"Commit": func(ctx context.Context) error { _, err := s.Commit(ctx, held, newRecord("b")); return err },
		"Delete": func(ctx context.Context) error { return s.Delete(ctx, "c") },
	}
	for name, call := range calls {
		err := bounded(t, name, 200*time.Millisecond, call)
		if err == nil {
			t.Fatalf("%s succeeded against a paused Redis", name)
		}
		for _, sentinel := range []error{broker.ErrNotFound, broker.ErrLockHeld, broker.ErrLockLost, broker.ErrConflict} {
			if errors.Is(err, sentinel) {
				t.Fatalf("%s against a paused Redis: %v", name, err)
			}
		}
		if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "timeout") {
			t.Errorf("%s against a paused Redis: %v, want a deadline error", name, err)
		}
	}
	srv.Resume()

	ctx := ctxT(t)
	rec, err := s.Get(ctx, "a")
	if err != nil || rec.Generation != 1 {
		t.Fatalf("Get after Resume: %v", err)
	}
	// A timed-out Commit has an unknown outcome (its commands may run when
	// Redis wakes up); repeating it under the same lease is safe either way.
	gen, err := s.Commit(ctx, held, newRecord("b"))
	if err != nil || gen != 1 {
		t.Fatalf("repeated Commit after Resume: %d, %v", gen, err)
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRedisKilledAppendOnly(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAppendOnly())
	s, _ := newStore(t, srv)
	for _, id := range []string{"a", "b", "c"} {
		put(t, s, newRecord(id))
	}
	rec := newRecord("a")
	rec.Generation = 1
	rec.RefreshToken = "rotated"
	put(t, s, rec)

	srv.Kill()
	ctx := ctxT(t)
	if _, err := s.Get(ctx, "a"); err == nil || errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Get with Redis killed: %v, want an unavailable error", err)
	}
	srv.Restart()
	var got *broker.Record
	eventually(t, "Get after restart", func() bool {
		var err error
		got, err = s.Get(ctx, "a")
		return err == nil
	})
	if got.Generation != 2 || got.RefreshToken != "rotated" {
		t.Fatalf("after restart: generation %d, refresh token changed: %v", got.Generation, got.RefreshToken != "rotated")
	}
	list, err := s.List(ctx, "", 10)
	if err != nil || idsOf(list) != "a b c" {
		t.Fatalf("List after restart: %q, %v", idsOf(list), err)
	}
}
