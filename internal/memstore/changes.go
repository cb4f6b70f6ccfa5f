package memstore

import (
	"context"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// changeLog is the Store's log of credential changes: the last
// broker.MaxChanges of them, numbered from 1. The zero value is ready.
type changeLog struct {
	mu   sync.Mutex
	last uint64           // the number of the last change appended
	kept []*broker.Change // the last ones, oldest first

	cursors map[string]uint64 // of the log's consumers, by name
}

// AppendChange adds a copy of c to the log and announces it.
func (s *Store) AppendChange(ctx context.Context, c *broker.Change) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	l := &s.log
	l.mu.Lock()
	l.last++
	cp := *c
	cp.Seq = l.last
	l.kept = append(l.kept, &cp)
	if len(l.kept) > broker.MaxChanges {
		l.kept = append(l.kept[:0:0], l.kept[len(l.kept)-broker.MaxChanges:]...)
	}
	n := l.last
	l.mu.Unlock()
	s.publish(broker.Event{ID: c.CredentialID, Change: n})
	return n, nil
}

// ReadChanges returns copies of up to limit changes after after, or
// broker.ErrChangesGone.
func (s *Store) ReadChanges(ctx context.Context, after uint64, limit int) ([]*broker.Change, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l := &s.log
	l.mu.Lock()
	defer l.mu.Unlock()
	oldest := l.last + 1
	if len(l.kept) > 0 {
		oldest = l.kept[0].Seq
	}
	if after > l.last || after+1 < oldest {
		return nil, broker.ErrChangesGone
	}
	var out []*broker.Change
	for _, c := range l.kept[after+1-oldest:] {
		if len(out) == limit {
			break
		}
		cp := *c
		out = append(out, &cp)
	}
	return out, nil
}

// LastChange returns the number of the last change.
func (s *Store) LastChange(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	return s.log.last, nil
}

// LoadCursor returns the position saved under name.
func (s *Store) LoadCursor(ctx context.Context, name string) (uint64, bool, error) {
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	pos, ok := s.log.cursors[name]
	return pos, ok, nil
}

// SaveCursor saves pos under name if lease, on name, is held.
func (s *Store) SaveCursor(ctx context.Context, l broker.Lease, name string, pos uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ml, ok := l.(*lease)
	if !ok || ml.s != s || ml.id != name {
		return broker.ErrLockLost
	}
	s.mu.Lock()
	held := s.holds(ml, time.Now())
	s.mu.Unlock()
	if !held {
		return broker.ErrLockLost
	}
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	if s.log.cursors == nil {
		s.log.cursors = make(map[string]uint64)
	}
	s.log.cursors[name] = pos
	return nil
}
