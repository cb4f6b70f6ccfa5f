package loadbench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"time"

	"google.golang.org/grpc"

	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// GrowthRow is one row of the cost growth table: a number of credentials
// in Redis, all cached by each of a number of replicas.
type GrowthRow struct {
	Credentials int `json:"credentials"`
	Replicas    int `json:"replicas"`
	// CPUUsPerCall is the process's CPU time (load client and replicas)
	// per cached GetToken through gRPC, the calls spread at random over
	// the credentials and over the replicas, in a window that starts after
	// a full GC: the median over the rounds.
	CPUUsPerCall float64 `json:"cpu_us_per_call"`
	CallsPerS    float64 `json:"calls_per_s"`
	P99Ms        float64 `json:"p99_ms"`
	// BrokerBytesPerCredential is the live heap each replica grew per
	// credential it cached; BrokerHeapMB what all of them grew.
	BrokerBytesPerCredential float64 `json:"broker_bytes_per_credential"`
	BrokerHeapMB             float64 `json:"broker_heap_mb"`
	// RedisBytesPerCredential is Redis's used_memory grown per credential
	// loaded.
	RedisBytesPerCredential float64 `json:"redis_bytes_per_credential"`
	// RedisCommandsPerCall is what the replicas sent Redis per cached call.
	RedisCommandsPerCall float64 `json:"redis_commands_per_call"`
	// RedisCommandsPerRefresh is what every replica sent Redis for one
	// forced refresh of a cached credential, until each served the new
	// token.
	RedisCommandsPerRefresh int64 `json:"redis_commands_per_refresh"`
}

// Growth is the cost growth table: rows by credentials on one replica,
// then by replicas at one number of credentials, and what the figures say
// about how costs grow.
type Growth struct {
	Rows     []GrowthRow `json:"rows"`
	Findings []string    `json:"findings"`
}

// growthSetup is one row's replicas, all caching the row's credentials.
type growthSetup struct {
	row    GrowthRow
	set    *credentialSet
	reps   []*replica
	own    bool // reps are the row's own, to close
	counts *commandCounter
	spec   loadSpec
	conns  []*grpc.ClientConn

	cpu, tput, p99 []float64
	calls          int64
	commands       int64
}

// growth measures the rows of cfg's growth table; rig is the scale
// measurement's, with all of cfg.Credentials cached by rig.cached. Every
// row's replicas are made first, and the rows' load runs then alternate
// round by round, so that what else the machine does weighs on all rows
// alike (all rows share the process, so its heap, too).
func (e *env) growth(ctx context.Context, cfg *Config, rig *scaleRig, sc *Scale) (g Growth, err error) {
	sets := map[int]*credentialSet{cfg.Credentials: rig.full}
	set := func(n int) (*credentialSet, error) {
		if s := sets[n]; s != nil {
			return s, nil
		}
		progress(cfg, "growth: loading %d credentials into Redis", n)
		s, err := e.seed(ctx, cfg, rig.idp, fmt.Sprintf("%s-growth%d", e.runID, n), n)
		if err == nil {
			sets[n] = s
		}
		return s, err
	}
	var setups []*growthSetup
	defer func() {
		for _, st := range setups {
			closePool(st.conns)
			if st.own {
				for _, rep := range st.reps {
					err = errors.Join(err, rep.close())
				}
			}
		}
	}()
	type rowKey struct{ n, r int }
	var order []rowKey // the table's rows; the replica axis may repeat a size row
	sizes := slices.Compact(slices.Sorted(slices.Values(cfg.GrowthSizes)))
	for _, n := range sizes {
		order = append(order, rowKey{n, 1})
	}
	for _, r := range slices.Compact(slices.Sorted(slices.Values(cfg.GrowthReplicas))) {
		order = append(order, rowKey{cfg.GrowthReplicaSize, r})
	}
	byKey := map[rowKey]*growthSetup{}
	for _, k := range order {
		if byKey[k] != nil {
			continue
		}
		s, err := set(k.n)
		if err != nil {
			return g, err
		}
		var st *growthSetup
		if k.n == cfg.Credentials && k.r == 1 {
			// The scale measurement's replica has them all cached.
			st = &growthSetup{set: s, reps: []*replica{rig.cached}, counts: rig.counts}
			st.row.BrokerBytesPerCredential = sc.BytesPerCredential
			st.row.BrokerHeapMB = round1(sc.BytesPerCredential * float64(k.n) / (1 << 20))
		} else if st, err = e.growthReplicas(ctx, cfg, s, k.r); err != nil {
			return g, err
		}
		setups = append(setups, st)
		byKey[k] = st
		st.row.Credentials, st.row.Replicas = k.n, k.r
		st.row.RedisBytesPerCredential = round1(float64(s.redisGrowth) / float64(k.n))
		if err := st.dial(cfg); err != nil {
			return g, err
		}
	}
	for round := range cfg.Rounds {
		progress(cfg, "growth: round %d/%d of %d rows", round+1, cfg.Rounds, len(setups))
		for i := range setups {
			st := setups[(i+round)%len(setups)]
			if err := st.load(e.callerContext(ctx)); err != nil {
				return g, err
			}
		}
	}
	refreshes := 0 // forced refreshes are rate-limited per credential: one credential each
	for _, st := range setups {
		st.finish()
		cost, err := refreshCost(ctx, st.reps, st.counts, st.set.ids[refreshes%refreshable])
		if err != nil {
			return g, err
		}
		st.row.RedisCommandsPerRefresh = cost
		refreshes++
	}
	for _, k := range order {
		g.Rows = append(g.Rows, byKey[k].row)
	}
	g.Findings = findings(g.Rows, len(sizes))
	return g, nil
}

