package fakeidp

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"
)

// Errors returned by Start.
var (
	ErrStarted = errors.New("fakeidp: server already started")
	ErrClosed  = errors.New("fakeidp: server closed")
)

// Defaults for zero Options fields.
const (
	DefaultAccessTokenTTL = time.Hour
	DefaultGraceWindow    = 30 * time.Second
	defaultAddr           = "127.0.0.1:0"
	maxBodyBytes          = 64 << 10
	shutdownTimeout       = 5 * time.Second
)

// Paths served by a Server.
const (
	TokenPath    = "/token"
	ResourcePath = "/resource"
)

// Rotation is what a successful refresh does with the presented refresh token.
type Rotation int

// Rotation modes.
const (
	// Rotate answers each refresh with a new refresh token and spends the
	// presented one. The default.
	Rotate Rotation = iota
	// NoRotation answers each refresh with the presented refresh token, which
	// stays valid.
	NoRotation
	// OmitRefreshToken answers without a refresh_token field; the presented
	// refresh token stays valid (RFC 6749 section 6).
	OmitRefreshToken
)

func (r Rotation) String() string {
	switch r {
	case Rotate:
		return "rotate"
	case NoRotation:
		return "no-rotation"
	case OmitRefreshToken:
		return "omit-refresh-token"
	}
	return "unknown"
}

// ReusePolicy is how the token endpoint answers a spent refresh token that is
// presented again. Only Rotate spends refresh tokens.
//
// The grace policies accept a replay of a spent refresh token only within
// the grace window (SetGraceWindow) that starts when the token was first
// spent, and only while the family has not been refreshed since, that is
// while none of the tokens that replaced it has been used: the replay of a
// token two rotations old is always a reuse. Outside that, each falls back
// to a refusal, as its IdP does.
type ReusePolicy int

// Reuse policies.
const (
	// RevokeFamily answers 400 invalid_grant and revokes the whole family:
	// its live refresh tokens and every access token it issued die. The
	// default, and what Auth0, Okta and Ory Hydra do without a grace
	// period.
	RevokeFamily ReusePolicy = iota
	// Grace answers a replay within the grace window with the same new
	// pair again (a fresh access token only if that one has expired
	// meanwhile). Outside the window it behaves as RevokeFamily.
	Grace
	// DexInvalidRequest answers 400 invalid_request with Dex's description
	// ("already been claimed") and revokes nothing: Dex with
	// reuseInterval 0.
	DexInvalidRequest
	// DexReuseInterval is Dex's reuseInterval (3 s by default in Dex; set
	// the window with SetGraceWindow): a replay within the window answers
	// the same successor refresh token with a new access token each time.
	// Outside the window it behaves as DexInvalidRequest: 400
	// invalid_request, nothing revoked.
	DexReuseInterval
	// GraceNewPair is the grace period of Okta (0 to 60 s, 30 s by
	// default), Auth0's reuse interval and Ory Hydra's
	// rotation_grace_period: each replay within the window mints a new
	// pair, and the successors minted earlier from the same token stay
	// valid too. Once one of those siblings is used, the family continues
	// from it and the others die unused (TokenInfo.Superseded); presenting
	// one of them then is a reuse. (Okta keeps both valid until one is
	// used, as here; Hydra keeps all of them valid, which is more lenient.)
	// Outside the window it behaves as RevokeFamily.
	GraceNewPair
)

func (p ReusePolicy) String() string {
	switch p {
	case RevokeFamily:
		return "revoke-family"
	case Grace:
		return "grace"
	case DexInvalidRequest:
		return "dex-invalid-request"
	case DexReuseInterval:
		return "dex-reuse-interval"
	case GraceNewPair:
		return "grace-new-pair"
	}
	return "unknown"
}

