package fakeidp

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// The authorization grants a broker uses to get a token family of its own:
//
//   - GET AuthorizePath: the authorization endpoint of the authorization
//     code grant (RFC 6749 section 4.1) with PKCE required (RFC 7636, S256
//     only). The client and its redirect_uri (registered with
//     RegisterRedirect, compared exactly) are checked first: a bad one gets
//     an error page and no redirect. Otherwise the consent knob (SetConsent)
//     decides: ConsentAuto redirects at once with a code, ConsentOneClick
//     shows a page whose Approve or Deny button (POST AuthorizePath) does,
//     ConsentDeny redirects with error=access_denied. A missing state, a
//     missing or plain code_challenge, or a response_type other than code
//     redirect with invalid_request (unsupported_response_type).
//   - grant_type=authorization_code at the token endpoint: the code (single
//     use, one minute), the same redirect_uri, and the code_verifier whose
//     S256 is the challenge; a second use of a code is invalid_grant and
//     revokes the family the first use issued (RFC 6749 section 4.1.2). The
//     answer starts a new family, as Seed does.
//   - POST DeviceAuthorizationPath: the device authorization endpoint (RFC
//     8628 section 3.1), client authentication as at the token endpoint.
//     The user approves or denies at VerificationPath (a page with a form),
//     or a test calls ApproveDevice or DenyDevice.
//   - grant_type=urn:ietf:params:oauth:grant-type:device_code at the token
//     endpoint: authorization_pending until the user decides; slow_down,
//     with the interval raised by 5 seconds for the rest of the flow, when
//     a poll comes sooner than the interval after the previous one (or for
//     the next SlowDownNext polls); access_denied; expired_token; then the
//     tokens, once.

// Paths of the authorization grants.
const (
	AuthorizePath           = "/authorize"
	DeviceAuthorizationPath = "/device_authorization"
	VerificationPath        = "/device"
)

// deviceGrantType is RFC 8628's grant_type.
const deviceGrantType = "urn:ietf:params:oauth:grant-type:device_code"

// Defaults of the authorization grants.
const (
	codeTTL               = time.Minute
	DefaultDeviceInterval = 5 * time.Second
	DefaultDeviceCodeTTL  = 10 * time.Minute
	slowDownStep          = 5 * time.Second
)

// Consent is how the authorization endpoint answers a valid request.
type Consent int

// Consent modes.
const (
	// ConsentAuto approves at once: the browser is redirected with a code.
	// The default.
	ConsentAuto Consent = iota
	// ConsentOneClick shows a page with Approve and Deny buttons.
	ConsentOneClick
	// ConsentDeny redirects with error=access_denied, as when the user
	// refuses.
	ConsentDeny
)

// authz is the state of the authorization grants; guarded by its mu.
type authz struct {
	mu             sync.Mutex
	redirects      map[string][]string // client ID -> registered redirect URIs
	consent        Consent
	codes          map[string]*authCode
	devices        map[string]*deviceFlow // by device code
	users          map[string]*deviceFlow // by user code
	deviceInterval time.Duration
	deviceTTL      time.Duration
	slowDownNext   int

	authorizeRequests, codesIssued, codeGrants, devicePolls, slowDowns int64
	pollTimes                                                          []time.Time
}

type authCode struct {
	clientID, redirectURI, challenge string
	scope                            []string
	expires                          time.Time
	used                             bool
	fam                              *family // issued by the first use
}

type deviceFlow struct {
	clientID   string
	scope      []string
	deviceCode string
	userCode   string
	expires    time.Time
	interval   time.Duration
	lastPoll   time.Time
	decided    int // 0 pending, 1 approved, -1 denied
	consumed   bool
}

func newAuthz() *authz {
	return &authz{
		redirects:      make(map[string][]string),
		codes:          make(map[string]*authCode),
		devices:        make(map[string]*deviceFlow),
		users:          make(map[string]*deviceFlow),
		deviceInterval: DefaultDeviceInterval,
		deviceTTL:      DefaultDeviceCodeTTL,
	}
}

// AuthorizeURL returns the authorization endpoint's URL, or "" before Start.
func (s *Server) AuthorizeURL() string { return s.urlOf(AuthorizePath) }

