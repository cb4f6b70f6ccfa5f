// Package redisstore keeps tokenbroker's credential records in Redis and
// coordinates refreshes between broker replicas. Store implements broker.Store
// on a go-redis UniversalClient (single node, Sentinel or Cluster) with
// github.com/bsm/redislock for the per-credential refresh lock.
//
// Keys, for the default prefix "tokenbroker" and credential id ID:
//
//	tokenbroker:{ID}:cred   hash: gen (generation), data (the record), lease
//	                        (the lock value of the last Commit), pending and
//	                        pending_id (a pending refresh's marker), settled
//	                        (the marker id of the last Settle)
//	tokenbroker:{ID}:lock   the redislock lock of the credential
//	tokenbroker:index       sorted set of all credential ids, for List
//	tokenbroker:events      Pub/Sub channel of change events
//
// The hash tag {ID} puts a credential's record and lock in one Cluster slot,
// so Commit checks the lock and writes the record in one Lua script, and
// Get, TryLock, Commit, Release and Delete depend on no other slot: in a
// Cluster, a master that is down makes only its own credentials
// unavailable.
//
// The index lives in a slot of its own and is kept outside the scripts,
// after them and without failing them: Commit adds the id (ZADD, on every
// Commit) once the record is stored, Delete removes it once the record is
// gone, and List skips ids whose record is gone. A Commit whose index write
// fails still succeeds: its id waits in the Store's memory and a background
// retry adds it once the index answers (IndexStats counts both), later
// Commits queue theirs without waiting for the index again, and List adds
// the Store's queued ids before reading. So while the index's master is
// down, records are still committed and only List fails; afterwards the
// index catches up. Queued ids die with the process; the credential's next
// Commit adds its id again, and RepairIndex rebuilds the index from the
// records on every master (after a broker died with ids queued, or the
// index's master lost its data). A Delete racing a re-creation of the same
// id can leave a record out of the index until its next Commit.
//
// Records are the JSON of broker.Record, sealed with a seal.Keyring (the
// credential id as additional data) when one is configured. Plaintext records
// found while a keyring is set are read (a migration path) and sealed on their
// next write; records that fail to open are errors.
//
// Leases returned by TryLock also have a method Extend(ctx, ttl) error, which
// extends the lock (redislock's Refresh) and moves Deadline, or reports
// broker.ErrLockLost.
//
// Calls are bounded by their context only if the client honours context
// deadlines (go-redis's ContextTimeoutEnabled); NewClient's clients do.
//
// Redis must keep what it acknowledged: run it with maxmemory-policy
// noeviction (an evicted lock or record breaks the guarantees) and, so that a
// restart loses nothing, appendonly yes.
//
// Replication is asynchronous: a master that fails right after a Commit can
// be replaced by a replica that never saw it, and the store then goes back
// to a spent refresh token. With Options.MinReplicaAcks, Commit sends the
// fenced script and WAIT in one pipeline over one connection to the
// credential's master (with a Cluster, the node that owns the slot, since
// WAIT has no key to route by and only counts the writes of its own
// connection) and fails with ErrNotReplicated when too few replicas
// acknowledge it in time. WAIT narrows the window; it does not make the
// store strongly consistent (a partitioned master may still acknowledge
// writes that a failover then discards).
package redisstore

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bsm/redislock"
	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/seal"
)

// DefaultPrefix is the key prefix used when Options.Prefix is empty.
const DefaultPrefix = "tokenbroker"

var (
	//go:embed commit.lua
	commitLua    string
	commitScript = redis.NewScript(commitLua)

	//go:embed delete.lua
	deleteLua    string
	deleteScript = redis.NewScript(deleteLua)

	//go:embed release.lua
	releaseLua    string
	releaseScript = redis.NewScript(releaseLua)
)

