package redisstore_test

import (
	"testing"
	"time"

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
