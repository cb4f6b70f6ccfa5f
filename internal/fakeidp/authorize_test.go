package fakeidp_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

const redirect = "http://127.0.0.1:1/oauth2/callback"

// authConfig is an x/oauth2 config for the Server's authorization
// endpoints.
func authConfig(s *fakeidp.Server) *oauth2.Config {
	return &oauth2.Config{
		ClientID: clientID, ClientSecret: secret, RedirectURL: redirect, Scopes: []string{"api"},
		Endpoint: oauth2.Endpoint{AuthURL: s.AuthorizeURL(), TokenURL: s.TokenURL(), DeviceAuthURL: s.DeviceAuthorizationURL(), AuthStyle: oauth2.AuthStyleInHeader},
	}
}

// noRedirects is a client that stops at the first redirect.
func noRedirects(t *testing.T) *http.Client {
	c := httpClient(t)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

// authorize GETs u and returns the status and the redirect's query.
func authorize(t *testing.T, u string) (int, url.Values) {
	t.Helper()
	resp, err := noRedirects(t).Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if loc == nil {
		return resp.StatusCode, nil
	}
	return resp.StatusCode, loc.Query()
}

func exchange(t *testing.T, c *oauth2.Config, code string, opts ...oauth2.AuthCodeOption) (*oauth2.Token, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Exchange(context.WithValue(ctx, oauth2.HTTPClient, httpClient(t)), code, opts...)
}

func oauthCode(err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return re.ErrorCode
	}
	return ""
}

