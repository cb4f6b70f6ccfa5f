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
// are sealed with --seal-keys.
//
// With --clients-file callers authenticate with a bearer key and/or a client
// certificate (--tls-client-ca), may read only the credentials that list
// them, and need an admin identity for AdminService; InvalidateToken and
// RefreshCredential are limited per client (--client-rate, --client-burst).
// Without it every caller may do everything: dev mode allows that with a
// warning, Redis mode only with --allow-unauthenticated. --tls-cert and
// --tls-key serve TLS. --metrics-addr serves /healthz and Prometheus
// /metrics. Every admin call and every refresh is logged as an audit event
// (audit=true).
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
	"crypto/tls"
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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tokenbroker/tokenbroker/internal/audit"
	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/grpcapi"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
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
	sec, err := loadSecurity(cfg, log)
	if err != nil {
		return err
	}

	var reg *prometheus.Registry
	var m *metrics.Metrics
	auditLog := audit.New(log)
	observers := []broker.Observer{auditLog}
	if cfg.MetricsAddr != "" {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		m = metrics.New(reg, metrics.Options{PerCredentialLabels: cfg.MetricsPerCredential, StateInterval: cfg.MetricsStateInterval})
		observers = append(observers, m)
	} else if cfg.MetricsPerCredential {
		log.Info("--metrics-per-credential unused without --metrics-addr")
	}

	store, closeStore, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeStore()
	bcfg := cfg.Broker()
	bcfg.Observer = audit.Tee(observers...)
	b, err := broker.New(store, &upstream.Client{}, bcfg)
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

	opts := grpcapi.Options{
		Logger:            log,
		MaxRecvMsgSize:    cfg.MaxRecvMsgSize,
		UnaryInterceptors: []grpc.UnaryServerInterceptor{auditLog.UnaryServerInterceptor(grpcapi.Code)},
	}
	if sec.authn != nil {
		opts.Authenticator = sec.authn
		opts.Limiter = auth.NewLimiter(rate.Limit(cfg.ClientRate), cfg.ClientBurst)
	}
	if sec.tls != nil {
		opts.ServerOptions = append(opts.ServerOptions, grpc.Creds(credentials.NewTLS(sec.tls)))
	}
	if m != nil {
		m.SetStateSource(countStates(b))
		opts.ObserveCall = m.ObserveRPC
		if cfg.MetricsPerCredential {
			opts.UnaryInterceptors = append(opts.UnaryInterceptors, forgetDeleted(m))
		}
	}

	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("gRPC listener: %w", err)
	}
	srv := grpcapi.NewServer(b, opts)
	grpcDone := make(chan error, 1)
	go func() { grpcDone <- srv.Serve(lis) }()

	var serving atomic.Bool
	serving.Store(true)
	var metricsSrv *http.Server
	metricsDone := make(chan error, 1)
	if cfg.MetricsAddr != "" {
		mlis, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			_ = srv.Shutdown(ctx) // nothing is in flight yet
			<-grpcDone
			return fmt.Errorf("metrics listener: %w", err)
		}
		metricsSrv = &http.Server{Handler: httpMux(&serving, metrics.Handler(reg)), ReadHeaderTimeout: 5 * time.Second}
		go func() { metricsDone <- metricsSrv.Serve(mlis) }()
		log.Info("metrics listening", "addr", mlis.Addr().String())
	}
	log.Info("listening", "addr", lis.Addr().String(), "dev_mode", cfg.DevMode(),
		"tls", cfg.TLS(), "mtls", cfg.TLSClientCA != "", "authentication", cfg.Authenticated())

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
	if metricsSrv != nil {
		if err := metricsSrv.Shutdown(sctx); err != nil {
			metricsSrv.Close()
		}
		<-metricsDone
	}
	if err := b.Close(); err != nil {
		log.Warn("broker close", "error", err)
	}
	log.Info("stopped")
	return serveErr
}

// security is how the gRPC port checks its callers: nil fields are off.
type security struct {
	authn *auth.Authenticator
	tls   *tls.Config
}