// growthReplicas starts r new replicas that each cache all of s, and
// measures the heap they grew.
func (e *env) growthReplicas(ctx context.Context, cfg *Config, s *credentialSet, r int) (*growthSetup, error) {
	st := &growthSetup{set: s, own: true, counts: &commandCounter{}}
	for range r {
		rep, err := e.startReplica(ctx, replicaOptions{prefix: s.prefix, hook: st.counts})
		if err != nil {
			return st, err
		}
		st.reps = append(st.reps, rep)
	}
	if err := waitSubscribers(ctx, e.rdb, s.prefix+":events", int64(r)); err != nil {
		return st, err
	}
	progress(cfg, "growth: %d replicas cache %d credentials each", r, len(s.ids))
	base := liveHeap()
	for _, rep := range st.reps {
		if err := cacheAll(ctx, rep, s.ids, cfg.Workers); err != nil {
			return st, err
		}
	}
	grown := float64(int64(liveHeap()) - int64(base))
	st.row.BrokerBytesPerCredential = round1(grown / float64(r*len(s.ids)))
	st.row.BrokerHeapMB = round1(grown / (1 << 20))
	return st, nil
}

// dial makes the row's client connections and load spec: cfg.Conns per
// replica, consecutive goroutines on different replicas, calls spread at
// random over the row's credentials.
func (st *growthSetup) dial(cfg *Config) error {
	for _, rep := range st.reps {
		p, err := dialPool(rep.addr, cfg.Conns)
		if err != nil {
			return err
		}
		st.conns = append(st.conns, p...)
	}
	spread := make([]*grpc.ClientConn, 0, len(st.conns))
	for i := range cfg.Conns {
		for r := range st.reps {
			spread = append(spread, st.conns[r*cfg.Conns+i])
		}
	}
	st.spec = loadSpec{conns: spread, concurrency: cfg.Concurrency[0], warmup: cfg.Warmup, duration: cfg.GrowthDuration,
		maxCalls: cfg.MaxCalls, newCall: spreadCall(pb.TokenService_GetToken_FullMethodName, st.set.ids)}
	return nil
}

// load runs one round of the row's load, after a full GC: every row shares
// the process's heap (a million cached credentials among them), and a
// collection of it in one row's window would swamp its per-call figure.
// What the heap costs is in the memory columns; the collector's cost per
// call does not depend on the heap's size (GOGC: a heap twice as large is
// collected half as often).
func (st *growthSetup) load(ctx context.Context) error {
	runtime.GC()
	c0 := st.counts.n.Load()
	res, err := runLoad(ctx, st.spec)
	if err != nil {
		return err
	}
	st.commands += st.counts.n.Load() - c0
	st.cpu, st.tput, st.p99 = append(st.cpu, us(res.CPUPerCall())), append(st.tput, res.PerSecond()), append(st.p99, ms(res.P99()))
	st.calls += res.Calls
	return nil
}

// finish puts the rounds' medians in the row.
func (st *growthSetup) finish() {
	st.row.CPUUsPerCall, st.row.CallsPerS, st.row.P99Ms = median(st.cpu), round1(median(st.tput)), median(st.p99)
	if st.calls > 0 {
		// Warm-up calls count too: an upper bound.
		st.row.RedisCommandsPerCall = round3(float64(st.commands) / float64(st.calls))
	}
}

