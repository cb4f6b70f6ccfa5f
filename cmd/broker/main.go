package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/server"
	"github.com/tokenbroker/tokenbroker/internal/tracing"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	context.AfterFunc(ctx, stop) // after the first signal, a second one kills
	err := realMain(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode reports err on stderr and returns the process's exit status: 0
// for success and --help, 2 for bad configuration, 1 otherwise.
func exitCode(err error, stderr io.Writer) int {
	var ce *server.ConfigError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ce):
		fmt.Fprintf(stderr, "broker: %v\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "broker: %v\n", err)
	return 1
}

// realMain parses the configuration from args and getenv, then runs the
// broker until ctx ends. --help prints the usage on stdout; logs go to
// stderr.
func realMain(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		printUsage(stdout)
		return err
	}
	if errors.Is(err, errVersion) {
		fmt.Fprintln(stdout, versionLine())
		return nil
	}
	if err != nil {
		return err
	}
	log := cfg.NewLogger(stderr)
	if !cfg.DevMode() {
		redisstore.SetLogger(log, cfg.RedisURL) // go-redis logs once per process
	}
	var gover string
	cfg.Version, cfg.Revision, gover = buildVersion()
	tp, err := tracing.FromEnv(ctx, getenv, cfg.Version)
	if err != nil {
		return &server.ConfigError{Msg: err.Error()}
	}
	if tp != nil {
		tracing.SetGlobal(tp)
		cfg.TracerProvider = tp
		defer func() {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := tp.Shutdown(fctx); err != nil {
				log.Warn("flushing the last spans failed", "error", err.Error())
			}
		}()
		log.Info("tracing on: OTLP export", "endpoint", otlpEndpoint(getenv))
	}
	log.Debug("build", "version", cfg.Version, "revision", cfg.Revision, "goversion", gover)
	srv, err := server.New(ctx, *cfg, log)
	if err != nil {
		return err
	}
	return srv.Serve(ctx)
}

// otlpEndpoint is the OTLP endpoint the environment names, for the log.
func otlpEndpoint(getenv func(string) string) string {
	if e := getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"); e != "" {
		return e
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
}
