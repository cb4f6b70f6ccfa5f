package broker_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// The failoverStore of review_test.go passes the flows through.
func (s *failoverStore) SaveFlow(ctx context.Context, state string, f *broker.CodeFlow, ttl time.Duration) error {
	return s.cur().SaveFlow(ctx, state, f, ttl)
}

func (s *failoverStore) TakeFlow(ctx context.Context, state string) (*broker.CodeFlow, error) {
	return s.cur().TakeFlow(ctx, state)
}

const testRedirect = "http://127.0.0.1:8080" + broker.CallbackPath

// authCredential is a credential the broker authorizes itself: no refresh
// token, the IdP's authorization and device endpoints.
func (e *env) authCredential(id string, allowed ...string) broker.Credential {
	e.idp.RegisterRedirect(testClientID, testRedirect)
	return broker.Credential{
		ID: id, TokenURL: e.tokenURL, ClientID: testClientID, ClientSecrets: []string{testSecret},
		AuthorizationURL:       "http://localhost" + fakeidp.AuthorizePath,
		DeviceAuthorizationURL: "http://localhost" + fakeidp.DeviceAuthorizationPath,
		RedirectURL:            testRedirect, AllowedClients: allowed,
	}
}

// browse follows authURL at the IdP as a browser would, up to the redirect
// to the broker's callback, and returns the callback's query.
func (e *env) browse(authURL string) url.Values {
	e.t.Helper()
	c := &http.Client{Transport: e.http.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(authURL)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		e.t.Fatalf("authorization endpoint answered %d, want a redirect", resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Path != broker.CallbackPath {
		e.t.Fatalf("redirected to %q, want the callback", resp.Header.Get("Location"))
	}
	return loc.Query()
}

func TestAuthorizationCodeFlowOnAnotherReplica(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		a, b := e.broker(nil), e.broker(nil) // two replicas on one store
		ctx := context.Background()
		rec, err := a.PutCredential(ctx, e.authCredential("crm", "worker"), "")
		if err != nil {
			t.Fatal(err)
		}
		if rec.State != broker.StateReauthRequired || rec.RefreshToken != "" {
			t.Fatalf("new credential without a refresh token: state %v", rec.State)
		}
		if _, err := a.GetToken(ctx, "crm", 0); !errors.Is(err, broker.ErrReauthRequired) {
			t.Fatalf("GetToken before authorization: %v, want ErrReauthRequired", err)
		}
		start, err := a.StartAuthorization(ctx, "crm", nil, map[string]string{"prompt": "consent"})
		if err != nil {
			t.Fatal(err)
		}
		if got := start.Record.ViewState(time.Now()); got != broker.StatePendingAuthorization {
			t.Fatalf("view state after StartAuthorization: %v", got)
		}
		u, _ := url.Parse(start.URL)
		q := u.Query()
		if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("state") == "" ||
			q.Get("redirect_uri") != testRedirect || q.Get("prompt") != "consent" || q.Get("client_id") != testClientID {
			t.Fatalf("authorization URL %s", start.URL)
		}
		if !start.ExpiresAt.Equal(time.Now().Add(10 * time.Minute)) {
			t.Fatalf("expires at %v, want in 10 minutes", start.ExpiresAt)
		}
		cb := e.browse(start.URL)
		done, err := b.CompleteAuthorization(ctx, cb.Get("state"), cb.Get("code"), "", "")
		if err != nil {
			t.Fatalf("CompleteAuthorization on the other replica: %v", err)
		}
		if done.State != broker.StateActive || done.Authorization != nil || done.RefreshToken == "" || done.Token.AccessToken == "" {
			t.Fatalf("after the callback: state %v, authorization %+v", done.State, done.Authorization)
		}
		tok, err := a.GetToken(ctx, "crm", 0)
		if err != nil {
			t.Fatalf("GetToken after authorization: %v", err)
		}
		if !e.accepted(tok.AccessToken) {
			t.Fatal("the resource refused the token")
		}
		if st := e.idp.Stats(); st.Refreshes != 0 {
			t.Fatalf("%d refreshes: the code exchange's token should serve", st.Refreshes)
		}
		// The state is single use.
		if _, err := b.CompleteAuthorization(ctx, cb.Get("state"), cb.Get("code"), "", ""); !isInvalid(err, "state") {
			t.Fatalf("second callback with the same state: %v, want invalid state", err)
		}
		if got := e.stored("crm"); got.Generation != done.Generation {
			t.Fatalf("a refused callback changed the record: generation %d, want %d", got.Generation, done.Generation)
		}
	})
}

