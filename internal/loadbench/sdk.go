package loadbench

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/clientsdk"
)

// SDK compares the cached path of clientsdk's TokenSource.Token (over a
// real broker) with x/oauth2's ReuseTokenSource over a static source, on
// one goroutine and on GOMAXPROCS goroutines at once (wall time per call,
// as testing.B.RunParallel reports it). Figures are medians over the
// rounds.
type SDK struct {
	TokenSourceNs          float64 `json:"tokensource_ns_per_op"`
	TokenSourceAllocs      float64 `json:"tokensource_allocs_per_op"`
	ReuseNs                float64 `json:"reuse_ns_per_op"`
	ReuseAllocs            float64 `json:"reuse_allocs_per_op"`
	TokenSourceParallelNs  float64 `json:"tokensource_parallel_ns_per_op"`
	ReuseParallelNs        float64 `json:"reuse_parallel_ns_per_op"`
	TokenSourceBrokerCalls int64   `json:"tokensource_broker_calls"`
}

// opBatch is how many calls a measuring goroutine makes between looks at
// the clock.
const opBatch = 1000

// maxOps bounds the calls of one measurement.
const maxOps = 1 << 30

// measureOp calls op from goroutines goroutines for about d and returns the
// wall time per call and the heap allocations per call (of the whole
// process, as testing.B counts them; the benchmark's servers are idle).
func measureOp(d time.Duration, goroutines int, op func() error) (nsPerOp, allocsPerOp float64, err error) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var (
		total   atomic.Int64
		failed  atomic.Bool
		errOnce sync.Once
		wg      sync.WaitGroup
	)
	start := time.Now()
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				for range opBatch {
					if e := op(); e != nil {
						errOnce.Do(func() { err = e })
						failed.Store(true)
						return
					}
				}
				if total.Add(opBatch) >= maxOps || time.Since(start) >= d {
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	if err != nil {
		return 0, 0, err
	}
	n := float64(total.Load())
	return float64(elapsed.Nanoseconds()) / n, float64(after.Mallocs-before.Mallocs) / n, nil
}

// sdk measures the SDK against the hot replica.
func (e *env) sdk(ctx context.Context, cfg *Config, h *hotRig) (SDK, error) {
	// Without the WatchToken stream: its background pushes would count as
	// broker calls here, and the cached path is the same with or without it.
	c, err := clientsdk.Dial(h.rep.addr, clientsdk.WithInsecure(), clientsdk.WithAPIKey(e.key), clientsdk.WithoutWatch())
	if err != nil {
		return SDK{}, err
	}
	defer c.Close()
	ts := c.TokenSource(hotCredential)
	if _, err := ts.TokenContext(ctx); err != nil {
		return SDK{}, err
	}
	reuse := oauth2.ReuseTokenSource(nil, oauth2.StaticTokenSource(&oauth2.Token{
		AccessToken: h.tok.GetAccessToken(), TokenType: h.tok.GetTokenType(), Expiry: time.Now().Add(time.Hour),
	}))
	if _, err := reuse.Token(); err != nil {
		return SDK{}, err
	}
	tokenOf := func(src oauth2.TokenSource) func() error {
		return func() error {
			_, err := src.Token()
			return err
		}
	}
	servedBefore := h.rep.servedCount()

	var tsNs, tsAllocs, reNs, reAllocs, tsPar, rePar []float64
	procs := runtime.GOMAXPROCS(0)
	for round := range cfg.Rounds {
		progress(cfg, "sdk: TokenSource.Token and ReuseTokenSource, round %d/%d", round+1, cfg.Rounds)
		for _, m := range []struct {
			op         func() error
			goroutines int
			ns, allocs *[]float64
		}{
			{tokenOf(ts), 1, &tsNs, &tsAllocs},
			{tokenOf(reuse), 1, &reNs, &reAllocs},
			{tokenOf(ts), procs, &tsPar, nil},
			{tokenOf(reuse), procs, &rePar, nil},
		} {
			if err := ctx.Err(); err != nil {
				return SDK{}, err
			}
			ns, allocs, err := measureOp(cfg.SDKDuration, m.goroutines, m.op)
			if err != nil {
				return SDK{}, err
			}
			*m.ns = append(*m.ns, ns)
			if m.allocs != nil {
				*m.allocs = append(*m.allocs, allocs)
			}
		}
	}
	calls := h.rep.servedCount() - servedBefore
	if servedBefore < 0 || calls < 0 {
		return SDK{}, errors.New("loadbench: sdk: the broker's tokens_served_total cannot be read")
	}
	return SDK{
		TokenSourceNs: round1(median(tsNs)), TokenSourceAllocs: round3(median(tsAllocs)),
		ReuseNs: round1(median(reNs)), ReuseAllocs: round3(median(reAllocs)),
		TokenSourceParallelNs: round1(median(tsPar)), ReuseParallelNs: round1(median(rePar)),
		TokenSourceBrokerCalls: calls,
	}, nil
}
