package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Authorization flows: how the broker gets a grant of its own rather than
// a refresh token pasted into PutCredential.
//
//   - StartAuthorization (authorization code with PKCE, RFC 6749 section
//     4.1, RFC 7636 S256) keeps the flow's state and code verifier in the
//     Store (SaveFlow: sealed, single use, Config.FlowTTL), marks the record
//     (Record.Authorization) and returns the URL to open. The IdP sends the
//     browser to the credential's RedirectURL, the callback of any replica,
//     which calls CompleteAuthorization: it takes the flow (TakeFlow: once),
//     exchanges the code under the credential's lease, and commits the new
//     grant fenced like any write under the lease.
//   - StartDeviceAuthorization (RFC 8628, device.go) keeps the device code
//     in the record itself, and the replicas that see the record poll the
//     token endpoint, one at a time under the lease, at the interval the
//     record says.
//
// A credential keeps its configuration, allowed clients and secrets through
// either flow; only its grant (refresh token, access token, state) changes.

// CallbackPath is the path of the broker's callback, which every
// Credential.RedirectURL names.
const CallbackPath = "/oauth2/callback"

// FlowKind is the kind of an authorization flow.
type FlowKind int

// Flow kinds.
const (
	FlowCode   FlowKind = iota + 1 // authorization code with PKCE
	FlowDevice                     // device authorization grant
)

func (k FlowKind) String() string {
	switch k {
	case FlowCode:
		return "authorization_code"
	case FlowDevice:
		return "device_code"
	}
	return "unknown"
}

// AuthorizationFlow is the flow under way on a credential, kept in its
// record.
type AuthorizationFlow struct {
	ID        string    `json:"id"` // unique per flow
	Kind      FlowKind  `json:"kind"`
	StartedBy string    `json:"started_by,omitempty"` // the caller that started it
	StartedAt time.Time `json:"started_at"`
	ExpiresAt time.Time `json:"expires_at"`
	// Scopes asked for; on success they become the credential's. Empty:
	// the credential's.
	Scopes []string `json:"scopes,omitempty"`

	// Device flow only.
	DeviceCode              string        `json:"device_code,omitempty"` // secret
	UserCode                string        `json:"user_code,omitempty"`
	VerificationURI         string        `json:"verification_uri,omitempty"`
	VerificationURIComplete string        `json:"verification_uri_complete,omitempty"`
	Interval                time.Duration `json:"interval,omitempty"`
	NextPollAt              time.Time     `json:"next_poll_at,omitzero"`
}

// Open reports whether the flow is under way at now.
func (a *AuthorizationFlow) Open(now time.Time) bool {
	return a != nil && now.Before(a.ExpiresAt)
}

// ViewState is the state a credential is shown in:
// StatePendingAuthorization for one in StateReauthRequired with a flow
// open, else its stored state.
func (r *Record) ViewState(now time.Time) State {
	if r.State == StateReauthRequired && r.Authorization.Open(now) {
		return StatePendingAuthorization
	}
	return r.State
}

// Authorizable reports whether the credential can be authorized by the
// broker (it has an authorization or a device authorization endpoint).
func (c *Credential) Authorizable() bool {
	return c.AuthorizationURL != "" || c.DeviceAuthorizationURL != ""
}

// CodeFlow is what the Store keeps of an authorization code flow between
// StartAuthorization and the callback, under the flow's state.
type CodeFlow struct {
	CredentialID string    `json:"credential_id"`
	FlowID       string    `json:"flow_id"`  // AuthorizationFlow.ID
	Verifier     string    `json:"verifier"` // the PKCE code verifier; secret
	RedirectURL  string    `json:"redirect_url"`
	Scopes       []string  `json:"scopes,omitempty"`
	StartedBy    string    `json:"started_by,omitempty"`
	ExpiresAt    time.Time `json:"expires_at"`
}

