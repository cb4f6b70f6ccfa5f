package broker

import (
	"container/heap"
	"context"
	"net/url"
	"sync"
	"time"
)

// Pacer paces calls to identity providers, per token host, across every
// Broker that shares it: at most so many calls at once and so many per
// second, fleet-wide, and none while the host asked to be left alone (a
// 429's Retry-After). It must be safe for concurrent use.
type Pacer interface {
	// Acquire waits until a call to host may be made, or ctx ends. The
	// caller calls release once the call is over. A call that is not
	// urgent (a refresh ahead of expiry, which no caller waits for) gives
	// way to urgent ones.
	Acquire(ctx context.Context, host string, urgent bool) (release func(), err error)
	// Hold keeps every call to host off until until.
	Hold(ctx context.Context, host string, until time.Time) error
}

// tokenHost is the host a credential's token URL names, the unit of pacing.
func tokenHost(tokenURL string) string {
	u, err := url.Parse(tokenURL)
	if err != nil {
		return tokenURL
	}
	return u.Host
}

// paceTurn is a turn at the IdP obtained before a refresh began, or being
// obtained while it begins; whoever is done with it first (the IdP call, or
// the refresh that did not need one) gives it back.
type paceTurn struct {
	ready chan struct{} // closed once the Pacer answered

	mu      sync.Mutex
	arrived bool   // the Pacer answered: release or err is set
	release func() // the turn's release, once arrived without err
	err     error
	used    bool // done was called
}

// heldTurn is a turn already obtained.
func heldTurn(release func()) *paceTurn {
	t := &paceTurn{ready: make(chan struct{}), arrived: true, release: release}
	close(t.ready)
	return t
}

// prefetchTurn starts asking the Pacer for an urgent turn at host, so that
// the wait overlaps the Store's round trips before the IdP call; nil when
// there is no Pacer or the Broker is closing. The turn must be given back
// with done, whether or not it is used.
func (b *Broker) prefetchTurn(host string) *paceTurn {
	if b.cfg.Pacer == nil || host == "" || !b.enter() {
		return nil
	}
	t := &paceTurn{ready: make(chan struct{})}
	go func() {
		defer b.wg.Done()
		release, err := b.cfg.Pacer.Acquire(b.bg, host, true)
		t.mu.Lock()
		t.arrived, t.release, t.err = true, release, err
		used := t.used
		close(t.ready)
		t.mu.Unlock()
		if used && err == nil {
			release() // given back before it arrived
		}
	}()
	return t
}

// wait waits until the turn is obtained and returns its release, or the
// Pacer's error, or ctx's.
func (t *paceTurn) wait(ctx context.Context) (func(), error) {
	select {
	case <-t.ready:
	case <-ctx.Done():
		t.done()
		return nil, ctx.Err()
	}
	if t.err != nil {
		return nil, t.err
	}
	return t.done, nil
}

// done gives the turn back, now or as soon as it arrives; calling it again
// does nothing.
func (t *paceTurn) done() {
	if t == nil {
		return
	}
	t.mu.Lock()
	if t.used {
		t.mu.Unlock()
		return
	}
	t.used = true
	release := t.release
	arrived := t.arrived
	t.mu.Unlock()
	if arrived && release != nil {
		release()
	}
}

// pace waits for the Pacer's leave to call the IdP of rec, unless the
// flight holds a turn already (or is getting one); without a Pacer it
// returns at once.
func (b *Broker) pace(ctx context.Context, rec *Record, f flight) (release func(), err error) {
	switch {
	case b.cfg.Pacer == nil:
		if f.turn != nil {
			f.turn.done()
		}
		return func() {}, nil
	case f.turn != nil:
		return f.turn.wait(ctx)
	}
	return b.cfg.Pacer.Acquire(ctx, tokenHost(rec.TokenURL), f.reason != ReasonAhead)
}

// holdHost tells the Pacer that rec's IdP asked to be left alone for d.
func (b *Broker) holdHost(rec *Record, d time.Duration) {
	if b.cfg.Pacer == nil || d <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(b.bg, time.Second)
	defer cancel()
	_ = b.cfg.Pacer.Hold(ctx, tokenHost(rec.TokenURL), time.Now().Add(d))
}