// Options configure a Store.
type Options struct {
	// Prefix starts every key and the event channel; DefaultPrefix if empty.
	// Brokers that share credentials use the same prefix. It may not contain
	// braces or spaces.
	Prefix string

	// Keyring seals records at rest. Without one, New fails unless
	// AllowPlaintext is set.
	Keyring *seal.Keyring

	// AllowPlaintext lets a Store without a Keyring write records,
	// refresh tokens and client secrets included, in plaintext.
	AllowPlaintext bool

	// MinReplicaAcks is how many replicas of the credential's master must
	// acknowledge a Commit (Redis WAIT, on the connection that ran the
	// script) before it succeeds; short of that, Commit returns an error
	// wrapping ErrNotReplicated. 0 waits for none: replication stays
	// asynchronous, and a failover right after a Commit can bring back the
	// record it replaced. AutoReplicaAcks (or any negative value) waits for
	// one replica when the master reports a replica in sync (INFO, cached
	// for a few seconds per master), and for none otherwise. On Redis 7.2
	// and later with appendonly on, a Commit that waits at all also waits
	// until the master has fsynced it (WAITAOF 1 0).
	MinReplicaAcks int

	// ReplicaAckTimeout bounds that wait; DefaultReplicaAckTimeout if zero.
	// It is cut to what is left of the Commit's context and kept below the
	// client's read timeout.
	ReplicaAckTimeout time.Duration
}

// Store is a broker.Store in Redis. It is safe for concurrent use.
type Store struct {
	client  redis.UniversalClient
	locker  *redislock.Client
	keyring *seal.Keyring
	prefix  string
	index   string
	channel string

	// Event listener tuning; tests in this package shorten them.
	pingEvery  time.Duration // silence on the event connection before a PING
	backoffMin time.Duration // first pause after the event connection failed
	backoffMax time.Duration

	ix *indexer // ids still to be added to the index

	minAcks int           // Options.MinReplicaAcks, AutoReplicaAcks if negative
	ackWait time.Duration // Options.ReplicaAckTimeout
	repl    *replCache

	mu       sync.Mutex
	subs     map[*subscriber]struct{}
	listener *listener // nil while nobody is subscribed
	closed   bool
}

var _ broker.Store = (*Store)(nil)

// New returns a Store on client. The client stays the caller's to close,
// after Close.
func New(client redis.UniversalClient, opts Options) (*Store, error) {
	if client == nil {
		return nil, errors.New("redisstore: nil client")
	}
	if opts.Keyring == nil && !opts.AllowPlaintext {
		return nil, errors.New("redisstore: no keyring: records would be stored in plaintext (set AllowPlaintext to allow it)")
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if strings.ContainsAny(prefix, "{} \t\r\n") {
		return nil, fmt.Errorf("redisstore: prefix %q contains a brace or a space", prefix)
	}
	minAcks := opts.MinReplicaAcks
	if minAcks < 0 {
		minAcks = AutoReplicaAcks
	}
	if _, ring := client.(*redis.Ring); ring && minAcks != 0 {
		return nil, errors.New("redisstore: MinReplicaAcks needs a single-node, Sentinel or Cluster client, not a Ring")
	}
	ackWait := opts.ReplicaAckTimeout
	if ackWait < 0 {
		return nil, fmt.Errorf("redisstore: negative ReplicaAckTimeout %v", ackWait)
	}
	if ackWait == 0 {
		ackWait = DefaultReplicaAckTimeout
	}
	return &Store{
		client:     client,
		locker:     redislock.New(client),
		keyring:    opts.Keyring,
		prefix:     prefix,
		index:      prefix + ":index",
		channel:    prefix + ":events",
		pingEvery:  5 * time.Second,
		backoffMin: 100 * time.Millisecond,
		backoffMax: 2 * time.Second,
		subs:       make(map[*subscriber]struct{}),
		ix:         newIndexer(),
		minAcks:    minAcks,
		ackWait:    ackWait,
		repl:       &replCache{ttl: replInfoTTL, byAddr: make(map[string]replInfo)},
	}, nil
}

func (s *Store) recordKey(id string) string { return s.prefix + ":{" + id + "}:cred" }
func (s *Store) lockKey(id string) string   { return s.prefix + ":{" + id + "}:lock" }

// checkID rejects ids that would break the key layout; the domain allows
// only [A-Za-z0-9._:-] anyway.
func checkID(id string) error {
	if id == "" || strings.ContainsAny(id, "{} \t\r\n") {
		return fmt.Errorf("redisstore: invalid credential id %q", id)
	}
	return nil
}

// Get returns the record of a credential in one round trip, or
// broker.ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (*broker.Record, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	vals, err := s.client.HMGet(ctx, s.recordKey(id), "gen", "data", "pending").Result()
	if err != nil {
		return nil, fmt.Errorf("redisstore: get %q: %w", id, err)
	}
	return s.decode(id, vals)
}