func isInvalid(err error, field string) bool {
	var be *broker.Error
	return errors.As(err, &be) && be.Kind == broker.ErrInvalidArgument && be.Field == field
}

func TestReauthorizationKeepsConfiguration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		b := e.broker(nil)
		ctx := context.Background()
		c := e.authCredential("crm", "worker", "batch")
		c.ClientSecrets = []string{testSecret, "old-secret-value"}
		c.Scopes = []string{"api.read"}
		rt := e.idp.Seed(testClientID, "api.read")
		if _, err := b.PutCredential(ctx, c, rt); err != nil {
			t.Fatal(err)
		}
		e.idp.Revoke(rt)
		if _, err := b.GetToken(ctx, "crm", 0); !errors.Is(err, broker.ErrReauthRequired) {
			t.Fatalf("GetToken after the revocation: %v", err)
		}
		start, err := b.StartAuthorization(ctx, "crm", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		cb := e.browse(start.URL)
		if _, err := b.CompleteAuthorization(ctx, cb.Get("state"), cb.Get("code"), "", ""); err != nil {
			t.Fatal(err)
		}
		got := e.stored("crm")
		if got.State != broker.StateActive || strings.Join(got.AllowedClients, ",") != "worker,batch" ||
			len(got.ClientSecrets) != 2 || strings.Join(got.Scopes, ",") != "api.read" || got.LastError != "" {
			t.Fatalf("after re-authorization: state %v, allowed %v, %d secrets, scopes %v, last error %q",
				got.State, got.AllowedClients, len(got.ClientSecrets), got.Scopes, got.LastError)
		}
		if _, err := b.GetToken(ctx, "crm", 0); err != nil {
			t.Fatal(err)
		}
	})
}

func TestAuthorizationCallbackErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		b := e.broker(nil)
		ctx := context.Background()
		if _, err := b.PutCredential(ctx, e.authCredential("crm"), ""); err != nil {
			t.Fatal(err)
		}
		start := func() url.Values {
			s, err := b.StartAuthorization(ctx, "crm", nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			u, _ := url.Parse(s.URL)
			return u.Query()
		}

		// Consent denied: the flow ends, the credential says so.
		e.idp.SetConsent(fakeidp.ConsentDeny)
		q := start()
		cb := e.browse(authURL(q))
		if cb.Get("error") != "access_denied" {
			t.Fatalf("denied consent: callback query %v", cb)
		}
		_, err := b.CompleteAuthorization(ctx, cb.Get("state"), "", cb.Get("error"), cb.Get("error_description"))
		if !errors.Is(err, broker.ErrPermissionDenied) {
			t.Fatalf("denied consent: %v, want ErrPermissionDenied", err)
		}
		got := e.stored("crm")
		if got.Authorization != nil || got.State != broker.StateReauthRequired || !strings.Contains(got.LastError, "denied") {
			t.Fatalf("after denial: authorization %+v, state %v, last error %q", got.Authorization, got.State, got.LastError)
		}
		e.idp.SetConsent(fakeidp.ConsentAuto)

		// A code from another flow: the PKCE verifier does not match.
		q1, q2 := start(), start()
		cb1, cb2 := e.browse(authURL(q1)), e.browse(authURL(q2))
		_, err = b.CompleteAuthorization(ctx, cb2.Get("state"), cb1.Get("code"), "", "")
		if !errors.Is(err, broker.ErrIdPRejected) || !strings.Contains(err.Error(), "PKCE") {
			t.Fatalf("a code with another flow's state: %v, want ErrIdPRejected (PKCE)", err)
		}
		// The code of the first flow with its own state still works.
		if _, err := b.CompleteAuthorization(ctx, cb1.Get("state"), cb1.Get("code"), "", ""); err != nil {
			t.Fatalf("the first flow: %v", err)
		}

		// Bad input, nothing stored changes.
		gen := e.stored("crm").Generation
		for _, tc := range []struct{ state, code, field string }{
			{"", "x", "state"}, {"unknown-state", "x", "state"}, {"s", "", "code"},
		} {
			if _, err := b.CompleteAuthorization(ctx, tc.state, tc.code, "", ""); !isInvalid(err, tc.field) {
				t.Errorf("CompleteAuthorization(%q, %q): %v, want invalid %s", tc.state, tc.code, err, tc.field)
			}
		}
		for _, extra := range []map[string]string{{"state": "x"}, {"redirect_uri": "x"}, {"bad key": "x"}} {
			if _, err := b.StartAuthorization(ctx, "crm", nil, extra); !isInvalid(err, "extra_params") {
				t.Errorf("StartAuthorization with %v: %v, want invalid extra_params", extra, err)
			}
		}
		if got := e.stored("crm").Generation; got != gen {
			t.Fatalf("bad input changed the record: generation %d, want %d", got, gen)
		}
	})
}

