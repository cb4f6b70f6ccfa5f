package redisstore_test

import (
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

// Import creates the records that are missing, sealed, at generation 1,
// indexed, in batches, and leaves existing records alone.
func TestImport(t *testing.T) {
	srv := redistest.Start(t)
	s, c := newStore(t, srv)
	ctx := ctxT(t)
	ev := subscribe(t, s)

	existing := newRecord("c-0001")
	existing.RefreshToken = "kept"
	put(t, s, existing)
	ev.await("commit", func(e broker.Event) bool { return e.ID == "c-0001" })

	// Not loaded yet: the first batch falls back to sending the script.
	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	n := redisstore.ImportBatch + 7
	var recs []*broker.Record
	for i := range n {
		recs = append(recs, newRecord(fmt.Sprintf("c-%04d", i)))
	}
	created, err := s.Import(ctx, recs)
	if err != nil || created != n-1 {
		t.Fatalf("Import = %d, %v; want %d created", created, err, n-1)
	}
	if again, err := s.Import(ctx, recs[:10]); err != nil || again != 0 {
		t.Fatalf("Import again = %d, %v; want 0", again, err)
	}

	got, err := s.Get(ctx, "c-0001")
	if err != nil || got.RefreshToken != "kept" || got.Generation != 1 {
		t.Fatalf("existing record: %+v, %v", got, err)
	}
	got, err = s.Get(ctx, "c-0005")
	if err != nil {
		t.Fatal(err)
	}
	want := newRecord("c-0005")
	want.Generation = 1
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("imported:\n got %+v\nwant %+v", got, want)
	}
	if data, err := c.HGet(ctx, prefix(t)+":{c-0005}:cred", "data").Bytes(); err != nil || data[0] == '{' {
		t.Errorf("stored in plaintext: %q, %v", data[:min(len(data), 20)], err)
	}
	list, err := s.List(ctx, "", n+10)
	if err != nil || len(list) != n {
		t.Fatalf("List: %d records, %v; want %d", len(list), err, n)
	}

	// An imported record refreshes like any other.
	l, err := s.TryLock(ctx, "c-0005", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if gen, err := s.Commit(ctx, l, got); err != nil || gen != 2 {
		t.Fatalf("Commit of an imported record = %d, %v", gen, err)
	}
	_ = l.Release(ctx)
	ev.await("commit of an imported record", func(e broker.Event) bool { return e.ID == "c-0005" && e.Generation == 2 })
	select {
	case e := <-ev.ch:
		if e.ID != "c-0005" {
			t.Errorf("event %+v: Import published", e)
		}
	default:
	}

	bad := []*broker.Record{newRecord("ok"), newRecord("no{pe")}
	if _, err := s.Import(ctx, bad); err == nil {
		t.Error("Import of an invalid id did not fail")
	}
}

// Imports running at once while the script is not loaded yet each create
// what they were given: one that loads the script does not make another's
// pipeline half fail.
func TestImportConcurrentFirstUse(t *testing.T) {
	srv := redistest.Start(t)
	s, c := newStore(t, srv)
	ctx := ctxT(t)
	for round := range 5 {
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		const workers, each = 4, 3 * redisstore.ImportBatch
		var wg sync.WaitGroup
		errs := make([]error, workers)
		counts := make([]int, workers)
		for w := range workers {
			recs := make([]*broker.Record, each)
			for i := range recs {
				recs[i] = newRecord(fmt.Sprintf("r%d-w%d-%05d", round, w, i))
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				counts[w], errs[w] = s.Import(ctx, recs)
			}()
		}
		wg.Wait()
		for w := range workers {
			if errs[w] != nil || counts[w] != each {
				t.Fatalf("round %d, worker %d: created %d, %v; want %d", round, w, counts[w], errs[w], each)
			}
		}
	}
}
