package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// seen is what the token endpoint received in one request.
type seen struct {
	form    url.Values
	basic   bool
	user    string // form-decoded, as RFC 6749 section 2.3.1 encodes it
	pass    string
	authz   string
	userRaw string
	passRaw string
	userErr error
	passErr error
}

// endpoint is a token endpoint on 127.0.0.1 that records every request and
// answers with handle.
type endpoint struct {
	srv    *httptest.Server
	done   chan struct{} // closed when the test ends; releases blocked handlers
	handle func(w http.ResponseWriter, r *http.Request, n int)

	mu   sync.Mutex
	reqs []seen
}

func newEndpoint(t testing.TB, handle func(w http.ResponseWriter, r *http.Request, n int)) *endpoint {
	t.Helper()
	e := &endpoint{done: make(chan struct{}), handle: handle}
	e.srv = httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(e.srv.Close)
	t.Cleanup(func() { close(e.done) }) // runs before Close
	return e
}

func (e *endpoint) serve(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	s := seen{form: r.PostForm, authz: r.Header.Get("Authorization")}
	s.userRaw, s.passRaw, s.basic = r.BasicAuth()
	s.user, s.userErr = url.QueryUnescape(s.userRaw)
	s.pass, s.passErr = url.QueryUnescape(s.passRaw)
	e.mu.Lock()
	n := len(e.reqs)
	e.reqs = append(e.reqs, s)
	e.mu.Unlock()
	e.handle(w, r, n)
}

func (e *endpoint) requests() []seen {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]seen(nil), e.reqs...)
}

func (e *endpoint) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.reqs)
}

// block holds a handler until the client goes away or the test ends.
func (e *endpoint) block(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-e.done:
	case <-time.After(30 * time.Second):
	}
}

func reply(w http.ResponseWriter, status int, contentType, body string) {
	if contentType != "" {
		w.Header().Set("Content-Type", contentType)
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

func replyJSON(w http.ResponseWriter, status int, body string) {
	reply(w, status, "application/json", body)
}

func refreshReq(tokenURL string) broker.UpstreamRequest {
	return broker.UpstreamRequest{
		TokenURL:      tokenURL,
		ClientID:      "client-1",
		ClientSecrets: []string{"secret-1"},
		GrantType:     broker.GrantRefreshToken,
		RefreshToken:  "rt-1",
	}
}

func asError(t *testing.T, err error) *upstream.Error {
	t.Helper()
	if err == nil {
		t.Fatal("Exchange succeeded, want an error")
	}
	var be *broker.UpstreamError
	if !errors.As(err, &be) {
		t.Fatalf("error %T %v is not a *broker.UpstreamError", err, err)
	}
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		t.Fatalf("error %T %v does not wrap an *upstream.Error", err, err)
	}
	if be.Class != ue.Class || be.RetryAfter != ue.RetryAfter {
		t.Fatalf("broker.UpstreamError says %v, %v; upstream.Error %v, %v", be.Class, be.RetryAfter, ue.Class, ue.RetryAfter)
	}
	return ue
}

// A request that never reached the IdP leaves the refresh token unspent,
// whatever the transport error: only one written in full may have rotated it.
func TestRefusedConnectionIsTransient(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	_, err = new(upstream.Client).Exchange(context.Background(), refreshReq("http://"+addr+"/token"))
	if ue := asError(t, err); ue.Class != broker.Transient || ue.StatusCode != 0 {
		t.Errorf("got %v (class %v), want transient", ue, ue.Class)
	}
}

func TestRefreshRotates(t *testing.T) {
	e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		replyJSON(w, 200, `{"access_token":"at-2","token_type":"bearer","refresh_token":"rt-2","expires_in":3600}`)
	})
	before := time.Now()
	tok, err := new(upstream.Client).Exchange(context.Background(), refreshReq(e.srv.URL))
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "at-2" || tok.RefreshToken != "rt-2" || tok.TokenType != "bearer" {
		t.Errorf("token = %+v", tok)
	}
	if tok.Expiry.Before(before.Add(time.Hour)) || tok.Expiry.After(after.Add(time.Hour)) {
		t.Errorf("expiry %v not an hour after [%v, %v]", tok.Expiry, before, after)
	}
	reqs := e.requests()
	if len(reqs) != 1 {
		t.Fatalf("endpoint saw %d requests, want 1", len(reqs))
	}
	f := reqs[0].form
	if f.Get("grant_type") != "refresh_token" || f.Get("refresh_token") != "rt-1" {
		t.Errorf("form = %v", f)
	}
	if f.Has("scope") {
		t.Errorf("scope sent without Scopes: %v", f)
	}
}