// DeviceAuthorizationURL returns the device authorization endpoint's URL,
// or "" before Start.
func (s *Server) DeviceAuthorizationURL() string { return s.urlOf(DeviceAuthorizationPath) }

// VerificationURL returns the device verification page's URL, or "" before
// Start.
func (s *Server) VerificationURL() string { return s.urlOf(VerificationPath) }

// RegisterRedirect accepts uri as a redirect_uri of clientID.
func (s *Server) RegisterRedirect(clientID, uri string) {
	a := s.az
	a.mu.Lock()
	defer a.mu.Unlock()
	if !slices.Contains(a.redirects[clientID], uri) {
		a.redirects[clientID] = append(a.redirects[clientID], uri)
	}
}

// SetConsent switches how later authorization requests are answered.
func (s *Server) SetConsent(c Consent) {
	s.az.mu.Lock()
	s.az.consent = c
	s.az.mu.Unlock()
}

// SetDeviceInterval sets the polling interval later device authorizations
// get; DefaultDeviceInterval when d is zero or negative. Whole seconds go on
// the wire (at least 1).
func (s *Server) SetDeviceInterval(d time.Duration) {
	if d <= 0 {
		d = DefaultDeviceInterval
	}
	s.az.mu.Lock()
	s.az.deviceInterval = d
	s.az.mu.Unlock()
}

// SetDeviceCodeTTL sets how long later device codes live;
// DefaultDeviceCodeTTL when d is zero or negative.
func (s *Server) SetDeviceCodeTTL(d time.Duration) {
	if d <= 0 {
		d = DefaultDeviceCodeTTL
	}
	s.az.mu.Lock()
	s.az.deviceTTL = d
	s.az.mu.Unlock()
}

// SlowDownNext answers the next n device polls that would be
// authorization_pending with slow_down (and raises their flow's interval).
func (s *Server) SlowDownNext(n int) {
	s.az.mu.Lock()
	s.az.slowDownNext += n
	s.az.mu.Unlock()
}

// ApproveDevice approves the device flow of userCode, as the user at the
// verification page would; false if there is no pending one.
func (s *Server) ApproveDevice(userCode string) bool { return s.decideDevice(userCode, 1) }

// DenyDevice denies the device flow of userCode; false if there is no
// pending one.
func (s *Server) DenyDevice(userCode string) bool { return s.decideDevice(userCode, -1) }

func (s *Server) decideDevice(userCode string, d int) bool {
	now := s.now()
	a := s.az
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.users[normalizeUserCode(userCode)]
	if f == nil || f.decided != 0 || !now.Before(f.expires) {
		return false
	}
	f.decided = d
	return true
}

// AuthStats counts what the authorization grants did.
type AuthStats struct {
	AuthorizeRequests int64       // requests to the authorization endpoint (GET and POST)
	CodesIssued       int64       // authorization codes handed out
	CodeGrants        int64       // codes exchanged for tokens
	DevicePolls       int64       // device code polls at the token endpoint
	SlowDowns         int64       // of which answered slow_down
	PollTimes         []time.Time // when each device poll arrived (Options.Now)
}

// AuthStats returns the counters of the authorization grants.
func (s *Server) AuthStats() AuthStats {
	a := s.az
	a.mu.Lock()
	defer a.mu.Unlock()
	return AuthStats{
		AuthorizeRequests: a.authorizeRequests, CodesIssued: a.codesIssued, CodeGrants: a.codeGrants,
		DevicePolls: a.devicePolls, SlowDowns: a.slowDowns, PollTimes: append([]time.Time(nil), a.pollTimes...),
	}
}

var consentPage = template.Must(template.New("consent").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fakeidp: consent</title></head>
<body><h1>Allow {{.ClientID}}?</h1><p>Scopes: {{.Scope}}</p>
<form method="post" action="{{.Action}}">
{{range $k, $v := .Params}}<input type="hidden" name="{{$k}}" value="{{$v}}">
{{end}}<button name="decision" value="approve">Approve</button>
<button name="decision" value="deny">Deny</button>
</form></body></html>
`))

var errorPage = template.Must(template.New("error").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fakeidp: error</title></head>
<body><h1>{{.}}</h1></body></html>
`))