// Authorizer is what an Upstream needs for the authorization flows; the
// Broker's Upstream must implement it for StartAuthorization,
// CompleteAuthorization and StartDeviceAuthorization. Its errors follow
// Upstream's (an *UpstreamError with Class and Code); none holds a secret.
type Authorizer interface {
	// AuthCodeURL returns the URL of an authorization request (response_type
	// code, S256 code challenge of r.Verifier).
	AuthCodeURL(r AuthCodeRequest) string
	// ExchangeCode exchanges an authorization code (grant_type
	// authorization_code, with the code verifier) at r.TokenURL,
	// authenticated as r says.
	ExchangeCode(ctx context.Context, r UpstreamRequest, code, verifier, redirectURL string) (*UpstreamToken, error)
	// DeviceAuth asks deviceAuthURL for a device code (RFC 8628 section 3.1).
	DeviceAuth(ctx context.Context, r UpstreamRequest, deviceAuthURL string) (*DeviceAuthorization, error)
	// PollDevice polls r.TokenURL once with a device code (RFC 8628 section
	// 3.4); while the user has not decided, the error's Code is
	// authorization_pending or slow_down.
	PollDevice(ctx context.Context, r UpstreamRequest, deviceCode string) (*UpstreamToken, error)
}

// AuthCodeRequest is an authorization request.
type AuthCodeRequest struct {
	AuthURL     string
	ClientID    string
	RedirectURL string
	Scopes      []string
	State       string
	Verifier    string // the request carries its S256 challenge only
	Extra       map[string]string
}

// DeviceAuthorization is an IdP's answer to a device authorization request.
type DeviceAuthorization struct {
	DeviceCode              string // secret
	UserCode                string
	VerificationURI         string
	VerificationURIComplete string
	ExpiresAt               time.Time     // zero when the IdP sent no expires_in
	Interval                time.Duration // zero when the IdP sent none
}

// AuthorizationEvent describes a step of an authorization flow, for the
// audit trail. It never holds a secret.
type AuthorizationEvent struct {
	CredentialID string
	Flow         FlowKind
	Action       string // AuthStarted, AuthCompleted or AuthAbandoned
	StartedBy    string // the caller that started the flow
	Detail       string // with AuthAbandoned: why
	Generation   uint64 // the stored generation afterwards, if stored
}

// Actions of AuthorizationEvent.
const (
	AuthStarted   = "started"
	AuthCompleted = "completed"
	AuthAbandoned = "abandoned"
)

// AuthorizationObserver is implemented by Observers that want to hear about
// authorization flows. Like Observer's, its method must be fast.
type AuthorizationObserver interface {
	Authorization(ev AuthorizationEvent)
}

func (b *Broker) authObserved(ev AuthorizationEvent) {
	if o, ok := b.obs.(AuthorizationObserver); ok {
		o.Authorization(ev)
	}
}

// flows is the Broker's state of the authorization flows and the change
// log's appender and watchers; its zero value is ready.
type flows struct {
	mu       sync.Mutex
	pollers  map[string]string // credential ID -> ID of the device flow this Broker polls
	changes  chan *Change      // changes to append (events.go); nil until the first
	watchers map[chan struct{}]struct{}
}

func (b *Broker) authorizer() (Authorizer, error) {
	a, ok := b.up.(Authorizer)
	if !ok {
		return nil, errors.New("broker: the upstream cannot run authorization flows")
	}
	return a, nil
}

// Limits of StartAuthorization's extra parameters.
const (
	MaxExtraParams     = 16
	MaxExtraParamKey   = 64
	MaxExtraParamValue = 1024
	MaxStateLen        = 512
	MaxCodeLen         = 4096
)

// reservedParams are the authorization request parameters the flow sets.
var reservedParams = map[string]bool{
	"response_type": true, "client_id": true, "redirect_uri": true, "scope": true, "state": true,
	"code_challenge": true, "code_challenge_method": true, "client_secret": true, "code_verifier": true,
}

func validateExtraParams(extra map[string]string) error {
	if len(extra) > MaxExtraParams {
		return invalidArg("extra_params", "at most %d parameters", MaxExtraParams)
	}
	for k, v := range extra {
		if k == "" || len(k) > MaxExtraParamKey {
			return invalidArg("extra_params", "each name must be 1 to %d characters", MaxExtraParamKey)
		}
		for i := 0; i < len(k); i++ {
			c := k[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.') {
				return invalidArg("extra_params", "names must match [A-Za-z0-9._-]+")
			}
		}
		if reservedParams[strings.ToLower(k)] {
			return invalidArg("extra_params", "%s is set by the flow itself", k)
		}
		if err := validateToken("extra_params", v, MaxExtraParamValue, false); err != nil {
			return err
		}
	}
	return nil
}

