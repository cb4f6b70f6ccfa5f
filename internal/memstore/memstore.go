// Package memstore is the in-process broker.Store of dev mode: one broker,
// nothing kept across restarts. It keeps the Store contract exactly as the
// Redis store does (leases that expire, the fenced Commit, events), so the
// broker's invariants hold within the one process.
package memstore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"sort"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Store is an in-memory broker.Store. The zero value is not usable; call New.
type Store struct {
	mu      sync.Mutex                // guards recs, locks and settled
	recs    map[string]*broker.Record // with Pending set while a refresh is pending
	locks   map[string]lockState
	settled map[string]settledBy // by credential: the Settle that wrote the record last

	smu  sync.Mutex // guards subs
	subs map[int]func(broker.Event)
	next int

	flows flowTable // authorization code flows (flows.go)
	log   changeLog // the change log (changes.go)
}

type lockState struct {
	token   string
	expires time.Time
}

// settledBy names the Settle that wrote a record, so that repeating it is
// recognised.
type settledBy struct {
	pending string
	gen     uint64
}

var _ broker.Store = (*Store)(nil)

// New returns an empty Store.
func New() *Store {
	return &Store{
		recs:    make(map[string]*broker.Record),
		locks:   make(map[string]lockState),
		settled: make(map[string]settledBy),
		subs:    make(map[int]func(broker.Event)),
	}
}

// Get returns a copy of a record, or broker.ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (*broker.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[id]
	if !ok {
		return nil, broker.ErrNotFound
	}
	return r.Clone(), nil
}

// List returns copies of up to limit records with IDs after the given one.
func (s *Store) List(ctx context.Context, after string, limit int) ([]*broker.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.recs))
	for id := range s.recs {
		if id > after {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	if len(ids) > limit {
		ids = ids[:limit]
	}
	out := make([]*broker.Record, len(ids))
	for i, id := range ids {
		out[i] = s.recs[id].Clone()
	}
	return out, nil
}

// Delete removes a record.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	_, ok := s.recs[id]
	delete(s.recs, id)
	delete(s.settled, id)
	s.mu.Unlock()
	if ok {
		s.publish(broker.Event{ID: id, Deleted: true})
	}
	return nil
}

// TryLock obtains a credential's lease for ttl, or returns broker.ErrLockHeld.
func (s *Store) TryLock(ctx context.Context, id string, ttl time.Duration) (broker.Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.locks[id]; ok && now.Before(l.expires) {
		return nil, broker.ErrLockHeld
	}
	l := lockState{token: newToken(), expires: now.Add(ttl)}
	s.locks[id] = l
	return &lease{s: s, id: id, token: l.token, deadline: l.expires}, nil
}

// Commit stores a copy of rec if lease is held and the stored generation is
// rec.Generation.
func (s *Store) Commit(ctx context.Context, l broker.Lease, rec *broker.Record) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	ml, ok := l.(*lease)
	if !ok || ml.s != s || ml.id != rec.ID {
		return 0, broker.ErrLockLost
	}
	s.mu.Lock()
	if !s.holds(ml, time.Now()) {
		s.mu.Unlock()
		return 0, broker.ErrLockLost
	}
	var gen uint64
	if cur, ok := s.recs[rec.ID]; ok {
		gen = cur.Generation
	}
	if gen != rec.Generation {
		s.mu.Unlock()
		return 0, broker.ErrConflict
	}
	s.write(rec, gen+1)
	delete(s.settled, rec.ID)
	s.mu.Unlock()
	s.publish(broker.Event{ID: rec.ID, Generation: gen + 1})
	return gen + 1, nil
}

// write stores a copy of rec at gen, without a pending marker; s.mu is held.
func (s *Store) write(rec *broker.Record, gen uint64) {
	c := rec.Clone()
	c.Generation = gen
	c.Pending = nil
	s.recs[rec.ID] = c
}

// MarkPending stores p as the record's pending refresh if lease is held and
// the stored generation is rec.Generation, and publishes the announcement.
func (s *Store) MarkPending(ctx context.Context, l broker.Lease, rec *broker.Record, p *broker.Pending) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ml, ok := l.(*lease)
	if !ok || ml.s != s || ml.id != rec.ID {
		return broker.ErrLockLost
	}
	s.mu.Lock()
	if !s.holds(ml, time.Now()) {
		s.mu.Unlock()
		return broker.ErrLockLost
	}
	cur, ok := s.recs[rec.ID]
	if !ok || cur.Generation != rec.Generation {
		s.mu.Unlock()
		return broker.ErrConflict
	}
	c := *p
	cur.Pending = &c
	s.mu.Unlock()
	s.publish(broker.Event{ID: rec.ID, PendingFrom: rec.Generation})
	return nil
}

// Settle stores a copy of rec if the stored generation is rec.Generation and
// p is the record's pending refresh, held lease or not.
func (s *Store) Settle(ctx context.Context, p *broker.Pending, rec *broker.Record) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	cur, ok := s.recs[rec.ID]
	switch {
	case ok && cur.Generation == rec.Generation+1 && s.settled[rec.ID] == settledBy{p.ID, rec.Generation + 1}:
		s.mu.Unlock()
		return rec.Generation + 1, nil // a repeat of the Settle that wrote it
	case !ok || cur.Generation != rec.Generation || cur.Pending == nil || cur.Pending.ID != p.ID:
		s.mu.Unlock()
		return 0, broker.ErrConflict
	}
	gen := rec.Generation + 1
	s.write(rec, gen)
	s.settled[rec.ID] = settledBy{p.ID, gen}
	s.mu.Unlock()
	s.publish(broker.Event{ID: rec.ID, Generation: gen})
	return gen, nil
}

// Subscribe calls fn for every change until stop is called. fn runs on the
// goroutine that made the change, after the change is visible.
func (s *Store) Subscribe(fn func(broker.Event)) (stop func()) {
	s.smu.Lock()
	id := s.next
	s.next++
	s.subs[id] = fn
	s.smu.Unlock()
	return func() {
		s.smu.Lock()
		delete(s.subs, id)
		s.smu.Unlock()
	}
}

func (s *Store) publish(ev broker.Event) {
	s.smu.Lock()
	fns := make([]func(broker.Event), 0, len(s.subs))
	for _, fn := range s.subs {
		fns = append(fns, fn)
	}
	s.smu.Unlock()
	for _, fn := range fns {
		fn(ev)
	}
}

// holds reports whether l is the live lease of its credential; s.mu is held.
func (s *Store) holds(l *lease, now time.Time) bool {
	cur, ok := s.locks[l.id]
	return ok && cur.token == l.token && now.Before(cur.expires)
}

type lease struct {
	s        *Store
	id       string
	token    string
	mu       sync.Mutex // guards deadline
	deadline time.Time
}

func (l *lease) ID() string { return l.id }

func (l *lease) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

// Extend keeps the lease for ttl from now, or returns broker.ErrLockLost.
func (l *lease) Extend(ctx context.Context, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if !l.s.holds(l, now) {
		return broker.ErrLockLost
	}
	l.s.locks[l.id] = lockState{token: l.token, expires: now.Add(ttl)}
	l.mu.Lock()
	l.deadline = now.Add(ttl)
	l.mu.Unlock()
	return nil
}

func (l *lease) Release(context.Context) error {
	l.s.mu.Lock()
	held := l.s.holds(l, time.Now())
	if held {
		delete(l.s.locks, l.id)
	}
	l.s.mu.Unlock()
	if held {
		l.s.publish(broker.Event{ID: l.id, Released: true})
	}
	return nil
}

func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