// refreshCost forces a refresh of id on reps[0] and counts the Redis
// commands every replica sent until each served the new token.
func refreshCost(ctx context.Context, reps []*replica, counts *commandCounter, id string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	reader := readerContext(ctx)
	tok, err := reps[0].Broker().GetToken(reader, id, 0)
	if err != nil {
		return 0, err
	}
	for _, rep := range reps {
		if _, err := rep.Broker().GetToken(reader, id, 0); err != nil {
			return 0, err
		}
	}
	c0 := counts.n.Load()
	if _, err := reps[0].Broker().RefreshCredential(adminContext(ctx), id); err != nil {
		return 0, fmt.Errorf("loadbench: growth: refresh: %w", err)
	}
	for _, rep := range reps {
		for {
			t, err := rep.Broker().GetToken(reader, id, 0)
			if err != nil {
				return 0, err
			}
			if t.AccessToken != tok.AccessToken {
				break
			}
			if err := sleepCtx(ctx, time.Millisecond); err != nil {
				return 0, fmt.Errorf("loadbench: growth: a replica never served the refreshed token: %w", err)
			}
		}
	}
	return counts.n.Load() - c0, nil
}

// findings says, for each figure, how it grew along the table's two axes
// (the first bySize rows by credentials, the rest by replicas), and flags
// what grows faster than it should: a per-call or per-credential cost that
// is not flat, a per-refresh cost that grows faster than the replicas.
func findings(rows []GrowthRow, bySize int) []string {
	var out []string
	size, reps := rows[:bySize], rows[bySize:]
	if len(size) > 1 {
		first, last := size[0], size[len(size)-1]
		out = append(out, flat("CPU per cached call", first.CPUUsPerCall, last.CPUUsPerCall, first.Credentials, last.Credentials, "credentials", 1.5))
		// The first rows' per-credential figures are overhead: compare from
		// the first with at least 1,000 credentials.
		if i := slices.IndexFunc(size, func(r GrowthRow) bool { return r.Credentials >= 10_000 }); i >= 0 && i < len(size)-1 {
			from := size[i]
			out = append(out,
				flat("broker memory per credential", from.BrokerBytesPerCredential, last.BrokerBytesPerCredential, from.Credentials, last.Credentials, "credentials", 1.5),
				flat("Redis memory per credential", from.RedisBytesPerCredential, last.RedisBytesPerCredential, from.Credentials, last.Credentials, "credentials", 1.5))
		}
		out = append(out, flat("Redis commands per refresh", float64(first.RedisCommandsPerRefresh), float64(last.RedisCommandsPerRefresh), first.Credentials, last.Credentials, "credentials", 1.5))
		if last.RedisCommandsPerCall > 0 {
			out = append(out, fmt.Sprintf("FINDING: cached calls send Redis commands (%.3f a call at %d credentials)", last.RedisCommandsPerCall, last.Credentials))
		}
	}
	if len(reps) > 1 {
		first, last := reps[0], reps[len(reps)-1]
		out = append(out, flat("CPU per cached call", first.CPUUsPerCall, last.CPUUsPerCall, first.Replicas, last.Replicas, "replicas", 1.5))
		out = append(out, flat("broker memory per credential per replica", first.BrokerBytesPerCredential, last.BrokerBytesPerCredential, first.Replicas, last.Replicas, "replicas", 1.5))
		// A refresh costs the refreshing replica a fixed number of
		// commands, and each other replica one read once it is told: it
		// should grow linearly with the replicas, not faster.
		f := float64(last.RedisCommandsPerRefresh) / math.Max(float64(first.RedisCommandsPerRefresh), 1)
		k := float64(last.Replicas) / float64(first.Replicas)
		line := fmt.Sprintf("Redis commands per refresh: %d -> %d from %d to %d replicas (x%.2f for x%.0f replicas", first.RedisCommandsPerRefresh, last.RedisCommandsPerRefresh, first.Replicas, last.Replicas, f, k)
		if f > k*1.1 {
			out = append(out, "FINDING: "+line+": faster than linear)")
		} else {
			out = append(out, line+": at most linear)")
		}
	}
	return out
}

// flat describes how a figure that should stay flat went from a (at na)
// to b (at nb), and flags it as a finding beyond tolerance times.
func flat(what string, a, b float64, na, nb int, unit string, tolerance float64) string {
	f := b / math.Max(a, 1e-9)
	line := fmt.Sprintf("%s: %.4g -> %.4g from %d to %d %s (x%.2f", what, a, b, na, nb, unit, f)
	if a == 0 && b == 0 {
		return line[:len(line)-len(fmt.Sprintf(" (x%.2f", f))] + " (flat)"
	}
	if f > tolerance {
		return "FINDING: " + line + ": grows)"
	}
	return line + ": flat)"
}
