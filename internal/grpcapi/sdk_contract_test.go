package grpcapi

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/clientsdk"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// The rate-limit contract, end to end through a real broker: a 401 whose
// invalidation is rate-limited (a forced refresh ran less than
// ForceInterval ago) reaches the caller as the resource's own 401, never as
// a new error class, and the request is not retried with the same token.
func TestSDKGetsTheOriginal401WhenInvalidationIsRateLimited(t *testing.T) {
	e := newEnv(t, envOptions{cfg: broker.Config{ForceInterval: time.Hour}})
	e.put(t, e.credential("cred"))

	var hits atomic.Int64
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		w.WriteHeader(http.StatusUnauthorized) // rejects every token, as after a revocation
	}))
	t.Cleanup(api.Close)

	src := clientsdk.New(e.conn).TokenSource("cred")
	hc := &http.Client{Transport: &clientsdk.Transport{Source: src}}
	get := func() *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctxT(t), http.MethodGet, api.URL, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("request: %v; want the resource's 401 as a response", err)
		}
		resp.Body.Close()
		return resp
	}

	// First 401: the token is invalidated, refreshed, and the request
	// retried once with the new one.
	if resp := get(); resp.StatusCode != http.StatusUnauthorized || hits.Load() != 2 {
		t.Fatalf("first request: status %d after %d hits; want 401 after 2 (one retry)", resp.StatusCode, hits.Load())
	}
	refreshes := e.idp.Stats().Refreshes
	// Second 401 within ForceInterval: the broker answers with the same
	// token; the SDK hands back the 401 without a retry.
	if resp := get(); resp.StatusCode != http.StatusUnauthorized || hits.Load() != 3 {
		t.Fatalf("second request: status %d after %d hits; want 401 after 3 (no retry)", resp.StatusCode, hits.Load())
	}
	if st := e.idp.Stats(); st.Refreshes != refreshes || st.Reuses != 0 {
		t.Fatalf("the rate-limited invalidation refreshed (%d -> %d) or reused (%d)", refreshes, st.Refreshes, st.Reuses)
	}
}
