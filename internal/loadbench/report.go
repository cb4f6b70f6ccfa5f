package loadbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// The targets of issue 13 (and issue 6's that still hold).
const (
	TargetRatio           = 0.90 // cached GetToken/floor throughput, at least
	TargetP99Ratio        = 1.2  // cached GetToken/floor p99 latency, at most
	TargetStormRatio      = 2.0  // storm waiters' p99 beyond the IdP / the fan-out floor's, at most
	TargetIdPCalls        = 1    // IdP calls per storm
	TargetRedisPerCached  = 0    // Redis commands per cached GetToken
	TargetBytesPerCached  = 600  // broker memory per cached credential, at most
	TargetColdP99         = 2 * time.Millisecond
	TargetWorkingSetRatio = 0.85 // cached GetToken over many credentials / floor, at least
)

// Report is the outcome of Run. The figures of a step that did not run are
// absent.
type Report struct {
	Mode       string       `json:"mode"`
	Started    time.Time    `json:"started"`
	ElapsedS   float64      `json:"elapsed_s"`
	Machine    Machine      `json:"machine"`
	Rounds     int          `json:"rounds"`
	Steps      []string     `json:"steps"`
	Throughput []Throughput `json:"throughput,omitempty"`
	SDK        *SDK         `json:"sdk,omitempty"`
	Storm      *Storm       `json:"storm,omitempty"`
	Scale      *Scale       `json:"scale,omitempty"`
	Growth     *Growth      `json:"growth,omitempty"`
	Pacing     *Pacing      `json:"pacing,omitempty"`
	Targets    []Target     `json:"targets"`
}

// Machine describes where the figures were taken.
type Machine struct {
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	// LoadAverage is the machine's 1-minute load average as the run began
	// and as it ended (Linux only): how busy it was with other work.
	LoadAverage [2]float64 `json:"load_average"`
}

// Target is one of the targets and whether the run met it.
type Target struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Met  bool   `json:"met"`
}

// AllMet reports whether every target was met.
func (r *Report) AllMet() bool {
	for _, t := range r.Targets {
		if !t.Met {
			return false
		}
	}
	return true
}

// Run runs the measurements of cfg, one after the other, and stops
// everything it started before it returns. It fails on the first
// measurement that fails.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	rep := &Report{
		Mode:    cfg.Mode,
		Started: time.Now().UTC().Truncate(time.Second),
		Rounds:  cfg.Rounds,
		Machine: Machine{
			GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
			CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		},
	}
	for _, s := range AllSteps {
		if cfg.runs(s) {
			rep.Steps = append(rep.Steps, s)
		}
	}
	rep.Machine.LoadAverage[0] = loadAverage()
	start := time.Now()
	e, err := newEnv(ctx)
	if err != nil {
		return nil, err
	}
	err = rep.run(ctx, &cfg, e)
	err = errors.Join(err, e.close())
	if err != nil {
		return nil, err
	}
	rep.ElapsedS = round1(time.Since(start).Seconds())
	rep.Machine.LoadAverage[1] = loadAverage()
	rep.Targets = rep.targets()
	return rep, nil
}

func (rep *Report) run(ctx context.Context, cfg *Config, e *env) (err error) {
	if cfg.runs(StepThroughput) || cfg.runs(StepSDK) {
		progress(cfg, "starting the broker and the floor server")
		h, err := e.startHot(ctx)
		if err != nil {
			return err
		}
		if cfg.runs(StepThroughput) {
			rep.Throughput, err = e.throughput(ctx, cfg, h)
		}
		if err == nil && cfg.runs(StepSDK) {
			var s SDK
			if s, err = e.sdk(ctx, cfg, h); err == nil {
				rep.SDK = &s
			}
		}
		if err = errors.Join(err, h.close()); err != nil {
			return err
		}
	}
	if cfg.runs(StepStorm) {
		s, err := e.storm(ctx, cfg)
		if err != nil {
			return err
		}
		rep.Storm = &s
	}
	if cfg.runs(StepScale) || cfg.runs(StepGrowth) {
		s, rig, err := e.scale(ctx, cfg)
		if err != nil {
			return err
		}
		rep.Scale = &s
		if cfg.runs(StepGrowth) {
			var g Growth
			if g, err = e.growth(ctx, cfg, rig, &s); err == nil {
				rep.Growth = &g
			}
		}
		if err = errors.Join(err, rig.close()); err != nil {
			return err
		}
	}
	if cfg.runs(StepPacing) {
		p, err := e.pacing(ctx, cfg)
		if err != nil {
			return err
		}
		rep.Pacing = &p
	}
	return nil
}

