package fakeidp_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
)

const (
	clientID = "app"
	secret   = "s3cret"
)

// newIdP starts a Server with one confidential client (clientID, secret).
func newIdP(t *testing.T, opts fakeidp.Options) *fakeidp.Server {
	t.Helper()
	if opts.Clients == nil {
		opts.Clients = map[string]string{clientID: secret}
	}
	return fakeidptest.Start(t, opts)
}

// httpClient returns a client of its own whose idle connections are closed
// when the test ends.
func httpClient(t testing.TB) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// config returns an x/oauth2 config for the Server's token endpoint.
func config(s *fakeidp.Server, id, sec string, style oauth2.AuthStyle) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     id,
		ClientSecret: sec,
		Endpoint:     oauth2.Endpoint{TokenURL: s.TokenURL(), AuthStyle: style},
	}
}

// refresh exchanges rt once through x/oauth2.
func refresh(t testing.TB, c *oauth2.Config, rt string) (*oauth2.Token, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return refreshCtx(ctx, t, c, rt)
}

func refreshCtx(ctx context.Context, t testing.TB, c *oauth2.Config, rt string) (*oauth2.Token, error) {
	ctx = context.WithValue(ctx, oauth2.HTTPClient, httpClient(t))
	return c.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
}

// mustRefresh refreshes rt and fails the test on error.
func mustRefresh(t testing.TB, c *oauth2.Config, rt string) *oauth2.Token {
	t.Helper()
	tok, err := refresh(t, c, rt)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	return tok
}

// errCode is the OAuth error code of an x/oauth2 error, or "".
func errCode(err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return re.ErrorCode
	}
	return ""
}

// response is a raw HTTP answer.
type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (r response) str(key string) string {
	s, _ := r.body[key].(string)
	return s
}

// post sends a raw form POST to the token endpoint; edit may change the
// request before it is sent.
func post(t testing.TB, s *fakeidp.Server, form url.Values, edit func(*http.Request)) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.TokenURL(), strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if edit != nil {
		edit(req)
	}
	return do(t, req)
}

func do(t testing.TB, req *http.Request) response {
	t.Helper()
	resp, err := httpClient(t).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := response{status: resp.StatusCode, header: resp.Header, raw: string(b)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &r.body); err != nil {
			t.Fatalf("bad JSON %q: %v", b, err)
		}
	}
	return r
}

// basic authenticates a raw request as (clientID, secret), form-urlencoded.
func basic(id, sec string) func(*http.Request) {
	return func(r *http.Request) { r.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(sec)) }
}

func refreshForm(rt string) url.Values {
	return url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}
}

// resource calls /resource with the access token (none when empty).
func resource(t testing.TB, s *fakeidp.Server, at string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.ResourceURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if at != "" {
		req.Header.Set("Authorization", "Bearer "+at)
	}
	return do(t, req)
}

// wantOAuthError checks a raw error answer (RFC 6749 section 5.2).
func wantOAuthError(t testing.TB, r response, status int, code string) {
	t.Helper()
	if r.status != status || r.str("error") != code {
		t.Fatalf("got %d %q (%s), want %d %q", r.status, r.str("error"), r.raw, status, code)
	}
	wantNoStore(t, r)
}

func wantNoStore(t testing.TB, r response) {
	t.Helper()
	if r.header.Get("Cache-Control") != "no-store" || r.header.Get("Pragma") != "no-cache" {
		t.Fatalf("caching headers: Cache-Control %q, Pragma %q", r.header.Get("Cache-Control"), r.header.Get("Pragma"))
	}
}

// recorder collects the Server's events, for Options.OnEvent.
type recorder struct {
	mu  sync.Mutex
	evs []fakeidp.Event
}

func (r *recorder) add(ev fakeidp.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

func (r *recorder) events() []fakeidp.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]fakeidp.Event(nil), r.evs...)
}

// fakeClock is a clock for Options.Now that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// wantLive checks whether the Server considers token live.
func wantLive(t testing.TB, s *fakeidp.Server, token string, live bool) {
	t.Helper()
	info, ok := s.Lookup(token)
	if !ok {
		t.Fatal("unknown token")
	}
	if info.Live != live {
		t.Fatalf("token live %v, want %v: %+v", info.Live, live, info)
	}
}
