package loadbench

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// tiny is the smoke configuration cut down further, so that the whole run
// stays well under the test budget with the race detector on.
func tiny() Config {
	cfg := Smoke()
	cfg.Mode = "test"
	cfg.Concurrency = []int{4, 16}
	cfg.Conns = 2
	cfg.Warmup = 20 * time.Millisecond
	cfg.Duration = 100 * time.Millisecond
	cfg.StormCallers = 60
	cfg.SDKDuration = 20 * time.Millisecond
	cfg.Credentials = 60
	cfg.Workers = 8
	cfg.WorkingSet = 30
	cfg.ColdSamples = 20
	cfg.ListPage = 25
	cfg.GrowthSizes = []int{1, 60}
	cfg.GrowthReplicas = []int{1, 2}
	cfg.GrowthReplicaSize = 20
	cfg.GrowthDuration = 50 * time.Millisecond
	cfg.PacingCredentials = 30
	cfg.PacingRates = []int{100, 5}
	return cfg
}

func needRedis(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not in PATH")
	}
}

// TestRunEndToEnd runs every measurement with tiny sizes and checks what
// does not depend on timing: that each produced its figures, the
// invariants the storm must keep, and that the report prints and
// marshals. Timings are not asserted.
func TestRunEndToEnd(t *testing.T) {
	needRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	cfg := tiny()
	cfg.Progress = &progress
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}

	if len(rep.Throughput) != len(cfg.Concurrency) {
		t.Fatalf("throughput at %d concurrencies, want %d", len(rep.Throughput), len(cfg.Concurrency))
	}
	for _, tp := range rep.Throughput {
		if tp.Broker.Calls == 0 || tp.Floor.Calls == 0 || tp.Ratio <= 0 || len(tp.RoundRatios) != cfg.Rounds {
			t.Errorf("throughput at %d: %+v", tp.Concurrency, tp)
		}
	}

	s := rep.Storm
	if s == nil {
		t.Fatal("no storm")
	}
	if len(s.IdPCalls) != cfg.Rounds {
		t.Fatalf("storm rounds = %d, want %d", len(s.IdPCalls), cfg.Rounds)
	}
	for _, n := range s.IdPCalls {
		// One refresh serves the storm; a background refresh may follow
		// on a slow machine, but never a reuse of a refresh token.
		if n < 1 {
			t.Errorf("IdP calls in a storm round = %d", n)
		}
	}
	if s.Reuses != 0 {
		t.Errorf("refresh token reuses = %d", s.Reuses)
	}
	if s.LatencyP99Ms < s.IdPLatencyMs || s.FloorExcessP99Ms == 0 {
		t.Errorf("storm: %+v", s)
	}

	if rep.SDK == nil {
		t.Fatal("no SDK figures")
	}
	if rep.SDK.TokenSourceNs <= 0 || rep.SDK.ReuseNs <= 0 {
		t.Errorf("sdk: %+v", rep.SDK)
	}
	if rep.SDK.TokenSourceBrokerCalls != 0 {
		t.Errorf("the cached TokenSource called the broker %d times", rep.SDK.TokenSourceBrokerCalls)
	}

	c := rep.Scale
	if c == nil || c.Credentials != cfg.Credentials || c.ColdFirstTokenMs <= 0 || c.ColdGets.Calls != cfg.ColdSamples ||
		c.ListRecords != cfg.Credentials || c.ListPages != 3 || c.WorkingSet != cfg.WorkingSet ||
		len(c.WorkingSetThroughput) != len(cfg.Concurrency) || c.RedisBytesPerCredential <= 0 {
		t.Errorf("scale: %+v", c)
	}
	if c != nil && c.RedisCommandsPerGet != 0 {
		t.Errorf("Redis commands per cached GetToken = %v, want 0", c.RedisCommandsPerGet)
	}
	if g := rep.Growth; g == nil || len(g.Rows) != 4 || len(g.Findings) == 0 {
		t.Errorf("growth: %+v", g)
	} else {
		for _, r := range g.Rows {
			if r.CPUUsPerCall <= 0 || r.RedisCommandsPerRefresh <= 0 || r.RedisCommandsPerCall != 0 {
				t.Errorf("growth row %+v", r)
			}
		}
	}
	if p := rep.Pacing; p == nil || len(p.Runs) != 2 {
		t.Errorf("pacing: %+v", p)
	} else {
		for _, r := range p.Runs {
			if r.InTime+r.Late+r.Never != r.Credentials || r.IdPRefreshes == 0 || r.Calls == 0 {
				t.Errorf("pacing run %+v", r)
			}
		}
	}

	if len(rep.Targets) != 2*len(cfg.Concurrency)+2+2+3+len(cfg.Concurrency)+1+2*2 {
		t.Errorf("%d targets: %+v", len(rep.Targets), rep.Targets)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1. cached GetToken", "2. SDK", "3. refresh storm", "4. scale", "5. cost growth", "6. refresh-ahead paced", "targets"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Storm == nil || back.Storm.Callers != cfg.StormCallers || len(back.Throughput) != len(rep.Throughput) || back.Growth == nil {
		t.Errorf("JSON round trip lost figures: %s", b)
	}
	if !strings.Contains(progress.String(), "s storm: ") {
		t.Errorf("no progress lines: %q", progress.String())
	}
}

func TestProfile(t *testing.T) {
	needRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, floor := range []bool{false, true} {
		var cpu, allocs bytes.Buffer
		l, err := Profile(ctx, tiny(), 200*time.Millisecond, floor, &cpu, &allocs)
		if err != nil {
			t.Fatal(err)
		}
		if l.Calls == 0 || cpu.Len() == 0 || allocs.Len() == 0 {
			t.Fatalf("floor %v: calls %d, cpu profile %d bytes, allocs profile %d bytes", floor, l.Calls, cpu.Len(), allocs.Len())
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, cfg := range []Config{Full(), ScaleRun(), Smoke(), tiny()} {
		if err := cfg.validate(); err != nil {
			t.Errorf("%s: %v", cfg.Mode, err)
		}
	}
	for name, mutate := range map[string]func(*Config){
		"rounds":      func(c *Config) { c.Rounds = 0 },
		"concurrency": func(c *Config) { c.Concurrency = []int{50, 0} },
		"slices":      func(c *Config) { c.Slices = 0 },
		"ttl":         func(c *Config) { c.StormTokenTTL = 500 * time.Millisecond },
		"credentials": func(c *Config) { c.Credentials = 1 },
		"step":        func(c *Config) { c.Steps = []string{"nope"} },
		"growth size": func(c *Config) { c.GrowthSizes = []int{c.Credentials + 1} },
		"pacing":      func(c *Config) { c.PacingAhead = time.Second },
	} {
		cfg := Smoke()
		mutate(&cfg)
		if err := cfg.validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
		if _, err := Run(context.Background(), cfg); err == nil {
			t.Errorf("%s: Run did not refuse", name)
		}
	}
}
