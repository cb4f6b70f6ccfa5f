package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/clientsdk"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
)

// pickyAPI answers 200 to any bearer token but those it was told to reject,
// which get 401; it remembers the last token it saw.
type pickyAPI struct {
	mu       sync.Mutex
	last     string
	rejected map[string]bool
}

func (p *pickyAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	p.mu.Lock()
	p.last = tok
	bad := !ok || p.rejected[tok]
	p.mu.Unlock()
	if bad {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// rejectLast makes the last token seen be rejected from now on.
func (p *pickyAPI) rejectLast(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last == "" {
		t.Fatal("no token seen yet")
	}
	p.rejected[p.last] = true
}

// checkRecovery makes a request that succeeds, has the API reject its token,
// and expects the next request to be recovered by one retry with a new token.
func checkRecovery(t *testing.T, w *worker, api *pickyAPI, tl *tally) {
	t.Helper()
	ctx := context.Background()
	w.once(ctx)
	api.rejectLast(t)
	w.once(ctx)
	var s Summary
	tl.fill(&s)
	if s.Requests != 2 || s.Succeeded != 2 || s.Recovered401 != 1 {
		t.Errorf("requests %d, succeeded %d, recovered_401 %d (failures %v); want 2, 2, 1",
			s.Requests, s.Succeeded, s.Recovered401, s.FailuresByReason)
	}
}

func newPickyAPI(t *testing.T) (*pickyAPI, *httptest.Server) {
	api := &pickyAPI{rejected: make(map[string]bool)}
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	return api, srv
}

// The broker workers' 401 is reported to the broker, which refreshes, and the
// retry succeeds: one recovered_401.
func TestBrokerWorkerRecovers401(t *testing.T) {
	idp := fakeidptest.Start(t, fakeidp.Options{Clients: map[string]string{"c": "s"}, AccessTokenTTL: time.Hour})
	r, err := startMemReplica(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Error(err)
		}
	})
	_, err = r.srv.Broker().PutCredential(context.Background(), broker.Credential{
		ID: "cred", TokenURL: idp.TokenURL(), ClientID: "c", ClientSecrets: []string{"s"},
	}, idp.Seed("c"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := clientsdk.Dial(r.addr, clientsdk.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })

	api, srv := newPickyAPI(t)
	tl := newTally(1)
	w := &worker{replica: 0, url: srv.URL, do: brokerDo(c.TokenSource("cred"), http.DefaultTransport), tally: tl}
	checkRecovery(t, w, api, tl)
	if st := idp.Stats(); st.Refreshes != 2 || st.Reuses != 0 {
		t.Errorf("IdP refreshes %d, reuses %d; want 2 (first token, invalidation), 0", st.Refreshes, st.Reuses)
	}
}

// The naive worker refreshes on its own on a 401, and the retry succeeds.
func TestNaiveWorkerRecovers401(t *testing.T) {
	idp := fakeidptest.Start(t, fakeidp.Options{Clients: map[string]string{"c": "s"}, AccessTokenTTL: time.Hour})
	conf := &oauth2.Config{ClientID: "c", ClientSecret: "s",
		Endpoint: oauth2.Endpoint{TokenURL: idp.TokenURL(), AuthStyle: oauth2.AuthStyleInHeader}}
	src := newNaiveSource(conf, http.DefaultClient, oauth2.Token{RefreshToken: idp.Seed("c")}, time.Second)

	api, srv := newPickyAPI(t)
	tl := newTally(0)
	w := &worker{replica: -1, url: srv.URL, do: naiveDo(src, http.DefaultTransport), tally: tl}
	checkRecovery(t, w, api, tl)
	if st := idp.Stats(); st.Refreshes != 2 || st.Reuses != 0 {
		t.Errorf("IdP refreshes %d, reuses %d; want 2 (first token, after the 401), 0", st.Refreshes, st.Reuses)
	}
}
