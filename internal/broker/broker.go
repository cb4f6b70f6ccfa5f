package broker

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// A Broker hands out access tokens for the credentials in its Store and
// refreshes them at most once at a time, across every Broker sharing the
// Store. It is safe for concurrent use. Close it to stop its background work.
type Broker struct {
	store Store
	up    Upstream
	cfg   Config
	obs   Observer

	flights singleflight.Group

	mu    sync.RWMutex // guards slots
	slots map[string]*slot
	// invalidations counts the deletes seen: a read that began when its
	// credential had no slot fills none if one happened meanwhile.
	invalidations atomic.Uint64
	// resets counts the Store's Reset events: entries filled from reads
	// that began before the last one may have missed events, and are
	// served (while valid) but verified again.
	resets atomic.Uint64
	// announces counts the refreshes announced (Event.PendingFrom) of
	// credentials without a slot: see entry.unsure.
	announces atomic.Uint64

	wmu     sync.Mutex // guards waiters
	waiters map[string]map[chan struct{}]struct{}

	ahead aheadWorkers // refreshes ahead of expiry, soonest expiry first

	life   sync.Mutex // guards closed, and orders wg.Add before wg.Wait
	closed bool
	wg     sync.WaitGroup // background refreshes, flights and attempts

	// bg is the context of work that outlives its callers (IdP calls,
	// storing their outcome); Close cancels it when it gives up waiting.
	bg      context.Context
	giveUp  context.CancelFunc
	closing chan struct{} // closed when Close begins

	unsubscribe func()

	hubs  hubs  // WatchToken's per-credential fan-out (watch.go)
	flows flows // authorization flows: the device pollers (authorize.go, device.go)
}

// slot is the local cache of one credential, made once its record was read.
// Readers load e without locking; writers hold mu.
type slot struct {
	e       atomic.Pointer[entry]
	attempt atomic.Pointer[attempt] // this Broker's refresh under way, if any
	used    atomic.Int64            // Unix second of the last lookup, for eviction
	settled atomic.Pointer[settled] // the last outcome this Broker stored, for repairs
	// regressedAt is when the Store was first found behind a generation
	// seen (Unix ns; 0: not now); repairing, that a repair is under way.
	regressedAt atomic.Int64
	repairing   atomic.Bool
	mu          sync.Mutex // guards gen and epoch, and serializes stores to e
	gen         uint64     // highest generation seen for the credential
	epoch       uint64     // bumped by deletes: fills read before are void

	// pendingFrom is the highest generation a refresh was announced from
	// (Event.PendingFrom): with a credential that revokes the previous
	// access token, the token of that generation is not handed out.
	pendingFrom atomic.Uint64
}

// entry is an immutable cached view of a record, but for triggered.
type entry struct {
	gen       uint64
	token     Token
	state     State
	allowed   []string
	aheadAt   time.Time   // when to start a background refresh
	triggered atomic.Bool // a background refresh was started from this entry
	lastError string
	unknown   bool   // with StateReauthRequired: Record.OutcomeUnknown
	host      string // of the token URL: the unit of IdP pacing
	revokes   bool   // Credential.RevokesPreviousAccessToken
	pending   bool   // the record had a pending refresh when read
	// unsure: with revokes, a refresh was announced of a credential without
	// a slot while the read that made the entry was under way: it is read
	// again before its token is handed out (revoke.go).
	unsure bool
	// resets is Broker.resets when the read that made the entry began:
	// behind it, the entry is unverified.
	resets    uint64
	verifying atomic.Bool // a read verifying the entry is under way
}

// reauthErr is the error for a credential whose cached state is
// REAUTH_REQUIRED.
func (e *entry) reauthErr(id string) error {
	kind := ErrReauthRequired
	if e.unknown {
		kind = ErrOutcomeUnknown
	}
	return &Error{Kind: kind, CredentialID: id, Detail: e.lastError}
}