// List returns up to limit records whose ids sort after the given one, in id
// order. A limit below 1 returns nothing.
func (s *Store) List(ctx context.Context, after string, limit int) ([]*broker.Record, error) {
	if limit < 1 {
		return nil, nil
	}
	// This Store's own Commits whose index entry is still queued: if the
	// index is still unreachable, the listing below fails too.
	_ = s.flushIndex(ctx)
	var out []*broker.Record
	// Each round consumes at least one index entry, so the loop ends.
	for len(out) < limit {
		want := limit - len(out)
		lo := "-"
		if after != "" {
			lo = "(" + after
		}
		ids, err := s.client.ZRangeByLex(ctx, s.index, &redis.ZRangeBy{Min: lo, Max: "+", Count: int64(want)}).Result()
		if err != nil {
			return nil, fmt.Errorf("redisstore: list: %w", err)
		}
		if len(ids) == 0 {
			break
		}
		cmds := make([]*redis.SliceCmd, len(ids))
		if _, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.HMGet(ctx, s.recordKey(id), "gen", "data", "pending")
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("redisstore: list: %w", err)
		}
		for i, id := range ids {
			if checkID(id) != nil {
				continue // not written by a Store
			}
			rec, err := s.decode(id, cmds[i].Val())
			if errors.Is(err, broker.ErrNotFound) {
				continue // deleted, or a Commit that did not happen
			}
			if errors.Is(err, broker.ErrUnreadable) {
				rec = &broker.Record{Credential: broker.Credential{ID: id}, State: broker.StateUnreadable}
				err = nil
			}
			if err != nil {
				return nil, err
			}
			out = append(out, rec)
		}
		after = ids[len(ids)-1]
		if len(ids) < want {
			break
		}
	}
	return out, nil
}

// Delete removes a credential and announces it. Deleting a missing one is not
// an error. A lease on the credential stays held; its Commit then fails with
// broker.ErrConflict unless it creates the credential anew, which starts over
// at generation 1. Delete depends only on the credential's own slot: a
// failure to remove the id from the index is counted in IndexStats and
// leaves an entry that List skips.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	s.unqueueIndex(id)
	if err := deleteScript.Run(ctx, s.client, []string{s.recordKey(id)}, s.channel, id).Err(); err != nil {
		return fmt.Errorf("redisstore: delete %q: %w", id, err)
	}
	s.removeFromIndex(ctx, id)
	return nil
}

// TryLock obtains the refresh lock of a credential for ttl (whole
// milliseconds, at least one) without waiting, or returns broker.ErrLockHeld.
func (s *Store) TryLock(ctx context.Context, id string, ttl time.Duration) (broker.Lease, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	if ttl < time.Millisecond {
		return nil, fmt.Errorf("redisstore: lock ttl %v is below 1ms", ttl)
	}
	ttl = ttl.Truncate(time.Millisecond)
	start := time.Now() // before Redis starts the TTL
	lk, err := s.locker.Obtain(ctx, s.lockKey(id), ttl, nil)
	if errors.Is(err, redislock.ErrNotObtained) {
		return nil, broker.ErrLockHeld
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: lock %q: %w", id, err)
	}
	l := &lease{store: s, id: id, lock: lk, value: lk.Token() + lk.Metadata()}
	l.deadline.Store(deadline(start, ttl))
	return l, nil
}