func writeHTML(w http.ResponseWriter, status int, t *template.Template, v any) {
	noStore(w.Header())
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = t.Execute(w, v)
}

// authorizeParams are the parameters of an authorization request that the
// consent page carries over.
var authorizeParams = []string{"response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method"}

// handleAuthorize serves the authorization endpoint.
func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	a := s.az
	a.mu.Lock()
	a.authorizeRequests++
	consent := a.consent
	a.mu.Unlock()
	var q url.Values
	switch r.Method {
	case http.MethodGet:
		q = r.URL.Query()
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			writeHTML(w, http.StatusBadRequest, errorPage, "The form could not be read")
			return
		}
		q = r.PostForm
	default:
		w.Header().Set("Allow", "GET, POST")
		writeHTML(w, http.StatusMethodNotAllowed, errorPage, "GET or POST only")
		return
	}
	clientID, redirectURI := q.Get("client_id"), q.Get("redirect_uri")
	s.mu.RLock()
	_, known := s.clients[clientID]
	s.mu.RUnlock()
	if !known {
		writeHTML(w, http.StatusBadRequest, errorPage, "Unknown client")
		return
	}
	if !s.redirectOK(clientID, redirectURI) {
		writeHTML(w, http.StatusBadRequest, errorPage, "The redirect_uri is not registered for this client")
		return
	}
	state := q.Get("state")
	back := func(v url.Values) {
		if state != "" {
			v.Set("state", state)
		}
		u, _ := url.Parse(redirectURI)
		u.RawQuery = v.Encode()
		noStore(w.Header())
		http.Redirect(w, r, u.String(), http.StatusFound)
	}
	fail := func(code, desc string) { back(url.Values{"error": {code}, "error_description": {desc}}) }
	scope, ok := parseScope(q.Get("scope"))
	switch {
	case q.Get("response_type") != "code":
		fail("unsupported_response_type", "Only response_type=code is supported")
		return
	case state == "":
		fail("invalid_request", "The state parameter is required")
		return
	case q.Get("code_challenge") == "" || q.Get("code_challenge_method") != "S256":
		fail("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")
		return
	case !ok:
		fail("invalid_scope", "The scope is malformed")
		return
	}
	if r.Method == http.MethodGet && consent == ConsentOneClick {
		params := map[string]string{}
		for _, k := range authorizeParams {
			params[k] = q.Get(k)
		}
		writeHTML(w, http.StatusOK, consentPage, map[string]any{
			"ClientID": clientID, "Scope": strings.Join(scope, " "), "Action": AuthorizePath, "Params": params,
		})
		return
	}
	if consent == ConsentDeny || (r.Method == http.MethodPost && q.Get("decision") != "approve") {
		fail("access_denied", "The user denied the request")
		return
	}
	code := newToken("ac", "code")
	a.mu.Lock()
	a.codes[code] = &authCode{
		clientID: clientID, redirectURI: redirectURI, challenge: q.Get("code_challenge"),
		scope: scope, expires: s.now().Add(codeTTL),
	}
	a.codesIssued++
	a.mu.Unlock()
	back(url.Values{"code": {code}})
}

func (s *Server) redirectOK(clientID, uri string) bool {
	if uri == "" {
		return false
	}
	a := s.az
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Contains(a.redirects[clientID], uri)
}