// New returns a Broker over store that calls the IdP through up. It
// subscribes to the store's events at once. With a Journal, it first reads
// the outcomes a previous run left there and stores them in the background
// (fenced, so an outcome whose record moved on meanwhile is dropped).
func New(store Store, up Upstream, cfg Config) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	var journaled []JournalEntry
	if cfg.Journal != nil {
		var err error
		if journaled, err = cfg.Journal.Load(context.Background()); err != nil {
			return nil, err
		}
	}
	b := &Broker{
		store:   store,
		up:      up,
		cfg:     cfg,
		obs:     cfg.Observer,
		slots:   make(map[string]*slot),
		waiters: make(map[string]map[chan struct{}]struct{}),
		closing: make(chan struct{}),
		ahead:   aheadWorkers{queued: make(map[string]*aheadJob)},
	}
	b.bg, b.giveUp = context.WithCancel(context.Background())
	b.unsubscribe = store.Subscribe(b.onEvent)
	for _, e := range journaled {
		b.resume(e)
	}
	return b, nil
}

// Close is Shutdown with RefreshReplyWait plus LockTTL to finish the work
// in flight: the longest a refresh can need when the Store answers.
func (b *Broker) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.closeWait())
	defer cancel()
	return b.Shutdown(ctx)
}

// Shutdown stops new background work and waits, until ctx ends, for
// refreshes in flight to finish and their outcomes to be stored: an IdP call
// that outlived its callers gets its answer read, and an outcome the Store
// refuses for now is retried (an outcome kept in the Journal is left there
// at once, to be stored by the next run). Then it gives up on the rest and
// unsubscribes from the store; it returns ErrShuttingDown, saying how many
// refreshes it abandoned, if it gave up on any. Calls after Shutdown fail
// with ErrShuttingDown.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.life.Lock()
	if b.closed {
		b.life.Unlock()
		return nil
	}
	b.closed = true
	b.life.Unlock()
	close(b.closing)
	done := make(chan struct{})
	go func() {
		b.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		if ids := b.attempts(); len(ids) > 0 {
			err = &Error{Kind: ErrShuttingDown, Detail: fmt.Sprintf("%d refreshes abandoned (credentials %s); their pending markers stay for other replicas", len(ids), strings.Join(ids, ", "))}
		}
		b.giveUp()
		<-done
	}
	b.giveUp()
	b.unsubscribe()
	return err
}

