package clientsdk

import (
	"context"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"
	"weak"

	"golang.org/x/oauth2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tbv1 "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// Watching. A Client keeps one TokenService/WatchToken stream per credential
// that its TokenSources use (unless WithoutWatch or WithWatch(false)): the
// broker pushes each new token the moment it is stored, on whichever replica,
// and the stream replaces the cache of every TokenSource of the credential at
// once, so the cache holds the new token before the old one dies. A token
// whose generation was superseded is not handed out once the new one is
// known: not from the cache, and not from a broker reply that lags behind.
//
// For a credential whose IdP revokes the previous access token on refresh,
// the broker announces each refresh before it calls the IdP (a rotating
// message): the caches drop the old token and callers wait for its successor
// (at most maxRotationWait, then they ask the broker, which makes them wait
// too).
//
// The stream is opened by the first broker call of a TokenSource, and closed
// once no TokenSource of the credential is left (garbage-collected) or the
// Client is closed. It reconnects with jittered exponential backoff (100ms
// doubling to 10s); a broker without WatchToken (codes.Unimplemented) is
// asked again after a minute. Whenever the stream is down, TokenSources work
// as without it: their cache, and unary GetToken calls.

// Reconnect delays of a watch stream.
const (
	watchBackoffMin     = 100 * time.Millisecond
	watchBackoffMax     = 10 * time.Second
	watchUnsupportedGap = time.Minute // after codes.Unimplemented
	// maxRotationWait bounds how long a caller waits for the successor of a
	// token the broker announced it is replacing before it asks the broker.
	maxRotationWait = 5 * time.Second
	// keptSuperseded is how many superseded access tokens a watch
	// remembers, to refuse broker replies that lag behind.
	keptSuperseded = 8
)

// errSuperseded is what a broker call that kept answering with a token the
// watch knows was superseded fails with (a replica far behind the others).
var errSuperseded = toError(status.Error(codes.Unavailable,
	"clientsdk: the broker answered with an access token already superseded; try again"))

// WithoutWatch makes the Client's TokenSources rely on their cache and unary
// GetToken calls alone, without WatchToken streams.
func WithoutWatch() DialOption {
	return func(c *dialConfig) { c.noWatch = true }
}

// WithWatch says whether the TokenSource shares its Client's WatchToken
// stream of the credential (the default, unless the Client was dialled
// WithoutWatch).
func WithWatch(on bool) TokenSourceOption {
	return func(s *TokenSource) { s.noWatch = !on }
}

// watches are a Client's watch streams by credential.
type watches struct {
	ctx    context.Context // ends at Client.Close
	cancel context.CancelFunc
	off    bool // WithoutWatch

	mu sync.Mutex
	m  map[string]*watch
}

func newWatches(off bool) *watches {
	ctx, cancel := context.WithCancel(context.Background())
	return &watches{ctx: ctx, cancel: cancel, off: off, m: make(map[string]*watch)}
}

// watch is one credential's stream and what it told.
type watch struct {
	c      *Client
	id     string
	cancel context.CancelFunc

	mu      sync.Mutex // guards the rest; taken before any TokenSource's mu
	sources map[weak.Pointer[TokenSource]]struct{}
	live    bool          // a stream is up and delivered its first message
	gen     uint64        // the highest generation received
	tok     *oauth2.Token // the token of gen; nil after a rotating message for gen
	rotGen  uint64        // the generation a rotating message was last received for
	pushes  uint64        // tokens received
	restart bool          // the last stream ended as the credential went away: generations start over
	old     [keptSuperseded]string
	oldN    int
	changed chan struct{} // closed and replaced on every change
}

// join registers s with its credential's watch, started if need be, and
// returns it; nil when watching is off.
func (c *Client) join(s *TokenSource) *watch {
	ws := c.watches
	if ws == nil || ws.off || s.noWatch {
		return nil
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.ctx.Err() != nil {
		return nil
	}
	w := ws.m[s.id]
	if w == nil {
		ctx, cancel := context.WithCancel(ws.ctx)
		w = &watch{c: c, id: s.id, cancel: cancel, sources: make(map[weak.Pointer[TokenSource]]struct{}), changed: make(chan struct{})}
		ws.m[s.id] = w
		go w.run(ctx)
	}
	p := weak.Make(s)
	w.mu.Lock()
	w.sources[p] = struct{}{}
	w.mu.Unlock()
	runtime.AddCleanup(s, func(p weak.Pointer[TokenSource]) { w.leave(p) }, p)
	return w
}

// leave forgets a TokenSource that was garbage-collected; the last one to
// go ends the stream.
func (w *watch) leave(p weak.Pointer[TokenSource]) {
	ws := w.c.watches
	ws.mu.Lock()
	defer ws.mu.Unlock()
	w.mu.Lock()
	delete(w.sources, p)
	empty := len(w.sources) == 0
	w.mu.Unlock()
	if empty && ws.m[w.id] == w {
		delete(ws.m, w.id)
		w.cancel()
	}
}

// close ends every watch (Client.Close).
func (ws *watches) close() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.cancel()
	clear(ws.m)
}

// run keeps a stream open until ctx ends, reconnecting with backoff.
func (w *watch) run(ctx context.Context) {
	backoff := watchBackoffMin
	for {
		delivered, err := w.stream(ctx)
		w.down(status.Code(err))
		if ctx.Err() != nil {
			return
		}
		wait := backoff
		switch status.Code(err) {
		case codes.Canceled:
			return // the connection was closed (a Client made with New over a closed cc)
		case codes.Unimplemented:
			wait = watchUnsupportedGap
		default:
			if delivered {
				backoff, wait = watchBackoffMin, watchBackoffMin
			} else {
				backoff = min(2*backoff, watchBackoffMax)
			}
		}
		wait = wait/2 + rand.N(wait) // jitter: 0.5 to 1.5 times
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// stream receives one stream's messages until it fails.
func (w *watch) stream(ctx context.Context) (delivered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs, err := w.c.tc.WatchToken(ctx, &tbv1.WatchTokenRequest{CredentialId: w.id})
	if err != nil {
		return false, err
	}
	for {
		m, err := cs.Recv()
		if err != nil {
			return delivered, err
		}
		delivered = true
		w.apply(m)
	}
}

// notifyLocked wakes everyone waiting for a change; w.mu is held.
func (w *watch) notifyLocked() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// down records that the stream is not up, having ended with code. A
// credential deleted (or no longer readable) may be put again, with
// generations starting over.
func (w *watch) down(code codes.Code) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if code == codes.NotFound || code == codes.PermissionDenied {
		w.restart = true
	}
	if w.live {
		w.live = false
		w.notifyLocked()
	}
}

// supersede remembers tok's access token as superseded; w.mu is held.
func (w *watch) supersede(tok *oauth2.Token) {
	if tok == nil {
		return
	}
	w.old[w.oldN%keptSuperseded] = tok.AccessToken
	w.oldN++
}

// unsupersede forgets access as superseded; w.mu is held.
func (w *watch) unsupersede(access string) {
	for i := range min(w.oldN, keptSuperseded) {
		if w.old[i] == access {
			w.old[i] = ""
		}
	}
}

// superseded reports whether access is a token the stream superseded; w.mu
// is held.
func (w *watch) superseded(access string) bool {
	for i := range min(w.oldN, keptSuperseded) {
		if w.old[i] == access {
			return true
		}
	}
	return false
}

// rotating reports whether the broker announced that the newest token it
// sent is being replaced; w.mu is held.
func (w *watch) rotating() bool { return w.live && w.rotGen != 0 && w.rotGen >= w.gen }

// apply takes one message in: a new token replaces the cache of every
// TokenSource of the credential; a rotating message drops the token it
// names from them.
func (w *watch) apply(m *tbv1.WatchTokenResponse) {
	w.mu.Lock()
	defer w.mu.Unlock()
	defer w.notifyLocked()
	w.live = true
	if w.restart {
		w.restart, w.gen, w.rotGen = false, 0, 0
	}
	gen := m.GetGeneration()
	if gen < w.gen {
		return // from a replica behind the one before a reconnect
	}
	if m.GetRotating() {
		w.supersede(w.tok) // the token of gen, or an older one
		w.gen, w.tok, w.rotGen = gen, nil, gen
		w.eachSource(func(s *TokenSource) {
			if e := s.cur.Load(); e != nil && (e.gen == 0 || e.gen <= gen) {
				s.cur.Store(nil)
			}
		})
		return
	}
	tok, err := newToken(m.GetAccessToken(), m.GetTokenType(), m.GetExpiresAt())
	if err != nil {
		return
	}
	if w.tok != nil && w.tok.AccessToken != tok.AccessToken {
		w.supersede(w.tok)
	}
	w.unsupersede(tok.AccessToken) // current again (a refresh that failed keeps the token)
	if w.tok != nil && w.tok.AccessToken == tok.AccessToken && w.tok.Expiry.Equal(tok.Expiry) {
		tok = w.tok // the same token again: keep sharing one *oauth2.Token
	}
	w.gen, w.tok = gen, tok
	w.pushes++
	w.eachSource(func(s *TokenSource) {
		if e := s.cur.Load(); e == nil || e.tok.AccessToken != tok.AccessToken || e.gen != gen {
			s.cur.Store(s.newEntry(tok, gen))
		}
	})
}

// eachSource calls f with each live TokenSource, holding its mu; w.mu is
// held.
func (w *watch) eachSource(f func(*TokenSource)) {
	for p := range w.sources {
		if s := p.Value(); s != nil {
			s.mu.Lock()
			f(s)
			s.mu.Unlock()
		}
	}
}

// successor waits, while the stream is up and the broker announced that
// the newest token is being replaced, for its successor, at most
// maxRotationWait or until ctx ends. It returns the successor and its
// generation, or nil when there was nothing to wait for or it did not come.
func (w *watch) successor(ctx context.Context) (*oauth2.Token, uint64) {
	var timeout <-chan time.Time
	for waited := false; ; waited = true {
		w.mu.Lock()
		rotating, tok, gen, changed := w.rotating(), w.tok, w.gen, w.changed
		w.mu.Unlock()
		if !rotating {
			if waited && tok != nil {
				return tok, gen
			}
			return nil, 0
		}
		if timeout == nil {
			t := time.NewTimer(maxRotationWait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-changed:
		case <-timeout:
			return nil, 0
		case <-ctx.Done():
			return nil, 0
		}
	}
}

// pushCount returns how many tokens the stream delivered so far.
func (w *watch) pushCount() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pushes
}