func TestRefreshWithoutNewRefreshToken(t *testing.T) {
	for name, body := range map[string]string{
		"omitted":   `{"access_token":"at-2"}`,
		"empty":     `{"access_token":"at-2","refresh_token":""}`,
		"same":      `{"access_token":"at-2","refresh_token":"rt-1"}`,
		"null":      `{"access_token":"at-2","refresh_token":null,"expires_in":null}`,
		"zero life": `{"access_token":"at-2","expires_in":0}`,
	} {
		t.Run(name, func(t *testing.T) {
			e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) { replyJSON(w, 200, body) })
			tok, err := new(upstream.Client).Exchange(context.Background(), refreshReq(e.srv.URL))
			if err != nil {
				t.Fatal(err)
			}
			if tok.RefreshToken != "" {
				t.Errorf("RefreshToken = %q, want empty", tok.RefreshToken)
			}
			if tok.TokenType != "Bearer" {
				t.Errorf("TokenType = %q, want Bearer", tok.TokenType)
			}
			if !tok.Expiry.IsZero() {
				t.Errorf("Expiry = %v, want zero", tok.Expiry)
			}
		})
	}
}

func TestFormEncodedAnswer(t *testing.T) {
	e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		reply(w, 200, "application/x-www-form-urlencoded", "access_token=at-2&token_type=MAC&refresh_token=rt-2&expires_in=60")
	})
	tok, err := new(upstream.Client).Exchange(context.Background(), refreshReq(e.srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "at-2" || tok.RefreshToken != "rt-2" || tok.TokenType != "MAC" || tok.Expiry.IsZero() {
		t.Errorf("token = %+v", tok)
	}
}

func TestClientAuthentication(t *testing.T) {
	const (
		id     = "my client:id/ü&=+ %"
		secret = "s3cr:et %&+=ü/?#"
	)
	tests := []struct {
		name    string
		style   broker.AuthStyle
		secrets []string
	}{
		{"basic", broker.AuthStyleBasic, []string{secret}},
		{"post", broker.AuthStylePost, []string{secret}},
		{"basic public", broker.AuthStyleBasic, nil},
		{"post public", broker.AuthStylePost, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
				replyJSON(w, 200, `{"access_token":"at"}`)
			})
			r := refreshReq(e.srv.URL)
			r.ClientID, r.ClientSecrets, r.AuthStyle = id, tt.secrets, tt.style
			if _, err := new(upstream.Client).Exchange(context.Background(), r); err != nil {
				t.Fatal(err)
			}
			reqs := e.requests()
			if len(reqs) != 1 {
				t.Fatalf("endpoint saw %d requests, want 1", len(reqs))
			}
			s := reqs[0]
			wantSecret := ""
			if len(tt.secrets) > 0 {
				wantSecret = tt.secrets[0]
			}
			switch tt.style {
			case broker.AuthStyleBasic:
				if !s.basic || s.userErr != nil || s.passErr != nil {
					t.Fatalf("no usable basic auth: %q", s.authz)
				}
				if s.user != id || s.pass != wantSecret {
					t.Errorf("basic auth = %q:%q, want %q:%q", s.user, s.pass, id, wantSecret)
				}
				if s.form.Has("client_id") || s.form.Has("client_secret") {
					t.Errorf("basic auth also sent credentials in the form: %v", s.form)
				}
			case broker.AuthStylePost:
				if s.authz != "" {
					t.Errorf("post auth sent Authorization %q", s.authz)
				}
				if got := s.form.Get("client_id"); got != id {
					t.Errorf("client_id = %q, want %q", got, id)
				}
				if wantSecret == "" {
					if s.form.Has("client_secret") {
						t.Errorf("public client sent client_secret: %v", s.form)
					}
				} else if got := s.form.Get("client_secret"); got != wantSecret {
					t.Errorf("client_secret = %q, want %q", got, wantSecret)
				}
			}
			if got := s.form.Get("refresh_token"); got != "rt-1" {
				t.Errorf("refresh_token = %q", got)
			}
		})
	}
}

