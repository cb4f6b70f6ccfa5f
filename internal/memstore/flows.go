package memstore

import (
	"context"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// flowTable keeps authorization code flows by state until they expire or
// are taken. The zero value is ready.
type flowTable struct {
	mu    sync.Mutex
	byKey map[string]flowEntry
}

type flowEntry struct {
	f       broker.CodeFlow
	expires time.Time
}

// SaveFlow keeps a copy of f under state for ttl, or returns
// broker.ErrConflict if the state is taken.
func (s *Store) SaveFlow(ctx context.Context, state string, f *broker.CodeFlow, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	t := &s.flows
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byKey == nil {
		t.byKey = make(map[string]flowEntry)
	}
	for k, e := range t.byKey { // expired flows go
		if !now.Before(e.expires) {
			delete(t.byKey, k)
		}
	}
	if _, ok := t.byKey[state]; ok {
		return broker.ErrConflict
	}
	c := *f
	c.Scopes = append([]string(nil), f.Scopes...)
	t.byKey[state] = flowEntry{f: c, expires: now.Add(ttl)}
	return nil
}

// TakeFlow returns the flow kept under state and forgets it, or
// broker.ErrNotFound.
func (s *Store) TakeFlow(ctx context.Context, state string) (*broker.CodeFlow, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t := &s.flows
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.byKey[state]
	delete(t.byKey, state)
	if !ok || !time.Now().Before(e.expires) {
		return nil, broker.ErrNotFound
	}
	return &e.f, nil
}
