package broker

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// WatchToken's fan-out. Each credential watched on this Broker has one hub:
// a goroutine woken by the Store's events for the credential (onEvent kicks
// it), which works out what the credential now looks like from the local
// cache, or with one Store read when the cache lost it (an event for a new
// generation drops the entry), and publishes that as an immutable view. Every
// watcher of the credential waits on the view's next channel and sends what
// it has not sent yet. So a refresh costs each replica one Store read, however
// many clients watch, and nothing is added to GetToken's cached path.

// TokenUpdate is one message of WatchToken: a token and the generation of
// the record it belongs to, or, with Rotating, the notice that the token of
// Generation is being replaced and must not be used any more.
type TokenUpdate struct {
	Token      Token // zero with Rotating
	Generation uint64
	// Rotating says that the credential's IdP revokes the previous access
	// token (Credential.RevokesPreviousAccessToken) and a refresh of the
	// token of Generation was announced: it dies once the IdP answers.
	Rotating bool
}

// WatchToken calls send with the credential's current token, valid for at
// least minValid (refreshed first if need be, as GetToken does), and then
// with each new one once it is stored, on whichever replica; with a
// credential whose IdP revokes the previous access token, also with a
// Rotating notice once a refresh of the current token is announced.
// Generations only grow; a token superseded before it could be sent is
// skipped. Before the current token has less than minValid left, the
// credential is refreshed.
//
// The caller must be allowed to read the credential; the first token's
// errors are GetToken's. WatchToken returns when ctx ends (ctx's error), when
// send fails (its error), when the Broker closes (ErrShuttingDown), or with
// the error a GetToken would now get when the credential is deleted, no
// longer allows the caller, goes to REAUTH_REQUIRED or cannot be read. A
// refresh that fails for a while, or a Store that does not answer, does not
// end it.
func (b *Broker) WatchToken(ctx context.Context, id string, minValid time.Duration, send func(TokenUpdate) error) error {
	if err := ValidateID("credential_id", id); err != nil {
		return err
	}
	if err := validateDuration("min_valid", minValid); err != nil {
		return err
	}
	caller, _ := CallerFrom(ctx)
	// The first token as GetToken hands it out: authorization, its errors,
	// a refresh if need be. The hub's view, read after, is at least as new.
	if _, err := b.GetToken(ctx, id, minValid); err != nil {
		return err
	}
	h, leave := b.joinHub(id)
	if h == nil {
		return &Error{Kind: ErrShuttingDown, CredentialID: id}
	}
	defer leave()
	w := watcher{b: b, caller: caller, id: id, minValid: minValid, send: send}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	retry := b.cfg.PollInterval
	for {
		v := h.cur.Load()
		again, err := w.step(ctx, v)
		if err != nil {
			return err
		}
		switch {
		case again: // a refresh failed for now: try again later
			timer.Reset(retry)
			retry = min(2*retry, 30*time.Second)
		case w.sent != 0:
			retry = b.cfg.PollInterval
			if d := time.Until(w.refreshAt); d > 0 {
				timer.Reset(d)
			} else if !v.initial {
				timer.Reset(retry)
			}
		}
		select {
		case <-v.next:
		case <-timer.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// watcher is one WatchToken call's state.
type watcher struct {
	b        *Broker
	caller   Caller
	id       string
	minValid time.Duration
	send     func(TokenUpdate) error

	sent      uint64    // the generation of the last token sent
	noticed   uint64    // the generation of the last Rotating notice sent
	refreshAt time.Time // when the token sent has only minValid left
}

// step sends what view v holds that w has not sent. again says that the
// credential needed a refresh for minValid that failed for now.
func (w *watcher) step(ctx context.Context, v *view) (again bool, err error) {
	b := w.b
	if v.initial {
		return false, nil
	}
	switch {
	case v.gone != nil:
		if errors.Is(v.gone, ErrShuttingDown) {
			return false, &Error{Kind: ErrShuttingDown, CredentialID: w.id}
		}
		return false, b.readErr(w.caller, w.id, v.gone)
	case !b.mayRead(w.caller, v.allowed):
		return false, &Error{Kind: ErrPermissionDenied, CredentialID: w.id}
	case v.state == StateReauthRequired:
		kind := ErrReauthRequired
		if v.unknown {
			kind = ErrOutcomeUnknown
		}
		return false, &Error{Kind: kind, CredentialID: w.id, Detail: v.lastError}
	case v.rotating:
		if v.gen >= w.sent && v.gen > w.noticed {
			if err := w.send(TokenUpdate{Generation: v.gen, Rotating: true}); err != nil {
				return false, err
			}
			w.noticed = v.gen
		}
		return false, nil
	}
	m, err := b.minValid(w.id, w.minValid, &v.token)
	if err != nil {
		return false, err
	}
	now := time.Now()
	if v.gen > w.sent && v.token.Valid(now, m) {
		if err := w.send(TokenUpdate{Token: v.token, Generation: v.gen}); err != nil {
			return false, err
		}
		w.sent = v.gen
		w.refreshAt = v.token.Expiry.Add(-m)
		return false, nil
	}
	if v.gen >= w.sent && !v.token.Valid(now, m) {
		// Nothing newer, and the token is about to have less than
		// minValid left: refresh it as GetToken would (one flight however
		// many watch); the hub sends the outcome once stored.
		if _, err := b.GetToken(ctx, w.id, w.minValid); err != nil {
			if retryable(err) {
				return true, nil
			}
			return false, err
		}
	}
	return false, nil
}

// retryable reports whether a failed refresh may succeed later without an
// operator: the infrastructure failed, not the credential.
func retryable(err error) bool {
	for _, kind := range []error{ErrIdPUnavailable, ErrLockTimeout, ErrStoreUnavailable, ErrRateLimited} {
		if errors.Is(err, kind) {
			return true
		}
	}
	return false
}

// hubs are this Broker's hubs by credential.
type hubs struct {
	mu sync.Mutex // guards m and every hub's refs
	m  map[string]*hub
}

// hub is the fan-out of one credential.
type hub struct {
	id   string
	refs int           // watchers; guarded by hubs.mu
	kick chan struct{} // buffered: an event for the credential arrived
	quit chan struct{} // closed when the last watcher leaves
	seen atomic.Uint64 // the highest generation an event announced
	cur  atomic.Pointer[view]
}

// view is what a hub knows of its credential. It is immutable; next is
// closed once a newer view replaces it.
type view struct {
	initial   bool // nothing known yet
	gen       uint64
	token     Token
	state     State
	unknown   bool
	lastError string
	allowed   []string
	rotating  bool  // a refresh of token is announced, and it revokes it
	gone      error // ErrNotFound, ErrUnreadable or ErrShuttingDown: the watch ends
	next      chan struct{}
}

// same reports whether v and o show the same thing to watchers.
func (v *view) same(o *view) bool {
	return !v.initial && !o.initial && v.gen == o.gen && v.rotating == o.rotating && v.state == o.state &&
		errors.Is(v.gone, o.gone) && errors.Is(o.gone, v.gone) && slices.Equal(v.allowed, o.allowed)
}

// joinHub returns the credential's hub, started if need be, and the
// function to call when the watcher leaves; nil once the Broker closes.
func (b *Broker) joinHub(id string) (*hub, func()) {
	b.hubs.mu.Lock()
	defer b.hubs.mu.Unlock()
	h := b.hubs.m[id]
	if h == nil {
		if !b.enter() {
			return nil, nil
		}
		h = &hub{id: id, kick: make(chan struct{}, 1), quit: make(chan struct{})}
		h.cur.Store(&view{initial: true, next: make(chan struct{})})
		if b.hubs.m == nil {
			b.hubs.m = make(map[string]*hub)
		}
		b.hubs.m[id] = h
		go b.runHub(h)
	}
	h.refs++
	var once sync.Once
	return h, func() {
		once.Do(func() {
			b.hubs.mu.Lock()
			defer b.hubs.mu.Unlock()
			if h.refs--; h.refs == 0 {
				delete(b.hubs.m, id)
				close(h.quit)
			}
		})
	}
}

// kickHubs wakes the hub of the credential an event concerns (every hub on
// a Reset). It runs on the Store's goroutine and does not block.
func (b *Broker) kickHubs(ev Event) {
	if ev.Released && ev.Generation == 0 {
		return // a lease released: nothing a watcher sees changed
	}
	b.hubs.mu.Lock()
	defer b.hubs.mu.Unlock()
	if ev.Reset {
		for _, h := range b.hubs.m {
			h.poke()
		}
		return
	}
	h := b.hubs.m[ev.ID]
	if h == nil {
		return
	}
	switch {
	case ev.Deleted:
		h.seen.Store(0) // a credential put again starts over
	case ev.Generation > 0:
		for {
			cur := h.seen.Load()
			if ev.Generation <= cur || h.seen.CompareAndSwap(cur, ev.Generation) {
				break
			}
		}
	}
	h.poke()
}

func (h *hub) poke() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// publish makes v the hub's view, unless it shows nothing new.
func (h *hub) publish(v *view) {
	old := h.cur.Load()
	if v.same(old) {
		return
	}
	v.next = make(chan struct{})
	h.cur.Store(v)
	close(old.next)
}

// runHub keeps a hub's view current until its last watcher leaves or the
// Broker closes. It also starts the refresh ahead of expiry that a GetToken
// would start, since watchers' clients may not call GetToken at all.
func (b *Broker) runHub(h *hub) {
	defer b.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	delay := b.cfg.PollInterval
	for {
		timer.Stop()
		e, rotating, err := b.hubEntry(h)
		switch {
		case err == nil:
			delay = b.cfg.PollInterval
			h.publish(&view{gen: e.gen, token: e.token, state: e.state, unknown: e.unknown, lastError: e.lastError,
				allowed: e.allowed, rotating: rotating})
			if e.state == StateActive && !rotating && e.token.AccessToken != "" && !e.triggered.Load() {
				if d := time.Until(e.aheadAt); d > 0 {
					timer.Reset(d)
				} else if e.triggered.CompareAndSwap(false, true) {
					b.refreshAhead(h.id, e.token.Expiry)
				}
			}
		case errors.Is(err, ErrNotFound), errors.Is(err, ErrUnreadable):
			h.publish(&view{gone: err})
		default: // the Store does not answer: try again
			timer.Reset(delay)
			delay = min(2*delay, 5*time.Second)
		}
		select {
		case <-h.kick:
		case <-timer.C:
		case <-h.quit:
			return
		case <-b.closing:
			h.publish(&view{gone: ErrShuttingDown})
			return
		}
	}
}

// hubEntry returns the credential's entry as it now stands, from the cache
// when it holds an entry verified since the last Reset and no older than the
// events announced, else from a Store read (shared with GetToken's), and
// whether a refresh of its token is announced and revokes it.
func (b *Broker) hubEntry(h *hub) (*entry, bool, error) {
	ctx, cancel := context.WithTimeout(b.bg, b.cfg.LockWait)
	defer cancel()
	var rec *Record
	for i := 0; ; i++ {
		s, e := b.lookup(h.id)
		if e != nil && b.verified(e) && e.gen >= h.seen.Load() {
			return e, e.revokes && (e.pending || b.rotating(s, e.gen)), nil
		}
		if i == 2 {
			// Read twice (the first read may have begun before the event)
			// and still not cached: the slot was evicted, the fill void, or
			// the Store went back to an older generation (fill reports and
			// repairs that). The read stands.
			return b.newEntry(rec), rec.RevokesPreviousAccessToken && b.rotatingRec(rec), nil
		}
		var err error
		if rec, err = b.readShared(ctx, h.id); err != nil {
			return nil, false, err
		}
	}
}