// Commit stores rec under lease in one Lua script that checks the lock and
// the generation, bumps the generation and publishes the change. It returns
// the new generation, broker.ErrLockLost or broker.ErrConflict; in both cases
// nothing was written. With Options.MinReplicaAcks, it then waits for the
// replicas, and returns an error wrapping ErrNotReplicated when they fall
// short: the record is written on the master but may not survive a
// failover. Repeating a Commit with the same lease and generation after an
// error whose outcome is unknown (a timeout) or after ErrNotReplicated is
// safe: it returns the new generation if the first one was applied (and,
// with MinReplicaAcks, is now acknowledged).
func (s *Store) Commit(ctx context.Context, bl broker.Lease, rec *broker.Record) (uint64, error) {
	l, ok := bl.(*lease)
	if !ok || l.store != s {
		return 0, errors.New("redisstore: commit under a lease of another store")
	}
	if rec.ID != l.id {
		return 0, fmt.Errorf("redisstore: commit of %q under the lease of %q", rec.ID, l.id)
	}
	if !l.held() {
		return 0, broker.ErrLockLost
	}
	data, err := s.encode(rec)
	if err != nil {
		return 0, err
	}
	next := rec.Generation + 1
	keys := []string{s.recordKey(rec.ID), s.lockKey(rec.ID)}
	args := []any{l.value, rec.Generation, next, data, s.channel, rec.ID}
	var res int64
	var ackErr error
	if s.minAcks == 0 {
		res, err = commitScript.Run(ctx, s.client, keys, args...).Int64()
	} else {
		res, ackErr, err = s.runAcked(ctx, commitScript, rec.ID, keys, args)
	}
	if err != nil {
		return 0, fmt.Errorf("redisstore: commit %q: %w", rec.ID, err)
	}
	switch res {
	case 1:
		// Only now, and without failing the Commit: see index.go.
		s.addToIndex(ctx, rec.ID)
		if ackErr != nil {
			return 0, ackErr
		}
		return next, nil
	case -1:
		return 0, broker.ErrLockLost
	case -2:
		return 0, broker.ErrConflict
	}
	return 0, fmt.Errorf("redisstore: commit %q: unexpected script result %d", rec.ID, res)
}

// encode returns the stored form of rec: its JSON, sealed if there is a
// keyring.
func (s *Store) encode(rec *broker.Record) ([]byte, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("redisstore: encode %q: %w", rec.ID, err)
	}
	if s.keyring == nil {
		return b, nil
	}
	sealed, err := s.keyring.Seal(b, []byte(rec.ID))
	if err != nil {
		return nil, fmt.Errorf("redisstore: seal %q: %w", rec.ID, err)
	}
	return sealed, nil
}

// unreadable reports a stored record that cannot be turned into a record.
func unreadable(id, why string) error {
	return fmt.Errorf("redisstore: credential %q: %s: %w", id, why, broker.ErrUnreadable)
}

// SealedWith returns the ID of the key a stored record is sealed under, ""
// for a plaintext record, or broker.ErrNotFound.
func (s *Store) SealedWith(ctx context.Context, id string) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	data, err := s.client.HGet(ctx, s.recordKey(id), "data").Bytes()
	if errors.Is(err, redis.Nil) {
		return "", broker.ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("redisstore: sealed-with %q: %w", id, err)
	}
	if !seal.IsSealed(data) {
		return "", nil
	}
	key, err := seal.KeyID(data)
	if err != nil {
		return "", fmt.Errorf("redisstore: credential %q: %w: %w", id, err, broker.ErrUnreadable)
	}
	return key, nil
}

// PrimaryKey returns the ID of the key new records are sealed under, or ""
// without a keyring.
func (s *Store) PrimaryKey() string {
	if s.keyring == nil {
		return ""
	}
	return s.keyring.Primary()
}

