// Package server assembles one tokenbroker replica from a Config and runs
// it: the Store (in memory in dev mode, else Redis through go-redis, with
// records sealed under the configured keyring), caller authentication and
// TLS, the per-client limit, metrics and the audit trail, the Broker, the
// gRPC server with health and reflection, the /metrics and /healthz
// listener, and the credentials seeded from a file. It also owns the order
// of shutdown.
//
// cmd/broker builds a Config from flags and runs it; the demo
// (cmd/client-demo) and the load benchmark (internal/loadbench) start their
// in-process replicas through New too, so they run what ships.
//
// A Server's life: New reads every file and checks every setting before
// anything is dialled, then opens the Store, builds the Broker, seeds the
// credentials file and binds the listeners (GRPCAddr and MetricsAddr are
// known from then on). A Redis that answers but disagrees with the
// configuration (credentials, database, Cluster or not, a keyring that opens
// none of its records) is a *ConfigError; one that does not answer yet is
// not: the server starts NOT_SERVING and finishes the checks and the
// seeding once it answers (health.go). Serve accepts calls until its
// context ends or Shutdown is called, then stops in order within
// ShutdownTimeout (see shutdown): readiness NOT_SERVING while the listeners
// still answer, new calls refused with SHUTTING_DOWN, calls in flight
// finish, the Broker's refreshes in flight are stored or abandoned (and
// logged), and the Store and its Redis client are closed.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tokenbroker/tokenbroker/internal/audit"
	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/grpcapi"
	"github.com/tokenbroker/tokenbroker/internal/journal"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	"github.com/tokenbroker/tokenbroker/internal/webhook"
)

// ErrServerClosed is returned by Serve once the Server has served or has
// been shut down.
var ErrServerClosed = errors.New("server: closed")

// Server is one tokenbroker replica. Create it with New, run it with Serve,
// and stop it by ending Serve's context or with Shutdown.
type Server struct {
	cfg Config
	log *slog.Logger

	broker   *broker.Broker
	metrics  *metrics.Metrics     // nil without MetricsAddr
	registry *prometheus.Registry // nil without MetricsAddr
	grpc     *grpcapi.Server
	grpcLis  net.Listener
	http     *http.Server // nil without MetricsAddr
	httpLis  net.Listener
	callback *http.Server // nil without HTTPAddr
	cbLis    net.Listener
	webhooks *webhook.Dispatcher   // nil without WebhookURLs
	health   health                // readiness: health.go
	redis    redis.UniversalClient // Redis mode: the Store's client, for the store monitor
	store    broker.Store
	// pendingSeeds are the credentials file's entries when Redis did not
	// answer at start: the store monitor seeds them once it does.
	pendingSeeds []seedCredential
	// closers release what the Broker is built on (Redis client, Store),
	// in reverse order, after the Broker is closed.
	closers []func() error

	mu       sync.Mutex
	started  bool          // Serve ran, or Shutdown released an unserved Server
	stop     chan struct{} // closed by Shutdown
	stopOnce sync.Once
	done     chan struct{} // closed once everything is released
}

// New builds a Server from cfg, logging to log (nil: slog.Default()). It
// validates cfg and reads the credentials file, the client registry and the
// TLS files before it dials anything; what is wrong there is a
// *ConfigError. Then it opens the Store (a Redis that does not answer yet is
// logged, not an error), builds the Broker, seeds the credentials file's
// credentials and binds the listeners. ctx bounds these steps only. On
// error, whatever New opened is closed again.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Server{cfg: cfg, stop: make(chan struct{}), done: make(chan struct{})}
	s.log = s.traced(log)
	if err := s.build(ctx); err != nil {
		s.closeListeners()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		s.release(rctx)
		cancel()
		return nil, err
	}
	return s, nil
}

