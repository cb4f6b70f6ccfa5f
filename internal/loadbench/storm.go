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
// calls through gRPC, released together and spread over Replicas replicas
// sharing Redis, on a credential whose token has expired, with an IdP that
// answers after IdPLatencyMs. Each figure is the median over the rounds.
//
// A caller's excess is its latency minus the IdP's own time on the refresh
// (from receiving the request to answering it): what the broker, gRPC and
// the machine added for that caller. It splits into the time until the
// refresh reached the IdP (ToIdPMs after the callers were released: their
// calls arriving, the broker reading the store and taking the lock) and the
// time after the IdP answered (After: storing the refresh, waking the
// waiters on every replica, answering them all).
//
// The Floor figures are the same for a bare gRPC server with the same
// callers, which holds each call until the IdP latency has passed since
// the first arrived and all have arrived, then answers all at once: what
// gRPC and this machine need for that many waiters, whatever the broker
// does. FloorToIdPMs is how long after the release its first call
// arrived.
type Storm struct {
	Callers      int     `json:"callers"`
	Replicas     int     `json:"replicas"`
	IdPLatencyMs float64 `json:"idp_latency_ms"`
	// IdPCalls is the number of refreshes the IdP served in each round.
	IdPCalls     []int64 `json:"idp_calls"`
	Reuses       int64   `json:"idp_reuses"`
	LatencyP50Ms float64 `json:"latency_p50_ms"`
	LatencyP99Ms float64 `json:"latency_p99_ms"`
	ExcessP50Ms  float64 `json:"excess_p50_ms"`
	ExcessP99Ms  float64 `json:"excess_p99_ms"`
	ToIdPMs      float64 `json:"to_idp_ms"`
	// RedisCommands is the number of commands the replicas sent to Redis
	// while the callers were served (median over the rounds).
	RedisCommands int64   `json:"redis_commands"`
	AfterP50Ms    float64 `json:"after_idp_p50_ms"`
	AfterP99Ms    float64 `json:"after_idp_p99_ms"`

	FloorToIdPMs     float64 `json:"floor_first_arrival_ms"`
	FloorExcessP50Ms float64 `json:"floor_excess_p50_ms"`
	FloorExcessP99Ms float64 `json:"floor_excess_p99_ms"`
	FloorAfterP50Ms  float64 `json:"floor_after_p50_ms"`
	FloorAfterP99Ms  float64 `json:"floor_after_p99_ms"`
}

// idpClock keeps when the IdP last received and answered a refresh it
// answered with tokens.
type idpClock struct {
	mu                 sync.Mutex
	received, answered time.Time
	n                  int
}

func (c *idpClock) onEvent(ev fakeidp.Event) {
	if ev.Path != fakeidp.TokenPath || ev.Status != http.StatusOK {
		return
	}
	now := time.Now() // the answer is written right after this hook
	c.mu.Lock()
	c.received, c.answered, c.n = ev.Time, now, c.n+1
	c.mu.Unlock()
}

func (c *idpClock) get() (received, answered time.Time, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.received, c.answered, c.n
}

// stormRun is what one round measured, of the broker or of the floor.
type stormRun struct {
	latency, excess, after []time.Duration
	toIdP                  time.Duration
	commands               int64 // sent to Redis by the replicas
}

// figures collects the medians over rounds of p50s and p99s.
type figures struct {
	lat50, lat99, ex50, ex99, af50, af99, toIdP []time.Duration
}

func (f *figures) add(r stormRun) {
	f.lat50, f.lat99 = append(f.lat50, quantileOf(r.latency, 0.5)), append(f.lat99, quantileOf(r.latency, 0.99))
	f.ex50, f.ex99 = append(f.ex50, quantileOf(r.excess, 0.5)), append(f.ex99, quantileOf(r.excess, 0.99))
	f.af50, f.af99 = append(f.af50, quantileOf(r.after, 0.5)), append(f.af99, quantileOf(r.after, 0.99))
	f.toIdP = append(f.toIdP, r.toIdP)
}