func validateScopeList(field string, scopes []string) error {
	if len(scopes) > MaxScopes {
		return invalidArg(field, "at most %d scopes", MaxScopes)
	}
	for _, s := range scopes {
		if s == "" || len(s) > MaxScopeLen || strings.ContainsAny(s, " \"\\") {
			return invalidArg(field, "each scope must be 1 to %d characters without spaces, quotes or backslashes", MaxScopeLen)
		}
		if err := validateToken(field, s, MaxScopeLen, true); err != nil {
			return err
		}
	}
	return nil
}

// validateFlowURLs checks a credential's authorization endpoints and
// redirect URL.
func validateFlowURLs(c *Credential) error {
	if c.AuthorizationURL != "" {
		if err := validateEndpointURL("credential.authorization_url", c.AuthorizationURL); err != nil {
			return err
		}
	}
	if c.DeviceAuthorizationURL != "" {
		if err := validateEndpointURL("credential.device_authorization_url", c.DeviceAuthorizationURL); err != nil {
			return err
		}
	}
	if c.RedirectURL != "" {
		if err := validateEndpointURL("credential.redirect_url", c.RedirectURL); err != nil {
			return err
		}
		u, _ := url.Parse(c.RedirectURL)
		if u.Path != CallbackPath || u.RawQuery != "" || u.ForceQuery {
			return invalidArg("credential.redirect_url", "must point at the broker's callback: scheme://host[:port]%s, without a query", CallbackPath)
		}
	}
	if (c.AuthorizationURL != "" || c.DeviceAuthorizationURL != "") && c.GrantType != GrantRefreshToken {
		return invalidArg("credential.grant_type", "authorization flows obtain a refresh token: use the refresh_token grant")
	}
	return nil
}

// validateEndpointURL checks an absolute https URL (http only for a
// loopback host) without user info or fragment.
func validateEndpointURL(field, u string) error {
	if err := validateTokenURL(field, u); err != nil {
		return err
	}
	p, _ := url.Parse(u)
	if p.Scheme == "http" && !loopbackHost(p.Hostname()) {
		return invalidArg(field, "must be https (http only for a loopback host such as 127.0.0.1 or localhost)")
	}
	return nil
}

func loopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// AuthorizationStart is what StartAuthorization returns.
type AuthorizationStart struct {
	URL       string    // the authorization request to open in a browser
	ExpiresAt time.Time // when its state expires
	Record    *Record   // the credential as stored, marked with the flow
}