// The background refreshes ahead of expiry wait in a queue, soonest expiry
// first, and run on a few workers: when many tokens expire together, the
// ones closest to expiry are refreshed first, and a paced IdP is not met by
// a goroutine per credential.

// aheadJob is one credential waiting for its refresh ahead of expiry.
type aheadJob struct {
	id     string
	expiry time.Time // of the token to refresh
	index  int
}

// aheadQueue is a heap of jobs by expiry, one per credential.
type aheadQueue []*aheadJob

func (q aheadQueue) Len() int           { return len(q) }
func (q aheadQueue) Less(i, j int) bool { return q[i].expiry.Before(q[j].expiry) }
func (q aheadQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *aheadQueue) Push(x any) {
	j := x.(*aheadJob)
	j.index = len(*q)
	*q = append(*q, j)
}
func (q *aheadQueue) Pop() any {
	old := *q
	j := old[len(old)-1]
	*q = old[:len(old)-1]
	return j
}

// aheadWorkers runs the refresh-ahead queue.
type aheadWorkers struct {
	mu      sync.Mutex // guards q, queued, running
	q       aheadQueue
	queued  map[string]*aheadJob
	running int
}

// refreshAhead queues a background refresh of a credential whose token
// expires at expiry, and starts a worker if there is room for one.
func (b *Broker) refreshAhead(id string, expiry time.Time) {
	w := &b.ahead
	w.mu.Lock()
	if j := w.queued[id]; j != nil {
		if expiry.Before(j.expiry) {
			j.expiry = expiry
			heap.Fix(&w.q, j.index)
		}
		w.mu.Unlock()
		return
	}
	j := &aheadJob{id: id, expiry: expiry}
	heap.Push(&w.q, j)
	w.queued[id] = j
	start := w.running < b.cfg.AheadWorkers
	if start {
		w.running++
	}
	w.mu.Unlock()
	if start && !b.startWorker() {
		w.mu.Lock()
		w.running--
		w.mu.Unlock()
	}
}

// startWorker runs queued refreshes until the queue is empty.
func (b *Broker) startWorker() bool {
	if !b.enter() {
		return false
	}
	go func() {
		defer b.wg.Done()
		for {
			w := &b.ahead
			w.mu.Lock()
			if len(w.q) == 0 {
				w.running--
				w.mu.Unlock()
				return
			}
			j := heap.Pop(&w.q).(*aheadJob)
			delete(w.queued, j.id)
			w.mu.Unlock()
			b.runAhead(j.id)
		}
	}()
	return true
}

// runAhead refreshes one credential ahead of expiry, if it still needs it.
// The worker waits for the IdP's turn itself, before the refresh starts, so
// that the queue, not a goroutine per credential, holds the backlog; the
// refresh's IdP call then uses that turn.
func (b *Broker) runAhead(id string) {
	var turn *paceTurn
	if b.cfg.Pacer != nil {
		if _, e := b.lookup(id); e != nil && e.host != "" {
			release, err := b.cfg.Pacer.Acquire(b.bg, e.host, false)
			if err != nil {
				return // closing
			}
			turn = heldTurn(release)
			defer turn.done()
		}
	}
	ctx, cancel := context.WithTimeout(b.bg, b.cfg.flightBound())
	defer cancel()
	_, _ = b.refresh(ctx, id, flight{
		id:     id,
		reason: ReasonAhead,
		turn:   turn,
		// The same test as the trigger's, so a refresh started at the
		// very instant the window opens is not dropped as unneeded.
		need: func(r *Record, now time.Time) bool {
			return r.Token.AccessToken == "" || !now.Before(b.aheadAt(r))
		},
	})
}

// Backlog reports the refreshes ahead of expiry waiting for a worker, and
// how far behind the queue is: how long ago the soonest-expiring queued
// token expired (0 while none has).
func (b *Broker) Backlog() (queued int, behind time.Duration) {
	w := &b.ahead
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.q) == 0 {
		return 0, 0
	}
	return len(w.q), max(time.Since(w.q[0].expiry), 0)
}
