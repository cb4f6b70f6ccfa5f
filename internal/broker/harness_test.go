package broker_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// The lifecycle tests run inside testing/synctest bubbles: the broker, the
// in-memory store and the test IdP all take time from the bubble's fake
// clock, and the IdP is reached through an in-memory transport, so a test
// that lets tokens expire or waits out a backoff takes no real time and its
// counts do not depend on the machine's speed.

const (
	testClientID = "broker-client"
	testSecret   = "s3cret-client-value"
	idpBase      = "https://idp.test" // served in process (no TLS): only the policy looks at the scheme
)

// observer counts the tokens a Broker serves, by source.
type observer struct {
	served [3]atomic.Int64 // by broker.Source
}

func (o *observer) TokenServed(from broker.Source)   { o.served[from].Add(1) }
func (o *observer) LockWaited(time.Duration, bool)   {}
func (o *observer) Regressed(broker.RegressionEvent) {}
func (o *observer) Refreshed(broker.RefreshEvent)    {}

// env is one IdP, one Store and the Brokers (replicas) sharing them. Make it
// inside a synctest bubble.
type env struct {
	t        *testing.T
	idp      *fakeidp.Server
	http     *http.Client // reaches the IdP in memory
	store    broker.Store
	cfg      broker.Config
	tokenURL string
}

func newEnv(t *testing.T, idpOpts fakeidp.Options) *env {
	t.Helper()
	if idpOpts.Clients == nil {
		idpOpts.Clients = map[string]string{testClientID: testSecret}
	}
	idp := fakeidp.New(idpOpts)
	t.Cleanup(func() { _ = idp.Close() })
	return &env{
		t:        t,
		idp:      idp,
		http:     &http.Client{Transport: memTransport{idp.Handler()}},
		store:    memstore.New(),
		tokenURL: idpBase + fakeidp.TokenPath,
		cfg: broker.Config{
			Open:           true,
			RefreshTimeout: 2 * time.Second,
			BackoffMin:     20 * time.Millisecond,
			BackoffMax:     100 * time.Millisecond,
			PollInterval:   50 * time.Millisecond,
		},
	}
}

// broker starts a Broker (a replica) on the env's store; obs may be nil.
func (e *env) broker(obs broker.Observer) *broker.Broker {
	e.t.Helper()
	return e.brokerOn(e.store, obs)
}

func (e *env) brokerOn(store broker.Store, obs broker.Observer) *broker.Broker {
	e.t.Helper()
	cfg := e.cfg
	cfg.Observer = obs
	b, err := broker.New(store, &upstream.Client{HTTPClient: e.http}, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = b.Close() })
	return b
}

// credential puts a credential seeded with a new token family.
func (e *env) credential(b *broker.Broker, id string) {
	e.t.Helper()
	rt := e.idp.Seed(testClientID)
	_, err := b.PutCredential(context.Background(), broker.Credential{
		ID: id, TokenURL: e.tokenURL, ClientID: testClientID, ClientSecrets: []string{testSecret},
	}, rt)
	if err != nil {
		e.t.Fatal(err)
	}
}

// accepted reports whether the IdP's protected resource accepts tok.
func (e *env) accepted(tok string) bool {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, idpBase+fakeidp.ResourcePath, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := e.http.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// rotatedOnce fails the test unless the IdP saw exactly one refresh
// request and no spent refresh token.
func (e *env) rotatedOnce() {
	e.t.Helper()
	if st := e.idp.Stats(); st.RefreshRequests != 1 || st.Reuses != 0 {
		e.t.Fatalf("IdP saw %d refresh requests, %d reuses; want 1, 0", st.RefreshRequests, st.Reuses)
	}
}

// stored returns the stored record of a credential.
func (e *env) stored(id string) *broker.Record {
	e.t.Helper()
	rec, err := e.store.Get(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return rec
}

// waitExpired lets the bubble's clock run until tok has expired.
func waitExpired(tok broker.Token) {
	time.Sleep(time.Until(tok.Expiry) + 20*time.Millisecond)
}

// memTransport serves requests with an http.Handler in memory, as a server
// would: the handler sees the client's context end when the client gives
// up, and a handler that aborts (http.ErrAbortHandler, the test IdP's lost
// reply) is a connection reset after the request was written.
type memTransport struct{ h http.Handler }

func (m memTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if trace := httptrace.ContextClientTrace(req.Context()); trace != nil && trace.WroteRequest != nil {
		trace.WroteRequest(httptrace.WroteRequestInfo{})
	}
	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		rec := httptest.NewRecorder()
		defer func() {
			if p := recover(); p != nil {
				if p != http.ErrAbortHandler {
					panic(p)
				}
				done <- result{err: errReset}
			}
		}()
		m.h.ServeHTTP(rec, req)
		resp := rec.Result()
		resp.Request = req
		done <- result{resp: resp}
	}()
	select {
	case r := <-done:
		return r.resp, r.err
	case <-req.Context().Done():
		return nil, req.Context().Err()
	}
}

var errReset = errors.New("memtransport: connection reset by peer")