// StartAuthorization starts an authorization code flow with PKCE on a
// credential that has an AuthorizationURL and a RedirectURL: it keeps the
// flow's state and verifier in the Store for Config.FlowTTL, marks the
// record, and returns the URL to open. scopes (empty: the credential's) and
// extra (further parameters such as prompt) go into the request.
func (b *Broker) StartAuthorization(ctx context.Context, id string, scopes []string, extra map[string]string) (*AuthorizationStart, error) {
	if err := b.admin(ctx); err != nil {
		return nil, err
	}
	if err := ValidateID("id", id); err != nil {
		return nil, err
	}
	if err := validateScopeList("scopes", scopes); err != nil {
		return nil, err
	}
	if err := validateExtraParams(extra); err != nil {
		return nil, err
	}
	authz, err := b.authorizer()
	if err != nil {
		return nil, err
	}
	caller, _ := CallerFrom(ctx)
	lease, err := b.acquire(ctx, id, nil)
	if err != nil {
		return nil, err
	}
	defer b.release(ctx, lease)
	cur, err := b.store.Get(ctx, id)
	if err != nil {
		return nil, storeErr(id, err)
	}
	switch {
	case cur.AuthorizationURL == "":
		return nil, &Error{Kind: ErrInvalidArgument, Field: "credential.authorization_url", CredentialID: id,
			Detail: "the credential has none: set it (and redirect_url) with UpdateCredential"}
	case cur.RedirectURL == "":
		return nil, &Error{Kind: ErrInvalidArgument, Field: "credential.redirect_url", CredentialID: id,
			Detail: "the credential has none: set it to the broker's " + CallbackPath + " with UpdateCredential"}
	case cur.GrantType != GrantRefreshToken:
		return nil, &Error{Kind: ErrInvalidArgument, Field: "credential.grant_type", CredentialID: id,
			Detail: "authorization flows obtain a refresh token: use the refresh_token grant"}
	case cur.Pending != nil:
		return nil, &Error{Kind: ErrLockTimeout, CredentialID: id, RetryAfter: b.cfg.PollInterval,
			Detail: "a refresh of the credential is being stored; try again"}
	}
	now := time.Now()
	flow := &CodeFlow{
		CredentialID: id,
		FlowID:       randomID(),
		Verifier:     randomToken(),
		RedirectURL:  cur.RedirectURL,
		Scopes:       append([]string(nil), scopes...),
		StartedBy:    caller.ID,
		ExpiresAt:    now.Add(b.cfg.FlowTTL),
	}
	state := randomToken()
	if err := b.store.SaveFlow(ctx, state, flow, b.cfg.FlowTTL); err != nil {
		return nil, storeErr(id, err)
	}
	next := cur.Clone()
	next.Authorization = &AuthorizationFlow{
		ID: flow.FlowID, Kind: FlowCode, StartedBy: caller.ID, StartedAt: now, ExpiresAt: flow.ExpiresAt, Scopes: flow.Scopes,
	}
	stored, err := b.commit(ctx, lease, next)
	if err != nil {
		return nil, err
	}
	askScopes := scopes
	if len(askScopes) == 0 {
		askScopes = cur.Scopes
	}
	u := authz.AuthCodeURL(AuthCodeRequest{
		AuthURL: cur.AuthorizationURL, ClientID: cur.ClientID, RedirectURL: cur.RedirectURL,
		Scopes: askScopes, State: state, Verifier: flow.Verifier, Extra: extra,
	})
	b.expireLater(id, flow.FlowID, flow.ExpiresAt)
	b.authObserved(AuthorizationEvent{CredentialID: id, Flow: FlowCode, Action: AuthStarted, StartedBy: caller.ID, Generation: stored.Generation})
	b.changed(ChangeAuthorizationStarted, cur, stored, caller.ID, "authorization code flow started")
	return &AuthorizationStart{URL: u, ExpiresAt: flow.ExpiresAt, Record: stored}, nil
}

// commit writes next under lease, fenced on its generation, and caches it.
func (b *Broker) commit(ctx context.Context, lease Lease, next *Record) (*Record, error) {
	m := b.mark(next.ID)
	gen, err := b.store.Commit(ctx, lease, next)
	if err != nil {
		if errors.Is(err, ErrConflict) || errors.Is(err, ErrLockLost) {
			return nil, &Error{Kind: ErrLockTimeout, CredentialID: next.ID, Err: err, RetryAfter: b.cfg.PollInterval,
				Detail: "the credential changed meanwhile; try again"}
		}
		return nil, storeErr(next.ID, err)
	}
	stored := next.Clone()
	stored.Generation = gen
	b.fill(stored, m)
	return stored, nil
}