// codeGrant serves grant_type=authorization_code.
func (s *Server) codeGrant(clientID string, form url.Values, ev *Event) (tokenResponse, *oauthError) {
	code := form.Get("code")
	if code == "" {
		return tokenResponse{}, badRequest("invalid_request", "Missing code")
	}
	now := s.now()
	a := s.az
	a.mu.Lock()
	c := a.codes[code]
	if c == nil {
		a.mu.Unlock()
		return tokenResponse{}, badRequest("invalid_grant", "The authorization code is invalid")
	}
	if c.used {
		fam := c.fam
		a.mu.Unlock()
		if fam != nil {
			s.mu.Lock()
			s.revoke(fam)
			s.mu.Unlock()
		}
		return tokenResponse{}, badRequest("invalid_grant", "The authorization code was already used; the tokens issued for it are revoked")
	}
	switch {
	case c.clientID != clientID:
		a.mu.Unlock()
		return tokenResponse{}, badRequest("invalid_grant", "The authorization code was issued to another client")
	case !now.Before(c.expires):
		a.mu.Unlock()
		return tokenResponse{}, badRequest("invalid_grant", "The authorization code has expired")
	case form.Get("redirect_uri") != c.redirectURI:
		a.mu.Unlock()
		return tokenResponse{}, badRequest("invalid_grant", "The redirect_uri does not match the authorization request")
	case !pkceOK(form.Get("code_verifier"), c.challenge):
		a.mu.Unlock()
		return tokenResponse{}, badRequest("invalid_grant", "PKCE verification failed")
	}
	c.used = true
	a.codeGrants++
	a.mu.Unlock()
	resp, fam := s.issueFamily(clientID, c.scope, now)
	a.mu.Lock()
	c.fam = fam
	a.mu.Unlock()
	ev.Family, ev.Generation = fam.id, 0
	return resp, nil
}

// issueFamily starts a family for clientID and answers its first pair.
func (s *Server) issueFamily(clientID string, scope []string, now time.Time) (tokenResponse, *family) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.newFamily(clientID, scope)
	at, ttl := s.issueAccess(f, strings.Join(scope, " "), now, false)
	return tokenResponse{
		AccessToken:  at,
		TokenType:    "Bearer",
		ExpiresIn:    expiresIn(ttl),
		RefreshToken: s.newRefresh(f),
		Scope:        strings.Join(scope, " "),
	}, f
}

// pkceOK checks a code verifier against an S256 challenge (RFC 7636
// section 4.6).
func pkceOK(verifier, challenge string) bool {
	if len(verifier) < 43 || len(verifier) > 128 {
		return false
	}
	sum := sha256.Sum256([]byte(verifier))
	want := base64.RawURLEncoding.EncodeToString(sum[:])
	return subtle.ConstantTimeCompare([]byte(want), []byte(challenge)) == 1
}

// deviceAuthResponse is RFC 8628 section 3.2's answer.
type deviceAuthResponse struct {
	DeviceCode              string `json:"device_code"`
	UserCode                string `json:"user_code"`
	VerificationURI         string `json:"verification_uri"`
	VerificationURIComplete string `json:"verification_uri_complete"`
	ExpiresIn               int64  `json:"expires_in"`
	Interval                int64  `json:"interval"`
}

// handleDeviceAuthorization serves the device authorization endpoint.
func (s *Server) handleDeviceAuthorization(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		(&oauthError{status: http.StatusMethodNotAllowed, code: "invalid_request", desc: "POST only"}).write(w)
		return
	}
	body, oe := readBody(w, r)
	if oe == nil {
		var form url.Values
		if form, oe = parseForm(r, body); oe == nil {
			var client string
			var ev Event
			if client, _, oe = s.authenticate(r, form, &ev); oe == nil {
				scope, ok := parseScope(form.Get("scope"))
				if !ok {
					oe = badRequest("invalid_scope", "The scope is malformed")
				} else {
					noStore(w.Header())
					writeJSON(w, http.StatusOK, s.newDeviceFlow(r, client, scope))
					return
				}
			}
		}
	}
	oe.write(w)
}

func (s *Server) newDeviceFlow(r *http.Request, clientID string, scope []string) deviceAuthResponse {
	now := s.now()
	a := s.az
	a.mu.Lock()
	defer a.mu.Unlock()
	f := &deviceFlow{
		clientID: clientID, scope: scope, deviceCode: newToken("dc", "device"), userCode: newUserCode(),
		expires: now.Add(a.deviceTTL), interval: a.deviceInterval,
	}
	a.devices[f.deviceCode] = f
	a.users[f.userCode] = f
	base := s.VerificationURL()
	if base == "" { // mounted elsewhere: as the client reached it
		base = "http://" + r.Host + VerificationPath
	}
	return deviceAuthResponse{
		DeviceCode: f.deviceCode, UserCode: f.userCode,
		VerificationURI:         base,
		VerificationURIComplete: base + "?user_code=" + url.QueryEscape(f.userCode),
		ExpiresIn:               expiresIn(a.deviceTTL),
		Interval:                expiresIn(f.interval),
	}
}

