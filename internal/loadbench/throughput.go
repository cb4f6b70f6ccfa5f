package loadbench

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// hotCredential is the credential of the cached-path measurements.
const hotCredential = "hot"

// hotRig is one replica with one cached credential, and the floor server
// answering a response of the same size.
type hotRig struct {
	idp      *fakeidp.Server
	rep      *replica
	commands *commandCounter // of rep's Redis client
	floor    *floorServer
	tok      *pb.GetTokenResponse // the cached token, as GetToken answers it
}

// startHot starts the IdP, a replica with the hot credential cached, and
// the floor server.
func (e *env) startHot(ctx context.Context) (h *hotRig, err error) {
	h = &hotRig{commands: &commandCounter{}}
	defer func() {
		if err != nil {
			_ = h.close()
		}
	}()
	if h.idp, err = startIdP(0, time.Hour, nil); err != nil {
		return nil, err
	}
	if h.rep, err = e.startReplica(ctx, replicaOptions{prefix: e.runID + "-hot", hook: h.commands}); err != nil {
		return nil, err
	}
	if _, err = h.rep.Broker().PutCredential(adminContext(ctx), credential(h.idp, hotCredential), h.idp.Seed(idpClientID)); err != nil {
		return nil, err
	}
	conns, err := dialPool(h.rep.addr, 1)
	if err != nil {
		return nil, err
	}
	defer closePool(conns)
	h.tok = new(pb.GetTokenResponse)
	if err = conns[0].Invoke(e.callerContext(ctx), pb.TokenService_GetToken_FullMethodName,
		&pb.GetTokenRequest{CredentialId: hotCredential}, h.tok); err != nil {
		return nil, fmt.Errorf("loadbench: first GetToken: %w", err)
	}
	if h.floor, err = startFloor(floorResponse(h.tok), nil); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *hotRig) close() error {
	var errs []error
	if h.floor != nil {
		errs = append(errs, h.floor.close())
	}
	if h.rep != nil {
		errs = append(errs, h.rep.close())
	}
	if h.idp != nil {
		errs = append(errs, h.idp.Close())
	}
	return errors.Join(errs...)
}

// Throughput compares cached GetToken calls through the broker's gRPC
// server (authentication, metrics, the access log at Info) with no-op calls
// to the floor server, at one concurrency. The load figures are medians
// over the rounds; Ratio is the median of each round's broker/floor
// throughput (the two runs of a round are back to back).
//
// The process's CPU time per call (load client and server together) is
// less disturbed by whatever else runs on the machine than throughput is:
// CPURatio, the floor's CPU per call over the broker's, is the throughput
// ratio a quiet, CPU-bound machine would show, and OverheadUs what the
// broker's own work costs per call.
type Throughput struct {
	Concurrency int       `json:"concurrency"`
	Broker      Load      `json:"broker"`
	Floor       Load      `json:"floor"`
	Ratio       float64   `json:"ratio"`
	RoundRatios []float64 `json:"round_ratios"`
	CPURatio    float64   `json:"cpu_ratio"`
	OverheadUs  float64   `json:"overhead_cpu_us_per_call"`
	// P99Ratio is the median, over every back-to-back pair of slices of
	// every round, of the pair's broker/floor p99 latency: a stall of the
	// machine weighs on the one pair it falls in, not on a whole round.
	// RoundP99Ratio are the rounds' ratios (of the p99 of all their calls).
	P99Ratio      float64   `json:"p99_ratio"`
	PairP99Ratios []float64 `json:"pair_p99_ratios"`
	RoundP99Ratio []float64 `json:"round_p99_ratios"`
	// RedisCommandsPerCall is what the broker's Redis client sent per
	// measured call (0: every call was answered from the local cache).
	RedisCommandsPerCall float64 `json:"redis_commands_per_call"`
}