func TestScopes(t *testing.T) {
	for _, grant := range []broker.GrantType{broker.GrantRefreshToken, broker.GrantClientCredentials} {
		t.Run(fmt.Sprint(grant), func(t *testing.T) {
			e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
				replyJSON(w, 200, `{"access_token":"at"}`)
			})
			r := refreshReq(e.srv.URL)
			r.GrantType = grant
			r.Scopes = []string{"openid", "offline_access", "api:read"}
			if _, err := new(upstream.Client).Exchange(context.Background(), r); err != nil {
				t.Fatal(err)
			}
			if got := e.requests()[0].form.Get("scope"); got != "openid offline_access api:read" {
				t.Errorf("scope = %q", got)
			}
		})
	}
}

func TestClientCredentials(t *testing.T) {
	e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		replyJSON(w, 200, `{"access_token":"cc-at","token_type":"Bearer","expires_in":300}`)
	})
	r := broker.UpstreamRequest{
		TokenURL:      e.srv.URL,
		ClientID:      "svc",
		ClientSecrets: []string{"svc-secret"},
		AuthStyle:     broker.AuthStylePost,
		GrantType:     broker.GrantClientCredentials,
	}
	tok, err := new(upstream.Client).Exchange(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "cc-at" || tok.RefreshToken != "" || tok.Expiry.IsZero() {
		t.Errorf("token = %+v", tok)
	}
	f := e.requests()[0].form
	if f.Get("grant_type") != "client_credentials" || f.Has("refresh_token") ||
		f.Get("client_id") != "svc" || f.Get("client_secret") != "svc-secret" {
		t.Errorf("form = %v", f)
	}
}