// userCodeAlphabet has no vowels or look-alikes (RFC 8628 section 6.1).
const userCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ"

func newUserCode() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	out := make([]byte, 0, 9)
	for i, c := range b {
		if i == 4 {
			out = append(out, '-')
		}
		out = append(out, userCodeAlphabet[int(c)%len(userCodeAlphabet)])
	}
	return string(out)
}

func normalizeUserCode(c string) string {
	c = strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(c), "-", ""))
	if len(c) == 8 {
		return c[:4] + "-" + c[4:]
	}
	return c
}

// deviceGrant serves the device code grant.
func (s *Server) deviceGrant(clientID string, form url.Values, ev *Event) (tokenResponse, *oauthError) {
	dc := form.Get("device_code")
	if dc == "" {
		return tokenResponse{}, badRequest("invalid_request", "Missing device_code")
	}
	now := s.now()
	a := s.az
	a.mu.Lock()
	a.devicePolls++
	a.pollTimes = append(a.pollTimes, now)
	f := a.devices[dc]
	switch {
	case f == nil || f.clientID != clientID:
		a.mu.Unlock()
		return tokenResponse{}, badRequest("invalid_grant", "The device code is invalid")
	case f.consumed:
		a.mu.Unlock()
		return tokenResponse{}, badRequest("invalid_grant", "The device code was already used")
	case !now.Before(f.expires):
		a.mu.Unlock()
		return tokenResponse{}, badRequest("expired_token", "The device code has expired")
	case f.decided < 0:
		f.consumed = true
		a.mu.Unlock()
		return tokenResponse{}, badRequest("access_denied", "The user denied the request")
	}
	early := !f.lastPoll.IsZero() && now.Sub(f.lastPoll) < f.interval
	f.lastPoll = now
	if early || (f.decided == 0 && a.slowDownNext > 0) {
		if !early {
			a.slowDownNext--
		}
		f.interval += slowDownStep
		a.slowDowns++
		a.mu.Unlock()
		return tokenResponse{}, badRequest("slow_down", "Polling too often; the interval is now longer by 5 seconds")
	}
	if f.decided == 0 {
		a.mu.Unlock()
		return tokenResponse{}, badRequest("authorization_pending", "The user has not decided yet")
	}
	f.consumed = true
	scope := f.scope
	a.mu.Unlock()
	resp, fam := s.issueFamily(clientID, scope, now)
	ev.Family, ev.Generation = fam.id, 0
	return resp, nil
}

var verificationPage = template.Must(template.New("verify").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fakeidp: device</title></head>
<body><h1>{{.Title}}</h1>
{{if .Form}}<form method="post" action="{{.Action}}">
<label>Code <input name="user_code" value="{{.UserCode}}"></label>
<button name="decision" value="approve">Approve</button>
<button name="decision" value="deny">Deny</button>
</form>{{end}}</body></html>
`))

// handleVerification serves the device verification page: GET shows the
// form, POST (user_code, decision approve or deny) decides. With
// ConsentDeny, an approval counts as a denial.
func (s *Server) handleVerification(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		writeHTML(w, http.StatusOK, verificationPage, map[string]any{
			"Title": "Enter the code shown on your device", "Form": true, "Action": VerificationPath, "UserCode": r.URL.Query().Get("user_code"),
		})
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			writeHTML(w, http.StatusBadRequest, errorPage, "The form could not be read")
			return
		}
		s.az.mu.Lock()
		deny := s.az.consent == ConsentDeny
		s.az.mu.Unlock()
		d := -1
		if r.PostForm.Get("decision") == "approve" && !deny {
			d = 1
		}
		if !s.decideDevice(r.PostForm.Get("user_code"), d) {
			writeHTML(w, http.StatusBadRequest, verificationPage, map[string]any{"Title": "Unknown, expired or already used code", "Form": true, "Action": VerificationPath})
			return
		}
		title := "Approved: you may return to your device"
		if d < 0 {
			title = "Denied"
		}
		writeHTML(w, http.StatusOK, verificationPage, map[string]any{"Title": title})
	default:
		w.Header().Set("Allow", "GET, POST")
		writeHTML(w, http.StatusMethodNotAllowed, errorPage, "GET or POST only")
	}
}
