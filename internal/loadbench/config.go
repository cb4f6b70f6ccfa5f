package loadbench

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// The measurements Run can make, in the order it makes them; Config.Steps
// picks some.
const (
	StepThroughput = "throughput" // cached GetToken against the gRPC floor
	StepSDK        = "sdk"        // clientsdk's cached Token against x/oauth2
	StepStorm      = "storm"      // a refresh storm over replicas sharing Redis
	StepScale      = "scale"      // many credentials in Redis
	StepGrowth     = "growth"     // how costs grow with credentials and replicas
	StepPacing     = "pacing"     // refresh-ahead of tokens expiring together, paced
)

// AllSteps lists every step in the order Run makes them.
var AllSteps = []string{StepThroughput, StepSDK, StepStorm, StepScale, StepGrowth, StepPacing}

// Config sizes a benchmark run. Full, ScaleRun and Smoke return the
// standard ones.
type Config struct {
	// Mode names the configuration in the report.
	Mode string
	// Steps are the measurements to make (Step* names), made in the order
	// of AllSteps whatever their order here; empty means all.
	Steps []string
	// Rounds is how many times each timed figure is measured; the report
	// gives the median.
	Rounds int

	// Concurrency lists the numbers of concurrent calls the throughput
	// comparison runs at.
	Concurrency []int
	// Conns is the number of client connections the load client spreads
	// its calls over, per server.
	Conns int
	// A round of the comparison is Slices pairs of load runs, one on each
	// server. Warmup and Duration are the unmeasured and measured parts of
	// one load run; MaxCalls bounds the calls one run measures.
	Slices           int
	Warmup, Duration time.Duration
	MaxCalls         int64

	// StormCallers concurrent GetToken calls on an expired token, spread
	// over StormReplicas replicas; the IdP answers after IdPLatency and
	// issues tokens that live StormTokenTTL (the benchmark waits that long
	// between rounds for the token to expire).
	StormCallers  int
	StormReplicas int
	IdPLatency    time.Duration
	StormTokenTTL time.Duration

	// SDKDuration is how long each SDK figure is measured per round.
	SDKDuration time.Duration

	// Credentials is the number of credentials of the scale measurement,
	// loaded into Redis directly (redisstore's Import, sealed, with valid
	// tokens) rather than refreshed at the IdP one by one; Workers
	// concurrent calls make a replica cache them all.
	Credentials int
	Workers     int
	// WorkingSet is how many distinct credentials (at most Credentials)
	// the cached GetToken throughput of the scale measurement spreads its
	// calls over; ColdSamples how many random credentials a cold replica
	// serves one by one; ListPage the page size of the full
	// ListCredentials pass.
	WorkingSet  int
	ColdSamples int
	ListPage    int

	// GrowthSizes are the numbers of credentials (at most Credentials) the
	// cost growth table has a row for, on one replica; GrowthReplicas the
	// numbers of replicas it has a row for, each caching GrowthReplicaSize
	// credentials. GrowthDuration is how long each row's load runs, per
	// round.
	GrowthSizes       []int
	GrowthReplicas    []int
	GrowthReplicaSize int
	GrowthDuration    time.Duration

	// The pacing measurement: PacingCredentials credentials on
	// PacingReplicas replicas, whose tokens all expire within PacingWindow
	// and are refreshed ahead of expiry from PacingAhead before it, at an
	// IdP that answers 429 beyond a rate; one run for each of PacingRates
	// (refreshes per second, the IdP's limit and --idp-rate alike).
	PacingCredentials int
	PacingReplicas    int
	PacingWindow      time.Duration
	PacingAhead       time.Duration
	PacingRates       []int

	// Progress, when set, receives a line as each step begins.
	Progress io.Writer
}

// Full is make bench's configuration: the cached path against the floor,
// the SDK, the storm, and 100,000 credentials; about four minutes on a
// 2-core machine.
func Full() Config {
	return Config{
		Mode:          "full",
		Steps:         []string{StepThroughput, StepSDK, StepStorm, StepScale},
		Rounds:        5,
		Concurrency:   []int{50, 200},
		Conns:         4,
		Slices:        8,
		Warmup:        100 * time.Millisecond,
		Duration:      500 * time.Millisecond,
		MaxCalls:      10_000_000,
		StormCallers:  1000,
		StormReplicas: 3,
		IdPLatency:    50 * time.Millisecond,
		StormTokenTTL: 3 * time.Second,
		SDKDuration:   time.Second,
		Credentials:   100_000,
		Workers:       64,
		WorkingSet:    100_000,
		ColdSamples:   1000,
		ListPage:      1000,
	}
}

// ScaleRun is make bench-scale's configuration: 1,000,000 credentials,
// the cost growth table, and refresh-ahead paced at the IdP's rate; under
// ten minutes on a 2-core machine.
func ScaleRun() Config {
	cfg := Full()
	cfg.Mode = "scale"
	cfg.Steps = []string{StepScale, StepGrowth, StepPacing}
	cfg.Rounds = 3
	cfg.Credentials = 1_000_000
	cfg.GrowthSizes = []int{1, 1000, 100_000, 1_000_000}
	cfg.GrowthReplicas = []int{1, 2, 3}
	cfg.GrowthReplicaSize = 100_000
	cfg.GrowthDuration = time.Second
	cfg.PacingCredentials = 5000
	cfg.PacingReplicas = 3
	cfg.PacingWindow = 10 * time.Second
	cfg.PacingAhead = 20 * time.Second
	cfg.PacingRates = []int{1000, 100}
	return cfg
}

