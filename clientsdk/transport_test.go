package clientsdk_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/clientsdk"
)

// resource is a protected HTTP API: it accepts the broker's current token
// (or none, when rejectAll is set) and records what it was sent.
type resource struct {
	broker    *fakeBroker
	rejectAll atomic.Bool

	mu     sync.Mutex
	auth   []string
	bodies []string
}

func (r *resource) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	auth := req.Header.Get("Authorization")
	r.mu.Lock()
	r.auth = append(r.auth, auth)
	r.bodies = append(r.bodies, string(body))
	r.mu.Unlock()
	if r.rejectAll.Load() || auth != "Bearer "+r.broker.current() {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		http.Error(w, "token rejected", http.StatusUnauthorized)
		return
	}
	io.WriteString(w, "ok:"+string(body))
}

func (r *resource) seen() (auth, bodies []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.auth...), append([]string(nil), r.bodies...)
}

// trackingTransport is http.DefaultTransport that records, for each
// response, whether its body was read to the end and closed.
type trackingTransport struct {
	mu     sync.Mutex
	bodies []*trackedBody
}

type trackedBody struct {
	io.ReadCloser
	mu          sync.Mutex
	eof, closed bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.mu.Lock()
		b.eof = true
		b.mu.Unlock()
	}
	return n, err
}

func (b *trackedBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return b.ReadCloser.Close()
}

func (b *trackedBody) state() (eof, closed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof, b.closed
}

func (tt *trackingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	b := &trackedBody{ReadCloser: resp.Body}
	resp.Body = b
	tt.mu.Lock()
	tt.bodies = append(tt.bodies, b)
	tt.mu.Unlock()
	return resp, nil
}

func (tt *trackingTransport) body(i int) *trackedBody {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	return tt.bodies[i]
}

type transportFixture struct {
	broker *fakeBroker
	api    *resource
	url    string
	ts     *clientsdk.TokenSource
	base   *trackingTransport
	client *http.Client
}

// newTransportFixture caches tok-1 in the TokenSource, then lets the broker
// move on to tok-2, so the first request carries a token the API rejects.
func newTransportFixture(t *testing.T) *transportFixture {
	t.Helper()
	f := newFakeBroker()
	api := &resource{broker: f}
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	ts := startBroker(t, f).TokenSource("cred")
	if tok := mustToken(t, ts); tok.AccessToken != "tok-1" {
		t.Fatalf("first token %q", tok.AccessToken)
	}
	f.rotate()
	base := &trackingTransport{}
	return &transportFixture{
		broker: f, api: api, url: srv.URL, ts: ts, base: base,
		client: &http.Client{Transport: &clientsdk.Transport{Source: ts, Base: base}},
	}
}

func TestTransportRetriesOnceWithNewToken(t *testing.T) {
	fx := newTransportFixture(t)
	req, err := http.NewRequest(http.MethodPost, fx.url, strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := fx.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok:payload" {
		t.Fatalf("got %s %q", resp.Status, body)
	}
	auth, bodies := fx.api.seen()
	if len(auth) != 2 || auth[0] != "Bearer tok-1" || auth[1] != "Bearer tok-2" {
		t.Fatalf("API saw %q, want tok-1 then tok-2", auth)
	}
	if bodies[0] != "payload" || bodies[1] != "payload" {
		t.Fatalf("API got bodies %q, want the payload twice", bodies)
	}
	if got := fx.broker.rejectedTokens(); len(got) != 1 || got[0] != "tok-1" {
		t.Fatalf("invalidated %q, want exactly tok-1", got)
	}
	if eof, closed := fx.base.body(0).state(); !eof || !closed {
		t.Fatalf("first 401 body drained=%v closed=%v, want both", eof, closed)
	}
	if h := req.Header.Get("Authorization"); h != "" {
		t.Fatalf("caller's request modified: Authorization %q", h)
	}

	// The next request goes out with the new token straight away.
	resp, err = fx.client.Get(fx.url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if auth, _ := fx.api.seen(); len(auth) != 3 || auth[2] != "Bearer tok-2" || resp.StatusCode != http.StatusOK {
		t.Fatalf("API saw %q, status %s", auth, resp.Status)
	}
	if got := fx.broker.invalidates.Load(); got != 1 {
		t.Fatalf("InvalidateToken calls = %d, want 1", got)
	}
}

func TestTransportDoesNotReplayUnreplayableBody(t *testing.T) {
	fx := newTransportFixture(t)
	req, err := http.NewRequest(http.MethodPost, fx.url, io.NopCloser(strings.NewReader("stream")))
	if err != nil {
		t.Fatal(err)
	}
	if req.GetBody != nil {
		t.Fatal("test needs a request without GetBody")
	}
	resp, err := fx.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("got %s, want the 401 passed through", resp.Status)
	}
	if auth, _ := fx.api.seen(); len(auth) != 1 {
		t.Fatalf("API got %d requests, want 1", len(auth))
	}
	// The rejected token was still reported, so the next request works.
	if got := fx.broker.rejectedTokens(); len(got) != 1 || got[0] != "tok-1" {
		t.Fatalf("invalidated %q, want exactly tok-1", got)
	}
	resp, err = fx.client.Get(fx.url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("next request got %s", resp.Status)
	}
}