var _ broker.Resealer = (*Store)(nil)

// decode turns the reply of HMGET gen data pending into a record.
func (s *Store) decode(id string, vals []any) (*broker.Record, error) {
	if len(vals) != 3 {
		return nil, fmt.Errorf("redisstore: get %q: %d values in reply", id, len(vals))
	}
	data, ok := vals[1].(string)
	if !ok {
		return nil, broker.ErrNotFound
	}
	genS, _ := vals[0].(string)
	gen, err := strconv.ParseUint(genS, 10, 64)
	if err != nil || gen == 0 {
		return nil, unreadable(id, "bad stored generation")
	}
	b := []byte(data)
	switch {
	case seal.IsSealed(b):
		if s.keyring == nil {
			return nil, unreadable(id, "sealed, and no keyring is configured")
		}
		if b, _, err = s.keyring.Open(b, []byte(id)); err != nil {
			return nil, fmt.Errorf("redisstore: credential %q: %w: %w", id, err, broker.ErrUnreadable)
		}
	case len(b) > 0 && b[0] == '{':
		// Plaintext: written without a keyring, sealed on its next write.
	default:
		return nil, unreadable(id, "stored record in an unknown format")
	}
	rec := new(broker.Record)
	if err := json.Unmarshal(b, rec); err != nil {
		// json's errors may quote the input; keep only that it failed.
		return nil, unreadable(id, "stored record is not valid JSON")
	}
	if rec.ID != id {
		return nil, unreadable(id, "stored record has another id")
	}
	rec.Generation = gen
	if rec.Pending, err = decodePending(id, vals[2]); err != nil {
		return nil, err
	}
	return rec, nil
}

// deadline is when a lock obtained at start for ttl must be assumed lost: a
// margin before its TTL runs out, against the two clocks' drift.
func deadline(start time.Time, ttl time.Duration) time.Time {
	margin := min(max(ttl/100, time.Millisecond), 100*time.Millisecond, ttl/2)
	return start.Add(ttl - margin)
}

// lease is a held redislock lock on one credential.
type lease struct {
	store    *Store
	id       string
	lock     *redislock.Lock
	value    string // the lock's stored value: token followed by metadata
	deadline atomic.Value
	released atomic.Bool
}

// ID is the credential the lease is on.
func (l *lease) ID() string { return l.id }

// Deadline is when the lease must be assumed lost unless extended.
func (l *lease) Deadline() time.Time { return l.deadline.Load().(time.Time) }

func (l *lease) held() bool {
	return !l.released.Load() && time.Now().Before(l.Deadline())
}

// Extend keeps the lease for ttl from now, or returns broker.ErrLockLost when
// it is no longer held.
func (l *lease) Extend(ctx context.Context, ttl time.Duration) error {
	if ttl < time.Millisecond {
		return fmt.Errorf("redisstore: lock ttl %v is below 1ms", ttl)
	}
	if !l.held() {
		return broker.ErrLockLost
	}
	ttl = ttl.Truncate(time.Millisecond)
	start := time.Now()
	err := l.lock.Refresh(ctx, ttl, nil)
	if errors.Is(err, redislock.ErrNotObtained) {
		return broker.ErrLockLost
	}
	if err != nil {
		return fmt.Errorf("redisstore: extend lock %q: %w", l.id, err)
	}
	l.deadline.Store(deadline(start, ttl))
	return nil
}

// Release gives the lock up and announces it, so that waiters on every
// broker try again at once, in one script on the lock's own slot. Releasing
// a lost lock is not an error.
func (l *lease) Release(ctx context.Context) error {
	l.released.Store(true)
	s := l.store
	if err := releaseScript.Run(ctx, s.client, []string{s.lockKey(l.id)}, l.value, s.channel, "r 0 "+l.id).Err(); err != nil {
		return fmt.Errorf("redisstore: release lock %q: %w", l.id, err)
	}
	return nil
}