// CompleteAuthorization ends an authorization code flow as the callback
// received it: state and code, or the error the IdP sent back (errCode and
// its description). It takes the flow (once: a second call with the same
// state fails), exchanges the code under the credential's lease, and stores
// the new grant: the credential is ACTIVE with a fresh token pair and keeps
// its configuration. It needs no caller: the state is the proof.
//
// Its errors say what the callback's page should: ErrInvalidArgument for a
// missing, unknown, expired or used state (field "state") or a missing code,
// ErrPermissionDenied when consent was denied, ErrIdPRejected when the IdP
// refused the request or the code, ErrIdPUnavailable when it did not
// answer, ErrNotFound when the credential is gone, store errors otherwise.
func (b *Broker) CompleteAuthorization(ctx context.Context, state, code, errCode, errDesc string) (*Record, error) {
	switch {
	case state == "" || len(state) > MaxStateLen:
		return nil, invalidArg("state", "missing or malformed: open the authorization URL again")
	case errCode == "" && (code == "" || len(code) > MaxCodeLen):
		return nil, invalidArg("code", "missing or malformed")
	}
	authz, err := b.authorizer()
	if err != nil {
		return nil, err
	}
	flow, err := b.store.TakeFlow(ctx, state)
	if errors.Is(err, ErrNotFound) || (err == nil && !time.Now().Before(flow.ExpiresAt)) {
		return nil, invalidArg("state", "unknown, expired or already used: start the authorization again")
	}
	if err != nil {
		return nil, storeErr("", err)
	}
	id := flow.CredentialID
	lease, err := b.acquire(ctx, id, nil)
	if err != nil {
		return nil, err
	}
	keep := b.keepAlive(lease) // releases the lease when stopped
	defer keep.stop()
	cur, err := b.store.Get(ctx, id)
	if err != nil {
		return nil, storeErr(id, err)
	}
	abandon := func(kind error, detail string, cause error) error {
		b.abandon(ctx, lease, cur, flow.FlowID, FlowCode, flow.StartedBy, detail)
		return &Error{Kind: kind, CredentialID: id, Detail: detail, Err: cause}
	}
	if errCode != "" {
		return nil, callbackError(errCode, errDesc, abandon)
	}
	if err := b.ensureLease(ctx, lease); err != nil {
		// Nothing was sent; the code is spent all the same (the flow was
		// taken), so the flow is over.
		return nil, abandon(ErrLockTimeout, "the credential's lease could not be extended to exchange the code", err)
	}
	xctx, cancel := context.WithTimeout(ctx, b.cfg.RefreshTimeout)
	tok, err := authz.ExchangeCode(xctx, exchangeRequest(cur), code, flow.Verifier, flow.RedirectURL)
	cancel()
	if err != nil {
		if class, _ := classOf(err); class == Permanent {
			return nil, abandon(ErrIdPRejected, "the IdP refused the authorization code: "+err.Error(), err)
		}
		return nil, abandon(ErrIdPUnavailable, "the IdP did not exchange the authorization code: "+err.Error(), err)
	}
	if tok.RefreshToken == "" {
		return nil, abandon(ErrIdPRejected, "the IdP issued no refresh token: ask for offline access (for instance scope offline_access, or extra_params access_type=offline and prompt=consent)", nil)
	}
	stored, err := b.storeGrant(ctx, lease, cur, tok, flow.Scopes)
	if err != nil {
		return nil, err
	}
	b.authObserved(AuthorizationEvent{CredentialID: id, Flow: FlowCode, Action: AuthCompleted, StartedBy: flow.StartedBy, Generation: stored.Generation})
	b.changed(ChangeAuthorized, cur, stored, flow.StartedBy, "authorized through the authorization code flow")
	return stored, nil
}

// callbackError is the error of a callback that brought the IdP's error
// (RFC 6749 section 4.1.2.1) instead of a code; abandon ends the flow.
func callbackError(code, desc string, abandon func(kind error, detail string, cause error) error) error {
	code = cleanText(code, 64)
	detail := "the IdP answered " + code
	if d := cleanText(desc, 200); d != "" {
		detail += ": " + d
	}
	switch code {
	case "access_denied":
		return abandon(ErrPermissionDenied, "consent was denied at the IdP ("+detail+")", nil)
	case "temporarily_unavailable", "server_error":
		return abandon(ErrIdPUnavailable, detail, nil)
	}
	return abandon(ErrIdPRejected, detail, nil)
}

// cleanText keeps the printable ASCII of s, cut to n bytes: IdP text fit
// for a page and a log line.
func cleanText(s string, n int) string {
	s = strings.Map(func(c rune) rune {
		if c < 0x20 || c > 0x7e {
			return -1
		}
		return c
	}, s)
	if len(s) > n {
		s = s[:n]
	}
	return strings.TrimSpace(s)
}

