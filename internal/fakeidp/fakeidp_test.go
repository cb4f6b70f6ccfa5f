package fakeidp_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

func TestRotate(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	rt0 := s.Seed(clientID, "read")

	t1 := mustRefresh(t, c, rt0)
	if t1.RefreshToken == "" || t1.RefreshToken == rt0 {
		t.Fatal("refresh did not rotate the refresh token")
	}
	if t1.AccessToken == "" || t1.TokenType != "Bearer" || t1.Expiry.IsZero() {
		t.Fatalf("incomplete token: type %q, expiry %v", t1.TokenType, t1.Expiry)
	}
	if got := resource(t, s, t1.AccessToken); got.status != http.StatusOK || got.str("client_id") != clientID {
		t.Fatalf("resource: %d %s", got.status, got.raw)
	}
	old, _ := s.Lookup(rt0)
	cur, _ := s.Lookup(t1.RefreshToken)
	if old.Live || !old.Spent || !cur.Live || cur.Generation != 1 || cur.Family != old.Family {
		t.Fatalf("after rotation: old %+v, new %+v", old, cur)
	}
	if !strings.Contains(t1.RefreshToken, "."+cur.Family+".") || !strings.Contains(t1.AccessToken, "."+cur.Family+".") {
		t.Fatal("tokens do not name their family")
	}

	t2 := mustRefresh(t, c, t1.RefreshToken)
	if t2.RefreshToken == t1.RefreshToken || t2.AccessToken == t1.AccessToken {
		t.Fatal("second refresh did not rotate")
	}
	if st := s.Stats(); st.Refreshes != 2 || st.RefreshRequests != 2 || st.Reuses != 0 || st.Revocations != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestReuseRevokesFamily(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	rt0 := s.Seed(clientID)
	t1 := mustRefresh(t, c, rt0)

	_, err := refresh(t, c, rt0)
	if errCode(err) != "invalid_grant" {
		t.Fatalf("reuse: got %v, want invalid_grant", err)
	}
	if got := resource(t, s, t1.AccessToken); got.status != http.StatusUnauthorized ||
		!strings.HasPrefix(got.header.Get("WWW-Authenticate"), `Bearer error="invalid_token"`) {
		t.Fatalf("access token of a revoked family: %d %q", got.status, got.header.Get("WWW-Authenticate"))
	}
	if _, err := refresh(t, c, t1.RefreshToken); errCode(err) != "invalid_grant" {
		t.Fatalf("current refresh token of a revoked family: got %v, want invalid_grant", err)
	}
	if info, _ := s.Lookup(t1.RefreshToken); !info.Revoked || info.Live {
		t.Fatalf("lookup %+v", info)
	}
	// Presenting the spent token once more is another reuse, not another
	// revocation.
	if _, err := refresh(t, c, rt0); errCode(err) != "invalid_grant" {
		t.Fatalf("second reuse: %v", err)
	}
	if st := s.Stats(); st.Reuses != 2 || st.Revocations != 1 || st.Refreshes != 1 || st.Resource401 != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGraceWindow(t *testing.T) {
	s := newIdP(t, fakeidp.Options{OnReuse: fakeidp.Grace, GraceWindow: time.Hour})
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	rt0 := s.Seed(clientID)
	t1 := mustRefresh(t, c, rt0)

	again := mustRefresh(t, c, rt0)
	if again.RefreshToken != t1.RefreshToken || again.AccessToken != t1.AccessToken {
		t.Fatal("a reuse within the grace window did not return the same pair")
	}
	if got := resource(t, s, t1.AccessToken); got.status != http.StatusOK {
		t.Fatalf("resource after grace reuse: %d", got.status)
	}

	// Once the family has rotated again, the old token is out of grace.
	t2 := mustRefresh(t, c, t1.RefreshToken)
	if _, err := refresh(t, c, rt0); errCode(err) != "invalid_grant" {
		t.Fatalf("reuse after a later rotation: got %v, want invalid_grant", err)
	}
	if got := resource(t, s, t2.AccessToken); got.status != http.StatusUnauthorized {
		t.Fatalf("family not revoked: %d", got.status)
	}
	if st := s.Stats(); st.Reuses != 2 || st.Revocations != 1 || st.Refreshes != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGraceWindowExpired(t *testing.T) {
	s := newIdP(t, fakeidp.Options{OnReuse: fakeidp.Grace})
	s.SetGraceWindow(time.Nanosecond)
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	rt0 := s.Seed(clientID)
	t1 := mustRefresh(t, c, rt0)
	if _, err := refresh(t, c, rt0); errCode(err) != "invalid_grant" {
		t.Fatalf("reuse outside the grace window: got %v, want invalid_grant", err)
	}
	if info, _ := s.Lookup(t1.AccessToken); !info.Revoked {
		t.Fatal("family not revoked")
	}
}

func TestGraceReplayMintsFreshAccessToken(t *testing.T) {
	clock := newClock()
	s := newIdP(t, fakeidp.Options{OnReuse: fakeidp.Grace, GraceWindow: time.Hour, AccessTokenTTL: time.Minute, Now: clock.Now})
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	rt0 := s.Seed(clientID)
	t1 := mustRefresh(t, c, rt0)
	clock.Advance(time.Minute)
	wantLive(t, s, t1.AccessToken, false)

	again := mustRefresh(t, c, rt0)
	if again.RefreshToken != t1.RefreshToken || again.AccessToken == t1.AccessToken {
		t.Fatal("grace replay of an expired pair: want the same refresh token and a new access token")
	}
	if got := resource(t, s, again.AccessToken); got.status != http.StatusOK {
		t.Fatalf("replayed access token: %d", got.status)
	}
	if info, _ := s.Lookup(again.AccessToken); info.Generation != 1 {
		t.Fatalf("replayed access token generation %d, want 1", info.Generation)
	}
}

func TestDexInvalidRequest(t *testing.T) {
	s := newIdP(t, fakeidp.Options{OnReuse: fakeidp.DexInvalidRequest})
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	rt0 := s.Seed(clientID)
	t1 := mustRefresh(t, c, rt0)

	r := post(t, s, refreshForm(rt0), basic(clientID, secret))
	wantOAuthError(t, r, http.StatusBadRequest, "invalid_request")
	if !strings.Contains(r.str("error_description"), "already been claimed") {
		t.Fatalf("description %q", r.str("error_description"))
	}
	// Nothing was revoked: the current pair still works.
	if got := resource(t, s, t1.AccessToken); got.status != http.StatusOK {
		t.Fatalf("resource: %d", got.status)
	}
	mustRefresh(t, c, t1.RefreshToken)
	if st := s.Stats(); st.Reuses != 1 || st.Revocations != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestNoRotation(t *testing.T) {
	s := newIdP(t, fakeidp.Options{Rotation: fakeidp.NoRotation})
	rt := s.Seed(clientID)
	var ats []string
	for range 3 {
		r := post(t, s, refreshForm(rt), basic(clientID, secret))
		if r.status != http.StatusOK || r.str("refresh_token") != rt {
			t.Fatalf("got %d, refresh_token changed or missing", r.status)
		}
		ats = append(ats, r.str("access_token"))
	}
	if ats[0] == ats[1] || ats[1] == ats[2] {
		t.Fatal("access tokens repeat")
	}
	info, _ := s.Lookup(rt)
	if !info.Live || info.Generation != 0 || info.FamilyGeneration != 3 {
		t.Fatalf("lookup %+v", info)
	}
	if st := s.Stats(); st.Reuses != 0 || st.Refreshes != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestOmitRefreshToken(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	s.SetRotation(fakeidp.OmitRefreshToken)
	rt := s.Seed(clientID)
	r := post(t, s, refreshForm(rt), basic(clientID, secret))
	if r.status != http.StatusOK {
		t.Fatalf("status %d: %s", r.status, r.raw)
	}
	if _, ok := r.body["refresh_token"]; ok {
		t.Fatal("response has a refresh_token field")
	}
	// x/oauth2 keeps the refresh token it sent; the IdP still accepts it.
	tok := mustRefresh(t, config(s, clientID, secret, oauth2.AuthStyleInHeader), rt)
	if tok.RefreshToken != rt {
		t.Fatal("x/oauth2 did not keep the old refresh token")
	}
	// Switching back to rotation rotates from the same token.
	s.SetRotation(fakeidp.Rotate)
	tok = mustRefresh(t, config(s, clientID, secret, oauth2.AuthStyleInHeader), rt)
	if tok.RefreshToken == rt {
		t.Fatal("no rotation after switching back")
	}
}

func TestClientAuthStyles(t *testing.T) {
	const special = "p@ss:w+rd/%20&=ü "
	s := newIdP(t, fakeidp.Options{Clients: map[string]string{
		"app:1": special,
		"spa":   "",
	}})
	for _, style := range []oauth2.AuthStyle{oauth2.AuthStyleInHeader, oauth2.AuthStyleInParams} {
		c := config(s, "app:1", special, style)
		rt := s.Seed("app:1")
		if _, err := refresh(t, c, rt); err != nil {
			t.Fatalf("style %d: %v", style, err)
		}
		bad := config(s, "app:1", special+"x", style)
		if _, err := refresh(t, bad, s.Seed("app:1")); errCode(err) != "invalid_client" {
			t.Fatalf("style %d, wrong secret: got %v, want invalid_client", style, err)
		}
	}
	// A public client identifies itself by client_id alone, either way.
	for _, style := range []oauth2.AuthStyle{oauth2.AuthStyleInHeader, oauth2.AuthStyleInParams} {
		if _, err := refresh(t, config(s, "spa", "", style), s.Seed("spa")); err != nil {
			t.Fatalf("public client, style %d: %v", style, err)
		}
	}
	if st := s.Stats(); st.InvalidClient != 2 || st.Refreshes != 4 {
		t.Fatalf("stats %+v", st)
	}
}

func TestClientAuthRejections(t *testing.T) {
	s := newIdP(t, fakeidp.Options{Clients: map[string]string{clientID: secret, "spa": "", "other": "x"}})
	rt := s.Seed(clientID)
	withSecret := func(v url.Values, kv ...string) url.Values {
		v = url.Values(cloneValues(v))
		for i := 0; i < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	cases := []struct {
		name   string
		form   url.Values
		edit   func(*http.Request)
		status int
		code   string
	}{
		{"both methods", withSecret(refreshForm(rt), "client_id", clientID, "client_secret", secret), basic(clientID, secret), 400, "invalid_request"},
		{"no authentication", withSecret(refreshForm(rt), "client_id", clientID), nil, 401, "invalid_client"},
		{"nothing at all", refreshForm(rt), nil, 401, "invalid_client"},
		{"wrong secret basic", refreshForm(rt), basic(clientID, "nope"), 401, "invalid_client"},
		{"wrong secret post", withSecret(refreshForm(rt), "client_id", clientID, "client_secret", "nope"), nil, 401, "invalid_client"},
		{"unknown client", refreshForm(rt), basic("stranger", secret), 401, "invalid_client"},
		{"not form-encoded basic", refreshForm(rt), func(r *http.Request) { r.SetBasicAuth(clientID, "100%zz") }, 401, "invalid_client"},
		{"bearer scheme", refreshForm(rt), func(r *http.Request) { r.Header.Set("Authorization", "Bearer x") }, 401, "invalid_client"},
		{"client_id mismatch", withSecret(refreshForm(rt), "client_id", "other"), basic(clientID, secret), 400, "invalid_request"},
		{"another client's token", refreshForm(rt), basic("other", "x"), 400, "invalid_grant"},
		{"public client_credentials", url.Values{"grant_type": {"client_credentials"}, "client_id": {"spa"}}, nil, 400, "unauthorized_client"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := post(t, s, tc.form, tc.edit)
			wantOAuthError(t, r, tc.status, tc.code)
			if r.status == http.StatusUnauthorized && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic") {
				t.Fatalf("401 without a Basic challenge: %q", r.header.Get("WWW-Authenticate"))
			}
		})
	}
	// None of that spent the refresh token.
	if info, _ := s.Lookup(rt); !info.Live {
		t.Fatal("a rejected request spent the refresh token")
	}
	if st := s.Stats(); st.InvalidClient != 7 || st.Refreshes != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func cloneValues(v url.Values) map[string][]string {
	out := make(map[string][]string, len(v))
	for k, vv := range v {
		out[k] = append([]string(nil), vv...)
	}
	return out
}

func TestSecretRotation(t *testing.T) {
	s := newIdP(t, fakeidp.Options{Clients: map[string]string{clientID: "old"}})
	oldC := config(s, clientID, "old", oauth2.AuthStyleInHeader)
	newC := config(s, clientID, "new", oauth2.AuthStyleInParams)
	rt := s.Seed(clientID)

	if _, err := refresh(t, newC, rt); errCode(err) != "invalid_client" {
		t.Fatalf("unregistered secret: %v", err)
	}
	s.AddClientSecret(clientID, "new")
	tok := mustRefresh(t, oldC, rt) // the invalid_client above spent nothing
	tok = mustRefresh(t, newC, tok.RefreshToken)

	s.RemoveClientSecret(clientID, "old")
	if _, err := refresh(t, oldC, tok.RefreshToken); errCode(err) != "invalid_client" {
		t.Fatalf("removed secret: got %v, want invalid_client", err)
	}
	mustRefresh(t, newC, tok.RefreshToken)
}

func TestClientCredentials(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	cc := &clientcredentials.Config{
		ClientID: clientID, ClientSecret: secret, TokenURL: s.TokenURL(),
		Scopes: []string{"read", "write"}, AuthStyle: oauth2.AuthStyleInHeader,
	}
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, httpClient(t))
	tok, err := cc.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken != "" {
		t.Fatal("client_credentials answered with a refresh token")
	}
	r := resource(t, s, tok.AccessToken)
	if r.status != http.StatusOK || r.str("scope") != "read write" {
		t.Fatalf("resource: %d %s", r.status, r.raw)
	}
	if !s.Revoke(tok.AccessToken) {
		t.Fatal("Revoke: unknown token")
	}
	if r := resource(t, s, tok.AccessToken); r.status != http.StatusUnauthorized {
		t.Fatalf("revoked: %d", r.status)
	}
	if st := s.Stats(); st.ClientCredentials != 1 || st.Revocations != 1 || st.RefreshRequests != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestScope(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	rt := s.Seed(clientID, "read", "write")

	r := post(t, s, refreshForm(rt), basic(clientID, secret))
	if r.status != http.StatusOK || r.str("scope") != "read write" {
		t.Fatalf("default scope: %d %q", r.status, r.str("scope"))
	}
	rt = r.str("refresh_token")

	narrow := refreshForm(rt)
	narrow.Set("scope", "read")
	r = post(t, s, narrow, basic(clientID, secret))
	if r.status != http.StatusOK || r.str("scope") != "read" {
		t.Fatalf("narrowed scope: %d %q", r.status, r.str("scope"))
	}
	if info, _ := s.Lookup(r.str("access_token")); info.Scope != "read" {
		t.Fatalf("access token scope %q", info.Scope)
	}
	// The family keeps its full scope for later refreshes.
	rt = r.str("refresh_token")
	r = post(t, s, refreshForm(rt), basic(clientID, secret))
	if r.str("scope") != "read write" {
		t.Fatalf("scope after narrowing: %q", r.str("scope"))
	}
	rt = r.str("refresh_token")

	for _, bad := range []string{"read admin", "read  write", "read\"x"} {
		f := refreshForm(rt)
		f.Set("scope", bad)
		wantOAuthError(t, post(t, s, f, basic(clientID, secret)), http.StatusBadRequest, "invalid_scope")
	}
	if info, _ := s.Lookup(rt); !info.Live {
		t.Fatal("invalid_scope spent the refresh token")
	}
}

func TestRequestValidation(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	rt := s.Seed(clientID)
	auth := basic(clientID, secret)

	req, _ := http.NewRequest(http.MethodGet, s.TokenURL(), nil)
	r := do(t, req)
	wantOAuthError(t, r, http.StatusMethodNotAllowed, "invalid_request")
	if r.header.Get("Allow") != http.MethodPost {
		t.Fatalf("Allow %q", r.header.Get("Allow"))
	}

	wantOAuthError(t, post(t, s, url.Values{"refresh_token": {rt}}, auth), 400, "invalid_request")
	wantOAuthError(t, post(t, s, url.Values{"grant_type": {"password"}}, auth), 400, "unsupported_grant_type")
	wantOAuthError(t, post(t, s, url.Values{"grant_type": {"refresh_token"}}, auth), 400, "invalid_request")
	wantOAuthError(t, post(t, s, refreshForm("rt.f1.forged"), auth), 400, "invalid_grant")
	wantOAuthError(t, post(t, s, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt, rt}}, auth), 400, "invalid_request")
	wantOAuthError(t, post(t, s, refreshForm(rt), func(r *http.Request) {
		auth(r)
		r.Header.Set("Content-Type", "application/json")
	}), 400, "invalid_request")
	wantOAuthError(t, post(t, s, refreshForm(rt), func(r *http.Request) {
		auth(r)
		r.URL.RawQuery = "refresh_token=x"
	}), 400, "invalid_request")
	big := refreshForm(rt)
	big.Set("pad", strings.Repeat("x", 100<<10))
	wantOAuthError(t, post(t, s, big, auth), http.StatusRequestEntityTooLarge, "invalid_request")

	if info, _ := s.Lookup(rt); !info.Live {
		t.Fatal("a rejected request spent the refresh token")
	}
	// Error descriptions never carry the presented token.
	r = post(t, s, refreshForm(rt+"x"), auth)
	if strings.Contains(r.raw, rt) {
		t.Fatal("error body contains the refresh token")
	}
	// A successful answer has the RFC 6749 section 5.1 shape.
	r = post(t, s, refreshForm(rt), auth)
	wantNoStore(t, r)
	if r.status != 200 || r.str("token_type") != "Bearer" || r.body["expires_in"] != float64(3600) {
		t.Fatalf("success: %d %s", r.status, r.raw)
	}
}

func TestFailNext(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	rt := s.Seed(clientID)
	s.FailNext(2, http.StatusBadGateway)
	for range 2 {
		_, err := refresh(t, c, rt)
		var re *oauth2.RetrieveError
		if !errors.As(err, &re) || re.Response.StatusCode != http.StatusBadGateway {
			t.Fatalf("got %v, want a 502", err)
		}
	}
	if info, _ := s.Lookup(rt); !info.Live {
		t.Fatal("a 5xx spent the refresh token")
	}
	mustRefresh(t, c, rt)
	if st := s.Stats(); st.Faults != 2 || st.RefreshRequests != 1 || st.TokenRequests != 3 {
		t.Fatalf("stats %+v", st)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("FailNext(1, 400) did not panic")
			}
		}()
		s.FailNext(1, http.StatusBadRequest)
	}()
}

func TestRateLimitNext(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	rt := s.Seed(clientID)
	s.RateLimitNext(1, 1500*time.Millisecond)
	r := post(t, s, refreshForm(rt), basic(clientID, secret))
	wantOAuthError(t, r, http.StatusTooManyRequests, "too_many_requests")
	if r.header.Get("Retry-After") != "2" {
		t.Fatalf("Retry-After %q, want 2", r.header.Get("Retry-After"))
	}
	if info, _ := s.Lookup(rt); !info.Live {
		t.Fatal("a 429 spent the refresh token")
	}
	if r := post(t, s, refreshForm(rt), basic(clientID, secret)); r.status != http.StatusOK {
		t.Fatalf("after the rate limit: %d", r.status)
	}
}

func TestDropAbandonedDuringLatency(t *testing.T) {
	abandoned := make(chan fakeidp.Event, 1)
	s := newIdP(t, fakeidp.Options{Latency: time.Hour, DropAbandoned: true, OnEvent: func(ev fakeidp.Event) {
		if ev.Abandoned {
			abandoned <- ev
		}
	}})
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	rt := s.Seed(clientID)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := refreshCtx(ctx, t, c, rt)
		errc <- err
	}()
	waitTokenRequests(t, s, 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	select {
	case ev := <-abandoned:
		if !ev.ClientGone || ev.Status != 0 || ev.Stalled {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the server did not abandon the request")
	}
	s.SetLatency(10 * time.Millisecond)
	mustRefresh(t, c, rt) // the abandoned request spent nothing
	if st := s.Stats(); st.RefreshRequests != 1 || st.Refreshes != 1 || st.Abandoned != 1 || st.ClientGone != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// waitTokenRequests waits, boundedly, until the Server has seen n token
// requests.
func waitTokenRequests(t *testing.T, s *fakeidp.Server, n int64) {
	t.Helper()
	for range 2000 {
		if s.Stats().TokenRequests >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("the server did not see %d token requests", n)
}

func TestCloseEndsLatency(t *testing.T) {
	s := fakeidp.New(fakeidp.Options{Clients: map[string]string{clientID: secret}, Latency: time.Hour})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	errc := make(chan error, 1)
	go func() {
		_, err := refresh(t, c, s.Seed(clientID))
		errc <- err
	}()
	waitTokenRequests(t, s, 1)
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := <-errc; err == nil {
		t.Fatal("refresh succeeded on a closed server")
	}
}

func TestLoseReply(t *testing.T) {
	var mu sync.Mutex
	var events []fakeidp.Event
	s := newIdP(t, fakeidp.Options{OnEvent: func(ev fakeidp.Event) {
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}})
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	rt0 := s.Seed(clientID)
	s.LoseReplyNext(1)

	_, err := refresh(t, c, rt0)
	if err == nil || errCode(err) != "" {
		t.Fatalf("got %v, want a transport error", err)
	}
	info, _ := s.Lookup(rt0)
	if !info.Spent || info.FamilyGeneration != 1 {
		t.Fatalf("the lost request did not rotate: %+v", info)
	}
	// The client retries with the token it has: a reuse.
	if _, err := refresh(t, c, rt0); errCode(err) != "invalid_grant" {
		t.Fatalf("retry after a lost reply: got %v, want invalid_grant", err)
	}
	if st := s.Stats(); st.Faults != 1 || st.Refreshes != 1 || st.Reuses != 1 || st.Revocations != 1 {
		t.Fatalf("stats %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 2 {
		t.Fatalf("%d events, want 2", len(events))
	}
	if e := events[0]; e.Fault != fakeidp.FaultLostReply || e.Status != 0 || e.Generation != 0 || e.Reuse {
		t.Fatalf("first event %+v", e)
	}
	if e := events[1]; e.Fault != "" || e.Status != 400 || e.Error != "invalid_grant" || e.Generation != 0 || !e.Reuse || e.Family != info.Family {
		t.Fatalf("second event %+v", e)
	}
}

func TestFailureRateIsSeeded(t *testing.T) {
	statuses := func() []int {
		s := newIdP(t, fakeidp.Options{FailureRate: 0.5, RandSeed: 42})
		var out []int
		for range 20 {
			r := post(t, s, url.Values{"grant_type": {"client_credentials"}}, basic(clientID, secret))
			out = append(out, r.status)
		}
		return out
	}
	a, b := statuses(), statuses()
	seen := map[int]int{}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("runs differ at %d: %v vs %v", i, a, b)
		}
		seen[a[i]]++
	}
	if seen[200] == 0 || seen[503] == 0 || len(seen) != 2 {
		t.Fatalf("statuses %v", a)
	}
}

func TestResourceChallenges(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	r := resource(t, s, "")
	if r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") != "Bearer" {
		t.Fatalf("no token: %d %q", r.status, r.header.Get("WWW-Authenticate"))
	}
	req, _ := http.NewRequest(http.MethodGet, s.ResourceURL(), nil)
	req.SetBasicAuth("a", "b")
	if r := do(t, req); r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") != "Bearer" {
		t.Fatalf("basic credentials: %d %q", r.status, r.header.Get("WWW-Authenticate"))
	}
	r = resource(t, s, "at.f9.unknown")
	if r.status != http.StatusUnauthorized || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), `Bearer error="invalid_token"`) {
		t.Fatalf("unknown token: %d %q", r.status, r.header.Get("WWW-Authenticate"))
	}
	if st := s.Stats(); st.Resource401 != 3 || st.ResourceOK != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestExpiredAccessToken(t *testing.T) {
	clock := newClock()
	s := newIdP(t, fakeidp.Options{AccessTokenTTL: 20 * time.Millisecond, Now: clock.Now})
	r := post(t, s, refreshForm(s.Seed(clientID)), basic(clientID, secret))
	if r.status != http.StatusOK || r.body["expires_in"] != float64(1) {
		t.Fatalf("sub-second TTL: %d, expires_in %v", r.status, r.body["expires_in"])
	}
	at := r.str("access_token")
	clock.Advance(19 * time.Millisecond)
	if r := resource(t, s, at); r.status != http.StatusOK {
		t.Fatalf("before its exact expiry: %d", r.status)
	}
	clock.Advance(time.Millisecond)
	wantLive(t, s, at, false)
	r = resource(t, s, at)
	if r.status != http.StatusUnauthorized || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), `Bearer error="invalid_token"`) ||
		!strings.Contains(r.str("error_description"), "expired") {
		t.Fatalf("expired token: %d %q %s", r.status, r.header.Get("WWW-Authenticate"), r.raw)
	}
}

