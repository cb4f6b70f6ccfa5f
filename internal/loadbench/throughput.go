package loadbench

import (
	"context"
	"errors"
	"fmt"
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
	idp   *fakeidp.Server
	rep   *replica
	floor *floorServer
	tok   *pb.GetTokenResponse // the cached token, as GetToken answers it
}

// startHot starts the IdP, a replica with the hot credential cached, and
// the floor server.
func (e *env) startHot(ctx context.Context) (h *hotRig, err error) {
	h = &hotRig{}
	defer func() {
		if err != nil {
			_ = h.close()
		}
	}()
	if h.idp, err = startIdP(0, time.Hour, nil); err != nil {
		return nil, err
	}
	if h.rep, err = e.startReplica(ctx, replicaOptions{prefix: e.runID + "-hot"}); err != nil {
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

// throughput runs the comparison at every concurrency of cfg. The broker
// and the floor are driven by the same load client over pools of the same
// size, with the same request and the same call metadata (the bearer key,
// which the floor ignores). A round is cfg.Slices pairs of short runs, one
// on each server, back to back and alternating which goes first, so that
// what else the machine does weighs on both alike; the round's ratio is
// that of the calls each served in its slices.
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
	callCtx := e.callerContext(ctx)
	run := func(conns []*grpc.ClientConn, method string, n int, into *loadResult) error {
		r, err := runLoad(callCtx, loadSpec{
			conns: conns, concurrency: n, warmup: cfg.Warmup, duration: cfg.Duration, maxCalls: cfg.MaxCalls,
			newCall: unaryCall(method, req, newResp),
		})
		if err == nil {
			into.add(r)
		}
		return err
	}

	var out []Throughput
	for _, n := range cfg.Concurrency {
		t := Throughput{Concurrency: n}
		var brokerRuns, floorRuns []loadResult
		for round := range cfg.Rounds {
			progress(cfg, "throughput: %d concurrent calls, round %d/%d", n, round+1, cfg.Rounds)
			var b, f loadResult
			for slice := range cfg.Slices {
				first, second := func() error { return run(brokerConns, pb.TokenService_GetToken_FullMethodName, n, &b) },
					func() error { return run(floorConns, floorMethod, n, &f) }
				if (round+slice)%2 == 1 {
					first, second = second, first
				}
				if err := first(); err != nil {
					return nil, err
				}
				if err := second(); err != nil {
					return nil, err
				}
			}
			brokerRuns, floorRuns = append(brokerRuns, b), append(floorRuns, f)
			t.RoundRatios = append(t.RoundRatios, round3(b.PerSecond()/f.PerSecond()))
		}
		t.Broker, t.Floor = summarize(brokerRuns), summarize(floorRuns)
		t.Ratio = median(t.RoundRatios)
		if t.Broker.CPUUs > 0 {
			t.CPURatio = round3(t.Floor.CPUUs / t.Broker.CPUUs)
			t.OverheadUs = round1(t.Broker.CPUUs - t.Floor.CPUUs)
		}
		out = append(out, t)
	}
	return out, nil
}