func TestAuthorizationCodeWithPKCE(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	s.RegisterRedirect(clientID, redirect)
	c := authConfig(s)
	verifier := oauth2.GenerateVerifier()
	status, q := authorize(t, c.AuthCodeURL("st-1", oauth2.S256ChallengeOption(verifier)))
	if status != http.StatusFound || q.Get("state") != "st-1" || q.Get("code") == "" {
		t.Fatalf("authorize: %d %v", status, q)
	}
	// A wrong verifier is refused, and does not spend the code.
	if _, err := exchange(t, c, q.Get("code"), oauth2.VerifierOption(oauth2.GenerateVerifier())); oauthCode(err) != "invalid_grant" {
		t.Fatalf("exchange with another verifier: %v, want invalid_grant", err)
	}
	tok, err := exchange(t, c, q.Get("code"), oauth2.VerifierOption(verifier))
	if err != nil || tok.RefreshToken == "" || tok.AccessToken == "" {
		t.Fatalf("exchange: %v, %+v", err, tok)
	}
	if info, _ := s.Lookup(tok.RefreshToken); !info.Live || info.ClientID != clientID {
		t.Fatalf("issued refresh token %+v", info)
	}
	// A second use of the code is refused and revokes what the first issued.
	if _, err := exchange(t, c, q.Get("code"), oauth2.VerifierOption(verifier)); oauthCode(err) != "invalid_grant" {
		t.Fatalf("second exchange: %v, want invalid_grant", err)
	}
	if info, _ := s.Lookup(tok.RefreshToken); !info.Revoked {
		t.Fatal("a reused code did not revoke its tokens")
	}
	if st := s.AuthStats(); st.CodesIssued != 1 || st.CodeGrants != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAuthorizeRefusals(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	s.RegisterRedirect(clientID, redirect)
	c := authConfig(s)
	challenge := oauth2.S256ChallengeOption(oauth2.GenerateVerifier())
	// No redirect to an unregistered URI or for an unknown client.
	other := *c
	other.RedirectURL = "http://evil.example/oauth2/callback"
	if status, q := authorize(t, other.AuthCodeURL("s", challenge)); status != http.StatusBadRequest || len(q) != 0 {
		t.Errorf("unregistered redirect_uri: %d %v", status, q)
	}
	unknown := *c
	unknown.ClientID = "nobody"
	if status, _ := authorize(t, unknown.AuthCodeURL("s", challenge)); status != http.StatusBadRequest {
		t.Errorf("unknown client: %d", status)
	}
	// Errors that go back to the client.
	for _, tc := range []struct {
		name, url, want string
	}{
		{"no state", c.AuthCodeURL("", challenge), "invalid_request"},
		{"no PKCE", c.AuthCodeURL("s"), "invalid_request"},
		{"plain PKCE", c.AuthCodeURL("s", oauth2.SetAuthURLParam("code_challenge", "x"), oauth2.SetAuthURLParam("code_challenge_method", "plain")), "invalid_request"},
		{"token response type", c.AuthCodeURL("s", challenge, oauth2.SetAuthURLParam("response_type", "token")), "unsupported_response_type"},
	} {
		status, q := authorize(t, tc.url)
		if status != http.StatusFound || q.Get("error") != tc.want {
			t.Errorf("%s: %d %v, want a redirect with %s", tc.name, status, q, tc.want)
		}
	}
	s.SetConsent(fakeidp.ConsentDeny)
	if status, q := authorize(t, c.AuthCodeURL("s", challenge)); status != http.StatusFound || q.Get("error") != "access_denied" || q.Get("state") != "s" {
		t.Errorf("denied consent: %d %v", status, q)
	}
	// One click: a page, then the decision.
	s.SetConsent(fakeidp.ConsentOneClick)
	resp, err := httpClient(t).Get(c.AuthCodeURL("s", challenge))
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), `value="approve"`) {
		t.Fatalf("one-click consent page: %d\n%s", resp.StatusCode, page)
	}
	form := url.Values{"decision": {"approve"}}
	u, _ := url.Parse(c.AuthCodeURL("s", challenge))
	for k, v := range u.Query() {
		form[k] = v
	}
	resp, err = noRedirects(t).PostForm(s.AuthorizeURL(), form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc, _ := url.Parse(resp.Header.Get("Location")); resp.StatusCode != http.StatusFound || loc.Query().Get("code") == "" {
		t.Fatalf("approve: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestDeviceAuthorization(t *testing.T) {
	clock := newClock()
	// A public client: x/oauth2's DeviceAuth sends client_id alone.
	s := newIdP(t, fakeidp.Options{Now: clock.Now, Clients: map[string]string{"tv": ""}})
	s.SetDeviceInterval(time.Second)
	c := authConfig(s)
	c.ClientID, c.ClientSecret = "tv", ""
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, httpClient(t))
	da, err := c.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if da.UserCode == "" || da.VerificationURI != s.VerificationURL() || !strings.Contains(da.VerificationURIComplete, "user_code=") || da.Interval != 1 {
		t.Fatalf("device authorization %+v", da)
	}
	poll := func() (*oauth2.Token, error) {
		// One poll, as the broker sends it.
		return (&oauth2.Config{ClientID: "tv", Endpoint: oauth2.Endpoint{TokenURL: c.Endpoint.TokenURL, AuthStyle: oauth2.AuthStyleInParams}}).Exchange(ctx, "",
			oauth2.SetAuthURLParam("grant_type", "urn:ietf:params:oauth:grant-type:device_code"), oauth2.SetAuthURLParam("device_code", da.DeviceCode))
	}
	if _, err := poll(); oauthCode(err) != "authorization_pending" {
		t.Fatalf("first poll: %v", err)
	}
	if _, err := poll(); oauthCode(err) != "slow_down" {
		t.Fatalf("a poll at once: %v, want slow_down", err)
	}
	// The user approves at the verification page.
	resp, err := httpClient(t).PostForm(s.VerificationURL(), url.Values{"user_code": {strings.ToLower(da.UserCode)}, "decision": {"approve"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("verification page: %d", resp.StatusCode)
	}
	clock.Advance(6 * time.Second) // the interval is now 1 s + 5 s after slow_down
	tok, err := poll()
	if err != nil || tok.RefreshToken == "" {
		t.Fatalf("poll after approval: %v", err)
	}
	if _, err := poll(); oauthCode(err) != "invalid_grant" {
		t.Fatalf("poll after the grant: %v, want invalid_grant", err)
	}
	if st := s.AuthStats(); st.DevicePolls != 4 || st.SlowDowns != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Denial and expiry.
	da2, err := c.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !s.DenyDevice(da2.UserCode) || s.ApproveDevice(da2.UserCode) {
		t.Fatal("deny then approve")
	}
	if _, err := (&oauth2.Config{ClientID: "tv", Endpoint: oauth2.Endpoint{TokenURL: c.Endpoint.TokenURL, AuthStyle: oauth2.AuthStyleInParams}}).Exchange(ctx, "",
		oauth2.SetAuthURLParam("grant_type", "urn:ietf:params:oauth:grant-type:device_code"), oauth2.SetAuthURLParam("device_code", da2.DeviceCode)); oauthCode(err) != "access_denied" {
		t.Fatalf("poll after denial: %v", err)
	}
}
