package redisstore

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The index is a sorted set in one slot, on one master, while each record
// lives in its credential's slot. Commit never waits for it before the
// record is stored: the fenced script writes the record, and only then
// does Commit add the id to the index (ZADD, idempotent). If that fails,
// the Commit still succeeds; the id is kept in the Store's memory and added
// by a background retry once the index's master answers again, and meanwhile
// further Commits skip the index and queue their ids, so that a frozen index
// master costs at most one indexTimeout. List first adds the ids this Store
// still holds, so that it lists its own Commits. Should the process die
// with ids queued, the credential's next Commit (every Commit adds its id)
// or RepairIndex puts them back.

// Index write timing; tests in this package shorten them.
const (
	defaultIndexTimeout  = 500 * time.Millisecond // one index write in Commit or Delete
	defaultIndexRetryMin = 100 * time.Millisecond // first pause of the background retry
	defaultIndexRetryMax = 5 * time.Second
)

// IndexStats describe the upkeep of the credential index.
type IndexStats struct {
	// Pending is the number of stored credentials whose ids this Store has
	// yet to add to the index: List on another Store does not see them yet.
	Pending int
	// Failures counts index writes that failed since New (each one then
	// queued or, for a Delete, left an entry that List skips).
	Failures uint64
}

// indexer holds the ids whose index entry is still to be written.
type indexer struct {
	timeout            time.Duration
	retryMin, retryMax time.Duration

	failures atomic.Uint64

	mu       sync.Mutex
	pending  map[string]uint64 // id: sequence number of its latest queueing
	seq      uint64
	retrying bool          // the retry goroutine runs
	closed   bool          // Close was called: no new goroutine
	stop     chan struct{} // closed by Close
	done     chan struct{} // closed when the retry goroutine returned
}

func newIndexer() *indexer {
	return &indexer{
		timeout:  defaultIndexTimeout,
		retryMin: defaultIndexRetryMin,
		retryMax: defaultIndexRetryMax,
		pending:  make(map[string]uint64),
		stop:     make(chan struct{}),
	}
}

// IndexStats reports the upkeep of the credential index.
func (s *Store) IndexStats() IndexStats {
	s.ix.mu.Lock()
	defer s.ix.mu.Unlock()
	return IndexStats{Pending: len(s.ix.pending), Failures: s.ix.failures.Load()}
}

// addToIndex adds a committed credential's id to the index, or queues it
// when the index cannot be written now. It never fails.
func (s *Store) addToIndex(ctx context.Context, id string) {
	s.ix.mu.Lock()
	if len(s.ix.pending) > 0 {
		// The index failed a moment ago; the retry takes this id along.
		s.ix.seq++
		s.ix.pending[id] = s.ix.seq
		s.ix.mu.Unlock()
		return
	}
	s.ix.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, s.ix.timeout)
	defer cancel()
	if err := s.client.ZAdd(ctx, s.index, redis.Z{Member: id}).Err(); err != nil {
		s.ix.failures.Add(1)
		s.queueIndex(id)
	}
}

// queueIndex keeps id for the retry goroutine and starts it if needed.
func (s *Store) queueIndex(id string) {
	s.ix.mu.Lock()
	defer s.ix.mu.Unlock()
	s.ix.seq++
	s.ix.pending[id] = s.ix.seq
	if s.ix.retrying || s.ix.closed {
		return
	}
	s.ix.retrying = true
	s.ix.done = make(chan struct{})
	go s.retryIndex(s.ix.done)
}

// unqueueIndex forgets a queued id (its credential is being deleted).
func (s *Store) unqueueIndex(id string) {
	s.ix.mu.Lock()
	delete(s.ix.pending, id)
	s.ix.mu.Unlock()
}

// retryIndex writes the queued ids with a bounded backoff until none is
// left or the Store is closed.
func (s *Store) retryIndex(done chan struct{}) {
	defer close(done)
	wait := s.ix.retryMin
	for {
		t := time.NewTimer(wait)
		select {
		case <-s.ix.stop:
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.ix.timeout)
		err := s.flushIndex(ctx)
		cancel()
		s.ix.mu.Lock()
		if len(s.ix.pending) == 0 {
			s.ix.retrying = false
			s.ix.mu.Unlock()
			return
		}
		s.ix.mu.Unlock()
		if err != nil {
			s.ix.failures.Add(1)
			wait = min(2*wait, s.ix.retryMax)
		}
	}
}

