package integration_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/clientsdk"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/grpcapi"
)

// End to end over gRPC and a real redis-server: replicas serving
// TokenService (WatchToken too) and SDK clients calling the test IdP's
// protected resource, with an IdP that revokes the previous access token on
// every refresh.

// grpcReplica is one replica: a Broker on its own Store handle behind a
// gRPC server on a TCP port.
type grpcReplica struct {
	b      *broker.Broker
	srv    *grpcapi.Server
	addr   string
	served chan error
}

// serve starts a replica listening on addr ("127.0.0.1:0" for any port).
func (c *cluster) serve(addr string, obs broker.Observer) *grpcReplica {
	c.t.Helper()
	b, _ := c.replicaOn(func(s broker.Store) broker.Store { return s }, obs)
	var lis net.Listener
	var err error
	for range 50 { // a port just released may take a moment to be free again
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	r := &grpcReplica{b: b, srv: grpcapi.NewServer(b, grpcapi.Options{Logger: discardLogger()}), addr: lis.Addr().String(), served: make(chan error, 1)}
	go func() { r.served <- r.srv.Serve(lis) }()
	c.t.Cleanup(r.stop)
	return r
}

// stop shuts the replica down, as a SIGTERM would: watch streams end with
// SHUTTING_DOWN, the Broker stores what it has in flight.
func (r *grpcReplica) stop() {
	if r.served == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = r.srv.Shutdown(ctx)
	<-r.served
	r.served = nil
	_ = r.b.Close()
}

// revokedAtSend is an http.RoundTripper below clientsdk.Transport that asks
// the IdP, as each request leaves, whether the access token it carries is
// still live: a token the SDK handed out after the IdP revoked it counts.
type revokedAtSend struct {
	idp  *fakeidp.Server
	base http.RoundTripper
	dead *atomic.Int64
}

func (r revokedAtSend) RoundTrip(req *http.Request) (*http.Response, error) {
	tok := strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer ")
	if info, ok := r.idp.Lookup(tok); !ok || !info.Live {
		r.dead.Add(1)
	}
	return r.base.RoundTrip(req)
}

// revokingLoad runs 30 SDK clients, each its own Client (as its own
// process would) on one of 3 replicas, calling the protected resource
// through clientsdk.Transport until the IdP refreshed the credential 6 times.
// It returns how many requests left with a token the IdP had already revoked
// and how many 401s the resource answered.
func revokingLoad(t *testing.T, watch bool) (dead, unauthorized, requests int64) {
	c := newCluster(t, backends[1], fakeidp.Options{AccessTokenTTL: time.Second, RevokePreviousAccessToken: true})
	obs := &waitObserver{}
	reps := []*grpcReplica{c.serve("127.0.0.1:0", obs), c.serve("127.0.0.1:0", obs), c.serve("127.0.0.1:0", obs)}
	if _, err := reps[0].b.PutCredential(c.admin, broker.Credential{ID: "cred", TokenURL: c.idp.TokenURL(), ClientID: clientID,
		ClientSecrets: []string{secret}, RevokesPreviousAccessToken: true}, c.idp.Seed(clientID)); err != nil {
		t.Fatal(err)
	}
	var deadN, reqN atomic.Int64
	base := &http.Transport{MaxIdleConnsPerHost: 64}
	defer base.CloseIdleConnections()
	var hcs []*http.Client
	for i := range 30 {
		opts := []clientsdk.DialOption{clientsdk.WithInsecure()}
		if !watch {
			opts = append(opts, clientsdk.WithoutWatch())
		}
		sdk, err := clientsdk.Dial(reps[i%3].addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer sdk.Close()
		hcs = append(hcs, &http.Client{Transport: &clientsdk.Transport{Source: sdk.TokenSource("cred"),
			Base: revokedAtSend{idp: c.idp, base: base, dead: &deadN}}})
	}
	c.idp.ResetStats()
	var stop atomic.Bool
	var wg sync.WaitGroup
	for i, hc := range hcs {
		wg.Go(func() {
			for !stop.Load() {
				req, _ := http.NewRequest(http.MethodGet, c.idp.ResourceURL(), nil)
				resp, err := hc.Do(req)
				if err != nil {
					t.Errorf("client %d: %v", i, err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("client %d: status %d after the SDK's retry", i, resp.StatusCode)
					return
				}
				reqN.Add(1)
				time.Sleep(time.Duration(2+i%5) * time.Millisecond)
			}
		})
	}
	eventually(t, "6 refreshes", func() bool { return c.idp.Stats().Refreshes >= 6 })
	stop.Store(true)
	wg.Wait()
	st := c.idp.Stats()
	if st.Reuses != 0 {
		t.Fatalf("%d reuses", st.Reuses)
	}
	served := obs.served[broker.FromCache].Load() + obs.served[broker.FromStore].Load() + obs.served[broker.FromRefresh].Load()
	waits := obs.sorted()
	if len(waits) > 0 {
		t.Logf("replicas served %d tokens, %d after waiting for a refresh; %d rotation waits: p50 %s, p99 %s, max %s",
			served, obs.served[broker.FromRefresh].Load(), len(waits), waits[len(waits)/2], waits[len(waits)*99/100], waits[len(waits)-1])
	} else {
		t.Logf("replicas served %d tokens, %d after waiting for a refresh; no rotation wait", served, obs.served[broker.FromRefresh].Load())
	}
	return deadN.Load(), st.Resource401, reqN.Load()
}

// Watching, no SDK client ever sends a token the IdP already revoked, and
// the resource answers no 401, over 6 rotations on 3 replicas.
func TestRevokingIdPWatchingClientsGetNo401(t *testing.T) {
	t.Parallel()
	dead, unauthorized, requests := revokingLoad(t, true)
	t.Logf("watching: %d requests, %d sent with a revoked token, %d 401s", requests, dead, unauthorized)
	if dead != 0 || unauthorized != 0 {
		t.Fatalf("watching: %d of %d requests left with a token the IdP had revoked, %d 401s; want none", dead, requests, unauthorized)
	}
}

// Without watching, the SDK's caches keep tokens the IdP revoked: the test
// above can fail.
func TestRevokingIdPUnwatchedClientsGet401(t *testing.T) {
	t.Parallel()
	dead, unauthorized, requests := revokingLoad(t, false)
	t.Logf("not watching: %d requests, %d sent with a revoked token, %d 401s", requests, dead, unauthorized)
	if unauthorized == 0 || dead == 0 {
		t.Fatalf("not watching: %d requests with a revoked token, %d 401s; want some", dead, unauthorized)
	}
}

// A replica restart ends its watch streams; the SDK reconnects and misses no
// generation: every refresh, the one while the replica was down included,
// reaches its cache over the stream, with no GetToken call.
func TestWatchReconnectsAfterReplicaRestart(t *testing.T) {
	t.Parallel()
	c := newCluster(t, backends[1], fakeidp.Options{AccessTokenTTL: time.Hour})
	c.cfg.ForceInterval = time.Millisecond
	r1, r2 := c.serve("127.0.0.1:0", nil), c.serve("127.0.0.1:0", nil)
	c.credential(r2.b, "cred")
	var unary atomic.Int64
	sdk, err := clientsdk.Dial(r1.addr, clientsdk.WithInsecure(), clientsdk.WithDialOptions(
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			unary.Add(1)
			return invoker(ctx, method, req, reply, cc, opts...)
		})))
	if err != nil {
		t.Fatal(err)
	}
	defer sdk.Close()
	ts := sdk.TokenSource("cred")
	if _, err := ts.Token(); err != nil {
		t.Fatal(err)
	}
	calls := unary.Load()
	var seen []uint64
	refresh := func(b *broker.Broker) *broker.Record {
		t.Helper()
		time.Sleep(2 * time.Millisecond) // past ForceInterval
		rec, err := b.RefreshCredential(c.admin, "cred")
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	await := func(rec *broker.Record) {
		t.Helper()
		eventually(t, fmt.Sprintf("generation %d in the SDK's cache", rec.Generation), func() bool {
			tok, err := ts.Token()
			return err == nil && tok.AccessToken == rec.Token.AccessToken
		})
		seen = append(seen, rec.Generation)
	}
	await(refresh(r2.b))
	await(refresh(r2.b))
	addr := r1.addr
	r1.stop()
	down := refresh(r2.b) // while the SDK's replica is down: the reconnect brings it
	r1 = c.serve(addr, nil)
	await(down)
	await(refresh(r2.b))
	await(refresh(r1.b))
	if n := unary.Load() - calls; n != 0 {
		t.Fatalf("%d GetToken calls; want every new token over the stream", n)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] != seen[i-1]+1 {
			t.Fatalf("generations %v: want one refresh each, none missed", seen)
		}
	}
	t.Logf("generations over the stream, across the restart: %v", seen)
}

// discardLogger keeps the gRPC access log out of the test output.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// waitObserver counts what a replica serves and how long callers waited
// for a refresh whose old token they could not be given.
type waitObserver struct {
	observer
	wmu   sync.Mutex
	waits []time.Duration
}

func (o *waitObserver) RotationWaited(d time.Duration) {
	o.wmu.Lock()
	o.waits = append(o.waits, d)
	o.wmu.Unlock()
}

func (o *waitObserver) sorted() []time.Duration {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	w := slices.Clone(o.waits)
	slices.Sort(w)
	return w
}

// countingStore counts a replica's Store reads.
type countingStore struct {
	broker.Store
	gets atomic.Int64
}

func (s *countingStore) Get(ctx context.Context, id string) (*broker.Record, error) {
	s.gets.Add(1)
	return s.Store.Get(ctx, id)
}

// A thousand watchers on each of two replicas over a real redis-server cost
// each replica one Store read per refresh: the fan-out is from the cache.
func TestWatchFanOutReadsOverRedis(t *testing.T) {
	t.Parallel()
	c := newCluster(t, backends[1], fakeidp.Options{AccessTokenTTL: time.Hour})
	c.cfg.ForceInterval = time.Millisecond
	var views [2]*countingStore
	var reps [2]*broker.Broker
	for i := range reps {
		reps[i], _ = c.replicaOn(func(s broker.Store) broker.Store { views[i] = &countingStore{Store: s}; return views[i] }, nil)
	}
	c.credential(reps[0], "cred")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const watchers = 1000
	var gens [2][watchers]atomic.Uint64
	var wg sync.WaitGroup
	for r := range reps {
		for i := range watchers {
			wg.Go(func() {
				_ = reps[r].WatchToken(ctx, "cred", 0, func(u broker.TokenUpdate) error {
					gens[r][i].Store(u.Generation)
					return nil
				})
			})
		}
	}
	all := func(gen uint64) bool {
		for r := range reps {
			for i := range watchers {
				if gens[r][i].Load() != gen {
					return false
				}
			}
		}
		return true
	}
	eventually(t, "every watcher's first token", func() bool { return all(c.stored("cred").Generation) })
	const refreshes = 5
	var reads [2]int64
	for range refreshes {
		time.Sleep(2 * time.Millisecond) // past ForceInterval
		before := [2]int64{views[0].gets.Load(), views[1].gets.Load()}
		rec, err := reps[0].RefreshCredential(c.admin, "cred")
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "every watcher's new token", func() bool { return all(rec.Generation) })
		time.Sleep(50 * time.Millisecond) // reads that would still come
		for r := range reps {
			reads[r] += views[r].gets.Load() - before[r]
		}
	}
	cancel()
	wg.Wait()
	t.Logf("Store reads per refresh with %d watchers per replica: refreshing replica %.1f (1 of them its refresh's own read under the lease), other replica %.1f",
		watchers, float64(reads[0])/refreshes, float64(reads[1])/refreshes)
	if reads[1] != refreshes {
		t.Fatalf("the other replica read the Store %d times for %d refreshes; want one per refresh", reads[1], refreshes)
	}
	if reads[0] > 2*refreshes {
		t.Fatalf("the refreshing replica read the Store %d times for %d refreshes; want at most 2 per refresh (its own and one for the watchers)", reads[0], refreshes)
	}
}