// build assembles the Server, in the order New documents.
func (s *Server) build(ctx context.Context) error {
	var seeds []seedCredential
	if s.cfg.CredentialsFile != "" {
		var err error
		if seeds, err = loadCredentials(s.cfg.CredentialsFile); err != nil {
			return err
		}
		policy := s.cfg.tokenURLPolicy()
		for i, seed := range seeds {
			if err := policy.Check("credential.token_url", seed.cred.TokenURL); err != nil {
				return badConfig("--credentials-file %s: credentials[%d] (id %q): %v", s.cfg.CredentialsFile, i, seed.cred.ID, err)
			}
		}
	}
	sec, err := loadSecurity(&s.cfg, s.log)
	if err != nil {
		return err
	}
	s.metrics, s.registry = newMetrics(&s.cfg)
	if s.metrics == nil && s.cfg.MetricsPerCredential {
		s.log.Info("--metrics-per-credential unused without --metrics-addr")
	}
	trail := audit.New(s.log)

	store, err := s.openStore(ctx)
	if err != nil {
		return err
	}
	s.store = store
	if err := s.newBroker(store, trail); err != nil {
		return err
	}
	if len(s.cfg.WebhookURLs) > 0 {
		s.webhooks, err = webhook.New(s.broker, store, webhook.Options{URLs: s.cfg.WebhookURLs, Secret: []byte(s.cfg.WebhookSecret), Logger: s.log})
		if err != nil {
			return badConfig("%v", err)
		}
	} else if s.cfg.WebhookSecret != "" {
		s.log.Info("--webhook-secret unused without --webhook-url")
	}
	if s.health.storeUp.Load() {
		if err := s.seed(ctx, seeds); err != nil {
			return err
		}
		s.health.prepared.Store(true)
	} else {
		s.pendingSeeds = seeds
	}
	if err := s.listen(); err != nil {
		return err
	}
	s.grpc = grpcapi.NewServer(s.broker, s.grpcOptions(sec, trail))
	s.health.notify = s.grpc.SetReady
	s.health.update()
	if s.metrics != nil {
		s.http = &http.Server{Handler: httpMux(&s.health, metrics.Handler(s.registry)), ReadHeaderTimeout: 5 * time.Second}
	}
	if s.cbLis != nil {
		s.callback = &http.Server{
			Handler:           callbackHandler(s.broker, &s.cfg, s.log),
			ReadHeaderTimeout: 5 * time.Second,
			MaxHeaderBytes:    32 << 10,
			IdleTimeout:       time.Minute,
		}
	}
	return nil
}

// newBroker builds the Broker over store, observed by the audit trail, the
// metrics and Config.Observer.
func (s *Server) newBroker(store broker.Store, trail *audit.Log) error {
	observers := []broker.Observer{trail, s.cfg.Observer}
	if s.metrics != nil {
		observers = append(observers, s.metrics)
	}
	bcfg := s.cfg.Broker()
	bcfg.Observer = audit.Tee(observers...)
	bcfg.Tracer = s.tracer()
	bcfg.Pacer = s.pacer(store)
	if bcfg.ReplicaID == "" {
		bcfg.ReplicaID = defaultReplicaID()
	}
	j, err := s.openJournal()
	if err != nil {
		return err
	}
	if j != nil {
		bcfg.Journal = j
	}
	b, err := broker.New(store, s.upstreamClient(), bcfg)
	if err != nil {
		return badConfig("%v", err)
	}
	s.broker = b
	if j != nil {
		if err := j.Unreadable(); err != nil {
			s.log.Error("journal entries that cannot be opened are left in --journal-dir; fix --seal-keys and restart to store them", "dir", s.cfg.JournalDir, "error", err)
		}
		s.log.Info("journal open", "dir", s.cfg.JournalDir, "replica", bcfg.ReplicaID)
	}
	if s.metrics != nil {
		s.metrics.SetStateListing(countStates(b))
		s.metrics.SetBacklogSource(b.Backlog)
	}
	return nil
}

