// Package storetest checks that a broker.Store keeps the contract the
// broker's no-loss guarantees rest on: pending markers written under the
// lease, and the outcome of a pending refresh settled, fenced on its
// generation and marker, whether or not the lease is still held. Each Store
// runs Contract against a real instance of itself.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Contract runs the pending-refresh checks against stores made by newStore,
// one per check, each empty. Stores from one call share nothing.
func Contract(t *testing.T, newStore func(t *testing.T) broker.Store) {
	t.Run("mark and settle", func(t *testing.T) { markAndSettle(t, newStore(t)) })
	t.Run("settle without the lease", func(t *testing.T) { settleWithoutLease(t, newStore(t)) })
	t.Run("settle fenced", func(t *testing.T) { settleFenced(t, newStore(t)) })
	t.Run("commit clears the marker", func(t *testing.T) { commitClears(t, newStore(t)) })
	t.Run("extend", func(t *testing.T) { extend(t, newStore(t)) })
	t.Run("mark announces", func(t *testing.T) { markAnnounces(t, newStore(t)) })
	t.Run("flows", func(t *testing.T) { flows(t, newStore(t)) })
	t.Run("change log", func(t *testing.T) { changeLog(t, newStore(t)) })
	t.Run("cursors", func(t *testing.T) { cursors(t, newStore(t)) })
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// seed commits a fresh record of id and returns it as stored.
func seed(t *testing.T, s broker.Store, id string) *broker.Record {
	t.Helper()
	ctx := ctxT(t)
	l, err := s.TryLock(ctx, id, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	rec := &broker.Record{
		Credential:   broker.Credential{ID: id, TokenURL: "https://idp.example/token", ClientID: "c"},
		RefreshToken: "rt-0",
		State:        broker.StateActive,
	}
	gen, err := s.Commit(ctx, l, rec)
	if err != nil {
		t.Fatal(err)
	}
	rec.Generation = gen
	return rec
}

func get(t *testing.T, s broker.Store, id string) *broker.Record {
	t.Helper()
	rec, err := s.Get(ctxT(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func marker(id string) *broker.Pending {
	return &broker.Pending{ID: id, Holder: "replica-a", SentAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Journaled: true}
}

func markAndSettle(t *testing.T, s broker.Store) {
	ctx := ctxT(t)
	rec := seed(t, s, "a")
	l, err := s.TryLock(ctx, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	p := marker("p1")
	if err := s.MarkPending(ctx, l, rec, p); err != nil {
		t.Fatalf("MarkPending: %v", err)
	}
	got := get(t, s, "a")
	if got.Pending == nil || *got.Pending != *p {
		t.Fatalf("Get after MarkPending: pending %+v, want %+v", got.Pending, p)
	}
	if got.Generation != rec.Generation || got.RefreshToken != "rt-0" {
		t.Fatalf("MarkPending changed the record: generation %d, refresh token %q", got.Generation, got.RefreshToken)
	}
	next := got.Clone()
	next.Pending = nil
	next.RefreshToken = "rt-1"
	for i := range 2 { // the second as after a reply lost to a timeout
		gen, err := s.Settle(ctx, p, next)
		if err != nil || gen != rec.Generation+1 {
			t.Fatalf("Settle #%d: %d, %v; want %d", i+1, gen, err, rec.Generation+1)
		}
	}
	got = get(t, s, "a")
	if got.Pending != nil || got.RefreshToken != "rt-1" || got.Generation != rec.Generation+1 {
		t.Fatalf("after Settle: pending %+v, refresh token %q, generation %d", got.Pending, got.RefreshToken, got.Generation)
	}
	// The marker is gone: settling with it again, at the new generation, is
	// refused.
	again := got.Clone()
	if _, err := s.Settle(ctx, p, again); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("Settle with a settled marker at the next generation: %v, want ErrConflict", err)
	}
}

func settleWithoutLease(t *testing.T, s broker.Store) {
	ctx := ctxT(t)
	rec := seed(t, s, "a")
	l, err := s.TryLock(ctx, "a", 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	p := marker("p1")
	if err := s.MarkPending(ctx, l, rec, p); err != nil {
		t.Fatal(err)
	}
	// The lease runs out (a Store outage longer than its TTL) and another
	// holder takes it: the marker still lets the first one store its
	// outcome.
	other := waitLock(t, s, "a")
	defer other.Release(ctx)
	next := rec.Clone()
	next.RefreshToken = "rt-1"
	if _, err := s.Settle(ctx, p, next); err != nil {
		t.Fatalf("Settle after the lease was lost: %v", err)
	}
	if got := get(t, s, "a"); got.RefreshToken != "rt-1" {
		t.Fatalf("refresh token %q after Settle, want rt-1", got.RefreshToken)
	}
}

// waitLock takes the lease of id once it is free.
func waitLock(t *testing.T, s broker.Store, id string) broker.Lease {
	t.Helper()
	ctx := ctxT(t)
	for {
		l, err := s.TryLock(ctx, id, time.Minute)
		if err == nil {
			return l
		}
		if !errors.Is(err, broker.ErrLockHeld) {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatal("the lease was not released in time")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func settleFenced(t *testing.T, s broker.Store) {
	ctx := ctxT(t)
	rec := seed(t, s, "a")
	next := rec.Clone()
	next.RefreshToken = "rt-1"
	if _, err := s.Settle(ctx, marker("none"), next); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("Settle without a marker: %v, want ErrConflict", err)
	}
	l, err := s.TryLock(ctx, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	if err := s.MarkPending(ctx, l, rec, marker("p1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Settle(ctx, marker("p2"), next); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("Settle with another marker: %v, want ErrConflict", err)
	}
	stale := next.Clone()
	stale.Generation--
	if _, err := s.Settle(ctx, marker("p1"), stale); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("Settle at another generation: %v, want ErrConflict", err)
	}
	old := rec.Clone()
	old.Generation = rec.Generation + 5
	if err := s.MarkPending(ctx, l, old, marker("p3")); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("MarkPending at another generation: %v, want ErrConflict", err)
	}
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Settle(ctx, marker("p1"), next); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("Settle of a deleted record: %v, want ErrConflict", err)
	}
	if _, err := s.Get(ctx, "a"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Get after a refused Settle of a deleted record: %v, want ErrNotFound", err)
	}
}

func commitClears(t *testing.T, s broker.Store) {
	ctx := ctxT(t)
	rec := seed(t, s, "a")
	l, err := s.TryLock(ctx, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	p := marker("p1")
	if err := s.MarkPending(ctx, l, rec, p); err != nil {
		t.Fatal(err)
	}
	reseed := rec.Clone()
	reseed.RefreshToken = "rt-operator"
	if _, err := s.Commit(ctx, l, reseed); err != nil {
		t.Fatal(err)
	}
	got := get(t, s, "a")
	if got.Pending != nil || got.RefreshToken != "rt-operator" {
		t.Fatalf("after Commit: pending %+v, refresh token %q", got.Pending, got.RefreshToken)
	}
	// The outcome of the overridden refresh is refused.
	late := rec.Clone()
	late.Generation = got.Generation
	late.RefreshToken = "rt-late"
	if _, err := s.Settle(ctx, p, late); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("Settle after an operator's Commit: %v, want ErrConflict", err)
	}
}

func extend(t *testing.T, s broker.Store) {
	ctx := ctxT(t)
	l, err := s.TryLock(ctx, "a", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	before := l.Deadline()
	if err := l.Extend(ctx, time.Minute); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if !l.Deadline().After(before.Add(30 * time.Second)) {
		t.Fatalf("Extend moved the deadline from %v to %v", before, l.Deadline())
	}
	if _, err := s.TryLock(ctx, "a", time.Minute); !errors.Is(err, broker.ErrLockHeld) {
		t.Fatalf("TryLock of an extended lease: %v, want ErrLockHeld", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Extend(ctx, time.Minute); !errors.Is(err, broker.ErrLockLost) {
		t.Fatalf("Extend after Release: %v, want ErrLockLost", err)
	}
}

// markAnnounces checks that MarkPending publishes Event{ID, PendingFrom}:
// replicas of a credential whose IdP revokes the previous access token stop
// handing that token out on it.
func markAnnounces(t *testing.T, s broker.Store) {
	ctx := ctxT(t)
	rec := seed(t, s, "a")
	events := make(chan broker.Event, 256)
	stop := s.Subscribe(func(ev broker.Event) {
		select {
		case events <- ev:
		default:
		}
	})
	defer stop()
	// A Store may deliver events only once its subscription is live:
	// commit probes until one is seen.
	live := false
	for i := 0; !live; i++ {
		probe := fmt.Sprintf("probe-%d", i)
		seed(t, s, probe)
		timeout := time.After(100 * time.Millisecond)
		for waiting := true; waiting; {
			select {
			case ev := <-events:
				live = live || ev.ID == probe
				waiting = !live
			case <-timeout:
				waiting = false
			case <-ctx.Done():
				t.Fatal("no event from the Store")
			}
		}
	}
	l, err := s.TryLock(ctx, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	if err := s.MarkPending(ctx, l, rec, marker("p1")); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case ev := <-events:
			if ev.ID != "a" {
				continue
			}
			if want := (broker.Event{ID: "a", PendingFrom: rec.Generation}); ev != want {
				t.Fatalf("event after MarkPending: %+v, want %+v", ev, want)
			}
			return
		case <-ctx.Done():
			t.Fatal("MarkPending published no event")
		}
	}
}

// flows checks the authorization code flows: saved once, taken once,
// gone when expired.
func flows(t *testing.T, s broker.Store) {
	ctx := ctxT(t)
	f := &broker.CodeFlow{CredentialID: "a", FlowID: "f1", Verifier: "v-secret", RedirectURL: "https://b.example/oauth2/callback",
		Scopes: []string{"x", "y"}, StartedBy: "ops", ExpiresAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	if err := s.SaveFlow(ctx, "state-1", f, time.Minute); err != nil {
		t.Fatalf("SaveFlow: %v", err)
	}
	if err := s.SaveFlow(ctx, "state-1", f, time.Minute); !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("SaveFlow of a saved state: %v, want ErrConflict", err)
	}
	if _, err := s.TakeFlow(ctx, "state-2"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("TakeFlow of an unknown state: %v, want ErrNotFound", err)
	}
	got, err := s.TakeFlow(ctx, "state-1")
	if err != nil {
		t.Fatalf("TakeFlow: %v", err)
	}
	if got.CredentialID != f.CredentialID || got.FlowID != f.FlowID || got.Verifier != f.Verifier || got.RedirectURL != f.RedirectURL ||
		len(got.Scopes) != 2 || got.StartedBy != f.StartedBy || !got.ExpiresAt.Equal(f.ExpiresAt) {
		t.Fatalf("TakeFlow = %+v, want %+v", got, f)
	}
	if _, err := s.TakeFlow(ctx, "state-1"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("TakeFlow of a taken state: %v, want ErrNotFound", err)
	}
	// Expiry is the Store's clock (Redis's TTL): wait it out.
	if err := s.SaveFlow(ctx, "state-3", f, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := s.TakeFlow(ctx, "state-3"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("TakeFlow of an expired state: %v, want ErrNotFound", err)
	}
}

// changeLog checks the change log: numbered in order from 1, read after a
// number, announced by an Event, and a read after a number it does not hold
// refused.
func changeLog(t *testing.T, s broker.Store) {
	ctx := ctxT(t)
	if n, err := s.LastChange(ctx); err != nil || n != 0 {
		t.Fatalf("LastChange of an empty log = %d, %v", n, err)
	}
	if chs, err := s.ReadChanges(ctx, 0, 10); err != nil || len(chs) != 0 {
		t.Fatalf("ReadChanges of an empty log = %v, %v", chs, err)
	}
	events := make(chan broker.Event, 16)
	stop := s.Subscribe(func(ev broker.Event) {
		if ev.Change > 0 {
			events <- ev
		}
	})
	defer stop()
	// A Store that announces its subscription (Reset) may lose events sent
	// before it is live: append until one is heard.
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var appended []uint64
	for i := 0; ; i++ {
		c := &broker.Change{CredentialID: "a", Kind: broker.ChangeReauthRequired, State: broker.StateReauthRequired,
			PrevState: broker.StateActive, Detail: "invalid_grant", Generation: uint64(i + 1), Time: t0, Actor: "ops", Replica: "r1"}
		n, err := s.AppendChange(ctx, c)
		if err != nil {
			t.Fatalf("AppendChange: %v", err)
		}
		appended = append(appended, n)
		select {
		case ev := <-events:
			if ev.ID != "a" || ev.Change == 0 {
				t.Fatalf("event %+v", ev)
			}
		case <-time.After(100 * time.Millisecond):
			if i < 50 {
				continue
			}
			t.Fatal("no event for 50 appended changes")
		}
		break
	}
	for i, n := range appended {
		if n != uint64(i+1) {
			t.Fatalf("numbers %v, want 1, 2, ...", appended)
		}
	}
	for range 2 {
		if _, err := s.AppendChange(ctx, &broker.Change{CredentialID: "b", Kind: broker.ChangeDeleted, Time: t0}); err != nil {
			t.Fatal(err)
		}
	}
	last := uint64(len(appended) + 2)
	if n, err := s.LastChange(ctx); err != nil || n != last {
		t.Fatalf("LastChange = %d, %v; want %d", n, err, last)
	}
	all, err := s.ReadChanges(ctx, 0, 1000)
	if err != nil || uint64(len(all)) != last {
		t.Fatalf("ReadChanges(0) = %d changes, %v; want %d", len(all), err, last)
	}
	first := all[0]
	if first.Seq != 1 || first.CredentialID != "a" || first.Kind != broker.ChangeReauthRequired || first.State != broker.StateReauthRequired ||
		first.PrevState != broker.StateActive || first.Detail != "invalid_grant" || first.Generation != 1 || !first.Time.Equal(t0) ||
		first.Actor != "ops" || first.Replica != "r1" {
		t.Fatalf("first change %+v", first)
	}
	for i, c := range all {
		if c.Seq != uint64(i+1) {
			t.Fatalf("change %d has number %d", i, c.Seq)
		}
	}
	tail, err := s.ReadChanges(ctx, last-1, 10)
	if err != nil || len(tail) != 1 || tail[0].Seq != last || tail[0].CredentialID != "b" {
		t.Fatalf("ReadChanges(last-1) = %v, %v", tail, err)
	}
	if page, err := s.ReadChanges(ctx, 0, 2); err != nil || len(page) != 2 || page[1].Seq != 2 {
		t.Fatalf("ReadChanges(0, limit 2) = %v, %v", page, err)
	}
	if none, err := s.ReadChanges(ctx, last, 10); err != nil || len(none) != 0 {
		t.Fatalf("ReadChanges(last) = %v, %v", none, err)
	}
	if _, err := s.ReadChanges(ctx, last+1, 10); !errors.Is(err, broker.ErrChangesGone) {
		t.Fatalf("ReadChanges beyond the last: %v, want ErrChangesGone", err)
	}
}

// cursors checks the change log consumers' cursors: saved only under a
// held lease of the same name.
func cursors(t *testing.T, s broker.Store) {
	ctx := ctxT(t)
	if _, ok, err := s.LoadCursor(ctx, "webhook.a"); err != nil || ok {
		t.Fatalf("LoadCursor of a new name: %v, %v", ok, err)
	}
	l, err := s.TryLock(ctx, "webhook.a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SaveCursor(ctx, l, "webhook.a", 42); err != nil {
		t.Fatalf("SaveCursor: %v", err)
	}
	if pos, ok, err := s.LoadCursor(ctx, "webhook.a"); err != nil || !ok || pos != 42 {
		t.Fatalf("LoadCursor = %d, %v, %v; want 42", pos, ok, err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveCursor(ctx, l, "webhook.a", 43); !errors.Is(err, broker.ErrLockLost) {
		t.Fatalf("SaveCursor after Release: %v, want ErrLockLost", err)
	}
	if pos, _, _ := s.LoadCursor(ctx, "webhook.a"); pos != 42 {
		t.Fatalf("a refused SaveCursor moved the cursor to %d", pos)
	}
}
