package broker_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
)

// countingPacer counts the turns a Pacer gave and got back.
type countingPacer struct {
	inner              broker.Pacer
	asked              chan struct{} // told of every Acquire, if set
	acquired, released atomic.Int64
}

func (p *countingPacer) Acquire(ctx context.Context, host string, urgent bool) (func(), error) {
	if p.asked != nil {
		select {
		case p.asked <- struct{}{}:
		default:
		}
	}
	release, err := p.inner.Acquire(ctx, host, urgent)
	if err != nil {
		return nil, err
	}
	p.acquired.Add(1)
	var once sync.Once
	return func() { once.Do(func() { p.released.Add(1); release() }) }, nil
}

func (p *countingPacer) Hold(ctx context.Context, host string, until time.Time) error {
	return p.inner.Hold(ctx, host, until)
}

// gatedStore holds reads of a credential's record until a gate opens, when
// the gate is set; and hides the Store's events from its subscribers when
// deaf is set.
type gatedStore struct {
	broker.Store
	gate atomic.Pointer[chan struct{}]
	deaf atomic.Bool
}

func (s *gatedStore) Get(ctx context.Context, id string) (*broker.Record, error) {
	if g := s.gate.Load(); g != nil {
		select {
		case <-*g:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.Store.Get(ctx, id)
}

func (s *gatedStore) Subscribe(fn func(broker.Event)) func() {
	return s.Store.Subscribe(func(ev broker.Event) {
		if !s.deaf.Load() {
			fn(ev)
		}
	})
}

// A caller of an expired token whose replica takes the lease at once has
// the IdP's turn asked for while the record is read under the lease, not
// after it was read and the refresh announced: the Store's round trips and
// the Pacer's overlap.
func TestTurnAskedWhileTheRecordIsRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Minute})
		pacer := &countingPacer{inner: &memstore.Pacer{MaxConcurrent: 4}, asked: make(chan struct{}, 1)}
		e.cfg.Pacer = pacer
		store := &gatedStore{Store: e.store}
		b := e.brokerOn(store, nil)
		e.credential(b, "c")
		ctx := context.Background()
		tok, err := b.GetToken(ctx, "c", 0)
		if err != nil {
			t.Fatal(err)
		}
		waitExpired(tok)
		<-pacer.asked // the first refresh's

		// Reads wait until the Pacer has been asked for a turn; without
		// the overlap this refresh would never be sent.
		gate := make(chan struct{})
		store.gate.Store(&gate)
		go func() {
			select {
			case <-pacer.asked:
			case <-time.After(time.Minute):
			}
			close(gate)
		}()
		start := time.Now()
		next, err := b.GetToken(ctx, "c", 0)
		if err != nil {
			t.Fatal(err)
		}
		if next.AccessToken == tok.AccessToken {
			t.Fatal("not refreshed")
		}
		if waited := time.Since(start); waited >= time.Minute {
			t.Fatalf("the record was read only after the gate's timeout (%v): the turn was not asked for meanwhile", waited)
		}
		synctest.Wait()
		if a, r := pacer.acquired.Load(), pacer.released.Load(); a != 2 || r != 2 {
			t.Fatalf("turns acquired %d, released %d; want 2 and 2", a, r)
		}
	})
}

// A turn asked for early is given back when the record read under the
// lease shows that another replica refreshed it already.
func TestEarlyTurnGivenBackWhenNotNeeded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Minute})
		pacer := &countingPacer{inner: &memstore.Pacer{MaxConcurrent: 4}}
		e.cfg.Pacer = pacer
		deaf := &gatedStore{Store: e.store}
		other := e.broker(nil)
		b := e.brokerOn(deaf, nil)
		e.credential(other, "c")
		ctx := context.Background()
		tok, err := b.GetToken(ctx, "c", 0)
		if err != nil {
			t.Fatal(err)
		}
		waitExpired(tok)
		// b misses the event of the other replica's refresh: its cache
		// still holds the expired token when it is next asked.
		deaf.deaf.Store(true)
		fresh, err := other.GetToken(ctx, "c", 0)
		if err != nil || fresh.AccessToken == tok.AccessToken {
			t.Fatalf("other replica: %v, %v", fresh, err)
		}
		refreshes := e.idp.Stats().Refreshes
		got, err := b.GetToken(ctx, "c", 0)
		if err != nil || got.AccessToken != fresh.AccessToken {
			t.Fatalf("GetToken = %v, %v; want the other replica's token", got, err)
		}
		synctest.Wait()
		if n := e.idp.Stats().Refreshes; n != refreshes {
			t.Fatalf("%d more IdP refreshes", n-refreshes)
		}
		if a, r := pacer.acquired.Load(), pacer.released.Load(); a != r || a < 3 {
			t.Fatalf("turns acquired %d, released %d; want all given back, and one asked for early", a, r)
		}
	})
}