func TestTransportPassesSecond401Through(t *testing.T) {
	fx := newTransportFixture(t)
	fx.api.rejectAll.Store(true)
	resp, err := fx.client.Get(fx.url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "token rejected") {
		t.Fatalf("got %s %q, want the second 401 with its body", resp.Status, body)
	}
	auth, _ := fx.api.seen()
	if len(auth) != 2 || auth[0] != "Bearer tok-1" || auth[1] != "Bearer tok-2" {
		t.Fatalf("API saw %q, want exactly two requests (tok-1, tok-2)", auth)
	}
	if got := fx.broker.rejectedTokens(); len(got) != 1 || got[0] != "tok-1" {
		t.Fatalf("invalidated %q, want exactly tok-1", got)
	}
}

// nothingNewer sets up the two answers of a broker that has no token other
// than the rejected one, for a fixture whose cached tok-1 the resource
// rejects: it returns the token the resource will see rejected.
//   - "same token": the broker returns the rejected token again (as it does
//     when the token is still current but a forced refresh is not possible
//     now); the cache is first brought up to date with tok-2, which the
//     broker then keeps and the resource rejects.
//   - "rate limited": the broker refuses the invalidation with
//     RESOURCE_EXHAUSTED, reason RATE_LIMITED (as its per-client limiter
//     does).
var nothingNewer = []struct {
	name  string
	setup func(t *testing.T, f *fakeBroker, ts *clientsdk.TokenSource, rejectAll *atomic.Bool) string
}{
	{"same token", func(t *testing.T, f *fakeBroker, ts *clientsdk.TokenSource, rejectAll *atomic.Bool) string {
		if _, err := ts.Invalidate(context.Background(), "tok-1"); err != nil {
			t.Fatal(err)
		}
		f.pin()
		rejectAll.Store(true)
		return "tok-2"
	}},
	{"rate limited", func(t *testing.T, f *fakeBroker, _ *clientsdk.TokenSource, _ *atomic.Bool) string {
		f.failNext(brokerError(codes.ResourceExhausted, "RATE_LIMITED", &errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)}))
		return "tok-1"
	}},
}

// TestTransportNothingNewerReturnsThe401: when the broker has no other
// token, the caller gets the resource's own 401, body and all, and the
// request is not sent again.
func TestTransportNothingNewerReturnsThe401(t *testing.T) {
	for _, tc := range nothingNewer {
		t.Run(tc.name, func(t *testing.T) {
			fx := newTransportFixture(t)
			rejected := tc.setup(t, fx.broker, fx.ts, &fx.api.rejectAll)
			req, err := http.NewRequest(http.MethodPost, fx.url, strings.NewReader("payload"))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := fx.client.Do(req)
			if err != nil {
				t.Fatalf("err = %v; want the 401 response", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "token rejected") ||
				resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatalf("got %s %q; want the resource's 401 with its body and headers", resp.Status, body)
			}
			if auth, _ := fx.api.seen(); len(auth) != 1 || auth[0] != "Bearer "+rejected {
				t.Fatalf("API saw %q; want one request with %s", auth, rejected)
			}
			if got := fx.broker.rejectedTokens(); len(got) == 0 || got[len(got)-1] != rejected {
				t.Fatalf("invalidated %q; want %s reported last", got, rejected)
			}
		})
	}
}

func TestTransportBrokerErrors(t *testing.T) {
	fx := newTransportFixture(t)
	fx.broker.failNext(brokerError(codes.FailedPrecondition, "REAUTH_REQUIRED"))
	_, err := fx.client.Get(fx.url)
	if !errors.Is(err, clientsdk.ErrReauthRequired) {
		t.Fatalf("err = %v, want ErrReauthRequired (Invalidate failed)", err)
	}
	if eof, closed := fx.base.body(0).state(); !eof || !closed {
		t.Fatalf("401 body drained=%v closed=%v, want both", eof, closed)
	}

	// No token at all: the request is not sent, and its body is closed.
	f := newFakeBroker()
	f.failNext(brokerError(codes.NotFound, "CREDENTIAL_NOT_FOUND"))
	ts := startBroker(t, f).TokenSource("missing")
	body := &trackedBody{ReadCloser: io.NopCloser(strings.NewReader("x"))}
	req, _ := http.NewRequest(http.MethodPost, fx.url, body)
	_, err = (&http.Client{Transport: &clientsdk.Transport{Source: ts}}).Do(req)
	if !errors.Is(err, clientsdk.ErrCredentialNotFound) {
		t.Fatalf("err = %v, want ErrCredentialNotFound", err)
	}
	if _, closed := body.state(); !closed {
		t.Fatal("request body not closed")
	}
	if auth, _ := fx.api.seen(); len(auth) != 1 {
		t.Fatalf("API got %d requests, want 1", len(auth))
	}
}