func TestSecretFallback(t *testing.T) {
	invalidClient := func(w http.ResponseWriter) {
		replyJSON(w, 401, `{"error":"invalid_client"}`)
	}
	tests := []struct {
		name      string
		secrets   []string
		answer    func(w http.ResponseWriter, secret string)
		wantReqs  int
		wantOK    bool
		wantClass broker.UpstreamClass
		wantCode  string
	}{
		{
			name:    "third secret accepted",
			secrets: []string{"old-1", "old-2", "good"},
			answer: func(w http.ResponseWriter, s string) {
				if s == "good" {
					replyJSON(w, 200, `{"access_token":"at"}`)
					return
				}
				invalidClient(w)
			},
			wantReqs: 3, wantOK: true,
		},
		{
			name:    "400 invalid_client and bare 401 both move on",
			secrets: []string{"a", "b", "good"},
			answer: func(w http.ResponseWriter, s string) {
				switch s {
				case "a":
					replyJSON(w, 400, `{"error":"invalid_client","error_description":"bad secret"}`)
				case "b":
					w.WriteHeader(401)
				default:
					replyJSON(w, 200, `{"access_token":"at"}`)
				}
			},
			wantReqs: 3, wantOK: true,
		},
		{
			name:     "all rejected",
			secrets:  []string{"a", "b"},
			answer:   func(w http.ResponseWriter, _ string) { invalidClient(w) },
			wantReqs: 2, wantClass: broker.Permanent, wantCode: "invalid_client",
		},
		{
			name:    "invalid_grant stops",
			secrets: []string{"a", "b", "c"},
			answer: func(w http.ResponseWriter, _ string) {
				replyJSON(w, 400, `{"error":"invalid_grant"}`)
			},
			wantReqs: 1, wantClass: broker.Permanent, wantCode: "invalid_grant",
		},
		{
			name:    "invalid_grant after invalid_client stops",
			secrets: []string{"a", "b", "c"},
			answer: func(w http.ResponseWriter, s string) {
				if s == "a" {
					invalidClient(w)
					return
				}
				replyJSON(w, 400, `{"error":"invalid_grant"}`)
			},
			wantReqs: 2, wantClass: broker.Permanent, wantCode: "invalid_grant",
		},
		{
			name:     "5xx stops",
			secrets:  []string{"a", "b"},
			answer:   func(w http.ResponseWriter, _ string) { w.WriteHeader(502) },
			wantReqs: 1, wantClass: broker.Transient,
		},
		{
			name:    "503 saying invalid_client stops",
			secrets: []string{"a", "b"},
			answer: func(w http.ResponseWriter, _ string) {
				replyJSON(w, 503, `{"error":"invalid_client"}`)
			},
			wantReqs: 1, wantClass: broker.Transient, wantCode: "invalid_client",
		},
		{
			name:    "Dex invalid_request stops",
			secrets: []string{"a", "b"},
			answer: func(w http.ResponseWriter, _ string) {
				replyJSON(w, 400, `{"error":"invalid_request","error_description":"Refresh token is invalid or has already been claimed by another client."}`)
			},
			wantReqs: 1, wantClass: broker.Permanent, wantCode: "invalid_request",
		},
		{
			name:     "404 stops",
			secrets:  []string{"a", "b"},
			answer:   func(w http.ResponseWriter, _ string) { reply(w, 404, "text/html", "<h1>not found</h1>") },
			wantReqs: 1, wantClass: broker.Transient,
		},
	}
	for _, style := range []broker.AuthStyle{broker.AuthStyleBasic, broker.AuthStylePost} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/style%d", tt.name, style), func(t *testing.T) {
				e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
					secret, _ := url.QueryUnescape(func() string { _, p, _ := r.BasicAuth(); return p }())
					if style == broker.AuthStylePost {
						secret = r.PostForm.Get("client_secret")
					}
					tt.answer(w, secret)
				})
				r := refreshReq(e.srv.URL)
				r.ClientSecrets, r.AuthStyle = tt.secrets, style
				tok, err := new(upstream.Client).Exchange(context.Background(), r)
				reqs := e.requests()
				if len(reqs) != tt.wantReqs {
					t.Errorf("endpoint saw %d requests, want %d", len(reqs), tt.wantReqs)
				}
				for i, s := range reqs {
					if s.form.Get("refresh_token") != "rt-1" {
						t.Errorf("request %d: refresh_token = %q", i, s.form.Get("refresh_token"))
					}
				}
				if tt.wantOK {
					if err != nil || tok.AccessToken != "at" {
						t.Fatalf("Exchange = %+v, %v", tok, err)
					}
					return
				}
				ue := asError(t, err)
				if ue.Class != tt.wantClass || ue.Code != tt.wantCode {
					t.Errorf("error = %v (class %v, code %q), want class %v code %q", ue, ue.Class, ue.Code, tt.wantClass, tt.wantCode)
				}
			})
		}
	}
}

