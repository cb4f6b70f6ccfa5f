package loadbench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// stormCallTimeout bounds each call of a storm.
const stormCallTimeout = 30 * time.Second

// Storm is the refresh storm: in each round, Callers concurrent GetToken
// calls through gRPC, spread over Replicas replicas sharing Redis, on a
// credential whose token has expired, with an IdP that answers after
// IdPLatencyMs. Beyond is, for each caller, how long after the IdP's answer
// to the refresh left the IdP the caller had its token: what the broker
// adds to the IdP's own latency (storing the refresh, waking the waiters on
// every replica, answering them all). The latency figures are medians over
// the rounds.
type Storm struct {
	Callers      int     `json:"callers"`
	Replicas     int     `json:"replicas"`
	IdPLatencyMs float64 `json:"idp_latency_ms"`
	// IdPCalls is the number of refreshes the IdP served in each round.
	IdPCalls     []int64 `json:"idp_calls"`
	Reuses       int64   `json:"idp_reuses"`
	LatencyP50Ms float64 `json:"latency_p50_ms"`
	LatencyP99Ms float64 `json:"latency_p99_ms"`
	BeyondP50Ms  float64 `json:"beyond_idp_p50_ms"`
	BeyondP99Ms  float64 `json:"beyond_idp_p99_ms"`
	BeyondMaxMs  float64 `json:"beyond_idp_max_ms"`
}

// idpClock keeps when the IdP last answered a refresh.
type idpClock struct {
	mu   sync.Mutex
	last time.Time
	n    int
}

func (c *idpClock) onEvent(ev fakeidp.Event) {
	if ev.Path != fakeidp.TokenPath || ev.Status != http.StatusOK {
		return
	}
	now := time.Now() // the answer is written right after this hook
	c.mu.Lock()
	c.last, c.n = now, c.n+1
	c.mu.Unlock()
}

func (c *idpClock) get() (time.Time, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last, c.n
}

// storm runs cfg.Rounds refresh storms, each on a new credential.
func (e *env) storm(ctx context.Context, cfg *Config) (Storm, error) {
	res := Storm{Callers: cfg.StormCallers, Replicas: cfg.StormReplicas, IdPLatencyMs: ms(cfg.IdPLatency)}
	clock := &idpClock{}
	idp, err := startIdP(cfg.IdPLatency, cfg.StormTokenTTL, clock.onEvent)
	if err != nil {
		return res, err
	}
	defer idp.Close()
	prefix := e.runID + "-storm"
	var reps []*replica
	var pools [][]*grpc.ClientConn
	defer func() {
		for _, p := range pools {
			closePool(p)
		}
		for _, r := range reps {
			_ = r.close()
		}
	}()
	for range cfg.StormReplicas {
		r, err := e.startReplica(replicaOptions{prefix: prefix})
		if err != nil {
			return res, err
		}
		reps = append(reps, r)
		conns, err := dialPool(r.addr, max(1, cfg.Conns/2))
		if err != nil {
			return res, err
		}
		pools = append(pools, conns)
	}

	var p50, p99, b50, b99, bmax []time.Duration
	for round := range cfg.Rounds {
		progress(cfg, "storm: %d callers on %d replicas, round %d/%d", cfg.StormCallers, cfg.StormReplicas, round+1, cfg.Rounds)
		id := fmt.Sprintf("storm-%d", round)
		if _, err := reps[0].broker.PutCredential(adminContext(ctx), credential(idp, id), idp.Seed(idpClientID)); err != nil {
			return res, err
		}
		r, err := e.stormRound(ctx, cfg, idp, clock, pools, id)
		if err != nil {
			return res, err
		}
		res.IdPCalls = append(res.IdPCalls, r.idpCalls)
		res.Reuses += r.reuses
		p50, p99 = append(p50, quantileOf(r.latency, 0.5)), append(p99, quantileOf(r.latency, 0.99))
		b50, b99 = append(b50, quantileOf(r.beyond, 0.5)), append(b99, quantileOf(r.beyond, 0.99))
		bmax = append(bmax, quantileOf(r.beyond, 1))
	}
	res.LatencyP50Ms, res.LatencyP99Ms = ms(median(p50)), ms(median(p99))
	res.BeyondP50Ms, res.BeyondP99Ms, res.BeyondMaxMs = ms(median(b50)), ms(median(b99)), ms(median(bmax))
	return res, nil
}

// stormResult is one round of a storm.
type stormResult struct {
	idpCalls, reuses int64
	latency, beyond  []time.Duration
}

// stormRound primes every replica's cache with the credential's first
// token, waits until that token has expired, then releases all the callers
// at once.
func (e *env) stormRound(ctx context.Context, cfg *Config, idp *fakeidp.Server, clock *idpClock, pools [][]*grpc.ClientConn, id string) (stormResult, error) {
	var res stormResult
	ctx, cancel := context.WithTimeout(e.callerContext(ctx), stormCallTimeout+cfg.StormTokenTTL)
	defer cancel()
	req := &pb.GetTokenRequest{CredentialId: id}
	var expiry time.Time
	for _, conns := range pools {
		tok := new(pb.GetTokenResponse)
		if err := conns[0].Invoke(ctx, pb.TokenService_GetToken_FullMethodName, req, tok); err != nil {
			return res, fmt.Errorf("loadbench: storm: priming a replica: %w", err)
		}
		expiry = tok.GetExpiresAt().AsTime()
	}
	// No call until the token has expired: a call in its last half would
	// start a background refresh ahead of expiry.
	wait := time.NewTimer(time.Until(expiry) + 20*time.Millisecond)
	select {
	case <-wait.C:
	case <-ctx.Done():
		wait.Stop()
		return res, ctx.Err()
	}

	before := idp.Stats()
	_, answeredBefore := clock.get()
	n := cfg.StormCallers
	done := make([]time.Time, n)
	latency := make([]time.Duration, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		pool := pools[i%len(pools)]
		cc := pool[(i/len(pools))%len(pool)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := new(pb.GetTokenResponse)
			<-start
			t0 := time.Now()
			errs[i] = cc.Invoke(ctx, pb.TokenService_GetToken_FullMethodName, req, resp)
			done[i] = time.Now()
			latency[i] = done[i].Sub(t0)
		}()
	}
	close(start)
	wg.Wait()
	failed, firstErr := 0, error(nil)
	for _, err := range errs {
		if err != nil {
			failed++
			firstErr = cmp.Or(firstErr, err)
		}
	}
	if failed > 0 {
		return res, fmt.Errorf("loadbench: storm: %d of %d calls failed, the first with: %w", failed, n, firstErr)
	}
	after := idp.Stats()
	answered, answeredAfter := clock.get()
	res.idpCalls = after.Refreshes - before.Refreshes
	res.reuses = after.Reuses - before.Reuses
	if answeredAfter == answeredBefore {
		return res, errors.New("loadbench: storm: the IdP answered no refresh")
	}
	res.latency = latency
	res.beyond = make([]time.Duration, n)
	for i, d := range done {
		res.beyond[i] = d.Sub(answered)
	}
	return res, nil
}
