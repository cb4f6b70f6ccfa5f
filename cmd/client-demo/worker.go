package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/clientsdk"
)

// Pacing of the workers: a pause of minPause plus up to pauseJitter after
// each request keeps the load realistic and bounded (at most 50 requests a
// second per worker).
const (
	minPause       = 20 * time.Millisecond
	pauseJitter    = 30 * time.Millisecond
	requestTimeout = 10 * time.Second // one request, its token fetch and its retry
	maxBodyDrain   = 64 << 10
)

// attemptKey is the context key of a request's *attempts.
type attemptKey struct{}

// attempts records what one logical request sent: how many HTTP attempts
// and the first one's status. Only the worker's goroutine touches it.
type attempts struct {
	n     int
	first int
}

// countingTransport records every attempt of requests whose context carries
// an *attempts; it sits below clientsdk.Transport (or the naive retry), so it
// sees the first answer and the retry.
type countingTransport struct {
	base http.RoundTripper
}

func (t countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if a, ok := req.Context().Value(attemptKey{}).(*attempts); ok {
		a.n++
		if a.n == 1 && err == nil {
			a.first = resp.StatusCode
		}
	}
	return resp, err
}

// worker calls the protected API in a loop.
type worker struct {
	replica int    // the broker replica it uses; -1 for none
	url     string // the protected resource
	// do sends a request through the worker's token machinery.
	do    func(*http.Request) (*http.Response, error)
	tally *tally
}

// run calls the API until stopAt, until ctx ends, or maxRequests times,
// pausing between requests.
func (w *worker) run(ctx context.Context, stopAt time.Time, maxRequests int) {
	lat := make([]time.Duration, 0, 256)
	defer func() { w.tally.flushLatency(lat) }()
	for range maxRequests {
		if ctx.Err() != nil || !time.Now().Before(stopAt) {
			return
		}
		if d, counted := w.once(ctx); counted {
			lat = append(lat, d)
		}
		if !sleepUntil(ctx, stopAt, minPause+rand.N(pauseJitter)) {
			return
		}
	}
}

// once makes one request and records its outcome. A request cut short
// because ctx ended (the run was interrupted) is not counted.
func (w *worker) once(ctx context.Context) (time.Duration, bool) {
	a := &attempts{}
	rctx, cancel := context.WithTimeout(context.WithValue(ctx, attemptKey{}, a), requestTimeout)
	defer cancel()
	o := outcome{replica: w.replica}
	start := time.Now()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, w.url, nil)
	var resp *http.Response
	if err == nil {
		resp, err = w.do(req)
	}
	if err == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBodyDrain))
		resp.Body.Close()
	}
	d := time.Since(start)
	if ctx.Err() != nil {
		return 0, false
	}
	switch {
	case err != nil:
		o.reason = classify(err)
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		o.ok = true
		o.recovered = a.n > 1 && a.first == http.StatusUnauthorized
	default:
		o.reason = fmt.Sprintf("http_%d", resp.StatusCode)
	}
	w.tally.add(o)
	return d, true
}

// sleepUntil pauses for d, or until stopAt or the end of ctx if sooner. It
// reports whether the worker should go on.
func sleepUntil(ctx context.Context, stopAt time.Time, d time.Duration) bool {
	left := time.Until(stopAt)
	if left <= 0 {
		return false
	}
	t := time.NewTimer(min(d, left))
	defer t.Stop()
	select {
	case <-t.C:
		return d < left
	case <-ctx.Done():
		return false
	}
}

// errReauthRequired is what a naive worker reports once the IdP declared its
// refresh token dead: it has no way to log in again.
var errReauthRequired = errors.New("client-demo: refresh token rejected (invalid_grant); re-authorization required")

// classify names the reason of a failed request.
func classify(err error) string {
	switch {
	case errors.Is(err, clientsdk.ErrReauthRequired), errors.Is(err, errReauthRequired):
		return reasonReauth
	case errors.Is(err, clientsdk.ErrUnavailable):
		return reasonUnavailable
	case errors.Is(err, clientsdk.ErrCredentialNotFound):
		return reasonNotFound
	case errors.Is(err, clientsdk.ErrPermissionDenied):
		return reasonDenied
	case errors.Is(err, context.DeadlineExceeded):
		return reasonTimeout
	}
	if re, ok := errors.AsType[*oauth2.RetrieveError](err); ok {
		if re.Response != nil && (re.Response.StatusCode >= 500 || re.Response.StatusCode == http.StatusTooManyRequests) {
			return reasonUnavailable
		}
		return "idp_" + re.ErrorCode
	}
	return reasonTransport
}