func TestClassification(t *testing.T) {
	const (
		ctJSON = "application/json"
		ctForm = "application/x-www-form-urlencoded"
		ctHTML = "text/html"
	)
	refresh, cc := broker.GrantRefreshToken, broker.GrantClientCredentials
	tests := []struct {
		name        string
		grant       broker.GrantType
		status      int
		ct, body    string
		header      map[string]string
		class       broker.UpstreamClass
		code        string
		retryAfter  time.Duration
		wantMessage string
	}{
		{name: "invalid_grant", status: 400, ct: ctJSON, body: `{"error":"invalid_grant","error_description":"Token is not active"}`, class: broker.Permanent, code: "invalid_grant", wantMessage: `upstream: permanent token endpoint failure: HTTP 400: invalid_grant "Token is not active"`},
		{name: "invalid_client 400", status: 400, ct: ctJSON, body: `{"error":"invalid_client"}`, class: broker.Permanent, code: "invalid_client"},
		{name: "invalid_client 401", status: 401, ct: ctJSON, body: `{"error":"invalid_client"}`, class: broker.Permanent, code: "invalid_client"},
		{name: "401 without body", status: 401, class: broker.Permanent},
		{name: "401 unknown code", status: 401, ct: ctJSON, body: `{"error":"unauthorized"}`, class: broker.Permanent, code: "unauthorized"},
		{name: "401 invalid_grant", status: 401, ct: ctJSON, body: `{"error":"invalid_grant"}`, class: broker.Permanent, code: "invalid_grant"},
		{name: "unauthorized_client", status: 400, ct: ctJSON, body: `{"error":"unauthorized_client"}`, class: broker.Permanent, code: "unauthorized_client"},
		{name: "unsupported_grant_type", status: 400, ct: ctJSON, body: `{"error":"unsupported_grant_type"}`, class: broker.Permanent, code: "unsupported_grant_type"},
		{name: "invalid_scope", status: 400, ct: ctJSON, body: `{"error":"invalid_scope"}`, class: broker.Permanent, code: "invalid_scope"},
		{name: "invalid_request to refresh (Dex)", status: 400, ct: ctJSON, body: `{"error":"invalid_request","error_description":"Refresh token is invalid or has already been claimed by another client."}`, class: broker.Permanent, code: "invalid_request"},
		{name: "invalid_request to client_credentials", grant: cc, status: 400, ct: ctJSON, body: `{"error":"invalid_request"}`, class: broker.Transient, code: "invalid_request"},
		{name: "invalid_grant to client_credentials", grant: cc, status: 400, ct: ctJSON, body: `{"error":"invalid_grant"}`, class: broker.Permanent, code: "invalid_grant"},
		{name: "form-encoded invalid_grant", status: 400, ct: ctForm, body: "error=invalid_grant&error_description=expired", class: broker.Permanent, code: "invalid_grant"},
		{name: "200 carrying invalid_grant", status: 200, ct: ctJSON, body: `{"error":"invalid_grant"}`, class: broker.Permanent, code: "invalid_grant"},
		{name: "400 without body", status: 400, class: broker.Transient},
		{name: "400 unknown code", status: 400, ct: ctJSON, body: `{"error":"slow_down"}`, class: broker.Transient, code: "slow_down"},
		{name: "400 html", status: 400, ct: ctHTML, body: "<html>bad request</html>", class: broker.Transient},
		{name: "403 without code", status: 403, ct: ctHTML, body: "<html>forbidden by WAF</html>", class: broker.Transient},
		{name: "404 wrong URL", status: 404, ct: ctHTML, body: "<html>not found</html>", class: broker.Transient},
		{name: "405", status: 405, class: broker.Transient},
		{name: "408", status: 408, class: broker.Transient},
		{name: "429 seconds", status: 429, header: map[string]string{"Retry-After": "7"}, class: broker.Transient, retryAfter: 7 * time.Second, wantMessage: "upstream: transient token endpoint failure: HTTP 429 (retry after 7s)"},
		{name: "429 without Retry-After", status: 429, class: broker.Transient},
		{name: "429 garbage Retry-After", status: 429, header: map[string]string{"Retry-After": "soon"}, class: broker.Transient},
		{name: "429 huge Retry-After", status: 429, header: map[string]string{"Retry-After": "99999999999999999"}, class: broker.Transient, retryAfter: 24 * time.Hour},
		{name: "500", status: 500, ct: ctHTML, body: "<h1>oops</h1>", class: broker.Transient},
		{name: "500 server_error", status: 500, ct: ctJSON, body: `{"error":"server_error"}`, class: broker.Transient, code: "server_error"},
		{name: "502", status: 502, class: broker.Transient},
		{name: "503 Retry-After", status: 503, header: map[string]string{"Retry-After": "120"}, ct: ctJSON, body: `{"error":"temporarily_unavailable"}`, class: broker.Transient, code: "temporarily_unavailable", retryAfter: 2 * time.Minute},
		{name: "503 carrying invalid_grant", status: 503, ct: ctJSON, body: `{"error":"invalid_grant"}`, class: broker.Transient, code: "invalid_grant"},
		{name: "504 Retry-After ignored", status: 504, header: map[string]string{"Retry-After": "5"}, class: broker.Unanswered},
		{name: "200 unparseable", status: 200, ct: ctJSON, body: "{not json", class: broker.Unanswered, wantMessage: "upstream: unanswered token endpoint failure: HTTP 200: unreadable token response"},
		{name: "200 html", status: 200, ct: ctHTML, body: "<html>login page</html>", class: broker.Unanswered},
		{name: "200 without access_token", status: 200, ct: ctJSON, body: `{"token_type":"Bearer","expires_in":3600}`, class: broker.Unanswered, wantMessage: "upstream: unanswered token endpoint failure: HTTP 200: token response without access_token"},
		{name: "200 empty", status: 200, ct: ctJSON, class: broker.Unanswered},
		{name: "200 form without access_token", status: 200, ct: ctForm, body: "token_type=Bearer", class: broker.Unanswered},
		{name: "302 not followed", status: 302, header: map[string]string{"Location": "/elsewhere"}, class: broker.Transient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, n int) {
				if n > 0 {
					t.Errorf("request %d to %s: nothing should follow the first", n, r.URL)
				}
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				reply(w, tt.status, tt.ct, tt.body)
			})
			grant := refresh
			if tt.grant == cc {
				grant = cc
			}
			r := refreshReq(e.srv.URL)
			r.GrantType = grant
			_, err := new(upstream.Client).Exchange(context.Background(), r)
			ue := asError(t, err)
			if ue.Class != tt.class || ue.Code != tt.code || ue.StatusCode != tt.status || ue.RetryAfter != tt.retryAfter {
				t.Errorf("got class %v code %q status %d retry %v, want %v %q %d %v (%v)",
					ue.Class, ue.Code, ue.StatusCode, ue.RetryAfter, tt.class, tt.code, tt.status, tt.retryAfter, ue)
			}
			if tt.wantMessage != "" && ue.Error() != tt.wantMessage {
				t.Errorf("message\n got %q\nwant %q", ue.Error(), tt.wantMessage)
			}
			if n := e.count(); n != 1 {
				t.Errorf("endpoint saw %d requests, want 1", n)
			}
		})
	}
}