// Load is what a load run measured: medians over the rounds.
type Load struct {
	CallsPerSec float64 `json:"calls_per_s"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	CPUUs       float64 `json:"cpu_us_per_call"` // of the whole process
	Calls       int64   `json:"calls"`           // measured, over all rounds
}

func summarize(rs []loadResult) Load {
	var tput []float64
	var p50, p99, cpu []time.Duration
	var calls int64
	for _, r := range rs {
		tput = append(tput, r.PerSecond())
		p50 = append(p50, r.P50())
		p99 = append(p99, r.P99())
		cpu = append(cpu, r.CPUPerCall())
		calls += r.Calls
	}
	return Load{
		CallsPerSec: round1(median(tput)), P50Ms: ms(median(p50)), P99Ms: ms(median(p99)),
		CPUUs: us(median(cpu)), Calls: calls,
	}
}

// comparison is what throughput compares: calls made on the broker's
// pool and calls made on the floor's, each goroutine's call built by its
// newCall, and the broker's Redis command counter (may be nil).
type comparison struct {
	brokerConns, floorConns []*grpc.ClientConn
	brokerCall, floorCall   func(cc *grpc.ClientConn) func(ctx context.Context) error
	commands                *commandCounter
}

// throughput runs the comparison at every concurrency of cfg. The broker
// and the floor are driven by the same load client over pools of the same
// size, with the same request and the same call metadata (the bearer key,
// which the floor ignores).
func (e *env) throughput(ctx context.Context, cfg *Config, h *hotRig) ([]Throughput, error) {
	brokerConns, err := dialPool(h.rep.addr, cfg.Conns)
	if err != nil {
		return nil, err
	}
	defer closePool(brokerConns)
	floorConns, err := dialPool(h.floor.addr, cfg.Conns)
	if err != nil {
		return nil, err
	}
	defer closePool(floorConns)

	req := &pb.GetTokenRequest{CredentialId: hotCredential}
	newResp := func() proto.Message { return new(pb.GetTokenResponse) }
	c := comparison{
		brokerConns: brokerConns, floorConns: floorConns,
		brokerCall: unaryCall(pb.TokenService_GetToken_FullMethodName, req, newResp),
		floorCall:  unaryCall(floorMethod, req, newResp),
		commands:   h.commands,
	}
	var out []Throughput
	for _, n := range cfg.Concurrency {
		t, err := e.compare(ctx, cfg, "throughput", n, cfg.Rounds, c)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// compare measures c at n concurrent calls, in rounds rounds. A round is
// cfg.Slices pairs of short runs, one on each server, back to back and
// alternating which goes first, each after a full GC, so that what else the
// machine does weighs on both alike; the round's ratios are those of the
// calls each served in its slices and of their p99 latencies.
func (e *env) compare(ctx context.Context, cfg *Config, what string, n, rounds int, c comparison) (Throughput, error) {
	callCtx := e.callerContext(ctx)
	var last loadResult // of the latest run
	run := func(conns []*grpc.ClientConn, newCall func(cc *grpc.ClientConn) func(ctx context.Context) error, into *loadResult) error {
		// A collection of a large heap (the scale measurement's replica
		// caches a million credentials) takes long enough to weigh on the
		// one slice it falls in: each run starts after one.
		runtime.GC()
		r, err := runLoad(callCtx, loadSpec{
			conns: conns, concurrency: n, warmup: cfg.Warmup, duration: cfg.Duration, maxCalls: cfg.MaxCalls,
			newCall: newCall,
		})
		if err == nil {
			into.add(r)
			last = r
		}
		return err
	}
	t := Throughput{Concurrency: n}
	var brokerRuns, floorRuns []loadResult
	var commands0 int64
	if c.commands != nil {
		commands0 = c.commands.n.Load()
	}
	for round := range rounds {
		progress(cfg, "%s: %d concurrent calls, round %d/%d", what, n, round+1, rounds)
		var b, f loadResult
		for slice := range cfg.Slices {
			var bp99, fp99 time.Duration
			first, second := func() error { err := run(c.brokerConns, c.brokerCall, &b); bp99 = last.P99(); return err },
				func() error { err := run(c.floorConns, c.floorCall, &f); fp99 = last.P99(); return err }
			if (round+slice)%2 == 1 {
				first, second = second, first
			}
			if err := first(); err != nil {
				return t, err
			}
			if err := second(); err != nil {
				return t, err
			}
			t.PairP99Ratios = append(t.PairP99Ratios, round3(float64(bp99)/float64(fp99)))
		}
		brokerRuns, floorRuns = append(brokerRuns, b), append(floorRuns, f)
		t.RoundRatios = append(t.RoundRatios, round3(b.PerSecond()/f.PerSecond()))
		t.RoundP99Ratio = append(t.RoundP99Ratio, round3(float64(b.P99())/float64(f.P99())))
	}
	t.Broker, t.Floor = summarize(brokerRuns), summarize(floorRuns)
	t.Ratio, t.P99Ratio = median(t.RoundRatios), median(t.PairP99Ratios)
	if t.Broker.CPUUs > 0 {
		t.CPURatio = round3(t.Floor.CPUUs / t.Broker.CPUUs)
		t.OverheadUs = round1(t.Broker.CPUUs - t.Floor.CPUUs)
	}
	if c.commands != nil && t.Broker.Calls > 0 {
		// Warm-up calls count too: an upper bound.
		t.RedisCommandsPerCall = round3(float64(c.commands.n.Load()-commands0) / float64(t.Broker.Calls))
	}
	return t, nil
}