func (rep *Report) targets() []Target {
	var ts []Target
	add := func(name, want, got string, met bool) {
		ts = append(ts, Target{Name: name, Want: want, Got: got, Met: met})
	}
	for _, t := range rep.Throughput {
		add(fmt.Sprintf("cached GetToken / gRPC floor throughput at %d concurrent calls", t.Concurrency),
			fmt.Sprintf(">= %.2f", TargetRatio), fmt.Sprintf("%.3f", t.Ratio), t.Ratio >= TargetRatio)
		add(fmt.Sprintf("cached GetToken / gRPC floor p99 latency at %d concurrent calls (median of %d back-to-back pairs)", t.Concurrency, len(t.PairP99Ratios)),
			fmt.Sprintf("<= %.2f", TargetP99Ratio), fmt.Sprintf("%.3f", t.P99Ratio), t.P99Ratio <= TargetP99Ratio)
	}
	if s := rep.SDK; s != nil {
		add("SDK: cached TokenSource.Token no slower than ReuseTokenSource",
			fmt.Sprintf("<= %.1f ns/op", s.ReuseNs), fmt.Sprintf("%.1f ns/op", s.TokenSourceNs), s.TokenSourceNs <= s.ReuseNs)
		// Whole-process counting: a background allocation now and then
		// shows as a tiny fraction; a real one per call is >= 1.
		add("SDK: cached TokenSource.Token allocations", "0 allocs/op",
			fmt.Sprintf("%.3f allocs/op", s.TokenSourceAllocs), s.TokenSourceAllocs < 0.01)
	}
	if s := rep.Storm; s != nil {
		minCalls, maxCalls := slices.Min(s.IdPCalls), slices.Max(s.IdPCalls)
		add("refresh storm: IdP calls in every round", fmt.Sprint(TargetIdPCalls), joinInts(s.IdPCalls),
			minCalls == TargetIdPCalls && maxCalls == TargetIdPCalls && s.Reuses == 0)
		ratio := s.ExcessP99Ms / s.FloorExcessP99Ms
		add("refresh storm: waiters' p99 beyond the IdP / the fan-out floor's",
			fmt.Sprintf("<= %.1f", TargetStormRatio), fmt.Sprintf("%.2f (%.1f ms / %.1f ms)", ratio, s.ExcessP99Ms, s.FloorExcessP99Ms),
			ratio <= TargetStormRatio)
	}
	if c := rep.Scale; c != nil {
		add(fmt.Sprintf("scale: broker memory per cached credential (%d credentials)", c.Credentials),
			fmt.Sprintf("<= %d bytes", TargetBytesPerCached), fmt.Sprintf("%.0f bytes", c.BytesPerCredential),
			c.BytesPerCredential <= TargetBytesPerCached)
		add(fmt.Sprintf("scale: a cold replica's first GetToken, p99 over %d random credentials", c.ColdGets.Calls),
			fmt.Sprintf("<= %.0f ms", ms(TargetColdP99)), fmt.Sprintf("%.2f ms", c.ColdGets.P99Ms), c.ColdGets.P99Ms <= ms(TargetColdP99))
		for _, t := range c.WorkingSetThroughput {
			add(fmt.Sprintf("scale: cached GetToken over %d credentials / gRPC floor at %d concurrent calls", c.WorkingSet, t.Concurrency),
				fmt.Sprintf(">= %.2f", TargetWorkingSetRatio), fmt.Sprintf("%.3f", t.Ratio), t.Ratio >= TargetWorkingSetRatio)
		}
		add("scale: Redis commands per cached GetToken", fmt.Sprint(TargetRedisPerCached),
			fmt.Sprintf("%.3f", c.RedisCommandsPerGet), c.RedisCommandsPerGet == TargetRedisPerCached)
	}
	if g := rep.Growth; g != nil {
		var found []string
		for _, f := range g.Findings {
			if strings.HasPrefix(f, "FINDING") {
				found = append(found, f)
			}
		}
		got := "none"
		if len(found) > 0 {
			got = strings.Join(found, "; ")
		}
		add("cost growth: no figure grows faster than it should", "no finding", got, len(found) == 0)
	}
	if p := rep.Pacing; p != nil {
		for _, r := range p.Runs {
			if float64(r.Rate) >= r.NeededPerS {
				add(fmt.Sprintf("pacing at %d/s (enough for %d credentials): refreshed before expiry, no caller waits", r.Rate, r.Credentials),
					fmt.Sprintf("%d in time, 0 waits", r.Credentials), fmt.Sprintf("%d in time, %d waits", r.InTime, r.Waits),
					r.InTime == r.Credentials && r.Waits == 0)
			} else {
				add(fmt.Sprintf("pacing at %d/s (too low for %d credentials): the shortfall is reported", r.Rate, r.Credentials),
					"queue behind > 0", fmt.Sprintf("max %.1f s behind, %d queued", r.MaxBehindS, r.MaxQueued), r.MaxBehindS > 0)
			}
			add(fmt.Sprintf("pacing at %d/s: the IdP never sees more than %d requests in a second", r.Rate, r.Rate),
				fmt.Sprintf("<= %d/s", r.Rate), fmt.Sprintf("%d/s (%d answered 429)", r.IdPMaxPerS, r.IdP429), r.IdPMaxPerS <= r.Rate)
		}
	}
	return ts
}

