package clientsdk

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
)

// DefaultEarlyExpiry is how long before its expiry a cached token stops being
// handed out, unless WithEarlyExpiry says otherwise.
const DefaultEarlyExpiry = 10 * time.Second

// maxRounds bounds how many finished broker calls of other callers one caller
// waits for before it gives up (see TokenSource.get).
const maxRounds = 8

// TokenSource hands out the access tokens of one credential. It implements
// oauth2.TokenSource.
//
// Concurrency contract: all methods are safe for concurrent use. A fresh
// cached token is returned without locking or allocating. When the cache is
// empty or stale, at most one broker call is in flight per TokenSource: the
// first caller makes it, with its own context, and every caller arriving
// meanwhile waits for it (or for its own context to end) and shares its token
// or its error. If that first caller's context ends before the broker answers,
// a waiting caller makes the call again with its own context.
//
// Unless watching is off (WithWatch, WithoutWatch), the source also shares
// its Client's WatchToken stream of the credential: every token the broker
// stores replaces the cache at once, and a token the broker announced it is
// replacing (credentials whose IdP revokes the previous access token) is not
// handed out; callers wait for its successor instead. See watch.go.
//
// The returned *oauth2.Token is shared by every caller until the cache is
// replaced: callers must not modify it.
type TokenSource struct {
	client      *Client
	id          string
	minValid    time.Duration
	earlyExpiry time.Duration
	now         func() time.Time // time.Now; replaced in tests
	noWatch     bool             // WithWatch(false)

	cur atomic.Pointer[entry] // the cached token; stored only with mu held

	mu     sync.Mutex // guards flight and w
	flight *call      // the broker call in progress, if any
	w      *watch     // the credential's watch, once joined (watch.go); nil without
	joined bool       // joining was tried
}

// entry is a cached token and when to stop handing it out.
type entry struct {
	tok     *oauth2.Token
	staleAt time.Time // zero: never (the broker gave no expiry)
	gen     uint64    // the generation a watch stream sent it with; 0 from a unary call
}

// call is a broker call that several callers share. Its results are written
// before done is closed.
type call struct {
	done     chan struct{}
	rejected string // for InvalidateToken: the rejected access token; "" for GetToken

	tok       *oauth2.Token
	err       error
	abandoned bool // the caller making the call gave up (its context ended)
}

// TokenSourceOption configures a TokenSource.
type TokenSourceOption func(*TokenSource)

// WithEarlyExpiry sets how long before its expiry a cached token is treated
// as stale and fetched again (default DefaultEarlyExpiry). For short-lived
// tokens it is capped at half the token's remaining lifetime when it was
// received, so the cache is still used for half of it. A longer WithMinValid
// wins.
func WithEarlyExpiry(d time.Duration) TokenSourceOption {
	return func(s *TokenSource) { s.earlyExpiry = max(d, 0) }
}

// WithMinValid sets the minimum validity of every token the source hands
// out: the broker is asked for tokens valid at least that long, and a
// cached token goes stale once less than d is left (or less than the early
// expiry, if that is longer; see WithEarlyExpiry). Without it the broker's
// own default applies to its answers and the cache uses the early expiry
// alone. The broker fails with ErrInvalidArgument (reason
// MIN_VALID_TOO_LONG) when the credential's tokens do not live long enough
// (d over half their lifetime).
func WithMinValid(d time.Duration) TokenSourceOption {
	return func(s *TokenSource) { s.minValid = max(d, 0) }
}

