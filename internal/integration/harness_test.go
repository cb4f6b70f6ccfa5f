package integration_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

const (
	clientID = "broker-client"
	secret   = "s3cret-client-value"
)

// backend makes the stores of one test's replicas: every handle it returns
// sees the same credentials.
type backend struct {
	name  string
	start func(t testing.TB, opts ...redistest.Option) (newStore func() (broker.Store, redis.UniversalClient), srv *redistest.Server)
}

var backends = []backend{
	{"memstore", func(t testing.TB, _ ...redistest.Option) (func() (broker.Store, redis.UniversalClient), *redistest.Server) {
		s := memstore.New()
		return func() (broker.Store, redis.UniversalClient) { return s, nil }, nil
	}},
	{"redis", func(t testing.TB, opts ...redistest.Option) (func() (broker.Store, redis.UniversalClient), *redistest.Server) {
		srv := redistest.Start(t, opts...)
		prefix := "tb" + randomHex(4)
		return func() (broker.Store, redis.UniversalClient) { return redisStore(t, srv.URL(), prefix) }, srv
	}},
}

// redisStore opens a replica's own client and Store, closed when t ends.
func redisStore(t testing.TB, url, prefix string) (broker.Store, redis.UniversalClient) {
	t.Helper()
	client, err := redisstore.NewClient(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	s, err := redisstore.New(client, redisstore.Options{Prefix: prefix, AllowPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, client
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// cluster is one IdP, one shared store and the replicas on it.
type cluster struct {
	t        testing.TB
	idp      *fakeidp.Server
	redis    *redistest.Server // nil with memstore
	cfg      broker.Config
	newStore func() (broker.Store, redis.UniversalClient)
	admin    context.Context
}

func newCluster(t testing.TB, be backend, idpOpts fakeidp.Options, redisOpts ...redistest.Option) *cluster {
	t.Helper()
	if idpOpts.Clients == nil {
		idpOpts.Clients = map[string]string{clientID: secret}
	}
	newStore, srv := be.start(t, redisOpts...)
	return &cluster{
		t:        t,
		idp:      fakeidptest.Start(t, idpOpts),
		redis:    srv,
		newStore: newStore,
		admin:    broker.NewContext(context.Background(), broker.Caller{ID: "ops", Admin: true}),
		cfg: broker.Config{
			Open:           true,
			RefreshTimeout: 2 * time.Second,
			BackoffMin:     20 * time.Millisecond,
			BackoffMax:     100 * time.Millisecond,
			PollInterval:   50 * time.Millisecond,
		},
	}
}

// replica starts a Broker with its own Store handle (and Redis client).
func (c *cluster) replica(obs broker.Observer) *broker.Broker {
	c.t.Helper()
	b, _ := c.replicaOn(func(s broker.Store) broker.Store { return s }, obs)
	return b
}

// replicaOn starts a Broker on a wrapped Store handle; it also returns the
// replica's Redis client (nil with memstore).
func (c *cluster) replicaOn(wrap func(broker.Store) broker.Store, obs broker.Observer) (*broker.Broker, redis.UniversalClient) {
	c.t.Helper()
	s, client := c.newStore()
	cfg := c.cfg
	cfg.Observer = obs
	b, err := broker.New(wrap(s), &upstream.Client{}, cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = b.Close() })
	return b, client
}

// credential puts a credential seeded with a new token family through b.
func (c *cluster) credential(b *broker.Broker, id string) {
	c.t.Helper()
	if _, err := b.PutCredential(c.admin, broker.Credential{
		ID: id, TokenURL: c.idp.TokenURL(), ClientID: clientID, ClientSecrets: []string{secret},
	}, c.idp.Seed(clientID)); err != nil {
		c.t.Fatal(err)
	}
}

// stored reads a credential's record through a fresh Store handle.
func (c *cluster) stored(id string) *broker.Record {
	c.t.Helper()
	s, _ := c.newStore()
	rec, err := s.Get(context.Background(), id)
	if err != nil {
		c.t.Fatal(err)
	}
	return rec
}

// accepted reports whether the IdP's protected resource accepts tok.
func (c *cluster) accepted(tok string) bool {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.idp.ResourceURL(), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// observer counts what a Broker reports.
type observer struct {
	served [3]atomic.Int64

	mu        sync.Mutex
	refreshes []broker.RefreshEvent
}

func (o *observer) TokenServed(from broker.Source)   { o.served[from].Add(1) }
func (o *observer) LockWaited(time.Duration, bool)   {}
func (o *observer) Regressed(broker.RegressionEvent) {}
func (o *observer) Refreshed(ev broker.RefreshEvent) {
	o.mu.Lock()
	o.refreshes = append(o.refreshes, ev)
	o.mu.Unlock()
}

func (o *observer) outcomes() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for _, ev := range o.refreshes {
		out = append(out, ev.Outcome)
	}
	return out
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func forEachBackend(t *testing.T, test func(t *testing.T, be backend)) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) { test(t, be) })
	}
}