// newStormRun computes a round's figures from when the callers were
// released, when each was done and how long it took, and when the IdP (or
// the floor's gate) received and answered.
func newStormRun(released time.Time, done []time.Time, latency []time.Duration, received, answered time.Time) stormRun {
	own := answered.Sub(received)
	r := stormRun{latency: latency, toIdP: received.Sub(released)}
	for i := range done {
		r.excess = append(r.excess, latency[i]-own)
		r.after = append(r.after, done[i].Sub(answered))
	}
	return r
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
	counter := &commandCounter{}
	defer func() {
		for _, p := range pools {
			closePool(p)
		}
		for _, r := range reps {
			_ = r.close()
		}
	}()
	for range cfg.StormReplicas {
		r, err := e.startReplica(ctx, replicaOptions{prefix: prefix, hook: counter})
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

	fo, err := e.startFanout(cfg, &pb.GetTokenResponse{AccessToken: "floor", TokenType: "Bearer"})
	if err != nil {
		return res, err
	}
	defer fo.close()
	// Each round's floor storm runs right after the broker's, or (odd
	// rounds) right before, so that what else the machine does weighs on
	// both alike.
	var f, floor figures
	var commands []int64
	for round := range cfg.Rounds {
		progress(cfg, "storm: %d callers on %d replicas, and on the fan-out floor, round %d/%d", cfg.StormCallers, cfg.StormReplicas, round+1, cfg.Rounds)
		id := fmt.Sprintf("storm-%d", round)
		if _, err := reps[0].Broker().PutCredential(adminContext(ctx), credential(idp, id), idp.Seed(idpClientID)); err != nil {
			return res, err
		}
		floorRound := func() error {
			r, err := fo.round(ctx, cfg)
			if err == nil {
				floor.add(r)
			}
			return err
		}
		before := floorRound
		if round%2 == 0 {
			before = nil
		}
		r, calls, reuses, err := e.stormRound(ctx, cfg, idp, clock, pools, id, counter, before)
		if err != nil {
			return res, err
		}
		if before == nil {
			if err := floorRound(); err != nil {
				return res, err
			}
		}
		res.IdPCalls = append(res.IdPCalls, calls)
		res.Reuses += reuses
		commands = append(commands, r.commands)
		f.add(r)
	}
	res.LatencyP50Ms, res.LatencyP99Ms = ms(median(f.lat50)), ms(median(f.lat99))
	res.ExcessP50Ms, res.ExcessP99Ms = ms(median(f.ex50)), ms(median(f.ex99))
	res.AfterP50Ms, res.AfterP99Ms = ms(median(f.af50)), ms(median(f.af99))
	res.ToIdPMs = ms(median(f.toIdP))
	res.RedisCommands = median(commands)
	res.FloorToIdPMs = ms(median(floor.toIdP))
	res.FloorExcessP50Ms, res.FloorExcessP99Ms = ms(median(floor.ex50)), ms(median(floor.ex99))
	res.FloorAfterP50Ms, res.FloorAfterP99Ms = ms(median(floor.af50)), ms(median(floor.af99))
	return res, nil
}

// stormRound primes every replica's cache with the credential's first
// token, waits until that token has expired, runs before (if set), then
// releases all the callers at once.
func (e *env) stormRound(ctx context.Context, cfg *Config, idp *fakeidp.Server, clock *idpClock, pools [][]*grpc.ClientConn, id string, counter *commandCounter, before func() error) (r stormRun, calls, reuses int64, err error) {
	ctx, cancel := context.WithTimeout(e.callerContext(ctx), stormCallTimeout+cfg.StormTokenTTL)
	defer cancel()
	req := &pb.GetTokenRequest{CredentialId: id}
	var expiry time.Time
	for _, conns := range pools {
		tok := new(pb.GetTokenResponse)
		if err := conns[0].Invoke(ctx, pb.TokenService_GetToken_FullMethodName, req, tok); err != nil {
			return r, 0, 0, fmt.Errorf("loadbench: storm: priming a replica: %w", err)
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
		return r, 0, 0, ctx.Err()
	}

	if before != nil {
		if err := before(); err != nil {
			return r, 0, 0, err
		}
	}
	statsBefore := idp.Stats()
	_, _, answeredBefore := clock.get()
	counter.n.Store(0)
	released, done, latency, err := callAll(ctx, pools, cfg.StormCallers, pb.TokenService_GetToken_FullMethodName, req)
	if err != nil {
		return r, 0, 0, err
	}
	commands := counter.n.Load()
	after := idp.Stats()
	received, answered, answeredAfter := clock.get()
	if answeredAfter == answeredBefore {
		return r, 0, 0, errors.New("loadbench: storm: the IdP answered no refresh")
	}
	r = newStormRun(released, done, latency, received, answered)
	r.commands = commands
	return r, after.Refreshes - statsBefore.Refreshes, after.Reuses - statsBefore.Reuses, nil
}

// callAll makes n calls of method at once, spread over pools, and returns
// when they were released, when each ended and how long each took. It
// fails if any call failed.
func callAll(ctx context.Context, pools [][]*grpc.ClientConn, n int, method string, req *pb.GetTokenRequest) (released time.Time, done []time.Time, latency []time.Duration, err error) {
	done = make([]time.Time, n)
	latency = make([]time.Duration, n)
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
			errs[i] = cc.Invoke(ctx, method, req, resp)
			done[i] = time.Now()
			latency[i] = done[i].Sub(t0)
		}()
	}
	released = time.Now()
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
		return released, nil, nil, fmt.Errorf("loadbench: storm: %d of %d calls failed, the first with: %w", failed, n, firstErr)
	}
	return released, done, latency, nil
}