func TestRetryAfterHTTPDate(t *testing.T) {
	for _, status := range []int{429, 503} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
				w.Header().Set("Retry-After", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat))
				w.WriteHeader(status)
			})
			_, err := new(upstream.Client).Exchange(context.Background(), refreshReq(e.srv.URL))
			ue := asError(t, err)
			// The date has a resolution of one second and the exchange takes
			// some time; anything within a few minutes of an hour is right.
			if ue.Class != broker.Transient || ue.RetryAfter < 55*time.Minute || ue.RetryAfter > time.Hour {
				t.Errorf("got %v, RetryAfter %v", ue, ue.RetryAfter)
			}
		})
	}
	t.Run("past", func(t *testing.T) {
		e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			w.Header().Set("Retry-After", time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat))
			w.WriteHeader(429)
		})
		_, err := new(upstream.Client).Exchange(context.Background(), refreshReq(e.srv.URL))
		if ue := asError(t, err); ue.RetryAfter != 0 {
			t.Errorf("RetryAfter = %v for a past date, want 0", ue.RetryAfter)
		}
	})
}

func TestDeadline(t *testing.T) {
	var e *endpoint
	e = newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) { e.block(r) })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := new(upstream.Client).Exchange(ctx, refreshReq(e.srv.URL))
	ue := asError(t, err)
	if ue.Class != broker.Unanswered || ue.StatusCode != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v (class %v, status %d, Err %v)", ue, ue.Class, ue.StatusCode, ue.Err)
	}
}

func TestCancel(t *testing.T) {
	arrived := make(chan struct{})
	var e *endpoint
	e = newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		close(arrived)
		e.block(r)
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
		}
		cancel()
	}()
	_, err := new(upstream.Client).Exchange(ctx, refreshReq(e.srv.URL))
	ue := asError(t, err)
	if ue.Class != broker.Unanswered || !errors.Is(err, context.Canceled) {
		t.Errorf("got %v (class %v, Err %v)", ue, ue.Class, ue.Err)
	}
}