// TokenSource returns a TokenSource for the credential with the given ID.
// Make one per credential and share it: the cache lives in it.
func (c *Client) TokenSource(credentialID string, opts ...TokenSourceOption) *TokenSource {
	s := &TokenSource{client: c, id: credentialID, earlyExpiry: DefaultEarlyExpiry, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Token returns a valid token, from the cache when it is fresh. It is
// TokenContext with context.Background(); prefer TokenContext where a
// context is at hand.
func (s *TokenSource) Token() (*oauth2.Token, error) {
	return s.TokenContext(context.Background())
}

// TokenContext returns a valid token, from the cache when it is fresh, else
// from the broker. Failures of the broker call are *Error.
func (s *TokenSource) TokenContext(ctx context.Context) (*oauth2.Token, error) {
	if e := s.cur.Load(); e != nil && s.fresh(e) {
		return e.tok, nil
	}
	return s.get(ctx, "")
}

// Invalidate reports that a resource server rejected the access token
// rejected (as the AccessToken of a token this source returned), and returns
// the token to use instead.
//
// If the cache already holds a different, fresh token, Invalidate returns it
// without calling the broker. Otherwise it calls the broker's
// InvalidateToken, which refreshes the credential only if rejected is still
// its current token, and replaces the cache with the answer. Concurrent
// Invalidate calls for the same token share one broker call.
//
// The broker may have nothing newer, and then says so in one of two ways:
// it returns the rejected token itself, when that is still its current one
// and a forced refresh of the credential is not possible now (they are
// rate-limited per credential); or it refuses the call with an *Error
// matching ErrRateLimited (and ErrUnavailable), for example when this
// client's invalidations come too fast. Either way there is no token to
// retry with: hand the caller the rejection it got, as Transport and the
// interceptors do. Other errors are the broker's failures, such as
// ErrReauthRequired.
func (s *TokenSource) Invalidate(ctx context.Context, rejected string) (*oauth2.Token, error) {
	if rejected == "" {
		return nil, errors.New("clientsdk: Invalidate needs the rejected access token")
	}
	return s.get(ctx, rejected)
}

// nothingNewer reports whether next and err, the results of
// Invalidate(ctx, rejected), leave the caller with no token other than the
// rejected one: Invalidate returned that very token, or failed with
// ErrRateLimited. A caller then gives up on a retry and reports the
// rejection it saw, not err.
func nothingNewer(next *oauth2.Token, err error, rejected string) bool {
	if err != nil {
		return errors.Is(err, ErrRateLimited)
	}
	return next.AccessToken == rejected
}

// fresh reports whether e may still be handed out.
func (s *TokenSource) fresh(e *entry) bool {
	return e.staleAt.IsZero() || s.now().Before(e.staleAt)
}

// usable reports whether e can answer a caller who saw rejected ("" for
// none) rejected.
func (s *TokenSource) usable(e *entry, rejected string) bool {
	return e != nil && e.tok.AccessToken != rejected && s.fresh(e)
}

// get returns a usable token, joining the broker call in flight or making
// one. rejected is "" for GetToken, or the token to invalidate.
func (s *TokenSource) get(ctx context.Context, rejected string) (*oauth2.Token, error) {
	for round := 1; ; round++ {
		s.mu.Lock()
		if e := s.cur.Load(); s.usable(e, rejected) {
			s.mu.Unlock()
			return e.tok, nil
		}
		c := s.flight
		if c == nil {
			c = &call{done: make(chan struct{}), rejected: rejected}
			s.flight = c
			s.mu.Unlock()
			s.do(ctx, c)
			return c.tok, c.err
		}
		s.mu.Unlock()

		select {
		case <-c.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		last := round == maxRounds
		switch {
		case c.abandoned && !last:
			// The caller who made the call gave up; try again.
		case c.err != nil:
			return nil, c.err
		case rejected == "" || c.tok.AccessToken != rejected || c.rejected == rejected || last:
			// A token other than the rejected one, or the broker's answer
			// to this very report (which may be the same token).
			return c.tok, nil
		default:
			// A GetToken call returned the very token this caller saw
			// rejected: it must still be reported, so go round again.
		}
	}
}

// do makes the broker call c, stores its token and wakes its waiters. With
// a watch (watch.go), a GetToken first waits for the successor of a token
// the broker announced it is replacing, and a reply that the stream already
// superseded is neither cached nor handed out: the call is made again after
// the stream's next change (twice at most, then it fails as unavailable).
func (s *TokenSource) do(ctx context.Context, c *call) {
	w := s.watch()
	var (
		tok *oauth2.Token
		gen uint64
		err error
	)
	for try := 1; ; try++ {
		if w != nil && c.rejected == "" {
			if tok, gen = w.successor(ctx); tok != nil {
				w.mu.Lock()
				break
			}
		}
		var pushes uint64
		if w != nil {
			pushes = w.pushCount()
		}
		if c.rejected == "" {
			tok, err = s.client.getToken(ctx, s.id, s.minValid)
		} else {
			tok, err = s.client.invalidateToken(ctx, s.id, c.rejected, s.minValid)
		}
		if w == nil {
			break
		}
		w.mu.Lock()
		if err != nil || !w.superseded(tok.AccessToken) {
			if err == nil && w.pushes != pushes {
				// The stream delivered a token during the call: as new
				// as the reply, or newer.
				if e := s.cur.Load(); e != nil && s.fresh(e) && e.tok.AccessToken != c.rejected {
					tok, gen = e.tok, e.gen
				}
			}
			break
		}
		changed := w.changed
		w.mu.Unlock()
		if try == 3 {
			tok, err = nil, errSuperseded
			w.mu.Lock()
			break
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	// With a watch, w.mu is held here: no message is applied between the
	// checks above and the store below.
	s.mu.Lock()
	if err == nil {
		if e := s.cur.Load(); e == nil || e.tok != tok {
			s.cur.Store(s.newEntry(tok, gen))
		}
	}
	c.tok, c.err = tok, err
	c.abandoned = err != nil && ctx.Err() != nil
	s.flight = nil
	s.mu.Unlock()
	if w != nil {
		w.mu.Unlock()
	}
	close(c.done)
}

// watch returns the credential's watch, joining it on first use; nil when
// watching is off.
func (s *TokenSource) watch() *watch {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.joined {
		s.joined = true
		s.mu.Unlock()
		w := s.client.join(s)
		s.mu.Lock()
		s.w = w
	}
	return s.w
}

// newEntry computes when tok goes stale, on the monotonic clock: at its
// expiry less the larger of the minimum validity and the early expiry (this
// one capped at half the time tok has left).
func (s *TokenSource) newEntry(tok *oauth2.Token, gen uint64) *entry {
	if tok.Expiry.IsZero() {
		return &entry{tok: tok, gen: gen}
	}
	now := s.now()
	left := tok.Expiry.Sub(now)
	margin := max(s.minValid, min(s.earlyExpiry, left/2))
	return &entry{tok: tok, staleAt: now.Add(left - margin), gen: gen}
}