// Options configure a Server. The zero value is a valid configuration
// without clients.
type Options struct {
	// Addr is the TCP address Start listens on; "127.0.0.1:0" when empty.
	Addr string
	// Clients maps a client ID to its secret. The empty secret registers a
	// public client. More secrets per client can be added with
	// AddClientSecret.
	Clients map[string]string
	// AccessTokenTTL is the lifetime of issued access tokens;
	// DefaultAccessTokenTTL when zero or negative.
	AccessTokenTTL time.Duration
	// Rotation is the initial rotation mode (Rotate when zero).
	Rotation Rotation
	// OnReuse is the initial reuse policy (RevokeFamily when zero).
	OnReuse ReusePolicy
	// GraceWindow is how long after a rotation the grace policies (Grace,
	// DexReuseInterval, GraceNewPair) accept a replay of the spent token;
	// DefaultGraceWindow when zero or negative. See SetGraceWindow.
	GraceWindow time.Duration
	// RevokePreviousAccessToken makes each refresh that mints an access
	// token revoke every access token the family issued before, as Ory
	// Hydra v2 and Salesforce do; see SetRevokePreviousAccessToken.
	RevokePreviousAccessToken bool
	// Latency delays every token request; see SetLatency.
	Latency time.Duration
	// DropAbandoned drops, unprocessed, a token request whose client goes
	// away while it waits; by default it is processed anyway. See
	// SetDropAbandoned.
	DropAbandoned bool
	// FailureRate is the probability in [0, 1] that a token request fails
	// with 503; see SetFailureRate.
	FailureRate float64
	// RandSeed seeds the generator behind FailureRate, so a run's faults
	// can be repeated.
	RandSeed uint64
	// Now, when set, is the Server's clock: it decides when access tokens
	// expire and when a grace window ends, and stamps Event.Time. Tests
	// that must not wait real time pass a fake clock. Latency and stalls
	// are real time regardless. time.Now when nil. It must be safe for
	// concurrent use.
	Now func() time.Time
	// OnEvent, when set, is called once for every request to /token and
	// /resource, synchronously on the request's goroutine and before the
	// answer (if any) is written. It must be safe for concurrent use and
	// quick.
	OnEvent func(Event)
}

// A Server is a fake identity provider. Its methods are safe for concurrent
// use. Create one with New.
type Server struct {
	addr    string
	now     func() time.Time
	onEvent func(Event)
	handler http.Handler
	done    chan struct{} // closed by Close; ends stalls and latency sleeps

	mu               sync.RWMutex // guards the token state and the grant knobs
	clients          map[string][]string
	refresh          map[string]*refreshEntry
	access           map[string]*accessEntry
	fams             map[string]*family // by ID
	families         int                // families created, for IDs
	rotation         Rotation
	onReuse          ReusePolicy
	grace            time.Duration
	ttl              time.Duration
	revokePrevAccess bool

	kmu           sync.Mutex // guards the fault knobs and the stall state
	latency       time.Duration
	dropAbandoned bool
	failNext      int
	failStatus    int
	rateNext      int
	retryAfter    time.Duration
	maxRate       int       // requests allowed per second; 0: no limit
	rateSec       time.Time // the second rateCount counts
	rateCount     int
	loseNext      int
	failureRate   float64
	rng           *rand.Rand
	// The stall state.
	paused    bool
	stallNext int
	release   chan struct{} // closed by Resume, then replaced
	held      int           // requests stalled now
	heldGone  int           // of which the client has gone away
	stallCh   chan struct{} // closed on each change of the stall state, then replaced

	stats counters
	az    *authz // the authorization grants (authorize.go)

	lmu       sync.Mutex // guards the lifecycle below
	closed    bool
	srv       *http.Server
	ln        net.Listener
	serveDone chan struct{}
}

// New returns a Server configured by opts. It serves nothing until Start is
// called or its Handler is mounted elsewhere.
func New(opts Options) *Server {
	s := &Server{
		addr:     opts.Addr,
		now:      opts.Now,
		onEvent:  opts.OnEvent,
		done:     make(chan struct{}),
		clients:  make(map[string][]string, len(opts.Clients)),
		refresh:  make(map[string]*refreshEntry),
		access:   make(map[string]*accessEntry),
		fams:     make(map[string]*family),
		release:  make(chan struct{}),
		stallCh:  make(chan struct{}),
		rotation: opts.Rotation,
		onReuse:  opts.OnReuse,
		rng:      rand.New(rand.NewPCG(opts.RandSeed, opts.RandSeed^0x9e3779b97f4a7c15)),
		az:       newAuthz(),

		revokePrevAccess: opts.RevokePreviousAccessToken,
	}
	if s.addr == "" {
		s.addr = defaultAddr
	}
	if s.now == nil {
		s.now = time.Now
	}
	for id, secret := range opts.Clients {
		s.clients[id] = []string{secret}
	}
	s.SetAccessTokenTTL(opts.AccessTokenTTL)
	s.SetGraceWindow(opts.GraceWindow)
	s.SetLatency(opts.Latency)
	s.SetDropAbandoned(opts.DropAbandoned)
	s.SetFailureRate(opts.FailureRate)

	mux := http.NewServeMux()
	mux.HandleFunc(TokenPath, s.handleToken)
	mux.HandleFunc(ResourcePath, s.handleResource)
	mux.HandleFunc(AuthorizePath, s.handleAuthorize)
	mux.HandleFunc(DeviceAuthorizationPath, s.handleDeviceAuthorization)
	mux.HandleFunc(VerificationPath, s.handleVerification)
	s.handler = mux
	return s
}

