package loadbench

import (
	"errors"
	"io"
	"time"
)

// Config sizes a benchmark run. Full and Smoke return the two standard
// ones.
type Config struct {
	// Mode names the configuration in the report.
	Mode string
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
	// seeded and warmed by Workers concurrent calls.
	Credentials int
	Workers     int

	// Progress, when set, receives a line as each step begins.
	Progress io.Writer
}

// Full is make bench's configuration: the sizes, 3 rounds of
// everything timed, about two minutes on a 2-core machine.
func Full() Config {
	return Config{
		Mode:          "full",
		Rounds:        3,
		Concurrency:   []int{50, 200},
		Conns:         4,
		Slices:        4,
		Warmup:        250 * time.Millisecond,
		Duration:      time.Second,
		MaxCalls:      10_000_000,
		StormCallers:  1000,
		StormReplicas: 3,
		IdPLatency:    50 * time.Millisecond,
		StormTokenTTL: 3 * time.Second,
		SDKDuration:   time.Second,
		Credentials:   10_000,
		Workers:       64,
	}
}

// Smoke is a run of every step with tiny sizes and one round, to show that
// the benchmark still works; its figures mean little.
func Smoke() Config {
	return Config{
		Mode:          "smoke",
		Rounds:        1,
		Concurrency:   []int{50, 200},
		Conns:         4,
		Slices:        1,
		Warmup:        100 * time.Millisecond,
		Duration:      300 * time.Millisecond,
		MaxCalls:      1_000_000,
		StormCallers:  200,
		StormReplicas: 3,
		IdPLatency:    50 * time.Millisecond,
		StormTokenTTL: 2 * time.Second,
		SDKDuration:   100 * time.Millisecond,
		Credentials:   100,
		Workers:       16,
	}
}

// validate reports the first setting Run cannot work with.
func (c *Config) validate() error {
	switch {
	case c.Rounds < 1:
		return errors.New("loadbench: Rounds must be at least 1")
	case len(c.Concurrency) == 0:
		return errors.New("loadbench: Concurrency is empty")
	case c.Conns < 1 || c.Slices < 1:
		return errors.New("loadbench: Conns and Slices must be at least 1")
	case c.Duration <= 0 || c.Warmup < 0 || c.MaxCalls < 1:
		return errors.New("loadbench: load runs need a positive Duration and MaxCalls")
	case c.StormCallers < 1 || c.StormReplicas < 1:
		return errors.New("loadbench: the storm needs callers and replicas")
	case c.StormTokenTTL < time.Second:
		return errors.New("loadbench: StormTokenTTL must be at least 1s (the IdP's expires_in is whole seconds)")
	case c.SDKDuration <= 0:
		return errors.New("loadbench: SDKDuration must be positive")
	case c.Credentials < 2 || c.Workers < 1:
		return errors.New("loadbench: the scale measurement needs at least 2 credentials and 1 worker")
	}
	for _, n := range c.Concurrency {
		if n < 1 {
			return errors.New("loadbench: every Concurrency must be at least 1")
		}
	}
	return nil
}