// afterHeaders is a RoundTripper that closes got once a response's headers
// are in.
type afterHeaders struct {
	got  chan struct{}
	once sync.Once
}

func (a *afterHeaders) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil {
		a.once.Do(func() { close(a.got) })
	}
	return resp, err
}

func TestCancelWhileReadingBody(t *testing.T) {
	var e *endpoint
	e = newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		_, _ = w.Write([]byte(`{"access_token":"at-`))
		w.(http.Flusher).Flush()
		e.block(r)
	})
	rt := &afterHeaders{got: make(chan struct{})}
	c := &upstream.Client{HTTPClient: &http.Client{Transport: rt}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-rt.got:
		case <-time.After(10 * time.Second):
		}
		cancel()
	}()
	_, err := c.Exchange(ctx, refreshReq(e.srv.URL))
	ue := asError(t, err)
	if ue.Class != broker.Unanswered || ue.StatusCode != 200 || !errors.Is(err, context.Canceled) {
		t.Errorf("got %v (class %v, status %d, Err %v)", ue, ue.Class, ue.StatusCode, ue.Err)
	}
}

func TestCancelledBeforehand(t *testing.T) {
	e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		replyJSON(w, 200, `{"access_token":"at"}`)
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := new(upstream.Client).Exchange(ctx, refreshReq(e.srv.URL))
	ue := asError(t, err)
	if ue.Class != broker.Transient || !errors.Is(err, context.Canceled) {
		t.Errorf("got %v", ue)
	}
	if n := e.count(); n != 0 {
		t.Errorf("endpoint saw %d requests, want 0", n)
	}
}

func TestCancelBetweenSecrets(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		cancel() // the caller gives up while the first answer is on its way
		replyJSON(w, 401, `{"error":"invalid_client"}`)
	})
	r := refreshReq(e.srv.URL)
	r.ClientSecrets = []string{"a", "b"}
	_, err := new(upstream.Client).Exchange(ctx, r)
	if !errors.Is(err, context.Canceled) && asError(t, err).Code != "invalid_client" {
		t.Errorf("got %v", err)
	}
	if n := e.count(); n != 1 {
		t.Errorf("endpoint saw %d requests after a cancel, want 1", n)
	}
}

func TestOversizedBody(t *testing.T) {
	pad := strings.Repeat("x", 1<<20)
	for name, body := range map[string]string{
		"padding after access_token":  `{"access_token":"at","padding":"` + pad + `"}`,
		"padding before access_token": `{"padding":"` + pad + `","access_token":"at"}`,
	} {
		t.Run(name, func(t *testing.T) {
			e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) { replyJSON(w, 200, body) })
			_, err := new(upstream.Client).Exchange(context.Background(), refreshReq(e.srv.URL))
			ue := asError(t, err)
			if ue.Class != broker.Unanswered || ue.StatusCode != 200 {
				t.Errorf("got %v", ue)
			}
			if len(ue.Error()) > 500 {
				t.Errorf("message is %d bytes long", len(ue.Error()))
			}
		})
	}
	t.Run("400 with a huge description", func(t *testing.T) {
		e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			replyJSON(w, 400, `{"error":"invalid_grant","error_description":"`+strings.Repeat("é", 5000)+`"}`)
		})
		_, err := new(upstream.Client).Exchange(context.Background(), refreshReq(e.srv.URL))
		ue := asError(t, err)
		if ue.Class != broker.Permanent || len([]rune(ue.Description)) > 201 || len(ue.Error()) > 600 {
			t.Errorf("got class %v, description of %d runes, message of %d bytes", ue.Class, len([]rune(ue.Description)), len(ue.Error()))
		}
	})
}

