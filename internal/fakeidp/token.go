package fakeidp

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// dexReuseDescription is Dex's error_description for a refresh token that was
// already claimed.
const dexReuseDescription = "Refresh token is invalid or has already been claimed by another client."

// tokenResponse is a successful token response (RFC 6749 section 5.1).
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

// errorBody is an error response (RFC 6749 section 5.2).
type errorBody struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

// oauthError is an error answer: its status, code and description. The
// description never holds a token or a secret.
type oauthError struct {
	status int
	code   string
	desc   string
}

func badRequest(code, desc string) *oauthError {
	return &oauthError{status: http.StatusBadRequest, code: code, desc: desc}
}

func invalidClient(desc string) *oauthError {
	return &oauthError{status: http.StatusUnauthorized, code: "invalid_client", desc: desc}
}

func (e *oauthError) write(w http.ResponseWriter) {
	h := w.Header()
	noStore(h)
	if e.status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", `Basic realm="fakeidp"`)
	}
	writeJSON(w, e.status, errorBody{Error: e.code, Description: e.desc})
}

func noStore(h http.Header) {
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only plain structs of strings and integers are written.
		panic("fakeidp: " + err.Error())
	}
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// expiresIn is d in whole seconds, rounded up and at least 1.
func expiresIn(d time.Duration) int64 {
	return max(int64((d+time.Second-1)/time.Second), 1)
}

// handleToken serves the token endpoint.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	s.stats.tokenRequests.Add(1)
	ev := Event{Time: s.now(), Path: TokenPath, Generation: -1}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.answer(w, r, &ev, tokenResponse{}, &oauthError{
			status: http.StatusMethodNotAllowed, code: "invalid_request",
			desc: "The token endpoint accepts only POST",
		})
		return
	}
	// Reading the whole body first also lets net/http notice a client that
	// goes away during a stall or the latency (it watches the connection
	// only then).
	body, oe := readBody(w, r)
	if oe != nil {
		s.answer(w, r, &ev, tokenResponse{}, oe)
		return
	}
	h := hold{s: s, gone: r.Context().Done()}
	ok := h.wait()
	ev.Stalled, ev.ClientGone = h.stalled, h.clientGone
	if !ok {
		// The Server is closing, or the client went away and such
		// requests are dropped: nothing was looked at, and nothing is
		// answered (not even an empty 200).
		ev.Abandoned = true
		s.stats.abandoned.Add(1)
		s.emit(&ev)
		dropConnection(w)
		return
	}
	if f, ok := s.takeFault(); ok {
		s.stats.faults.Add(1)
		ev.Fault, ev.Status = f.kind, f.status
		s.emitToken(r, &ev)
		writeFault(w, f)
		return
	}
	form, oe := parseForm(r, body)
	if oe != nil {
		s.answer(w, r, &ev, tokenResponse{}, oe)
		return
	}
	ev.GrantType = form.Get("grant_type")
	client, verified, oe := s.authenticate(r, form, &ev)
	if oe != nil {
		s.answer(w, r, &ev, tokenResponse{}, oe)
		return
	}
	var resp tokenResponse
	switch ev.GrantType {
	case "":
		oe = badRequest("invalid_request", "Missing grant_type")
	case "refresh_token":
		resp, oe = s.refreshGrant(client, form, &ev)
	case "client_credentials":
		resp, oe = s.clientCredentialsGrant(client, verified, form, &ev)
	case "authorization_code":
		resp, oe = s.codeGrant(client, form, &ev)
	case deviceGrantType:
		resp, oe = s.deviceGrant(client, form, &ev)
	default:
		oe = badRequest("unsupported_grant_type", "The grant_type is not supported")
	}
	if s.takeLoseReply() {
		s.stats.faults.Add(1)
		ev.Fault = FaultLostReply
		s.emitToken(r, &ev)
		dropConnection(w)
		return
	}
	s.answer(w, r, &ev, resp, oe)
}

// answer writes a token response or an error, after telling OnEvent.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, ev *Event, resp tokenResponse, oe *oauthError) {
	if oe != nil {
		if oe.code == "invalid_client" {
			s.stats.invalidClient.Add(1)
		}
		ev.Status, ev.Error = oe.status, oe.code
		s.emitToken(r, ev)
		oe.write(w)
		return
	}
	ev.Status = http.StatusOK
	s.emitToken(r, ev)
	noStore(w.Header())
	writeJSON(w, http.StatusOK, resp)
}

// emitToken tells OnEvent about a token request that is about to be
// answered (or to lose its answer), noting whether its client has gone
// away: the answer then goes to a dead connection.
func (s *Server) emitToken(r *http.Request, ev *Event) {
	if !ev.ClientGone && r.Context().Err() != nil {
		ev.ClientGone = true
	}
	if ev.ClientGone {
		s.stats.clientGone.Add(1)
	}
	s.emit(ev)
}