// pacer paces the IdP calls of every replica sharing the store: through
// Redis in Redis mode, in the process in dev mode.
func (s *Server) pacer(store broker.Store) broker.Pacer {
	if rs, ok := store.(*redisstore.Store); ok {
		return rs.Pacer(redisstore.PacerOptions{Rate: s.cfg.IdPRate, MaxConcurrent: s.cfg.IdPMaxConcurrency,
			TurnTTL: max(s.cfg.RefreshReplyWait, time.Minute) + s.cfg.RefreshTimeout})
	}
	return &memstore.Pacer{Rate: float64(s.cfg.IdPRate), MaxConcurrent: s.cfg.IdPMaxConcurrency}
}

// openJournal opens --journal-dir, sealed with the first of --seal-keys;
// nil without one.
func (s *Server) openJournal() (*journal.Journal, error) {
	if s.cfg.JournalDir == "" {
		return nil, nil
	}
	var keyring *seal.Keyring
	if s.cfg.SealKeys != "" {
		var err error
		if keyring, err = seal.ParseKeyring(s.cfg.SealKeys); err != nil {
			return nil, badConfig("--seal-keys: %v", err)
		}
	}
	j, err := journal.Open(s.cfg.JournalDir, keyring)
	if err != nil {
		return nil, badConfig("--journal-dir: %v", err)
	}
	return j, nil
}

// defaultReplicaID names the replica by host and process.
func defaultReplicaID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "broker"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}

// seed ensures the credentials file's credentials exist.
func (s *Server) seed(ctx context.Context, seeds []seedCredential) error {
	if s.cfg.CredentialsFile == "" {
		return nil
	}
	if err := seedCredentials(ctx, s.broker, seeds); err != nil {
		return err
	}
	s.log.Info("credentials file loaded", "file", s.cfg.CredentialsFile, "credentials", len(seeds))
	return nil
}

// listen binds the gRPC port and, with MetricsAddr, the metrics port.
func (s *Server) listen() error {
	var err error
	if s.grpcLis, err = net.Listen("tcp", s.cfg.GRPCAddr); err != nil {
		return fmt.Errorf("gRPC listener: %w", err)
	}
	if s.cfg.MetricsAddr != "" {
		if s.httpLis, err = net.Listen("tcp", s.cfg.MetricsAddr); err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
	}
	if s.cfg.HTTPAddr != "" {
		if s.cbLis, err = net.Listen("tcp", s.cfg.HTTPAddr); err != nil {
			return fmt.Errorf("http listener: %w", err)
		}
	}
	return nil
}

// grpcOptions are the gRPC server's options: authentication and the
// per-client limit when callers authenticate, TLS, the audit trail's
// interceptor and the request metrics.
func (s *Server) grpcOptions(sec *security, trail *audit.Log) grpcapi.Options {
	opts := grpcapi.Options{
		Logger:            s.log,
		MaxRecvMsgSize:    s.cfg.MaxRecvMsgSize,
		UnaryInterceptors: []grpc.UnaryServerInterceptor{trail.UnaryServerInterceptor(grpcapi.Code)},
	}
	if sec.authn != nil {
		opts.Authenticator = sec.authn
		opts.Limiter = auth.NewLimiter(rate.Limit(s.cfg.ClientRate), s.cfg.ClientBurst)
	}
	if sec.tls != nil {
		opts.ServerOptions = append(opts.ServerOptions, grpc.Creds(credentials.NewTLS(sec.tls)))
	}
	opts.ServerOptions = append(opts.ServerOptions, s.tracingOptions()...)
	if s.metrics != nil {
		opts.ObserveCall = s.metrics.ObserveRPC
		if s.cfg.MetricsPerCredential {
			opts.UnaryInterceptors = append(opts.UnaryInterceptors, forgetDeleted(s.metrics))
		}
	}
	return opts
}

// GRPCAddr is the address the gRPC port listens on, with the port picked
// when GRPCAddr asked for port 0.
func (s *Server) GRPCAddr() string { return s.grpcLis.Addr().String() }

// MetricsAddr is the address of the /metrics and /healthz port, or "" when
// there is none.
func (s *Server) MetricsAddr() string {
	if s.httpLis == nil {
		return ""
	}
	return s.httpLis.Addr().String()
}

