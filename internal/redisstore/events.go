package redisstore

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Event payloads on the channel are "<kind> <generation> <id>": kind c for a
// Commit, d for a Delete, r for a Release, p for MarkPending (with the
// generation the refresh is from), x for a change appended to the change log
// (changes.go; the number of the change in place of the generation). The id
// goes last; it may hold anything but a newline. Unknown kinds are ignored,
// so a replica that predates one keeps working.

// Subscribe delivers an Event to fn for every change of any credential made
// through any Store with the same prefix, until stop is called. All
// subscribers of a Store share one Pub/Sub connection and one goroutine,
// which runs while anyone is subscribed. fn must not block, and must not call
// stop; once stop returned, fn is not called again.
//
// fn receives Event{Reset: true} whenever events may have been missed: each
// time the subscription is (re)established, including the first, and when
// the connection fails. While Redis is unreachable the Store retries with a
// bounded backoff.
func (s *Store) Subscribe(fn func(broker.Event)) (stop func()) {
	sub := &subscriber{fn: fn}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return func() {}
	}
	s.subs[sub] = struct{}{}
	if s.listener == nil {
		s.listener = s.listen()
	}
	s.mu.Unlock()

	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.subs, sub)
			var l *listener
			if len(s.subs) == 0 {
				l, s.listener = s.listener, nil
			}
			s.mu.Unlock()
			sub.stop()
			if l != nil {
				l.stop()
			}
		})
	}
}

// Close stops delivering events and ends the Store's goroutines (the event
// listener, the index retry); Subscribe does nothing afterwards, and index
// writes still queued are dropped (see RepairIndex). The client is not closed; the other methods keep
// working while it is open. Close is idempotent and must not be called from a
// subscriber's fn.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	subs := s.subs
	s.subs = map[*subscriber]struct{}{}
	l := s.listener
	s.listener = nil
	s.mu.Unlock()
	for sub := range subs {
		sub.stop()
	}
	if l != nil {
		l.stop()
	}
	s.closeIndex()
	return nil
}

// subscriber is one fn given to Subscribe.
type subscriber struct {
	mu      sync.Mutex // held while fn runs
	stopped bool
	fn      func(broker.Event)
}

func (sub *subscriber) deliver(ev broker.Event) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if !sub.stopped {
		sub.fn(ev)
	}
}

// stop waits for a running fn and keeps fn from running again.
func (sub *subscriber) stop() {
	sub.mu.Lock()
	sub.stopped = true
	sub.mu.Unlock()
}

// deliver hands ev to every subscriber.
func (s *Store) deliver(ev broker.Event) {
	s.mu.Lock()
	subs := make([]*subscriber, 0, len(s.subs))
	for sub := range s.subs {
		subs = append(subs, sub)
	}
	s.mu.Unlock()
	for _, sub := range subs {
		sub.deliver(ev)
	}
}

// listener is the goroutine that receives events for a Store.
type listener struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine returned

	mu      sync.Mutex
	ps      *redis.PubSub // the current connection
	stopped bool
}

// listen starts a listener; s.mu is held.
func (s *Store) listen() *listener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &listener{cancel: cancel, done: make(chan struct{})}
	go s.run(ctx, l)
	return l
}

// stop ends the goroutine and waits for it. Closing the PubSub unblocks a
// receive in progress, which the context alone does not.
func (l *listener) stop() {
	l.cancel()
	l.mu.Lock()
	l.stopped = true
	ps := l.ps
	l.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
	<-l.done
}

// open returns a new PubSub not yet subscribed, or nil once stopped.
func (l *listener) open(ctx context.Context, c redis.UniversalClient) *redis.PubSub {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return nil
	}
	l.ps = c.Subscribe(ctx) // no channel yet: no I/O under l.mu
	return l.ps
}

// run subscribes, receives and delivers events until ctx is cancelled,
// reconnecting with a bounded backoff after every failure.
func (s *Store) run(ctx context.Context, l *listener) {
	defer close(l.done)
	backoff := s.backoffMin
	for {
		ps := l.open(ctx, s.client)
		if ps == nil {
			return
		}
		live := false // a subscription was confirmed on ps
		// Either ends with the connection's failure; the loop reconnects
		// whatever it was, so the error itself is not needed.
		if ps.Subscribe(ctx, s.channel) == nil {
			_ = s.receive(ctx, ps, &live)
		}
		_ = ps.Close()
		if ctx.Err() != nil {
			return
		}
		if live {
			s.deliver(broker.Event{Reset: true})
			backoff = s.backoffMin
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, s.backoffMax)
	}
}

// receive delivers the events arriving on ps until the connection fails:
// an error, or no answer to a PING sent after pingEvery of silence.
func (s *Store) receive(ctx context.Context, ps *redis.PubSub, live *bool) error {
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, s.pingEvery)
		if err != nil {
			if ctx.Err() != nil || pinged || !isTimeout(err) {
				return err
			}
			if err := ps.Ping(ctx); err != nil {
				return err
			}
			pinged = true
			continue
		}
		pinged = false
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" && m.Channel == s.channel {
				*live = true
				s.deliver(broker.Event{Reset: true})
			}
		case *redis.Message:
			if ev, ok := parseEvent(m.Payload); ok {
				s.deliver(ev)
			}
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// parseEvent decodes an event payload; ok is false for a malformed one.
func parseEvent(p string) (ev broker.Event, ok bool) {
	kind, rest, ok1 := strings.Cut(p, " ")
	genS, id, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || id == "" || strings.ContainsAny(id, "\r\n") {
		return ev, false
	}
	gen, err := strconv.ParseUint(genS, 10, 64)
	if err != nil {
		return ev, false
	}
	switch kind {
	case "c":
		if gen == 0 {
			return ev, false
		}
		return broker.Event{ID: id, Generation: gen}, true
	case "d":
		return broker.Event{ID: id, Deleted: true}, true
	case "r":
		return broker.Event{ID: id, Released: true}, true
	case "p":
		if gen == 0 {
			return ev, false
		}
		return broker.Event{ID: id, PendingFrom: gen}, true
	case "x":
		if gen == 0 {
			return ev, false
		}
		return broker.Event{ID: id, Change: gen}, true // the generation field holds the change's number
	}
	return ev, false
}
