package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/loadbench"
)

// Where the report goes unless --json says otherwise: make bench's, and
// make bench-scale's.
const (
	DefaultJSON      = "bench/results/latest.json"
	DefaultScaleJSON = "bench/results/scale.json"
)

type options struct {
	smoke      bool
	scale      bool
	steps      string
	strict     bool
	jsonPath   string
	cpuProfile string
	memProfile string
	profileFor time.Duration
	floor      bool
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&o.smoke, "smoke", false, "run every step with tiny sizes and one round (about 10 s); the figures mean little")
	fs.BoolVar(&o.scale, "scale", false, "make bench-scale's run instead: 1,000,000 credentials, the cost growth table, paced refresh-ahead (under ten minutes)")
	fs.StringVar(&o.steps, "steps", "", "comma-separated steps to run instead of the mode's ("+strings.Join(loadbench.AllSteps, ", ")+")")
	fs.BoolVar(&o.strict, "strict", false, "exit 1 when a target is not met")
	fs.StringVar(&o.jsonPath, "json", "auto", "write the report as JSON to this file (\"\" for none; auto: "+DefaultJSON+", or "+DefaultScaleJSON+" with --scale)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "instead of the benchmark, profile cached GetToken calls and write the CPU profile here")
	fs.StringVar(&o.memProfile, "memprofile", "", "instead of the benchmark, profile cached GetToken calls and write the allocation profile here")
	fs.BoolVar(&o.floor, "profile-floor", false, "with --cpuprofile or --memprofile: profile the same calls to the bare gRPC floor instead, to compare with")
	fs.DurationVar(&o.profileFor, "profile-duration", 10*time.Second, "how long --cpuprofile and --memprofile drive calls")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: bench [flags]\n\nMeasures tokenbroker on this machine against the targets of issues 6 and 13.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.profileFor <= 0 {
		return nil, errors.New("--profile-duration must be positive")
	}
	if o.smoke && o.scale {
		return nil, errors.New("--smoke and --scale do not go together")
	}
	if o.jsonPath == "auto" {
		o.jsonPath = DefaultJSON
		if o.scale {
			o.jsonPath = DefaultScaleJSON
		}
	}
	return &o, nil
}

// run runs the command and returns its exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 2
	}
	cfg := loadbench.Full()
	switch {
	case o.smoke:
		cfg = loadbench.Smoke()
	case o.scale:
		cfg = loadbench.ScaleRun()
	}
	if o.steps != "" {
		cfg.Steps = strings.Split(o.steps, ",")
	}
	cfg.Progress = stderr
	if o.cpuProfile != "" || o.memProfile != "" {
		err = profile(ctx, cfg, o, stdout)
	} else {
		err = bench(ctx, cfg, o, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	return 0
}

func bench(ctx context.Context, cfg loadbench.Config, o *options, stdout io.Writer) error {
	rep, err := loadbench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if err := rep.WriteTable(stdout); err != nil {
		return err
	}
	if o.jsonPath != "" {
		if err := writeJSON(o.jsonPath, rep); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "\nreport written to %s\n", o.jsonPath)
	}
	if o.strict && !rep.AllMet() {
		return errors.New("--strict: not every target was met")
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func profile(ctx context.Context, cfg loadbench.Config, o *options, stdout io.Writer) (err error) {
	create := func(path string) (*os.File, error) {
		if path == "" {
			return nil, nil
		}
		return os.Create(path)
	}
	cpu, err := create(o.cpuProfile)
	if err != nil {
		return err
	}
	mem, err := create(o.memProfile)
	if err != nil {
		if cpu != nil {
			cpu.Close()
		}
		return err
	}
	var cpuW, memW io.Writer
	if cpu != nil {
		cpuW = cpu
		defer func() { err = errors.Join(err, cpu.Close()) }()
	}
	if mem != nil {
		memW = mem
		defer func() { err = errors.Join(err, mem.Close()) }()
	}
	l, err := loadbench.Profile(ctx, cfg, o.profileFor, o.floor, cpuW, memW)
	if err != nil {
		return err
	}
	what := "cached GetToken"
	if o.floor {
		what = "gRPC floor"
	}
	fmt.Fprintf(stdout, "profiled %d concurrent %s calls for %s: %.0f calls/s, p50 %.3f ms, p99 %.3f ms, %d calls, %.1f µs CPU per call\n",
		cfg.Concurrency[0], what, o.profileFor, l.CallsPerSec, l.P50Ms, l.P99Ms, l.Calls, l.CPUUs)
	for _, p := range []string{o.cpuProfile, o.memProfile} {
		if p != "" {
			fmt.Fprintf(stdout, "profile written to %s (go tool pprof -top %s)\n", p, p)
		}
	}
	return nil
}