// authURL rebuilds an authorization URL from its query.
func authURL(q url.Values) string {
	return "http://localhost" + fakeidp.AuthorizePath + "?" + q.Encode()
}

func TestAuthorizationExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		e.cfg.FlowTTL = time.Minute
		b := e.broker(nil)
		ctx := context.Background()
		if _, err := b.PutCredential(ctx, e.authCredential("crm"), ""); err != nil {
			t.Fatal(err)
		}
		s, err := b.StartAuthorization(ctx, "crm", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		cb := e.browse(s.URL)
		time.Sleep(time.Minute + time.Second)
		synctest.Wait()
		got := e.stored("crm")
		if got.Authorization != nil || got.ViewState(time.Now()) != broker.StateReauthRequired || !strings.Contains(got.LastError, "expired") {
			t.Fatalf("after the flow's TTL: authorization %+v, last error %q", got.Authorization, got.LastError)
		}
		if _, err := b.CompleteAuthorization(ctx, cb.Get("state"), cb.Get("code"), "", ""); !isInvalid(err, "state") {
			t.Fatalf("callback after expiry: %v, want invalid state", err)
		}
	})
}

func TestCredentialFlowURLsValidated(t *testing.T) {
	e := &env{t: t, tokenURL: "https://idp.example/token"}
	for _, tc := range []struct {
		name  string
		edit  func(c *broker.Credential)
		field string
	}{
		{"authorization_url not https", func(c *broker.Credential) { c.AuthorizationURL = "http://idp.example/authorize" }, "credential.authorization_url"},
		{"authorization_url relative", func(c *broker.Credential) { c.AuthorizationURL = "/authorize" }, "credential.authorization_url"},
		{"device url not https", func(c *broker.Credential) { c.DeviceAuthorizationURL = "http://idp.example/device" }, "credential.device_authorization_url"},
		{"redirect path", func(c *broker.Credential) { c.RedirectURL = "https://broker.example/callback" }, "credential.redirect_url"},
		{"redirect query", func(c *broker.Credential) { c.RedirectURL = "https://broker.example/oauth2/callback?x=1" }, "credential.redirect_url"},
		{"redirect plain http", func(c *broker.Credential) { c.RedirectURL = "http://broker.example/oauth2/callback" }, "credential.redirect_url"},
		{"client credentials", func(c *broker.Credential) { c.GrantType = broker.GrantClientCredentials }, "credential.grant_type"},
	} {
		c := broker.Credential{ID: "x", TokenURL: e.tokenURL, ClientID: "c", AuthorizationURL: "https://idp.example/authorize"}
		tc.edit(&c)
		if err := broker.ValidateCredential(c, ""); !isInvalid(err, tc.field) {
			t.Errorf("%s: %v, want invalid %s", tc.name, err, tc.field)
		}
	}
	ok := broker.Credential{ID: "x", TokenURL: e.tokenURL, ClientID: "c", AuthorizationURL: "http://127.0.0.1:5556/auth",
		RedirectURL: "http://localhost:8080/oauth2/callback", DeviceAuthorizationURL: "https://idp.example/device"}
	if err := broker.ValidateCredential(ok, ""); err != nil {
		t.Errorf("loopback http and https URLs: %v", err)
	}
}

func (s *failoverStore) AppendChange(ctx context.Context, c *broker.Change) (uint64, error) {
	return s.cur().AppendChange(ctx, c)
}

func (s *failoverStore) ReadChanges(ctx context.Context, after uint64, limit int) ([]*broker.Change, error) {
	return s.cur().ReadChanges(ctx, after, limit)
}

func (s *failoverStore) LastChange(ctx context.Context) (uint64, error) {
	return s.cur().LastChange(ctx)
}

func (s *failoverStore) LoadCursor(ctx context.Context, name string) (uint64, bool, error) {
	return s.cur().LoadCursor(ctx, name)
}

func (s *failoverStore) SaveCursor(ctx context.Context, l broker.Lease, name string, pos uint64) error {
	return s.cur().SaveCursor(ctx, l, name, pos)
}
