package redisstore

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

var (
	//go:embed mark.lua
	markLua    string
	markScript = redis.NewScript(markLua)

	//go:embed settle.lua
	settleLua    string
	settleScript = redis.NewScript(settleLua)
)

// MarkPending stores p as the record's pending refresh in one Lua script that
// checks the lock and the generation; the record and its generation do not
// change. The marker is plaintext JSON: it holds no secret.
func (s *Store) MarkPending(ctx context.Context, bl broker.Lease, rec *broker.Record, p *broker.Pending) error {
	l, ok := bl.(*lease)
	if !ok || l.store != s {
		return errors.New("redisstore: mark pending under a lease of another store")
	}
	if rec.ID != l.id {
		return fmt.Errorf("redisstore: mark pending of %q under the lease of %q", rec.ID, l.id)
	}
	if !l.held() {
		return broker.ErrLockLost
	}
	marker, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("redisstore: mark pending %q: %w", rec.ID, err)
	}
	res, err := markScript.Run(ctx, s.client,
		[]string{s.recordKey(rec.ID), s.lockKey(rec.ID)},
		l.value, rec.Generation, p.ID, marker, s.channel, rec.ID,
	).Int64()
	if err != nil {
		return fmt.Errorf("redisstore: mark pending %q: %w", rec.ID, err)
	}
	switch res {
	case 1:
		return nil
	case -1:
		return broker.ErrLockLost
	case -2:
		return broker.ErrConflict
	}
	return fmt.Errorf("redisstore: mark pending %q: unexpected script result %d", rec.ID, res)
}

// Settle stores rec, the outcome of the refresh p announced, in one Lua
// script fenced on the generation and on p being the record's pending
// refresh; the lock is not checked. It returns the new generation or
// broker.ErrConflict. Like Commit, it waits for Options.MinReplicaAcks
// replicas and returns an error wrapping ErrNotReplicated when too few
// acknowledged. Repeating a Settle whose reply was lost, or that was not
// replicated, is safe.
func (s *Store) Settle(ctx context.Context, p *broker.Pending, rec *broker.Record) (uint64, error) {
	if err := checkID(rec.ID); err != nil {
		return 0, err
	}
	data, err := s.encode(rec)
	if err != nil {
		return 0, err
	}
	next := rec.Generation + 1
	keys := []string{s.recordKey(rec.ID)}
	args := []any{p.ID, rec.Generation, next, data, s.channel, rec.ID}
	var res int64
	var ackErr error
	if s.minAcks == 0 {
		res, err = settleScript.Run(ctx, s.client, keys, args...).Int64()
	} else {
		res, ackErr, err = s.runAcked(ctx, settleScript, rec.ID, keys, args)
	}
	if err != nil {
		return 0, fmt.Errorf("redisstore: settle %q: %w", rec.ID, err)
	}
	switch res {
	case 1:
		if ackErr != nil {
			return 0, ackErr // written on the master, not yet on enough replicas: retry
		}
		return next, nil
	case -2:
		return 0, broker.ErrConflict
	}
	return 0, fmt.Errorf("redisstore: settle %q: unexpected script result %d", rec.ID, res)
}

// decodePending turns the stored marker into a Pending; nil for none. A
// marker that does not parse is reported as unreadable: a holder must not
// take it for no marker.
func decodePending(id string, v any) (*broker.Pending, error) {
	s, ok := v.(string)
	if !ok || s == "" {
		return nil, nil
	}
	p := new(broker.Pending)
	if err := json.Unmarshal([]byte(s), p); err != nil || p.ID == "" {
		return nil, unreadable(id, "stored pending refresh is not valid")
	}
	return p, nil
}
