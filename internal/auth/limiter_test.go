package auth

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// fakeClock is a settable clock for a Limiter.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestLimiter(r rate.Limit, burst int) (*Limiter, *fakeClock) {
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	l := NewLimiter(r, burst)
	l.now = clock.now
	return l, clock
}

func TestLimiterPerClient(t *testing.T) {
	l, clock := newTestLimiter(1, 2) // 1/s, burst 2
	for i := range 2 {
		if ok, d := l.Allow("a"); !ok || d != 0 {
			t.Fatalf("call %d: %v, %v; want allowed within the burst", i, ok, d)
		}
	}
	ok, d := l.Allow("a")
	if ok || d != time.Second {
		t.Fatalf("third call: %v, retry after %v; want refused, retry after 1s", ok, d)
	}
	// A refused call uses nothing: the wait does not grow.
	if ok, d2 := l.Allow("a"); ok || d2 != time.Second {
		t.Fatalf("fourth call: %v, retry after %v; want refused, retry after 1s", ok, d2)
	}
	// Another client has its own bucket.
	if ok, _ := l.Allow("b"); !ok {
		t.Fatal("client b refused because of client a")
	}
	clock.advance(500 * time.Millisecond)
	if ok, d := l.Allow("a"); ok || d != 500*time.Millisecond {
		t.Fatalf("after 0.5s: %v, retry after %v; want refused, retry after 0.5s", ok, d)
	}
	clock.advance(500 * time.Millisecond)
	if ok, _ := l.Allow("a"); !ok {
		t.Fatal("after the retry delay: refused")
	}
	if ok, _ := l.Allow("a"); ok {
		t.Fatal("one token refilled, two calls allowed")
	}
}

func TestLimiterEvictsIdleClients(t *testing.T) {
	l, clock := newTestLimiter(1, 5) // a bucket is full again after 5s; sweeps once a minute
	for i := range 1000 {
		l.Allow(fmt.Sprintf("client-%d", i))
	}
	l.Allow("busy")
	l.Allow("busy")
	if n := len(l.buckets); n != 1001 {
		t.Fatalf("%d buckets; want 1001", n)
	}
	clock.advance(minSweepInterval - time.Second)
	l.Allow("busy") // no sweep yet
	if n := len(l.buckets); n != 1001 {
		t.Fatalf("%d buckets before the sweep interval; want 1001", n)
	}
	clock.advance(time.Second)
	l.Allow("busy")
	if n := len(l.buckets); n != 1 {
		t.Fatalf("%d buckets after the sweep; want only the busy client", n)
	}
	// A client forgotten while idle gets a full bucket, as it would have
	// had anyway.
	for range 5 {
		if ok, _ := l.Allow("client-7"); !ok {
			t.Fatal("a returning idle client did not get its full burst")
		}
	}
	if ok, _ := l.Allow("client-7"); ok {
		t.Fatal("burst exceeded")
	}
}

func TestLimiterKeepsBucketsThatAreNotFull(t *testing.T) {
	// 1 per 10 minutes, burst 3: a bucket takes 30 minutes to refill, longer
	// than the sweep interval, so an emptied bucket must survive sweeps.
	l, clock := newTestLimiter(rate.Every(10*time.Minute), 3)
	for range 3 {
		l.Allow("a")
	}
	clock.advance(29 * time.Minute)
	l.Allow("other") // sweeps
	if ok, _ := l.Allow("a"); !ok {
		t.Fatal("after 29 minutes, two tokens should have refilled")
	}
	l.Allow("a")
	if ok, d := l.Allow("a"); ok || d <= 0 {
		t.Fatalf("%v, %v: the bucket was forgotten before it was full", ok, d)
	}
}

func TestLimiterInf(t *testing.T) {
	l := NewLimiter(rate.Inf, 1)
	for range 100 {
		if ok, d := l.Allow("a"); !ok || d != 0 {
			t.Fatal("rate.Inf refused a call")
		}
	}
	if len(l.buckets) != 0 {
		t.Fatal("rate.Inf keeps buckets")
	}
}

func TestNewLimiterPanics(t *testing.T) {
	for _, tt := range []struct {
		r rate.Limit
		b int
	}{{0, 1}, {-1, 1}, {1, 0}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewLimiter(%v, %d) did not panic", tt.r, tt.b)
				}
			}()
			NewLimiter(tt.r, tt.b)
		}()
	}
}

func TestLimiterConcurrent(t *testing.T) {
	l := NewLimiter(rate.Every(time.Hour), 10)
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := map[string]int{}
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				id := fmt.Sprintf("c%d", (g+i)%4)
				if ok, _ := l.Allow(id); ok {
					mu.Lock()
					allowed[id]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	for id, n := range allowed {
		// The burst, plus at most one token refilled while the test ran.
		if n < 10 || n > 11 {
			t.Errorf("client %s: %d calls allowed; want the burst of 10", id, n)
		}
	}
}

func BenchmarkLimiterAllow(b *testing.B) {
	l := NewLimiter(1e9, 1<<30)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Allow("worker-a")
		}
	})
}