// Smoke is a run of every step with tiny sizes and one round, to show that
// the benchmark still works; its figures mean little.
func Smoke() Config {
	return Config{
		Mode:              "smoke",
		Rounds:            1,
		Concurrency:       []int{50, 200},
		Conns:             4,
		Slices:            1,
		Warmup:            100 * time.Millisecond,
		Duration:          300 * time.Millisecond,
		MaxCalls:          1_000_000,
		StormCallers:      200,
		StormReplicas:     3,
		IdPLatency:        50 * time.Millisecond,
		StormTokenTTL:     2 * time.Second,
		SDKDuration:       100 * time.Millisecond,
		Credentials:       2000,
		Workers:           16,
		WorkingSet:        1000,
		ColdSamples:       100,
		ListPage:          500,
		GrowthSizes:       []int{1, 2000},
		GrowthReplicas:    []int{1, 2},
		GrowthReplicaSize: 1000,
		GrowthDuration:    200 * time.Millisecond,
		PacingCredentials: 40,
		PacingReplicas:    2,
		PacingWindow:      time.Second,
		PacingAhead:       4 * time.Second,
		PacingRates:       []int{100, 10},
	}
}

// runs reports whether cfg makes step.
func (c *Config) runs(step string) bool {
	return len(c.Steps) == 0 || slices.Contains(c.Steps, step)
}

// validate reports the first setting Run cannot work with.
func (c *Config) validate() error {
	for _, s := range c.Steps {
		if !slices.Contains(AllSteps, s) {
			return fmt.Errorf("loadbench: unknown step %q (steps: %v)", s, AllSteps)
		}
	}
	switch {
	case c.Rounds < 1:
		return errors.New("loadbench: Rounds must be at least 1")
	case len(c.Concurrency) == 0:
		return errors.New("loadbench: Concurrency is empty")
	case c.Conns < 1 || c.Slices < 1:
		return errors.New("loadbench: Conns and Slices must be at least 1")
	case c.Duration <= 0 || c.Warmup < 0 || c.MaxCalls < 1:
		return errors.New("loadbench: load runs need a positive Duration and MaxCalls")
	}
	for _, n := range c.Concurrency {
		if n < 1 {
			return errors.New("loadbench: every Concurrency must be at least 1")
		}
	}
	if c.runs(StepStorm) {
		switch {
		case c.StormCallers < 1 || c.StormReplicas < 1:
			return errors.New("loadbench: the storm needs callers and replicas")
		case c.StormTokenTTL < time.Second:
			return errors.New("loadbench: StormTokenTTL must be at least 1s (the IdP's expires_in is whole seconds)")
		}
	}
	if c.runs(StepSDK) && c.SDKDuration <= 0 {
		return errors.New("loadbench: SDKDuration must be positive")
	}
	if c.runs(StepScale) || c.runs(StepGrowth) {
		switch {
		case c.Credentials < 2 || c.Workers < 1:
			return errors.New("loadbench: the scale measurement needs at least 2 credentials and 1 worker")
		case c.WorkingSet < 1 || c.ColdSamples < 1 || c.ListPage < 1:
			return errors.New("loadbench: WorkingSet, ColdSamples and ListPage must be at least 1")
		}
	}
	if c.runs(StepGrowth) {
		if len(c.GrowthSizes) == 0 || len(c.GrowthReplicas) == 0 || c.GrowthDuration <= 0 {
			return errors.New("loadbench: the growth table needs sizes, replica counts and a duration")
		}
		for _, n := range c.GrowthSizes {
			if n < 1 || n > c.Credentials {
				return fmt.Errorf("loadbench: growth size %d is not within 1 to Credentials (%d)", n, c.Credentials)
			}
		}
		for _, n := range c.GrowthReplicas {
			if n < 1 {
				return errors.New("loadbench: every GrowthReplicas must be at least 1")
			}
		}
		if c.GrowthReplicaSize < 1 || c.GrowthReplicaSize > c.Credentials {
			return errors.New("loadbench: GrowthReplicaSize must be within 1 to Credentials")
		}
	}
	if c.runs(StepPacing) {
		switch {
		case c.PacingCredentials < 1 || c.PacingReplicas < 1 || len(c.PacingRates) == 0:
			return errors.New("loadbench: the pacing measurement needs credentials, replicas and rates")
		case c.PacingWindow <= 0 || c.PacingAhead < 2*pacingMinValid:
			return fmt.Errorf("loadbench: PacingWindow must be positive and PacingAhead at least %v", 2*pacingMinValid)
		}
		for _, r := range c.PacingRates {
			if r < 1 {
				return errors.New("loadbench: every PacingRates must be at least 1")
			}
		}
	}
	return nil
}