// HTTPAddr is the address of the authorization callback's port
// (--http-addr), or "" when there is none.
func (s *Server) HTTPAddr() string {
	if s.cbLis == nil {
		return ""
	}
	return s.cbLis.Addr().String()
}

// Broker is the server's Broker, for in-process callers that put or read
// credentials without a gRPC round trip. Calls on it need a caller in their
// context (broker.NewContext) unless the server runs open.
func (s *Server) Broker() *broker.Broker { return s.broker }

// Registry is the Prometheus registry /metrics serves, or nil without
// MetricsAddr.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

// Serve accepts calls until ctx ends, Shutdown is called, or a listener
// fails; then it shuts down in order (see the package documentation) and
// returns: nil after ctx or Shutdown, the listener's error otherwise. It logs
// "metrics listening" and "listening" (with the address in addr) once it
// serves, and "stopped" at the end. A Server serves once: Serve returns
// ErrServerClosed when called again or after Shutdown.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	started := s.started
	s.started = true
	s.mu.Unlock()
	if started {
		return ErrServerClosed
	}
	defer close(s.done)

	if s.webhooks != nil {
		s.webhooks.Start() // before the first call: its changes are delivered
		s.log.Info("webhooks on", "endpoints", len(s.cfg.WebhookURLs))
	}
	mctx, stopMonitor := context.WithCancel(context.WithoutCancel(ctx))
	monitorDone := s.startMonitor(mctx)
	// grpcDone gets gRPC's Serve result and is then closed, so reading it
	// again yields nil at once; so does httpDone, which stays nil (never
	// ready) without a metrics listener.
	grpcDone := make(chan error, 1)
	go func() { // ends with GracefulStop or Stop in shutdown
		grpcDone <- s.grpc.Serve(s.grpcLis)
		close(grpcDone)
	}()
	var httpDone chan error
	if s.http != nil {
		httpDone = make(chan error, 1)
		go func() { // ends with Shutdown or Close in shutdown
			httpDone <- s.http.Serve(s.httpLis)
			close(httpDone)
		}()
		s.log.Info("metrics listening", "addr", s.MetricsAddr())
	}
	var cbDone chan error
	if s.callback != nil {
		cbDone = make(chan error, 1)
		go func() { // ends with Shutdown or Close in shutdown
			cbDone <- s.callback.Serve(s.cbLis)
			close(cbDone)
		}()
		s.log.Info("http listening", "addr", s.HTTPAddr(), "callback", broker.CallbackPath)
	}
	s.log.Info("listening", "addr", s.GRPCAddr(), "dev_mode", s.cfg.DevMode(),
		"tls", s.cfg.TLS(), "mtls", s.cfg.TLSClientCA != "", "authentication", s.cfg.Authenticated(),
		"ready", s.health.ready())

	var err error
	select {
	case <-ctx.Done():
	case <-s.stop:
	case err = <-grpcDone:
		err = fmt.Errorf("gRPC server: %w", err)
	case err = <-httpDone:
		err = fmt.Errorf("metrics server: %w", err)
	case err = <-cbDone:
		err = fmt.Errorf("http server: %w", err)
	}
	s.health.stopping.Store(true)
	stopMonitor()
	<-monitorDone
	s.shutdown(ctx, grpcDone, httpDone, cbDone)
	return err
}

// startMonitor starts the store monitor in Redis mode; the returned channel
// is closed once it has stopped (at once without one).
func (s *Server) startMonitor(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	if s.redis == nil {
		close(done)
		return done
	}
	m := &storeMonitor{s: s, client: s.redis, after: s.cfg.UnreadyAfter, interval: storeCheckInterval(s.cfg.UnreadyAfter),
		prepare: func(ctx context.Context) error {
			if err := checkKeyring(ctx, s.store, &s.cfg); err != nil {
				return err
			}
			if err := s.seed(ctx, s.pendingSeeds); err != nil {
				return err
			}
			s.pendingSeeds = nil
			return nil
		}}
	go func() {
		defer close(done)
		m.run(ctx)
	}()
	return done
}