// fanout is the storm's gRPC floor (see Storm): as many callers on as
// many bare floor servers, each call held at a gate that opens once
// cfg.IdPLatency has passed since the first call arrived and every call
// has arrived.
type fanout struct {
	g      *gate
	pools  [][]*grpc.ClientConn
	floors []*floorServer
	req    *pb.GetTokenRequest
}

func (e *env) startFanout(cfg *Config, resp *pb.GetTokenResponse) (fo *fanout, err error) {
	fo = &fanout{g: &gate{}, req: &pb.GetTokenRequest{CredentialId: "floor"}}
	defer func() {
		if err != nil {
			_ = fo.close()
		}
	}()
	for range cfg.StormReplicas {
		fl, err := startFloor(resp, fo.g)
		if err != nil {
			return fo, err
		}
		fo.floors = append(fo.floors, fl)
		conns, err := dialPool(fl.addr, max(1, cfg.Conns/2))
		if err != nil {
			return fo, err
		}
		fo.pools = append(fo.pools, conns)
	}
	return fo, nil
}

func (fo *fanout) close() error {
	var err error
	for _, p := range fo.pools {
		closePool(p)
	}
	for _, fl := range fo.floors {
		err = errors.Join(err, fl.close())
	}
	return err
}

// round runs one storm on the floor.
func (fo *fanout) round(ctx context.Context, cfg *Config) (stormRun, error) {
	rctx, cancel := context.WithTimeout(ctx, stormCallTimeout)
	defer cancel()
	fo.g.reset()
	type result struct {
		released time.Time
		done     []time.Time
		latency  []time.Duration
		err      error
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		r.released, r.done, r.latency, r.err = callAll(rctx, fo.pools, cfg.StormCallers, floorWaitMethod, fo.req)
		ch <- r
	}()
	first, opened, err := fo.g.openWhen(rctx, cfg.StormCallers, cfg.IdPLatency)
	if err != nil {
		cancel()
	}
	r := <-ch
	if err = cmp.Or(err, r.err); err != nil {
		return stormRun{}, err
	}
	return newStormRun(r.released, r.done, r.latency, first, opened), nil
}