func TestStatsReset(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	mustRefresh(t, config(s, clientID, secret, oauth2.AuthStyleInHeader), s.Seed(clientID))
	if s.Stats() == (fakeidp.Stats{}) {
		t.Fatal("no counts")
	}
	s.ResetStats()
	if st := s.Stats(); st != (fakeidp.Stats{}) {
		t.Fatalf("after reset: %+v", st)
	}
}

func TestConcurrentFamilies(t *testing.T) {
	const families, rounds = 16, 20
	s := newIdP(t, fakeidp.Options{})
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	var wg sync.WaitGroup
	errs := make(chan error, families)
	for range families {
		wg.Go(func() {
			rt := s.Seed(clientID)
			for range rounds {
				tok, err := refresh(t, c, rt)
				if err != nil {
					errs <- err
					return
				}
				rt = tok.RefreshToken
			}
		})
	}
	// Knobs and counters are touched while requests run. Each round ends
	// with settings that keep the refreshes above succeeding.
	wg.Go(func() {
		for i := range 50 {
			s.SetLatency(0)
			s.SetGraceWindow(time.Minute)
			s.SetReusePolicy(fakeidp.GraceNewPair)
			s.SetReusePolicy(fakeidp.RevokeFamily)
			s.SetRotation(fakeidp.Rotate)
			s.SetRevokePreviousAccessToken(i%2 == 0)
			s.SetDropAbandoned(i%2 == 0)
			s.Pause()
			s.StallNext(1)
			s.Resume()
			s.AddClientSecret("spare", "x")
			_ = s.Stats()
			_ = s.StallState()
			_ = s.Families()
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Refreshes != families*rounds || st.Reuses != 0 || st.Revocations != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestConcurrentSpendOfOneToken(t *testing.T) {
	const workers = 20
	s := newIdP(t, fakeidp.Options{})
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	rt := s.Seed(clientID)
	var wg sync.WaitGroup
	results := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			_, err := refresh(t, c, rt)
			results <- err
		})
	}
	wg.Wait()
	close(results)
	ok, grants := 0, 0
	for err := range results {
		switch {
		case err == nil:
			ok++
		case errCode(err) == "invalid_grant":
			grants++
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if ok != 1 || grants != workers-1 {
		t.Fatalf("%d succeeded, %d invalid_grant", ok, grants)
	}
	if st := s.Stats(); st.Refreshes != 1 || st.Reuses != workers-1 || st.Revocations != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLifecycle(t *testing.T) {
	s := fakeidp.New(fakeidp.Options{})
	if s.URL() != "" || s.TokenURL() != "" {
		t.Fatal("URL before Start")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s.URL(), "http://127.0.0.1:") || s.TokenURL() != s.URL()+"/token" || s.ResourceURL() != s.URL()+"/resource" {
		t.Fatalf("URLs %q %q %q", s.URL(), s.TokenURL(), s.ResourceURL())
	}
	if err := s.Start(); !errors.Is(err, fakeidp.ErrStarted) {
		t.Fatalf("second Start: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Start(); !errors.Is(err, fakeidp.ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}
}

func TestHandlerInHTTPTest(t *testing.T) {
	s := fakeidp.New(fakeidp.Options{Clients: map[string]string{clientID: secret}})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	c := &oauth2.Config{ClientID: clientID, ClientSecret: secret,
		Endpoint: oauth2.Endpoint{TokenURL: ts.URL + fakeidp.TokenPath, AuthStyle: oauth2.AuthStyleInHeader}}
	rt := s.Seed(clientID)
	s.LoseReplyNext(1)
	if _, err := refresh(t, c, rt); err == nil {
		t.Fatal("lost reply arrived")
	}
	if info, _ := s.Lookup(rt); !info.Spent {
		t.Fatal("lost reply did not rotate")
	}
}

func TestEventsNameGenerations(t *testing.T) {
	var mu sync.Mutex
	var gens []int
	s := newIdP(t, fakeidp.Options{OnEvent: func(ev fakeidp.Event) {
		if ev.Path == fakeidp.TokenPath {
			mu.Lock()
			gens = append(gens, ev.Generation)
			mu.Unlock()
		}
	}})
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	rt := s.Seed(clientID)
	for range 3 {
		rt = mustRefresh(t, c, rt).RefreshToken
	}
	mu.Lock()
	defer mu.Unlock()
	if len(gens) != 3 || gens[0] != 0 || gens[1] != 1 || gens[2] != 2 {
		t.Fatalf("generations %v", gens)
	}
	if _, ok := s.Lookup("rt.f1.nope"); ok {
		t.Fatal("Lookup of a forged token")
	}
	if s.Revoke("nope") {
		t.Fatal("Revoke of an unknown token")
	}
}