// knownParams are the parameters an error description may name.
var knownParams = map[string]bool{
	"grant_type": true, "refresh_token": true, "scope": true,
	"client_id": true, "client_secret": true,
	"code": true, "redirect_uri": true, "code_verifier": true, "device_code": true,
}

// readBody reads the request body, bounded in size.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, *oauthError) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, &oauthError{status: http.StatusRequestEntityTooLarge, code: "invalid_request", desc: "The request body is too large"}
		}
		return nil, badRequest("invalid_request", "The request body could not be read")
	}
	return body, nil
}

// parseForm parses the form-encoded body (RFC 6749 section 3.2): parameters
// in the body only, none repeated, and empty ones treated as omitted.
func parseForm(r *http.Request, body []byte) (url.Values, *oauthError) {
	if r.URL.RawQuery != "" {
		return nil, badRequest("invalid_request", "Parameters must be sent in the request body, not the URL")
	}
	ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || ct != "application/x-www-form-urlencoded" {
		return nil, badRequest("invalid_request", "The body must be application/x-www-form-urlencoded")
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, badRequest("invalid_request", "The request body is not a valid form")
	}
	for k, v := range form {
		if len(v) > 1 {
			if knownParams[k] {
				return nil, badRequest("invalid_request", "The parameter "+k+" is repeated")
			}
			return nil, badRequest("invalid_request", "A parameter is repeated")
		}
		if v[0] == "" {
			delete(form, k)
		}
	}
	return form, nil
}

// authenticate identifies and authenticates the client (RFC 6749 section
// 2.3): HTTP basic with form-urlencoded id and secret, or client_id and
// client_secret in the body, never both; a public client by client_id
// alone. verified is true when a secret was checked.
func (s *Server) authenticate(r *http.Request, form url.Values, ev *Event) (clientID string, verified bool, oe *oauthError) {
	formID := form.Get("client_id")
	_, postSecret := form["client_secret"]
	if len(r.Header.Values("Authorization")) > 0 {
		if postSecret {
			return "", false, badRequest("invalid_request", "The client used more than one authentication method")
		}
		user, pass, ok := r.BasicAuth()
		if !ok {
			return "", false, invalidClient("Unsupported or malformed Authorization header")
		}
		id, err1 := url.QueryUnescape(user)
		secret, err2 := url.QueryUnescape(pass)
		if err1 != nil || err2 != nil {
			return "", false, invalidClient("The client credentials in the Authorization header are not form-urlencoded")
		}
		ev.ClientID = id
		if formID != "" && formID != id {
			return "", false, badRequest("invalid_request", "client_id does not match the Authorization header")
		}
		return s.checkClient(id, secret)
	}
	ev.ClientID = formID
	if formID == "" {
		return "", false, invalidClient("Client authentication is required")
	}
	return s.checkClient(formID, form.Get("client_secret"))
}

// checkClient checks secret against the client's accepted secrets. The empty
// secret passes only for a public client.
func (s *Server) checkClient(id, secret string) (string, bool, *oauthError) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	secrets, ok := s.clients[id]
	if !ok {
		return "", false, invalidClient("Unknown client")
	}
	for _, have := range secrets {
		if secret == "" && have == "" {
			return id, false, nil
		}
		if secret != "" && have != "" && subtle.ConstantTimeCompare([]byte(have), []byte(secret)) == 1 {
			return id, true, nil
		}
	}
	return "", false, invalidClient("Client authentication failed")
}

