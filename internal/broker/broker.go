package broker

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
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

	wmu     sync.Mutex // guards waiters
	waiters map[string]map[chan struct{}]struct{}

	life   sync.Mutex // guards closed, and orders wg.Add before wg.Wait
	closed bool
	wg     sync.WaitGroup // background refreshes, flights and attempts

	// bg is the context of work that outlives its callers (IdP calls,
	// storing their outcome); Close cancels it when it gives up waiting.
	bg      context.Context
	giveUp  context.CancelFunc
	closing chan struct{} // closed when Close begins

	unsubscribe func()
}

// slot is the local cache of one credential. Readers load e without locking;
// writers hold mu.
type slot struct {
	e       atomic.Pointer[entry]
	attempt atomic.Pointer[attempt] // this Broker's refresh under way, if any
	mu      sync.Mutex              // guards gen and epoch, and serializes stores to e
	gen     uint64                  // highest generation seen for the credential
	epoch   uint64                  // bumped by deletes and resets: fills read before are void
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
	unknown   bool // with StateReauthRequired: Record.OutcomeUnknown
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
	}
	b.bg, b.giveUp = context.WithCancel(context.Background())
	b.unsubscribe = store.Subscribe(b.onEvent)
	for _, e := range journaled {
		b.resume(e)
	}
	return b, nil
}

// Close stops new background work and waits for refreshes in flight to
// finish and their outcomes to be stored: an IdP call that outlived its
// callers gets its answer read, and an outcome the Store refuses for now is
// retried, for up to RefreshReplyWait plus LockTTL (an outcome kept in the
// Journal is left there at once, to be stored by the next run). Then it gives
// up on the rest and unsubscribes from the store. Calls after Close fail with
// ErrShuttingDown.
func (b *Broker) Close() error {
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
	timer := time.NewTimer(b.cfg.closeWait())
	select {
	case <-done:
	case <-timer.C:
		b.giveUp()
		<-done
	}
	timer.Stop()
	b.giveUp()
	b.unsubscribe()
	return nil
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
func (b *Broker) onEvent(ev Event) {
	if ev.Reset {
		b.mu.RLock()
		for _, s := range b.slots {
			s.forget()
		}
		b.mu.RUnlock()
		b.wakeAll()
		return
	}
	b.mu.RLock()
	s := b.slots[ev.ID]
	b.mu.RUnlock()
	if s != nil {
		switch {
		case ev.Deleted:
			s.forget()
		case ev.Generation > 0:
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

func (s *slot) forget() {
	s.mu.Lock()
	s.epoch++
	s.gen = 0
	s.e.Store(nil)
	s.mu.Unlock()
}

// lookup returns the cached entry of a credential, or nil.
func (b *Broker) lookup(id string) *entry {
	b.mu.RLock()
	s := b.slots[id]
	b.mu.RUnlock()
	if s == nil {
		return nil
	}
	return s.e.Load()
}

// slotFor returns the slot of a credential, creating it.
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
		s = &slot{}
		b.slots[id] = s
	}
	return s
}

// epoch returns the credential's cache epoch, to be passed to fill for a
// record read after this call.
func (b *Broker) epoch(id string) uint64 {
	s := b.slotFor(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch
}

// fill caches rec unless the cache has since seen a newer generation, a
// delete or a reset.
func (b *Broker) fill(rec *Record, epoch uint64) *entry {
	s := b.slotFor(rec.ID)
	e := b.newEntry(rec)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epoch != epoch || rec.Generation < s.gen {
		return e
	}
	s.gen = rec.Generation
	s.e.Store(e)
	return e
}

func (b *Broker) newEntry(rec *Record) *entry {
	e := &entry{
		gen:       rec.Generation,
		token:     rec.Token,
		state:     rec.State,
		allowed:   rec.AllowedClients,
		lastError: rec.LastError,
		unknown:   rec.OutcomeUnknown,
	}
	e.aheadAt = b.aheadAt(rec)
	return e
}

// aheadAt is when a background refresh of rec's token should start: the
// refresh-ahead window before expiry, but not before a backoff ends.
func (b *Broker) aheadAt(rec *Record) time.Time {
	at := rec.Token.Expiry.Add(-b.aheadWindow(rec))
	if rec.NextAttemptAt.After(at) {
		at = rec.NextAttemptAt
	}
	return at
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