// flushIndex adds the queued ids to the index and forgets those it added
// (unless queued again meanwhile, as a Delete and a new Commit would).
func (s *Store) flushIndex(ctx context.Context) error {
	s.ix.mu.Lock()
	snap := make(map[string]uint64, len(s.ix.pending))
	ids := make([]string, 0, len(s.ix.pending))
	for id, seq := range s.ix.pending {
		snap[id] = seq
		ids = append(ids, id)
	}
	s.ix.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	if _, err := s.zaddIDs(ctx, ids); err != nil {
		return err
	}
	s.ix.mu.Lock()
	for id, seq := range snap {
		if s.ix.pending[id] == seq {
			delete(s.ix.pending, id)
		}
	}
	s.ix.mu.Unlock()
	return nil
}

// zaddIDs adds ids to the index and returns how many were not in it.
func (s *Store) zaddIDs(ctx context.Context, ids []string) (int, error) {
	const batch = 500
	added := 0
	for len(ids) > 0 {
		n := min(len(ids), batch)
		zs := make([]redis.Z, n)
		for i, id := range ids[:n] {
			zs[i] = redis.Z{Member: id}
		}
		k, err := s.client.ZAdd(ctx, s.index, zs...).Result()
		if err != nil {
			return added, err
		}
		added += int(k)
		ids = ids[n:]
	}
	return added, nil
}

// removeFromIndex removes a deleted credential's id from the index. A
// failure leaves an entry without a record, which List skips; it is
// counted, not returned.
func (s *Store) removeFromIndex(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(ctx, s.ix.timeout)
	defer cancel()
	if err := s.client.ZRem(ctx, s.index, id).Err(); err != nil {
		s.ix.failures.Add(1)
	}
}

// closeIndex stops the retry goroutine and waits for it; queued ids are
// dropped (their next Commit or RepairIndex adds them).
func (s *Store) closeIndex() {
	s.ix.mu.Lock()
	if s.ix.closed {
		s.ix.mu.Unlock()
		return
	}
	s.ix.closed = true
	close(s.ix.stop)
	done := s.ix.done
	s.ix.mu.Unlock()
	if done != nil {
		<-done
	}
}

// RepairIndex adds to the index every credential that has a record: it
// scans the keys of every master (SCAN, a few thousand keys per round trip)
// and returns how many ids were missing from the index. Run it after the
// index was lost (a master restarted without its data) or a broker died
// with index writes still queued (see IndexStats); it is safe at any time
// and alongside Commits and Deletes, but costs a scan of every key.
func (s *Store) RepairIndex(ctx context.Context) (int, error) {
	var mu sync.Mutex
	var ids []string
	scan := func(ctx context.Context, c redis.Cmdable) error {
		var found []string
		it := c.Scan(ctx, 0, s.prefix+":{*}:cred", 1000).Iterator()
		for it.Next(ctx) {
			id, ok := strings.CutPrefix(it.Val(), s.prefix+":{")
			if !ok {
				continue
			}
			if id, ok = strings.CutSuffix(id, "}:cred"); ok && checkID(id) == nil {
				found = append(found, id)
			}
		}
		if err := it.Err(); err != nil {
			return err
		}
		mu.Lock()
		ids = append(ids, found...)
		mu.Unlock()
		return nil
	}
	var err error
	switch c := s.client.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return scan(ctx, n) })
	case *redis.Ring:
		err = c.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error { return scan(ctx, n) })
	default:
		err = scan(ctx, s.client)
	}
	// Add what was found even if a master failed: its records are
	// unreachable anyway.
	added, zerr := s.zaddIDs(ctx, ids)
	if err == nil {
		err = zerr
	}
	if err != nil {
		return added, fmt.Errorf("redisstore: repair index: %w", err)
	}
	return added, nil
}