// shutdown stops serving, in order, within ShutdownTimeout:
//
//   - readiness NOT_SERVING (gRPC health and /readyz) at once, while the
//     listeners still answer; new calls fail with UNAVAILABLE, reason
//     SHUTTING_DOWN;
//   - calls in flight finish, until shutdownMargin before the deadline;
//   - the Broker stops: its refreshes in flight get until half the margin
//     before the deadline to be stored (a refreshed token it cannot store
//     stays journaled or marked pending), and callers still waiting for one
//     then get SHUTTING_DOWN;
//   - the gRPC listener closes (what is still open at the deadline is cut),
//     then the metrics listener, the Store and its Redis client.
func (s *Server) shutdown(ctx context.Context, grpcDone, httpDone, cbDone <-chan error) {
	timeout := s.cfg.ShutdownTimeout
	s.log.Info("shutting down", "timeout_s", seconds(timeout), "calls_in_flight", s.grpc.InFlight())
	deadline := time.Now().Add(timeout)
	margin := shutdownMargin(timeout)
	sctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()

	dctx, dcancel := context.WithDeadline(sctx, deadline.Add(-margin))
	left := s.grpc.Drain(dctx)
	dcancel()
	if left > 0 {
		s.log.Warn("calls still in flight at the drain deadline; those waiting for a refresh end with SHUTTING_DOWN", "calls", left)
	}
	if s.webhooks != nil {
		s.webhooks.Stop() // before the Broker, whose changes it reads
	}
	bctx, bcancel := context.WithDeadline(sctx, deadline.Add(-margin/2))
	s.shutdownBroker(bctx)
	bcancel()

	if err := s.grpc.Shutdown(sctx); err != nil {
		s.log.Warn("shutdown deadline reached; calls in flight were cut", "timeout_s", seconds(timeout))
	}
	<-grpcDone
	if s.http != nil {
		if err := s.http.Shutdown(sctx); err != nil {
			_ = s.http.Close()
		}
		<-httpDone
	}
	if s.callback != nil {
		if err := s.callback.Shutdown(sctx); err != nil {
			_ = s.callback.Close()
		}
		<-cbDone
	}
	s.release(sctx)
	s.log.Info("stopped")
}

// Shutdown stops the Server. If Serve is running, Shutdown makes it stop as
// if its context had ended and waits until it has released everything, or
// until ctx ends (then it returns ctx's error; the shutdown goes on). If
// Serve never ran, Shutdown closes what New opened. Calling it again does
// nothing more.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stop) })
	s.mu.Lock()
	started := s.started
	s.started = true
	s.mu.Unlock()
	if !started {
		s.closeListeners()
		s.release(ctx)
		close(s.done)
		return nil
	}
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// closeListeners closes the listeners of a Server that never served.
func (s *Server) closeListeners() {
	for _, l := range []net.Listener{s.grpcLis, s.httpLis, s.cbLis} {
		if l != nil {
			_ = l.Close()
		}
	}
}

// shutdownMargin is the part of ShutdownTimeout kept after the drain for
// the Broker and the listeners: a quarter of it, at most a second.
func shutdownMargin(timeout time.Duration) time.Duration { return min(timeout/4, time.Second) }

// shutdownBroker shuts the Broker down, which waits until ctx ends for the
// refreshes in flight to be stored, and logs what it abandoned (those stay
// journaled, or marked pending for the other replicas). Doing it again does
// nothing.
func (s *Server) shutdownBroker(ctx context.Context) {
	if s.broker == nil {
		return
	}
	if err := s.broker.Shutdown(ctx); err != nil {
		s.log.Warn("refreshes abandoned at shutdown", "error", err.Error(), "journal", s.cfg.JournalDir != "")
	}
}

// release shuts the Broker down (shutdownBroker), then closes what it was
// built on.
func (s *Server) release(ctx context.Context) {
	s.shutdownBroker(ctx)
	for i := len(s.closers) - 1; i >= 0; i-- {
		_ = s.closers[i]()
	}
	s.closers = nil
}
