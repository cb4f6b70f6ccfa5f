// Command broker serves tokenbroker's gRPC API: it holds upstream OAuth2
// credentials, spends each refresh token once however many callers ask, and
// hands out access tokens (tokenbroker.v1 TokenService and AdminService,
// grpc.health.v1 and server reflection).
//
// Configuration comes from flags and their TOKENBROKER_* environment twins
// (see broker --help) and is validated before anything starts: bad
// configuration exits with status 2 and a one-line message on stderr.
// Without --redis-url the broker runs in dev mode: one replica, an in-memory
// store. With --redis-url, every replica sharing the Redis (and
// --redis-prefix) shares the credentials and refreshes each one once; records
// are sealed with --seal-keys. Caller authentication is not configurable
// yet: every caller may read every credential and call the admin methods.
//
// The broker logs to stderr with log/slog. Once it accepts calls it logs
// "listening" with the gRPC address in the addr attribute; with
// --grpc-addr 127.0.0.1:0 that is how a script or a test learns the port
// (with --log-format json: the line {"msg":"listening","addr":"127.0.0.1:PORT",...}).
//
// SIGTERM or SIGINT turns health NOT_SERVING, lets calls in flight finish for
// up to --shutdown-timeout, stops the broker's background refreshes and exits
// 0. A second signal kills the process at once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/grpcapi"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
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
	var ce *configError
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
	if err != nil {
		return err
	}
	return run(ctx, cfg, newLogger(cfg, stderr))
}

func newLogger(cfg *Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: logLevels[cfg.LogLevel]}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(h)
}

// run wires the broker from a valid cfg and serves until ctx ends.
func run(ctx context.Context, cfg *Config, log *slog.Logger) error {
	var seeds []seedCredential
	if cfg.CredentialsFile != "" {
		var err error
		if seeds, err = loadCredentials(ctx, cfg.CredentialsFile); err != nil {
			return err
		}
	}

	store, closeStore, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeStore()
	b, err := broker.New(store, &upstream.Client{}, cfg.Broker())
	if err != nil {
		return badConfig("%v", err)
	}
	defer b.Close() // waits for refreshes in flight to be stored
	if err := seedCredentials(ctx, b, seeds); err != nil {
		return err
	}
	if cfg.CredentialsFile != "" {
		log.Info("credentials file loaded", "file", cfg.CredentialsFile, "credentials", len(seeds))
	}

	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("gRPC listener: %w", err)
	}
	srv := grpcapi.NewServer(b, grpcapi.Options{Logger: log, MaxRecvMsgSize: cfg.MaxRecvMsgSize})
	grpcDone := make(chan error, 1)
	go func() { grpcDone <- srv.Serve(lis) }()

	var serving atomic.Bool
	serving.Store(true)
	var metrics *http.Server
	metricsDone := make(chan error, 1)
	if cfg.MetricsAddr != "" {
		mlis, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			_ = srv.Shutdown(ctx) // nothing is in flight yet
			<-grpcDone
			return fmt.Errorf("metrics listener: %w", err)
		}
		metrics = &http.Server{Handler: httpMux(&serving), ReadHeaderTimeout: 5 * time.Second}
		go func() { metricsDone <- metrics.Serve(mlis) }()
		log.Info("metrics listening", "addr", mlis.Addr().String())
	}
	log.Info("listening", "addr", lis.Addr().String(), "dev_mode", cfg.DevMode())

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-grpcDone:
		serveErr = fmt.Errorf("gRPC server: %w", serveErr)
		grpcDone <- nil
	case serveErr = <-metricsDone:
		serveErr = fmt.Errorf("metrics server: %w", serveErr)
		metricsDone <- nil
	}

	log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	serving.Store(false)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown deadline reached; calls in flight were cut", "timeout", cfg.ShutdownTimeout)
	}
	<-grpcDone
	if metrics != nil {
		if err := metrics.Shutdown(sctx); err != nil {
			metrics.Close()
		}
		<-metricsDone
	}
	if err := b.Close(); err != nil {
		log.Warn("broker close", "error", err)
	}
	log.Info("stopped")
	return serveErr
}

// openStore returns the broker's Store and how to close it: in memory in dev
// mode, else in Redis. A Redis that does not answer at start is only logged:
// calls fail with UNAVAILABLE until it does, and the broker recovers without
// a restart.
func openStore(ctx context.Context, cfg *Config, log *slog.Logger) (broker.Store, func(), error) {
	if cfg.DevMode() {
		log.Warn("dev mode: single replica, in-memory store (nothing is kept across restarts), no authentication; set --redis-url for production")
		if cfg.SealKeys != "" {
			log.Info("--seal-keys unused in dev mode: nothing is stored outside the process")
		}
		return memstore.New(), func() {}, nil
	}
	log.Warn("no caller authentication: every caller may read every credential and call the admin methods")
	redis.SetLogger(redisLogger{log: log, url: cfg.RedisURL})
	client, err := redisstore.NewClient(cfg.RedisURL)
	if err != nil {
		return nil, nil, badConfig("--redis-url: %v", err)
	}
	opts := redisstore.Options{Prefix: cfg.RedisPrefix, AllowPlaintext: cfg.AllowPlaintext}
	if cfg.SealKeys != "" {
		if opts.Keyring, err = seal.ParseKeyring(cfg.SealKeys); err != nil {
			_ = client.Close()
			return nil, nil, badConfig("--seal-keys: %v", err)
		}
	} else {
		log.Warn("redis mode without --seal-keys: refresh tokens and client secrets are stored unencrypted")
	}
	store, err := redisstore.New(client, opts)
	if err != nil {
		_ = client.Close()
		return nil, nil, badConfig("%v", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := client.Ping(pctx).Err(); err != nil {
		log.Warn("redis does not answer; calls fail with UNAVAILABLE until it does", "error", redactURL(err.Error(), cfg.RedisURL))
	}
	return store, func() {
		_ = store.Close()
		_ = client.Close()
	}, nil
}

// redisLogger sends go-redis's own log lines (failed dials and the like) to
// the broker's log.
type redisLogger struct {
	log *slog.Logger
	url string
}

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, redactURL(fmt.Sprintf(format, v...), l.url), "component", "go-redis")
}

// redactURL removes from msg the secrets a Redis URL may hold: the
// password of its user info and any option whose name mentions a password.
func redactURL(msg, rawURL string) string {
	var secrets []string
	if _, rest, ok := strings.Cut(rawURL, "://"); ok {
		authority, query := rest, ""
		if i := strings.IndexAny(rest, "/?"); i >= 0 {
			authority = rest[:i]
		}
		if _, q, ok := strings.Cut(rest, "?"); ok {
			query = q
		}
		if i := strings.LastIndex(authority, "@"); i >= 0 {
			if _, pw, ok := strings.Cut(authority[:i], ":"); ok {
				secrets = append(secrets, pw)
				if dec, err := url.PathUnescape(pw); err == nil {
					secrets = append(secrets, dec)
				}
			}
		}
		if vals, err := url.ParseQuery(query); err == nil {
			for k, vs := range vals {
				if strings.Contains(strings.ToLower(k), "password") {
					secrets = append(secrets, vs...)
				}
			}
		}
	}
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "REDACTED")
		}
	}
	return msg
}

// httpMux serves the HTTP endpoints of --metrics-addr. For now that is
// /healthz only: 200 while the broker serves, 503 once it shuts down; the
// Prometheus handler is to be mounted on this mux.
func httpMux(serving *atomic.Bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !serving.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "shutting down\n")
			return
		}
		io.WriteString(w, "ok\n")
	})
	return mux
}