// WriteTable prints the report for people.
func (rep *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format+"\n", args...) }
	m := rep.Machine
	p("tokenbroker bench (%s): %s %s/%s, %d CPUs, GOMAXPROCS %d, load average %.1f -> %.1f; medians of %d rounds; %.0f s",
		rep.Mode, m.GoVersion, m.OS, m.Arch, m.CPUs, m.GOMAXPROCS, m.LoadAverage[0], m.LoadAverage[1], rep.Rounds, rep.ElapsedS)
	p("replicas as cmd/broker builds them in Redis mode: records sealed, bearer-key callers, per-client limit, audit trail, metrics")
	section := 0
	head := func(format string, args ...any) {
		section++
		p("")
		p("%d. "+format, append([]any{section}, args...)...)
	}
	if len(rep.Throughput) > 0 {
		head("cached GetToken vs gRPC floor\tcalls/s\tp50 ms\tp99 ms\tCPU µs/call\tratio (per round)")
		writeThroughput(p, rep.Throughput)
	}
	if k := rep.SDK; k != nil {
		head("SDK cached Token()\tns/op\tallocs/op\tparallel ns/op")
		p("   clientsdk TokenSource\t%.1f\t%.3f\t%.1f", k.TokenSourceNs, k.TokenSourceAllocs, k.TokenSourceParallelNs)
		p("   oauth2 ReuseTokenSource\t%.1f\t%.3f\t%.1f", k.ReuseNs, k.ReuseAllocs, k.ReuseParallelNs)
	}
	if s := rep.Storm; s != nil {
		head("refresh storm\t%d callers, %d replicas, IdP %.0f ms", s.Callers, s.Replicas, s.IdPLatencyMs)
		p("   IdP calls per round\t%s (reuses %d)", joinInts(s.IdPCalls), s.Reuses)
		p("   Redis commands per storm\t%d", s.RedisCommands)
		p("   latency p50 / p99\t%.1f / %.1f ms", s.LatencyP50Ms, s.LatencyP99Ms)
		p("   beyond the IdP's own, p50 / p99\t%.1f / %.1f ms\t(fan-out floor %.1f / %.1f)", s.ExcessP50Ms, s.ExcessP99Ms, s.FloorExcessP50Ms, s.FloorExcessP99Ms)
		p("     until the refresh reached the IdP\t%.1f ms\t(fan-out floor: first call in after %.1f)", s.ToIdPMs, s.FloorToIdPMs)
		p("     after the IdP answered, p50 / p99\t%.1f / %.1f ms\t(fan-out floor %.1f / %.1f)", s.AfterP50Ms, s.AfterP99Ms, s.FloorAfterP50Ms, s.FloorAfterP99Ms)
	}
	if c := rep.Scale; c != nil {
		head("scale\t%d credentials", c.Credentials)
		p("   loaded into Redis\t%.1f s, %.0f credentials/s (%s)", c.SeedS, c.SeedPerS, c.SeedMethod)
		p("   Redis memory per credential\t%.0f bytes (used_memory %.0f MB)", c.RedisBytesPerCredential, c.RedisUsedMB)
		p("   cold replica: creation to first token\t%.1f ms", c.ColdFirstTokenMs)
		p("   cold replica: first GetToken of %d random credentials\tp50 %.2f / p99 %.2f / max %.2f ms", c.ColdGets.Calls, c.ColdGets.P50Ms, c.ColdGets.P99Ms, c.ColdGets.MaxMs)
		p("   a replica caches them all\t%.1f s, %.0f credentials/s", c.CacheS, c.CachePerS)
		p("   broker memory per cached credential\t%.0f bytes (process heap %.0f MB)", c.BytesPerCredential, c.HeapMB)
		p("   ListCredentials of all, %d a page\t%.1f s, %d pages, %.0f credentials/s", c.ListPage, c.ListS, c.ListPages, c.ListPerS)
		p("   cached GetToken over %d credentials\tcalls/s\tp50 ms\tp99 ms\tCPU µs/call\tratio (per round)", c.WorkingSet)
		writeThroughput(p, c.WorkingSetThroughput)
		p("   Redis commands per cached GetToken\t%.3f", c.RedisCommandsPerGet)
	}
	if g := rep.Growth; g != nil {
		head("cost growth\tcredentials\treplicas\tCPU µs/call\tcalls/s\tbroker B/credential\tbroker heap MB\tRedis B/credential\tRedis cmds/cached call\tRedis cmds/refresh")
		for _, r := range g.Rows {
			p("   \t%d\t%d\t%.1f\t%.0f\t%.0f\t%.1f\t%.0f\t%.3f\t%d", r.Credentials, r.Replicas, r.CPUUsPerCall, r.CallsPerS,
				r.BrokerBytesPerCredential, r.BrokerHeapMB, r.RedisBytesPerCredential, r.RedisCommandsPerCall, r.RedisCommandsPerRefresh)
		}
		for _, f := range g.Findings {
			p("   %s", f)
		}
	}
	if pc := rep.Pacing; pc != nil && len(pc.Runs) > 0 {
		r0 := pc.Runs[0]
		head("refresh-ahead paced at the IdP\t%d credentials on %d replicas expiring within %.0f s, --refresh-ahead %.0f s (needs about %.0f/s)",
			r0.Credentials, r0.Replicas, r0.WindowS, r0.AheadS, r0.NeededPerS)
		p("   IdP limit = --idp-rate\tin time\tlate\tnever\twaits\tfailed calls\texpired callers p50/p99/max ms\tIdP requests (429)\tIdP max/s\tmax queued\tmax behind s")
		for _, r := range pc.Runs {
			p("   %d/s\t%d\t%d\t%d\t%d\t%d of %d\t%d: %.1f / %.1f / %.1f\t%d (%d)\t%d\t%d\t%.1f", r.Rate, r.InTime, r.Late, r.Never, r.Waits,
				r.Failed, r.Calls, r.ExpiredCalls.Calls, r.ExpiredCalls.P50Ms, r.ExpiredCalls.P99Ms, r.ExpiredCalls.MaxMs,
				r.IdPRequests, r.IdP429, r.IdPMaxPerS, r.MaxQueued, r.MaxBehindS)
		}
	}
	p("")
	p("targets")
	for _, t := range rep.Targets {
		mark := "MET"
		if !t.Met {
			mark = "NOT MET"
		}
		p("   %s\t%s\t(want %s, got %s)", t.Name, mark, t.Want, t.Got)
	}
	return tw.Flush()
}

