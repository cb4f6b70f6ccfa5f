package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// The change log (broker.Store's AppendChange, ReadChanges, LastChange):
//
//	tokenbroker:{changes}:log   stream of changes: entry ID "<n>-0", field c (the JSON of a broker.Change)
//	tokenbroker:{changes}:seq   the number of the last change appended
//
// One script numbers and appends a change and publishes "x <n> <id>" on the
// event channel, so numbers are dense and in the stream's order whichever
// replica appends. The stream is trimmed to about broker.MaxChanges (never
// below); a read after a number the stream no longer holds is
// broker.ErrChangesGone. Changes hold no secret, so they are not sealed.
// Both keys share the hash tag {changes}: one Cluster slot.

// appendScript numbers, appends and announces a change.
//
// KEYS[1] the stream, KEYS[2] the counter; ARGV[1] the change's JSON,
// ARGV[2] the length to trim to, ARGV[3] the event channel, ARGV[4] the
// credential id. Returns the change's number.
var appendScript = redis.NewScript(`
local n = redis.call("INCR", KEYS[2])
redis.call("XADD", KEYS[1], "MAXLEN", "~", ARGV[2], n .. "-0", "c", ARGV[1])
redis.call("PUBLISH", ARGV[3], "x " .. n .. " " .. ARGV[4])
return n
`)

func (s *Store) changeKeys() (stream, seq string) {
	return s.prefix + ":{changes}:log", s.prefix + ":{changes}:seq"
}

// AppendChange appends c to the log and returns its number.
func (s *Store) AppendChange(ctx context.Context, c *broker.Change) (uint64, error) {
	if strings.ContainsAny(c.CredentialID, "\r\n") {
		return 0, fmt.Errorf("redisstore: invalid credential id %q", c.CredentialID)
	}
	data, err := json.Marshal(c)
	if err != nil {
		return 0, fmt.Errorf("redisstore: encode change: %w", err)
	}
	stream, seq := s.changeKeys()
	n, err := appendScript.Run(ctx, s.client, []string{stream, seq}, data, broker.MaxChanges, s.channel, c.CredentialID).Uint64()
	if err != nil {
		return 0, fmt.Errorf("redisstore: append change: %w", err)
	}
	return n, nil
}

// ReadChanges returns up to limit changes after after, in order.
func (s *Store) ReadChanges(ctx context.Context, after uint64, limit int) ([]*broker.Change, error) {
	stream, seq := s.changeKeys()
	var last *redis.StringCmd
	var first, rng *redis.XMessageSliceCmd
	if _, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		last = p.Get(ctx, seq)
		first = p.XRangeN(ctx, stream, "-", "+", 1)
		rng = p.XRangeN(ctx, stream, "("+strconv.FormatUint(after, 10)+"-0", "+", int64(limit))
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redisstore: read changes: %w", err)
	}
	n, err := last.Uint64()
	if errors.Is(err, redis.Nil) {
		n, err = 0, nil
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: read changes: %w", err)
	}
	oldest := n + 1
	if msgs := first.Val(); len(msgs) == 1 {
		if oldest, err = entrySeq(msgs[0].ID); err != nil {
			return nil, err
		}
	}
	if after > n || after+1 < oldest {
		return nil, broker.ErrChangesGone
	}
	out := make([]*broker.Change, 0, len(rng.Val()))
	for _, m := range rng.Val() {
		c := new(broker.Change)
		raw, _ := m.Values["c"].(string)
		if err := json.Unmarshal([]byte(raw), c); err != nil {
			return nil, fmt.Errorf("redisstore: change %s is not valid JSON", m.ID)
		}
		if c.Seq, err = entrySeq(m.ID); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// LastChange returns the number of the last change appended.
func (s *Store) LastChange(ctx context.Context) (uint64, error) {
	_, seq := s.changeKeys()
	n, err := s.client.Get(ctx, seq).Uint64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("redisstore: last change: %w", err)
	}
	return n, nil
}

// entrySeq is the change number of a stream entry ID "<n>-0".
func entrySeq(id string) (uint64, error) {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseUint(ms, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("redisstore: change log entry %q not written by a Store", id)
	}
	return n, nil
}

// Cursors of the change log's consumers live under
//
//	tokenbroker:{<name>}:cursor   string: the position
//
// beside the lock of the same name (one Cluster slot), so one script checks
// the lock and saves.
var cursorScript = redis.NewScript(`
if redis.call("GET", KEYS[2]) ~= ARGV[1] then
  return -1
end
redis.call("SET", KEYS[1], ARGV[2])
return 1
`)

func (s *Store) cursorKey(name string) string { return s.prefix + ":{" + name + "}:cursor" }

// LoadCursor returns the position saved under name.
func (s *Store) LoadCursor(ctx context.Context, name string) (uint64, bool, error) {
	if err := checkID(name); err != nil {
		return 0, false, err
	}
	pos, err := s.client.Get(ctx, s.cursorKey(name)).Uint64()
	if errors.Is(err, redis.Nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("redisstore: load cursor %q: %w", name, err)
	}
	return pos, true, nil
}

// SaveCursor saves pos under name if lease, on name, is still held.
func (s *Store) SaveCursor(ctx context.Context, bl broker.Lease, name string, pos uint64) error {
	l, ok := bl.(*lease)
	if !ok || l.store != s || l.id != name {
		return errors.New("redisstore: cursor saved under a lease of another name or store")
	}
	if !l.held() {
		return broker.ErrLockLost
	}
	res, err := cursorScript.Run(ctx, s.client, []string{s.cursorKey(name), s.lockKey(name)}, l.value, pos).Int64()
	if err != nil {
		return fmt.Errorf("redisstore: save cursor %q: %w", name, err)
	}
	if res != 1 {
		return broker.ErrLockLost
	}
	return nil
}