// attempts lists the credentials of this Broker's refreshes under way, sorted.
func (b *Broker) attempts() []string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	var ids []string
	for id, s := range b.slots {
		if s.attempt.Load() != nil {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// enter registers one unit of background work; it fails once Close began.
func (b *Broker) enter() bool {
	b.life.Lock()
	defer b.life.Unlock()
	if b.closed {
		return false
	}
	b.wg.Add(1)
	return true
}

// onEvent keeps the local cache coherent with the Store and wakes waiters.
// After a Reset (events may have been missed) cached entries stay, and keep
// serving tokens that are still valid, but each is read again on its next
// use: a Store outage does not fail calls that a cached token can answer.
func (b *Broker) onEvent(ev Event) {
	defer b.kickHubs(ev) // WatchToken's fan-out (watch.go)
	if ev.Reset {
		b.resets.Add(1)
		b.wakeAll()
		b.wakeWatchers() // changes may have been missed
		b.recheckSettled()
		return
	}
	if ev.Change > 0 {
		b.wakeWatchers() // events.go
		return
	}
	switch {
	case ev.PendingFrom > 0:
		b.announced(ev.ID, ev.PendingFrom) // revoke.go; nobody waits for it
		return
	case ev.Deleted:
		b.drop(ev.ID)
	case ev.Generation > 0:
		b.mu.RLock()
		s := b.slots[ev.ID]
		b.mu.RUnlock()
		if s != nil {
			s.mu.Lock()
			if ev.Generation > s.gen {
				s.gen = ev.Generation
				s.e.Store(nil)
			}
			s.mu.Unlock()
		}
	}
	b.wake(ev.ID)
}

// drop forgets a deleted credential: its slot goes, and fills from reads
// that began before are void.
func (b *Broker) drop(id string) {
	b.invalidations.Add(1)
	b.mu.Lock()
	s := b.slots[id]
	delete(b.slots, id)
	b.mu.Unlock()
	if s != nil {
		s.mu.Lock()
		s.epoch++
		s.gen = 0
		s.e.Store(nil)
		s.mu.Unlock()
	}
}

// lookup returns the slot and cached entry of a credential, or nils.
func (b *Broker) lookup(id string) (*slot, *entry) {
	b.mu.RLock()
	s := b.slots[id]
	b.mu.RUnlock()
	if s == nil {
		return nil, nil
	}
	return s, s.e.Load()
}

// touch records a use of s at now, for eviction, writing only once a second.
func (s *slot) touch(now time.Time) {
	if sec := now.Unix(); s.used.Load() != sec {
		s.used.Store(sec)
	}
}

// slotFor returns the slot of a credential, creating it: only for a
// credential whose record was read. Beyond Config.MaxCached slots, the
// least recently used of a sample is evicted first.
func (b *Broker) slotFor(id string) *slot {
	b.mu.RLock()
	s := b.slots[id]
	b.mu.RUnlock()
	if s != nil {
		return s
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s = b.slots[id]; s == nil {
		if len(b.slots) >= b.cfg.MaxCached {
			b.evictLocked()
		}
		s = &slot{}
		s.touch(time.Now())
		b.slots[id] = s
	}
	return s
}

// evictSample is how many slots eviction looks at to find an old one.
const evictSample = 32

// evictLocked drops the least recently used of a sample of slots, leaving
// those with an attempt under way; b.mu is held. A dropped credential is
// read again on its next use.
func (b *Broker) evictLocked() {
	var victim string
	oldest := int64(1<<63 - 1)
	n := 0
	for id, s := range b.slots { // map order is random: a sample
		if s.attempt.Load() == nil {
			if u := s.used.Load(); u < oldest {
				victim, oldest = id, u
			}
		}
		if n++; n == evictSample {
			break
		}
	}
	if victim != "" {
		delete(b.slots, victim)
	}
}

// settled is an outcome this Broker stored: the marker and the record it
// settled (Generation is the one it was read at, the stored one is one
// more).
type settled struct {
	p   *Pending
	rec *Record
	at  time.Time // when it was stored
}

// recheckSettled reads again, after a Reset, the credentials whose outcome
// this Broker stored lately: a Reset follows a failover, which may have lost
// those outcomes, and this Broker is the one that can write them back (fill
// finds the regression and repairs it). It runs on one goroutine.
func (b *Broker) recheckSettled() {
	var ids []string
	horizon := time.Now().Add(-b.cfg.pendingBound())
	b.mu.RLock()
	for id, s := range b.slots {
		if st := s.settled.Load(); st != nil && st.at.After(horizon) {
			ids = append(ids, id)
		}
	}
	b.mu.RUnlock()
	if len(ids) == 0 || !b.enter() {
		return
	}
	go func() {
		defer b.wg.Done()
		for _, id := range ids {
			ctx, cancel := context.WithTimeout(b.bg, b.cfg.LockWait)
			_, _ = b.read(ctx, id) // a failed read leaves the entry as it was
			cancel()
		}
	}()
}

// readMark is what fill needs to know of the cache as a Store read began.
type readMark struct {
	s      *slot // the credential's slot then, or nil
	epoch  uint64
	gen    uint64 // the slot's generation then
	invals uint64
	resets uint64

	announces uint64 // Broker.announces then
}

// mark is taken before a Store read whose record is then passed to fill.
func (b *Broker) mark(id string) readMark {
	m := readMark{invals: b.invalidations.Load(), resets: b.resets.Load(), announces: b.announces.Load()}
	b.mu.RLock()
	s := b.slots[id]
	b.mu.RUnlock()
	if s != nil {
		s.mu.Lock()
		m.s, m.epoch, m.gen = s, s.epoch, s.gen
		s.mu.Unlock()
	}
	return m
}

// read reads a credential's record from the Store and caches it. Its
// errors are the Store's.
func (b *Broker) read(ctx context.Context, id string) (*Record, error) {
	m := b.mark(id)
	rec, err := b.store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	b.fill(rec, m)
	return rec, nil
}

// fill caches rec, read after m was taken, unless the cache has since seen
// a newer generation or a delete of the credential (or its slot was
// evicted). It returns the entry either way.
func (b *Broker) fill(rec *Record, m readMark) *entry {
	if rec.Authorization != nil {
		b.adopt(rec) // a device flow open: poll it too (device.go)
	}
	e := b.newEntry(rec)
	e.resets = m.resets
	e.unsure = e.revokes && m.s == nil && b.announces.Load() != m.announces
	var s *slot
	if m.s != nil {
		b.mu.RLock()
		s = b.slots[rec.ID]
		b.mu.RUnlock()
		if s != m.s {
			return e
		}
	} else {
		if b.invalidations.Load() != m.invals {
			return e
		}
		s = b.slotFor(rec.ID)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.s != nil && s.epoch == m.epoch && rec.Generation < m.gen {
		// Read after a newer generation was seen: the Store went back.
		b.regressed(s, rec, m.gen)
		return e
	}
	if (m.s != nil && s.epoch != m.epoch) || rec.Generation < s.gen {
		return e
	}
	s.gen = rec.Generation
	s.e.Store(e)
	s.regressedAt.Store(0)
	return e
}

// regressed reports a Store that answered with generation rec.Generation of
// a credential after seen was seen, and writes back the outcome this Broker
// stored if it is the one lost: fenced on the regressed record's marker, or
// under the lease, in the background, one try at a time, on each read that
// finds the regression until one lands. It is reported when first found
// and when repaired. s.mu is held.
func (b *Broker) regressed(s *slot, rec *Record, seen uint64) {
	first := s.regressedAt.CompareAndSwap(0, time.Now().UnixNano())
	ev := RegressionEvent{CredentialID: rec.ID, Seen: seen, Stored: rec.Generation}
	last := s.settled.Load()
	if last == nil || last.rec.Generation+1 != seen || last.rec.Generation < rec.Generation {
		if first {
			b.obs.Regressed(ev) // not this replica's outcome: reported once
		}
		return
	}
	// This replica stored the outcome the Store lost: it writes it back,
	// trying again on later reads until a try lands.
	if !s.repairing.CompareAndSwap(false, true) {
		return
	}
	if !b.enter() {
		s.repairing.Store(false)
		return
	}
	go func() {
		defer b.wg.Done()
		defer s.repairing.Store(false)
		ctx, cancel := context.WithTimeout(b.bg, b.cfg.LockWait)
		defer cancel()
		ev.Err = b.repair(ctx, rec, last)
		ev.Repaired = ev.Err == nil
		if first || ev.Repaired {
			b.obs.Regressed(ev)
		}
	}()
}

// repair writes last's record over cur, an older generation the Store went
// back to.
func (b *Broker) repair(ctx context.Context, cur *Record, last *settled) error {
	next := last.rec.Clone()
	next.Generation = cur.Generation
	m := b.mark(cur.ID)
	if cur.Pending != nil && cur.Pending.ID == last.p.ID && cur.Generation == last.rec.Generation {
		gen, err := b.store.Settle(ctx, last.p, next)
		if err == nil {
			next.Generation = gen
			b.fill(next, m)
		}
		return err
	}
	lease, err := b.acquire(ctx, cur.ID, nil)
	if err != nil {
		return err
	}
	defer b.release(ctx, lease)
	fresh, err := b.store.Get(ctx, cur.ID)
	if err != nil {
		return err
	}
	if fresh.Generation >= last.rec.Generation+1 {
		return nil // moved on meanwhile
	}
	next.Generation = fresh.Generation
	gen, err := b.store.Commit(ctx, lease, next)
	if err == nil {
		next.Generation = gen
		b.fill(next, m)
	}
	return err
}

// verify reads a credential again in the background when its cached entry
// may have missed events (a Reset since it was filled), at most one read at
// a time per entry.
func (b *Broker) verify(id string, e *entry) {
	if e.resets == b.resets.Load() || !e.verifying.CompareAndSwap(false, true) || !b.enter() {
		return
	}
	go func() {
		defer b.wg.Done()
		ctx, cancel := context.WithTimeout(b.bg, b.cfg.LockWait)
		defer cancel()
		_, err := b.read(ctx, id)
		switch {
		case err == nil:
		case errors.Is(err, ErrNotFound):
			b.drop(id)
		default:
			e.verifying.Store(false) // the Store still does not answer: a later use tries again
		}
	}()
}

func (b *Broker) newEntry(rec *Record) *entry {
	e := &entry{
		gen:       rec.Generation,
		token:     rec.Token,
		state:     rec.State,
		allowed:   rec.AllowedClients,
		lastError: rec.LastError,
		unknown:   rec.OutcomeUnknown,
		host:      tokenHost(rec.TokenURL),
		revokes:   rec.RevokesPreviousAccessToken,
		pending:   rec.Pending != nil,
	}
	e.aheadAt = b.aheadAt(rec)
	return e
}

// aheadAt is when a background refresh of rec's token should start: the
// refresh-ahead window before expiry, but not before a backoff ends.
func (b *Broker) aheadAt(rec *Record) time.Time {
	ahead := b.aheadWindow(rec)
	at := rec.Token.Expiry.Add(-ahead + jitter(rec.ID, rec.Generation, ahead/4))
	if rec.NextAttemptAt.After(at) {
		at = rec.NextAttemptAt
	}
	return at
}

// jitter is a fraction of span, the same on every replica for one
// generation of a credential: credentials whose tokens expire together start
// their refreshes spread over the first quarter of the ahead window, not
// all at once.
func jitter(id string, gen uint64, span time.Duration) time.Duration {
	if span <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	var g [8]byte
	binary.LittleEndian.PutUint64(g[:], gen)
	_, _ = h.Write(g[:])
	return time.Duration(h.Sum64() % uint64(span))
}

// aheadWindow is how long before expiry a background refresh starts: the
// credential's setting or the default, at most half the token's lifetime.
func (b *Broker) aheadWindow(rec *Record) time.Duration {
	ahead := rec.RefreshAhead
	if ahead == 0 {
		ahead = b.cfg.DefaultRefreshAhead
	}
	if lt := rec.Token.Lifetime(); lt > 0 && ahead > lt/2 {
		ahead = lt / 2
	}
	return ahead
}

// watch registers for wake-ups about a credential; call stop when done.
func (b *Broker) watch(id string) (wake <-chan struct{}, stop func()) {
	ch := make(chan struct{}, 1)
	b.wmu.Lock()
	m := b.waiters[id]
	if m == nil {
		m = make(map[chan struct{}]struct{})
		b.waiters[id] = m
	}
	m[ch] = struct{}{}
	b.wmu.Unlock()
	return ch, func() {
		b.wmu.Lock()
		delete(m, ch)
		if len(m) == 0 { // m is still b.waiters[id]: it goes only once empty
			delete(b.waiters, id)
		}
		b.wmu.Unlock()
	}
}

func (b *Broker) wake(id string) {
	b.wmu.Lock()
	for ch := range b.waiters[id] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	b.wmu.Unlock()
}

func (b *Broker) wakeAll() {
	b.wmu.Lock()
	for _, m := range b.waiters {
		for ch := range m {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	b.wmu.Unlock()
}

// mayRead reports whether the caller may read tokens of a credential that
// allows the given clients.
func (b *Broker) mayRead(c Caller, allowed []string) bool {
	if b.cfg.Open {
		return true
	}
	if c.ID == "" {
		return false
	}
	for _, a := range allowed {
		if a == c.ID {
			return true
		}
	}
	return false
}

// mayAdmin reports whether the caller may call the admin methods.
func (b *Broker) mayAdmin(c Caller) bool {
	return b.cfg.Open || c.Admin
}

// randomID returns 16 random bytes in hex.
func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	return hex.EncodeToString(b[:])
}

func sameToken(a, b string) bool {
	return len(a) == len(b) && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