// refreshGrant serves grant_type=refresh_token (RFC 6749 section 6).
func (s *Server) refreshGrant(clientID string, form url.Values, ev *Event) (tokenResponse, *oauthError) {
	s.stats.refreshRequests.Add(1)
	rt := form.Get("refresh_token")
	if rt == "" {
		return tokenResponse{}, badRequest("invalid_request", "Missing refresh_token")
	}
	reqScope, ok := parseScope(form.Get("scope"))
	if !ok {
		return tokenResponse{}, badRequest("invalid_scope", "The scope is malformed")
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.refresh[rt]
	if !ok {
		return tokenResponse{}, badRequest("invalid_grant", "The refresh token is invalid")
	}
	f := e.fam
	ev.Family, ev.Generation = f.id, e.gen
	if f.clientID != clientID {
		return tokenResponse{}, badRequest("invalid_grant", "The refresh token was issued to another client")
	}
	if reqScope != nil && !subset(reqScope, f.scope) {
		return tokenResponse{}, badRequest("invalid_scope", "The requested scope exceeds the scope originally granted")
	}
	if e.spent {
		ev.Reuse = true
		s.stats.reuses.Add(1)
	}
	if f.revoked {
		if e.spent {
			f.rejectedReuses++
		}
		return tokenResponse{}, badRequest("invalid_grant", "The refresh token has been revoked")
	}
	if e.spent {
		return s.reuse(e, reqScope, now, ev)
	}

	scope := strings.Join(f.scope, " ")
	if reqScope != nil {
		scope = strings.Join(reqScope, " ")
	}
	// Using one live refresh token of the family settles it: siblings that
	// GraceNewPair replays minted next to this one die unused.
	for _, h := range f.heads {
		if h != e && !h.spent {
			h.spent, h.superseded, h.spentAt = true, true, now
		}
	}
	f.heads = f.heads[:0]
	f.gen++
	at, ttl := s.issueAccess(f, scope, now, s.revokePrevAccess)
	resp := tokenResponse{
		AccessToken: at,
		TokenType:   "Bearer",
		ExpiresIn:   expiresIn(ttl),
		Scope:       scope,
	}
	switch s.rotation {
	case NoRotation:
		resp.RefreshToken = rt
		f.heads = append(f.heads, e)
	case OmitRefreshToken:
		// No refresh_token: the client keeps the one it has.
		f.heads = append(f.heads, e)
	default:
		resp.RefreshToken = s.newRefresh(f)
		e.spent, e.spentAt, e.reply = true, now, resp
	}
	s.countRefresh(f)
	return resp, nil
}

func (s *Server) countRefresh(f *family) {
	f.refreshes++
	s.stats.refreshes.Add(1)
}

// reuse answers a spent refresh token of a live family, as the reuse policy
// says. Call with s.mu held.
func (s *Server) reuse(e *refreshEntry, reqScope []string, now time.Time, ev *Event) (tokenResponse, *oauthError) {
	f := e.fam
	// A replay is possible only within the window after the rotation that
	// spent e, and only while the family has not been refreshed since.
	inWindow := !e.superseded && f.gen == e.gen+1 && now.Sub(e.spentAt) <= s.grace
	var resp tokenResponse
	switch s.onReuse {
	case DexInvalidRequest:
		return s.reject(e, false)
	case Grace, DexReuseInterval:
		if !inWindow || !s.liveRefresh(e.reply.RefreshToken) {
			return s.reject(e, s.onReuse == Grace)
		}
		resp = e.reply
		a := s.access[resp.AccessToken]
		if s.onReuse == Grace && now.Before(a.expiry) && !a.superseded() {
			resp.ExpiresIn = expiresIn(a.expiry.Sub(now))
		} else {
			// Dex mints a new access token for each replay; Grace does
			// when the first one has expired.
			at, ttl := s.issueAccess(f, a.scope, now, s.revokePrevAccess)
			resp.AccessToken, resp.ExpiresIn = at, expiresIn(ttl)
			e.reply = resp
		}
	case GraceNewPair:
		if !inWindow {
			return s.reject(e, true)
		}
		scope := strings.Join(f.scope, " ")
		if reqScope != nil {
			scope = strings.Join(reqScope, " ")
		}
		at, ttl := s.issueAccess(f, scope, now, s.revokePrevAccess)
		resp = tokenResponse{
			AccessToken:  at,
			TokenType:    "Bearer",
			ExpiresIn:    expiresIn(ttl),
			RefreshToken: s.newRefresh(f), // a sibling of the earlier successors
			Scope:        scope,
		}
		e.reply = resp
	default:
		return s.reject(e, true)
	}
	ev.GraceReplay = true
	f.graceReplays++
	s.stats.graceReplays.Add(1)
	s.countRefresh(f)
	return resp, nil
}

// reject refuses a spent refresh token: Dex's invalid_request, which revokes
// nothing, or invalid_grant with the family revoked. Call with s.mu held.
func (s *Server) reject(e *refreshEntry, revoke bool) (tokenResponse, *oauthError) {
	e.fam.rejectedReuses++
	if !revoke {
		return tokenResponse{}, badRequest("invalid_request", dexReuseDescription)
	}
	s.revoke(e.fam)
	return tokenResponse{}, badRequest("invalid_grant", "The refresh token was already used; its token family has been revoked")
}

// liveRefresh reports whether token is an unspent refresh token. Call with
// s.mu held.
func (s *Server) liveRefresh(token string) bool {
	e, ok := s.refresh[token]
	return ok && !e.spent
}

// clientCredentialsGrant serves grant_type=client_credentials (RFC 6749
// section 4.4), for confidential clients only. Each grant starts a family of
// its own that has no refresh token.
func (s *Server) clientCredentialsGrant(clientID string, verified bool, form url.Values, ev *Event) (tokenResponse, *oauthError) {
	if !verified {
		return tokenResponse{}, badRequest("unauthorized_client", "A public client cannot use client_credentials")
	}
	scope, ok := parseScope(form.Get("scope"))
	if !ok {
		return tokenResponse{}, badRequest("invalid_scope", "The scope is malformed")
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.newFamily(clientID, scope)
	ev.Family = f.id
	at, ttl := s.issueAccess(f, strings.Join(scope, " "), now, false)
	s.stats.clientCredentials.Add(1)
	return tokenResponse{
		AccessToken: at,
		TokenType:   "Bearer",
		ExpiresIn:   expiresIn(ttl),
		Scope:       strings.Join(scope, " "),
	}, nil
}