func writeThroughput(p func(string, ...any), ts []Throughput) {
	for _, t := range ts {
		p("   broker, %d concurrent\t%.0f\t%.3f\t%.3f\t%.1f\t%.3f (%s); p99 ratio %.3f (pairs' median; rounds %s)", t.Concurrency, t.Broker.CallsPerSec, t.Broker.P50Ms, t.Broker.P99Ms, t.Broker.CPUUs,
			t.Ratio, joinFloats(t.RoundRatios), t.P99Ratio, joinFloats(t.RoundP99Ratio))
		p("   floor,  %d concurrent\t%.0f\t%.3f\t%.3f\t%.1f\tCPU ratio %.3f, broker's own %.1f µs/call, Redis commands/call %.3f", t.Concurrency, t.Floor.CallsPerSec, t.Floor.P50Ms, t.Floor.P99Ms, t.Floor.CPUUs,
			t.CPURatio, t.OverheadUs, t.RedisCommandsPerCall)
	}
}

// progressStart is when the first progress line was written.
var progressStart = sync.OnceValue(time.Now)

func progress(cfg *Config, format string, args ...any) {
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "bench: %5.0fs "+format+"\n", append([]any{time.Since(progressStart()).Seconds()}, args...)...)
	}
}

func ms(d time.Duration) float64 { return round3(float64(d) / float64(time.Millisecond)) }

func us(d time.Duration) float64 { return round1(float64(d) / float64(time.Microsecond)) }

func round1(x float64) float64 { return math.Round(x*10) / 10 }

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

func joinInts(xs []int64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}

func joinFloats(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(s, ", ")
}
