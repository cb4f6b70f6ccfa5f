package broker_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

const (
	testClientID = "broker-client"
	testSecret   = "s3cret-client-value"
)

// observer counts the tokens a Broker serves, by source.
type observer struct {
	served [3]atomic.Int64 // by broker.Source
}

func (o *observer) TokenServed(from broker.Source) { o.served[from].Add(1) }
func (o *observer) LockWaited(time.Duration, bool) {}
func (o *observer) Refreshed(broker.RefreshEvent)  {}

// env is one IdP, one Store and the Brokers (replicas) sharing them.
type env struct {
	t     *testing.T
	idp   *fakeidp.Server
	store broker.Store
	cfg   broker.Config
}

func newEnv(t *testing.T, idpOpts fakeidp.Options) *env {
	t.Helper()
	if idpOpts.Clients == nil {
		idpOpts.Clients = map[string]string{testClientID: testSecret}
	}
	return &env{
		t:     t,
		idp:   fakeidptest.Start(t, idpOpts),
		store: memstore.New(),
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
	b, err := broker.New(store, &upstream.Client{}, cfg)
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
		ID: id, TokenURL: e.idp.TokenURL(), ClientID: testClientID, ClientSecrets: []string{testSecret},
	}, rt)
	if err != nil {
		e.t.Fatal(err)
	}
}

// accepted reports whether the IdP's protected resource accepts tok.
func (e *env) accepted(tok string) bool {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.idp.ResourceURL(), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
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

// waitExpired sleeps until tok has expired.
func waitExpired(tok broker.Token) {
	time.Sleep(time.Until(tok.Expiry) + 20*time.Millisecond)
}

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}
