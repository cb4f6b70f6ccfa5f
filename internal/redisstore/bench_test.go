package redisstore_test

import (
	"slices"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

func BenchmarkGet(b *testing.B) {
	srv := redistest.Start(b)
	s, _ := newStore(b, srv)
	put(b, s, newRecord("a"))
	ctx := ctxT(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Get(ctx, "a"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLockCommitRelease(b *testing.B) {
	srv := redistest.Start(b)
	s, _ := newStore(b, srv)
	rec := newRecord("a")
	ctx := ctxT(b)
	b.ReportAllocs()
	for b.Loop() {
		l, err := s.TryLock(ctx, "a", 10*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if rec.Generation, err = s.Commit(ctx, l, rec); err != nil {
			b.Fatal(err)
		}
		if err := l.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEventLatency measures how long after a Commit starts another
// Store's subscriber sees its event: the floor under a waiter's wake-up.
func BenchmarkEventLatency(b *testing.B) {
	srv := redistest.Start(b)
	writer, _ := newStore(b, srv)
	reader, _ := newStore(b, srv)
	got := make(chan time.Time, 1)
	ready := make(chan struct{}, 1)
	stop := reader.Subscribe(func(ev broker.Event) {
		switch {
		case ev.Reset:
			select {
			case ready <- struct{}{}:
			default:
			}
		case ev.Generation != 0:
			got <- time.Now()
		}
	})
	defer stop()
	select {
	case <-ready: // subscribed
	case <-time.After(wait):
		b.Fatal("not subscribed")
	}
	ctx := ctxT(b)
	rec := newRecord("a")
	l, err := writer.TryLock(ctx, "a", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Release(ctx)

	var lat []time.Duration
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		if rec.Generation, err = writer.Commit(ctx, l, rec); err != nil {
			b.Fatal(err)
		}
		select {
		case at := <-got:
			lat = append(lat, at.Sub(start))
		case <-time.After(wait):
			b.Fatal("event lost")
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