// loadSecurity reads the client registry and the TLS files of a valid cfg;
// a file that does not read or parse is bad configuration. It warns where
// the set-up leaves callers or keys exposed.
func loadSecurity(cfg *Config, log *slog.Logger) (*security, error) {
	sec := &security{}
	if cfg.Authenticated() {
		clients, err := auth.LoadClients(cfg.ClientsFile)
		if err != nil {
			return nil, badConfig("--clients-file: %v", err) // auth's errors never quote a key hash
		}
		if sec.authn, err = auth.NewAuthenticator(clients); err != nil {
			return nil, badConfig("--clients-file: %v", err)
		}
		admins := 0
		for _, c := range clients {
			if c.Admin {
				admins++
			}
		}
		log.Info("client registry loaded", "file", cfg.ClientsFile, "clients", len(clients), "admins", admins)
		if len(clients) == 0 {
			log.Warn("the client registry is empty: every call but health and reflection fails with UNAUTHENTICATED")
		}
	}
	if cfg.TLS() {
		var err error
		if sec.tls, err = auth.ServerTLS(cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA, cfg.TLSRequireClientCert); err != nil {
			return nil, badConfig("%v", err) // names files, never key material
		}
	}
	if cfg.Authenticated() && !cfg.TLS() && !loopback(cfg.GRPCAddr) {
		log.Warn("bearer keys cross the network in plaintext: --grpc-addr is not a loopback address and --tls-cert is not set")
	}
	return sec, nil
}

// metricsCaller is the identity the credentials-by-state gauge lists the
// credentials as.
var metricsCaller = broker.Caller{ID: "tokenbroker-metrics", Admin: true}

// countStates returns the source of the credentials-by-state gauge: it pages
// through every credential as an admin and counts their states.
func countStates(b *broker.Broker) metrics.StateSource {
	return func(ctx context.Context) (map[broker.State]int, error) {
		ctx = broker.NewContext(ctx, metricsCaller)
		counts := make(map[broker.State]int)
		page := ""
		for {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			recs, next, err := b.ListCredentials(ctx, broker.MaxPageSize, page)
			if err != nil {
				return nil, err
			}
			for _, r := range recs {
				counts[r.State]++
			}
			if next == "" {
				return counts, nil
			}
			page = next
		}
	}
}

// forgetDeleted is an interceptor that drops the per-credential metric
// series of a credential once DeleteCredential removed it.
func forgetDeleted(m *metrics.Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err == nil && info.FullMethod == pb.AdminService_DeleteCredential_FullMethodName {
			if r, ok := req.(*pb.DeleteCredentialRequest); ok {
				m.ForgetCredential(r.GetId())
			}
		}
		return resp, err
	}
}

// openStore returns the broker's Store and how to close it: in memory in dev
// mode, else in Redis. A Redis that does not answer at start is only logged:
// calls fail with UNAVAILABLE until it does, and the broker recovers without
// a restart.
func openStore(ctx context.Context, cfg *Config, log *slog.Logger) (broker.Store, func(), error) {
	if cfg.DevMode() {
		if cfg.Authenticated() {
			log.Warn("dev mode: single replica, in-memory store (nothing is kept across restarts); set --redis-url for production")
		} else {
			log.Warn("dev mode: single replica, in-memory store (nothing is kept across restarts), no authentication; set --redis-url for production")
		}
		if cfg.SealKeys != "" {
			log.Info("--seal-keys unused in dev mode: nothing is stored outside the process")
		}
		return memstore.New(), func() {}, nil
	}
	if !cfg.Authenticated() {
		log.Warn("no caller authentication (--allow-unauthenticated): every caller may read every credential and call the admin methods")
	}
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

// httpMux serves the HTTP endpoints of --metrics-addr: /healthz, 200 while
// the broker serves and 503 once it shuts down, and /metrics, the Prometheus
// page.
func httpMux(serving *atomic.Bool, metricsPage http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metricsPage)
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