// Handler returns the Server's HTTP handler (TokenPath, ResourcePath and
// the authorization grants' paths, authorize.go), for
// mounting in an httptest.Server or elsewhere instead of calling Start.
func (s *Server) Handler() http.Handler { return s.handler }

// Start listens on the configured address and serves in the background
// until Close.
func (s *Server) Start() error {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.srv != nil {
		return ErrStarted
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	s.serveDone = make(chan struct{})
	go func(srv *http.Server, done chan<- struct{}) {
		defer close(done)
		_ = srv.Serve(ln) // returns http.ErrServerClosed after Close
	}(s.srv, s.serveDone)
	return nil
}

// Close stops serving: it ends pending stalls and latency sleeps (those
// requests are dropped unprocessed), waits (a few seconds at most) for
// requests in flight, and closes every connection. A closed Server cannot be
// started again. Close is idempotent.
func (s *Server) Close() error {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	if s.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	<-s.serveDone
	s.srv = nil
	return err
}

// URL returns the base URL ("http://127.0.0.1:port"), or "" when the Server
// has not been started.
func (s *Server) URL() string {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.ln == nil {
		return ""
	}
	return "http://" + s.ln.Addr().String()
}

// TokenURL returns the token endpoint's URL, or "" before Start.
func (s *Server) TokenURL() string { return s.urlOf(TokenPath) }

// ResourceURL returns the protected resource's URL, or "" before Start.
func (s *Server) ResourceURL() string { return s.urlOf(ResourcePath) }

func (s *Server) urlOf(path string) string {
	u := s.URL()
	if u == "" {
		return ""
	}
	return u + path
}

// SetRotation switches the rotation mode for later refreshes.
func (s *Server) SetRotation(r Rotation) {
	s.mu.Lock()
	s.rotation = r
	s.mu.Unlock()
}

// SetReusePolicy switches how later reuses of spent refresh tokens are
// answered.
func (s *Server) SetReusePolicy(p ReusePolicy) {
	s.mu.Lock()
	s.onReuse = p
	s.mu.Unlock()
}

// SetGraceWindow sets the grace policies' window, measured on the Server's
// clock (Options.Now) from the rotation that first spent a token; it
// applies to every later presentation, of tokens spent before the call too.
// DefaultGraceWindow when d is zero or negative: a window of 0 is
// RevokeFamily or DexInvalidRequest.
func (s *Server) SetGraceWindow(d time.Duration) {
	if d <= 0 {
		d = DefaultGraceWindow
	}
	s.mu.Lock()
	s.grace = d
	s.mu.Unlock()
}

// SetRevokePreviousAccessToken switches whether later refreshes revoke the
// family's earlier access tokens. When on, every refresh grant that mints an
// access token (grace replays that mint one included) makes each access
// token the family issued before it answer 401 at the protected resource at
// once, expiry notwithstanding; only the newest access token of a family
// stays live. (Hydra revokes the access token issued with the presented
// refresh token, which is the same token unless replays branched the
// family.)
func (s *Server) SetRevokePreviousAccessToken(on bool) {
	s.mu.Lock()
	s.revokePrevAccess = on
	s.mu.Unlock()
}

// SetAccessTokenTTL sets the lifetime of access tokens issued from now on;
// DefaultAccessTokenTTL when d is zero or negative.
func (s *Server) SetAccessTokenTTL(d time.Duration) {
	if d <= 0 {
		d = DefaultAccessTokenTTL
	}
	s.mu.Lock()
	s.ttl = d
	s.mu.Unlock()
}

// AddClientSecret makes secret an accepted secret of clientID, registering
// the client if it is new. The empty secret makes the client public.
func (s *Server) AddClientSecret(clientID, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, have := range s.clients[clientID] {
		if have == secret {
			return
		}
	}
	s.clients[clientID] = append(s.clients[clientID], secret)
}

// RemoveClientSecret stops accepting secret for clientID. The client stays
// registered, even when no secret is left (it then cannot authenticate).
func (s *Server) RemoveClientSecret(clientID, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	secrets := s.clients[clientID]
	kept := secrets[:0]
	for _, have := range secrets {
		if have != secret {
			kept = append(kept, have)
		}
	}
	if secrets != nil {
		s.clients[clientID] = kept
	}
}