func TestNetworkError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	tokenURL := srv.URL
	srv.Close() // nothing listens there any more
	_, err := new(upstream.Client).Exchange(context.Background(), refreshReq(tokenURL))
	ue := asError(t, err)
	if ue.Class != broker.Transient || ue.StatusCode != 0 || ue.Err == nil {
		t.Errorf("got %v (Err %v)", ue, ue.Err)
	}
	if strings.Contains(ue.Error(), tokenURL) {
		t.Errorf("message %q holds the token URL", ue.Error())
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	var elsewhere atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		replyJSON(w, 200, `{"access_token":"at"}`)
	}))
	defer target.Close()
	for _, status := range []int{301, 302, 307, 308} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
				http.Redirect(w, r, target.URL+"/token", status)
			})
			_, err := new(upstream.Client).Exchange(context.Background(), refreshReq(e.srv.URL))
			if ue := asError(t, err); ue.Class != broker.Transient || ue.StatusCode != status {
				t.Errorf("got %v", ue)
			}
		})
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("redirect target saw %d requests", n)
	}
}

func TestInvalidRequest(t *testing.T) {
	e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		replyJSON(w, 200, `{"access_token":"at"}`)
	})
	tests := map[string]func(r *broker.UpstreamRequest){
		"no URL":           func(r *broker.UpstreamRequest) { r.TokenURL = "" },
		"relative URL":     func(r *broker.UpstreamRequest) { r.TokenURL = "/token" },
		"ftp URL":          func(r *broker.UpstreamRequest) { r.TokenURL = "ftp://127.0.0.1/token" },
		"bad URL":          func(r *broker.UpstreamRequest) { r.TokenURL = "http://127.0.0.1:xx/\x7f" },
		"no refresh token": func(r *broker.UpstreamRequest) { r.RefreshToken = "" },
		"auth style":       func(r *broker.UpstreamRequest) { r.AuthStyle = 7 },
		"grant type":       func(r *broker.UpstreamRequest) { r.GrantType = 7 },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			r := refreshReq(e.srv.URL)
			mutate(&r)
			_, err := new(upstream.Client).Exchange(context.Background(), r)
			ue := asError(t, err)
			if !errors.Is(err, upstream.ErrInvalidRequest) || ue.Class != broker.Transient {
				t.Errorf("got %v", ue)
			}
		})
	}
	if n := e.count(); n != 0 {
		t.Errorf("endpoint saw %d requests", n)
	}
}

func TestCustomHTTPClientTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		replyJSON(w, 200, `{"access_token":"tls-at"}`)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshake below
	srv.StartTLS()
	defer srv.Close()
	c := &upstream.Client{HTTPClient: srv.Client()}
	tok, err := c.Exchange(context.Background(), refreshReq(srv.URL))
	if err != nil || tok.AccessToken != "tls-at" {
		t.Fatalf("Exchange = %+v, %v", tok, err)
	}
	// The default client does not trust the test CA.
	_, err = new(upstream.Client).Exchange(context.Background(), refreshReq(srv.URL))
	if ue := asError(t, err); ue.Class != broker.Transient || ue.StatusCode != 0 {
		t.Errorf("got %v", ue)
	}
}

func TestConcurrentUse(t *testing.T) {
	var n atomic.Int64
	e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		i := n.Add(1)
		replyJSON(w, 200, fmt.Sprintf(`{"access_token":"at-%d","refresh_token":"new-rt-%d","expires_in":60}`, i, i))
	})
	c := new(upstream.Client)
	var wg sync.WaitGroup
	errs := make(chan error, 8*10)
	for range 8 {
		wg.Go(func() {
			for range 10 {
				tok, err := c.Exchange(context.Background(), refreshReq(e.srv.URL))
				if err == nil && (tok.AccessToken == "" || tok.RefreshToken == "") {
					err = fmt.Errorf("bad token %+v", tok)
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := e.count(); got != 80 {
		t.Errorf("endpoint saw %d requests, want 80", got)
	}
}

// BenchmarkExchange measures one refresh against a local endpoint. The
// allocations include the server's side of the request.
func BenchmarkExchange(b *testing.B) {
	body := []byte(`{"access_token":"at-2","token_type":"Bearer","refresh_token":"rt-2","expires_in":3600}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	c := new(upstream.Client)
	r := refreshReq(srv.URL)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Exchange(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}
