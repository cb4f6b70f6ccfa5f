package memstore

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Pacer is the broker.Pacer of dev mode: it paces the one Broker of the
// process, per token host, with at most MaxConcurrent calls at once and
// Rate calls per second (golang.org/x/time/rate), and holds a host off as
// its IdP asked. The zero value paces nothing.
type Pacer struct {
	Rate          float64 // calls per second per host; 0: no limit
	MaxConcurrent int     // calls at once per host; 0: no limit

	mu    sync.Mutex // guards hosts
	hosts map[string]*hostPace
}

var _ broker.Pacer = (*Pacer)(nil)

type hostPace struct {
	limiter *rate.Limiter // nil without a Rate
	slots   chan struct{} // nil without a MaxConcurrent
	mu      sync.Mutex    // guards until
	until   time.Time     // held off until then
}

func (p *Pacer) host(h string) *hostPace {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hosts == nil {
		p.hosts = make(map[string]*hostPace)
	}
	hp := p.hosts[h]
	if hp == nil {
		hp = &hostPace{}
		if p.Rate > 0 {
			hp.limiter = rate.NewLimiter(rate.Limit(p.Rate), 1) // evenly spaced: no burst beyond the rate
		}
		if p.MaxConcurrent > 0 {
			hp.slots = make(chan struct{}, p.MaxConcurrent)
		}
		p.hosts[h] = hp
	}
	return hp
}

// Acquire waits for a hold on host to end, for a free slot, then for the
// rate, or until ctx ends. An urgent call reserves the next turn of the
// rate; one that is not takes a turn only when one is free at once, so it
// never makes an urgent call wait behind it.
func (p *Pacer) Acquire(ctx context.Context, host string, urgent bool) (func(), error) {
	hp := p.host(host)
	hp.mu.Lock()
	until := hp.until
	hp.mu.Unlock()
	if d := time.Until(until); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
	release := func() {}
	if hp.slots != nil {
		select {
		case hp.slots <- struct{}{}:
			release = func() { <-hp.slots }
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if hp.limiter == nil {
		return release, nil
	}
	if urgent {
		if err := hp.limiter.Wait(ctx); err != nil {
			release()
			return nil, err
		}
		return release, nil
	}
	for !hp.limiter.Allow() {
		t := time.NewTimer(time.Duration(float64(time.Second) / p.Rate))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			release()
			return nil, ctx.Err()
		}
	}
	return release, nil
}

// Hold keeps calls to host off until until.
func (p *Pacer) Hold(_ context.Context, host string, until time.Time) error {
	hp := p.host(host)
	hp.mu.Lock()
	if until.After(hp.until) {
		hp.until = until
	}
	hp.mu.Unlock()
	return nil
}