// storeGrant stores the token pair an authorization flow obtained over cur,
// under lease: ACTIVE, the flow mark gone, failures forgotten, and the
// flow's scopes, if it asked for some, as the credential's. A record that
// moved on meanwhile (a holder without the lease settling its refresh) is
// read again and the grant applied to it: the new grant wins, as an
// operator's new refresh token does. A Store that fails is retried until
// ctx ends, so that the new grant is not dropped on a blip.
func (b *Broker) storeGrant(ctx context.Context, lease Lease, cur *Record, tok *UpstreamToken, scopes []string) (*Record, error) {
	now := time.Now()
	delay := 20 * time.Millisecond
	for {
		next := cur.Clone()
		next.RefreshToken = tok.RefreshToken
		next.Token = Token{AccessToken: tok.AccessToken, TokenType: tok.TokenType, Expiry: tok.Expiry, IssuedAt: now}
		if next.Token.Expiry.IsZero() {
			next.Token.Expiry = now.Add(b.cfg.DefaultLifetime)
		}
		if next.Token.TokenType == "" {
			next.Token.TokenType = "Bearer"
		}
		if len(scopes) > 0 {
			next.Scopes = append([]string(nil), scopes...)
		}
		next.State = StateActive
		next.OutcomeUnknown = false
		next.LastRefreshAt = now
		next.LastError, next.LastErrorAt = "", time.Time{}
		next.Failures, next.NextAttemptAt = 0, time.Time{}
		next.Authorization = nil
		next.UpdatedAt = now
		m := b.mark(next.ID)
		gen, err := b.store.Commit(ctx, lease, next)
		if err == nil {
			next.Generation = gen
			b.fill(next, m)
			return next, nil
		}
		if errors.Is(err, ErrLockLost) {
			return nil, &Error{Kind: ErrLockTimeout, CredentialID: cur.ID, Err: err,
				Detail: "the credential's lease was lost before the new grant was stored; start the authorization again"}
		}
		if errors.Is(err, ErrConflict) {
			fresh, gerr := b.store.Get(ctx, cur.ID)
			if errors.Is(gerr, ErrNotFound) {
				return nil, &Error{Kind: ErrNotFound, CredentialID: cur.ID, Detail: "the credential was deleted during the authorization"}
			}
			if gerr == nil {
				cur = fresh
				continue
			}
			err = gerr
		}
		if !sleepCtx(ctx, delay) {
			return nil, storeErr(cur.ID, err)
		}
		delay = min(2*delay, time.Second)
	}
}

// abandon ends flow flowID on cur, under lease: the mark goes, and a
// credential still needing authorization says why in its last error. A
// record marked with another flow (a newer one) is left alone. The step is
// reported either way.
func (b *Broker) abandon(ctx context.Context, lease Lease, cur *Record, flowID string, kind FlowKind, startedBy, detail string) {
	ev := AuthorizationEvent{CredentialID: cur.ID, Flow: kind, Action: AuthAbandoned, StartedBy: startedBy, Detail: detail, Generation: cur.Generation}
	if cur.Authorization != nil && cur.Authorization.ID == flowID {
		next := cur.Clone()
		next.Authorization = nil
		if next.State == StateReauthRequired {
			next.LastError, next.LastErrorAt = "authorization abandoned: "+detail, time.Now()
		}
		if stored, err := b.commit(ctx, lease, next); err == nil {
			ev.Generation = stored.Generation
			b.changed(ChangeAuthorizationAbandoned, cur, stored, startedBy, detail)
		}
	}
	b.authObserved(ev)
}

// expireLater ends code flow flowID of credential id when it expires,
// unless it ended before or the Broker closes first (the record's view
// treats an expired mark as gone anyway).
func (b *Broker) expireLater(id, flowID string, at time.Time) {
	if !b.enter() {
		return
	}
	go func() {
		defer b.wg.Done()
		t := time.NewTimer(time.Until(at))
		defer t.Stop()
		select {
		case <-t.C:
		case <-b.closing:
			return
		}
		ctx, cancel := context.WithTimeout(b.bg, b.cfg.LockWait+time.Second)
		defer cancel()
		lease, err := b.acquire(ctx, id, nil)
		if err != nil {
			return
		}
		defer b.release(ctx, lease)
		cur, err := b.store.Get(ctx, id)
		if err != nil || cur.Authorization == nil || cur.Authorization.ID != flowID {
			return
		}
		b.abandon(ctx, lease, cur, flowID, FlowCode, cur.Authorization.StartedBy, "expired: the authorization was not completed in time")
	}()
}

// randomToken returns 32 random bytes, base64url without padding (43
// characters: a PKCE verifier, RFC 7636 section 4.1, or a state).
func randomToken() string {
	var p [32]byte
	_, _ = rand.Read(p[:]) // never fails (crypto/rand, Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(p[:])
}
