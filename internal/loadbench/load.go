package loadbench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// callGrace bounds how long a call may outlast its load run.
const callGrace = 10 * time.Second

// A loadSpec is one closed-loop load run: concurrency goroutines, each
// calling as soon as its previous call returned, over a pool of
// connections (goroutine i uses conns[i%len(conns)]). Calls during warmup
// are not measured; the run then measures for duration or until maxCalls
// calls started, whichever comes first.
type loadSpec struct {
	conns       []*grpc.ClientConn
	concurrency int
	warmup      time.Duration
	duration    time.Duration
	maxCalls    int64
	// newCall returns the call one goroutine makes on its connection. It is
	// called once per goroutine, so the call can reuse its own messages.
	newCall func(cc *grpc.ClientConn) func(ctx context.Context) error
}

// loadResult is what one load run measured: the calls that completed
// within the measured window and their latency.
type loadResult struct {
	Calls  int64
	Window time.Duration
	CPU    time.Duration // used by the whole process during the window
	hist   *histogram
}

// CPUPerCall is the process's CPU time (load client and server together)
// per call; 0 where CPU time is not measured.
func (r loadResult) CPUPerCall() time.Duration {
	if r.Calls == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Calls)
}

// P50 and P99 are the run's latency quantiles.
func (r loadResult) P50() time.Duration { return r.hist.quantile(0.50) }
func (r loadResult) P99() time.Duration { return r.hist.quantile(0.99) }

// add merges o into r, as one longer run.
func (r *loadResult) add(o loadResult) {
	if r.hist == nil {
		r.hist = new(histogram)
	}
	r.Calls += o.Calls
	r.Window += o.Window
	r.CPU += o.CPU
	r.hist.merge(o.hist)
}

// PerSecond is the throughput of the run.
func (r loadResult) PerSecond() float64 {
	if r.Window <= 0 {
		return 0
	}
	return float64(r.Calls) / r.Window.Seconds()
}

// Phases of a load run.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// runLoad runs s. Any failed call fails the run: a benchmark that measures
// errors measures nothing useful.
func runLoad(ctx context.Context, s loadSpec) (loadResult, error) {
	if s.concurrency < 1 || len(s.conns) == 0 || s.duration <= 0 || s.maxCalls < 1 {
		return loadResult{}, errors.New("loadbench: load run needs concurrency, connections, a duration and a call bound")
	}
	ctx, cancel := context.WithTimeout(ctx, s.warmup+s.duration+callGrace)
	defer cancel()

	var (
		phase    atomic.Int32
		started  atomic.Int64 // calls started while measuring
		full     = make(chan struct{})
		fullOnce sync.Once
		errOnce  sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	hists := make([]*histogram, s.concurrency)
	for i := range s.concurrency {
		h := new(histogram)
		hists[i] = h
		call := s.newCall(s.conns[i%len(s.conns)])
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				p := phase.Load()
				if p == phaseStop {
					return
				}
				if p == phaseMeasure && started.Add(1) > s.maxCalls {
					fullOnce.Do(func() { close(full) })
					return
				}
				t0 := time.Now()
				err := call(ctx)
				d := time.Since(t0)
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					cancel()
					return
				}
				if phase.Load() == phaseMeasure {
					h.record(d)
				}
			}
		}()
	}

	var begin time.Time
	var cpu0 time.Duration
	stop := func() (time.Duration, time.Duration) {
		phase.Store(phaseStop)
		return time.Since(begin), processCPU() - cpu0
	}
	warm := time.NewTimer(s.warmup)
	select {
	case <-warm.C:
	case <-ctx.Done():
	}
	warm.Stop()
	begin, cpu0 = time.Now(), processCPU()
	phase.Store(phaseMeasure)
	measure := time.NewTimer(s.duration)
	select {
	case <-measure.C:
	case <-full:
	case <-ctx.Done():
	}
	measure.Stop()
	window, cpu := stop()
	wg.Wait()
	if firstErr != nil {
		return loadResult{}, fmt.Errorf("loadbench: a call failed: %w", firstErr)
	}
	if err := ctx.Err(); err != nil {
		return loadResult{}, fmt.Errorf("loadbench: load run: %w", err)
	}

	all := new(histogram)
	for _, h := range hists {
		all.merge(h)
	}
	return loadResult{Calls: int64(all.n), Window: window, CPU: cpu, hist: all}, nil
}

// unaryCall returns a loadSpec.newCall that invokes method with req and
// unmarshals into a response of its own per goroutine, made by newResp.
// The request is shared: marshalling only reads it.
func unaryCall(method string, req proto.Message, newResp func() proto.Message) func(cc *grpc.ClientConn) func(ctx context.Context) error {
	return func(cc *grpc.ClientConn) func(ctx context.Context) error {
		resp := newResp()
		return func(ctx context.Context) error {
			return cc.Invoke(ctx, method, req, resp)
		}
	}
}

// dialPool returns n client connections to addr, each its own HTTP/2
// connection, with grpc-go's default transport settings (no TLS: both
// servers compared listen on 127.0.0.1).
func dialPool(addr string, n int) ([]*grpc.ClientConn, error) {
	conns := make([]*grpc.ClientConn, 0, n)
	for range n {
		cc, err := grpc.NewClient(addr, grpcInsecure())
		if err != nil {
			closePool(conns)
			return nil, err
		}
		cc.Connect()
		conns = append(conns, cc)
	}
	return conns, nil
}

func closePool(conns []*grpc.ClientConn) {
	for _, cc := range conns {
		_ = cc.Close()
	}
}

// grpcInsecure is the dial option of every benchmark client: plain text,
// as both servers compared listen on 127.0.0.1 only.
func grpcInsecure() grpc.DialOption {
	return grpc.WithTransportCredentials(insecure.NewCredentials())
}
