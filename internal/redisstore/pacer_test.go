package redisstore_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

// Three replicas' Pacers on one Redis keep one token host to its rate and
// concurrency together, and a hold set by one stops all.
func TestPacerIsFleetWide(t *testing.T) {
	srv := redistest.Start(t)
	const rate, conc, calls = 5, 2, 12
	var pacers []interface {
		Acquire(context.Context, string, bool) (func(), error)
		Hold(context.Context, string, time.Time) error
	}
	for range 3 {
		s, _ := newStore(t, srv) // same prefix: the same fleet
		pacers = append(pacers, s.Pacer(redisstore.PacerOptions{Rate: rate, MaxConcurrent: conc}))
	}
	ctx := ctxT(t)

	var (
		mu           sync.Mutex
		times        []time.Time
		inFlight     atomic.Int32
		peak         atomic.Int32
		wg           sync.WaitGroup
		next         atomic.Int32
		holdUntil    = time.Now().Add(300 * time.Millisecond)
		beforeHoldOK atomic.Int32
	)
	if err := pacers[0].Hold(ctx, "idp.example", holdUntil); err != nil {
		t.Fatal(err)
	}
	for i := range 9 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := pacers[i%3]
			for next.Add(1) <= calls {
				release, err := p.Acquire(ctx, "idp.example", i%2 == 0)
				if err != nil {
					t.Error(err)
					return
				}
				now := time.Now()
				if now.Before(holdUntil) {
					beforeHoldOK.Add(1)
				}
				n := inFlight.Add(1)
				for {
					if m := peak.Load(); n <= m || peak.CompareAndSwap(m, n) {
						break
					}
				}
				mu.Lock()
				times = append(times, now)
				mu.Unlock()
				time.Sleep(50 * time.Millisecond) // the IdP call
				inFlight.Add(-1)
				release()
			}
		}()
	}
	wg.Wait()
	if n := beforeHoldOK.Load(); n != 0 {
		t.Fatalf("%d calls went through while the host was held off", n)
	}
	if p := peak.Load(); p > conc {
		t.Fatalf("%d calls at once; want at most %d", p, conc)
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	if len(times) != calls {
		t.Fatalf("%d calls made; want %d", len(times), calls)
	}
	for i := range times { // in any one second, at most rate calls (plus one at the edge)
		j := i
		for j < len(times) && times[j].Sub(times[i]) < time.Second {
			j++
		}
		if j-i > rate+1 {
			t.Fatalf("%d calls within one second from call %d; want at most %d", j-i, i, rate+1)
		}
	}
}