// brokerDo returns a worker's request function in the broker modes: an
// http.Client whose transport is clientsdk's, which sets Authorization and,
// on a 401, reports the token to the broker and retries once.
func brokerDo(ts *clientsdk.TokenSource, base http.RoundTripper) func(*http.Request) (*http.Response, error) {
	hc := &http.Client{Transport: &clientsdk.Transport{Source: ts, Base: countingTransport{base: base}}}
	return hc.Do
}

// naiveSource is what every process does without a broker: the browser
// pattern, one copy per worker. It holds its own refresh token and access
// token and refreshes with golang.org/x/oauth2 when the token is about to
// expire or was rejected; within the worker one refresh runs at a time,
// across workers nothing is shared.
type naiveSource struct {
	conf  *oauth2.Config
	hc    *http.Client  // for the token endpoint
	early time.Duration // refresh this long before expiry

	mu   sync.Mutex // guards tok and dead; held during a refresh
	tok  *oauth2.Token
	dead error // set once the IdP rejected the refresh token for good
}

// newNaiveSource returns a source that starts from its own copy of tok.
func newNaiveSource(conf *oauth2.Config, hc *http.Client, tok oauth2.Token, early time.Duration) *naiveSource {
	return &naiveSource{conf: conf, hc: hc, early: early, tok: &tok}
}

// token returns the worker's access token, refreshing it when it is about to
// expire.
func (s *naiveSource) token(ctx context.Context) (*oauth2.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead != nil {
		return nil, s.dead
	}
	if s.fresh() {
		return s.tok, nil
	}
	return s.refreshLocked(ctx)
}

// invalidate handles a 401 for rejected: it refreshes unless the token was
// already replaced.
func (s *naiveSource) invalidate(ctx context.Context, rejected string) (*oauth2.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead != nil {
		return nil, s.dead
	}
	if s.tok.AccessToken != rejected && s.fresh() {
		return s.tok, nil
	}
	return s.refreshLocked(ctx)
}

func (s *naiveSource) fresh() bool {
	return s.tok.AccessToken != "" && time.Until(s.tok.Expiry) > s.early
}

// refreshLocked spends the worker's refresh token. Call with s.mu held.
func (s *naiveSource) refreshLocked(ctx context.Context) (*oauth2.Token, error) {
	ctx = context.WithValue(ctx, oauth2.HTTPClient, s.hc)
	// A token holding only the refresh token is expired, so x/oauth2
	// refreshes at once; it keeps the old refresh token if the answer has
	// none.
	tok, err := s.conf.TokenSource(ctx, &oauth2.Token{RefreshToken: s.tok.RefreshToken}).Token()
	if err != nil {
		if re, ok := errors.AsType[*oauth2.RetrieveError](err); ok && re.ErrorCode == "invalid_grant" {
			s.dead = errReauthRequired
			return nil, s.dead
		}
		return nil, err
	}
	s.tok = tok
	return tok, nil
}

// naiveDo returns a naive worker's request function: set the worker's own
// token; on a 401, refresh and retry once.
func naiveDo(src *naiveSource, base http.RoundTripper) func(*http.Request) (*http.Response, error) {
	hc := &http.Client{Transport: countingTransport{base: base}}
	return func(req *http.Request) (*http.Response, error) {
		ctx := req.Context()
		tok, err := src.token(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(withToken(req, tok))
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			return resp, err
		}
		next, err := src.invalidate(ctx, tok.AccessToken)
		if err != nil {
			drain(resp)
			return nil, err
		}
		if next.AccessToken == tok.AccessToken {
			return resp, nil
		}
		drain(resp)
		return hc.Do(withToken(req, next))
	}
}

func withToken(req *http.Request, tok *oauth2.Token) *http.Request {
	r := req.Clone(req.Context())
	tok.SetAuthHeader(r)
	return r
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBodyDrain))
	resp.Body.Close()
}
