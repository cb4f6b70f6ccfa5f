package loadbench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/tokenbroker/tokenbroker/internal/audit"
	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/grpcapi"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// Identities of the benchmark's broker clients and of the upstream OAuth2
// client the credentials use.
const (
	benchClient  = "bench" // reads tokens; named in every credential's allowed clients
	adminClient  = "ops"   // calls the admin methods
	idpClientID  = "bench-upstream"
	idpSecret    = "bench-upstream-secret"
	shutdownWait = 5 * time.Second
)

// The per-client limit of the costly methods: cmd/broker's defaults
// (--client-rate, --client-burst). GetToken is not limited.
const (
	clientRate  rate.Limit = 10
	clientBurst int        = 20
)

// env is what every measurement shares: one private redis-server and the
// client registry. Each measurement makes its own IdP and key prefix.
type env struct {
	redis *redisServer
	auth  *auth.Authenticator
	key   string // the bench client's bearer key
	runID string // unique per run, starts every key prefix
}

func newEnv(ctx context.Context) (*env, error) {
	key, hash, err := auth.GenerateKey()
	if err != nil {
		return nil, err
	}
	_, adminHash, err := auth.GenerateKey()
	if err != nil {
		return nil, err
	}
	a, err := auth.NewAuthenticator([]auth.Client{
		{ID: benchClient, KeySHA256: []string{hash}},
		{ID: adminClient, KeySHA256: []string{adminHash}, Admin: true},
	})
	if err != nil {
		return nil, err
	}
	rs, err := startRedis(ctx)
	if err != nil {
		return nil, err
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &env{redis: rs, auth: a, key: key, runID: "bench" + hex.EncodeToString(b[:])}, nil
}

func (e *env) close() error { return e.redis.stop() }

// callerContext returns ctx with the bench client's key in the outgoing
// metadata, as clientsdk sends it.
func (e *env) callerContext(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+e.key)
}

// adminContext returns ctx carrying the admin identity, for calls made on a
// Broker directly.
func adminContext(ctx context.Context) context.Context {
	return broker.NewContext(ctx, broker.Caller{ID: adminClient, Admin: true})
}

// readerContext returns ctx carrying the bench client's identity, for calls
// made on a Broker directly.
func readerContext(ctx context.Context) context.Context {
	return broker.NewContext(ctx, broker.Caller{ID: benchClient})
}

// startIdP starts a fake IdP on 127.0.0.1 that knows the credentials'
// upstream client; onEvent may be nil.
func startIdP(latency, ttl time.Duration, onEvent func(fakeidp.Event)) (*fakeidp.Server, error) {
	idp := fakeidp.New(fakeidp.Options{
		Clients:        map[string]string{idpClientID: idpSecret},
		AccessTokenTTL: ttl,
		Latency:        latency,
		OnEvent:        onEvent,
	})
	if err := idp.Start(); err != nil {
		return nil, fmt.Errorf("loadbench: starting the IdP: %w", err)
	}
	return idp, nil
}

// credential is the configuration of a benchmark credential at idp.
func credential(idp *fakeidp.Server, id string) broker.Credential {
	return broker.Credential{
		ID:             id,
		TokenURL:       idp.TokenURL(),
		ClientID:       idpClientID,
		ClientSecrets:  []string{idpSecret},
		AllowedClients: []string{benchClient},
	}
}

// replica is one broker replica as cmd/broker wires it in Redis mode, with
// authentication, the per-client limit, metrics and the audit trail on: its
// own go-redis client, redisstore.Store, Broker, metrics on a fresh
// registry (through the gRPC stats handler, as cmd/broker installs them),
// and gRPC server on its own 127.0.0.1 port, without TLS.
type replica struct {
	client  redis.UniversalClient
	store   *redisstore.Store
	broker  *broker.Broker
	metrics *metrics.Metrics
	reg     *prometheus.Registry // the metrics' registry
	server  *grpcapi.Server
	addr    string
	served  chan error // Serve's result
}

// replicaOptions tune startReplica.
type replicaOptions struct {
	prefix   string
	observer broker.Observer // told besides the metrics; may be nil
	hook     redis.Hook      // added to the replica's client; may be nil
}

// startReplica starts a replica on e's Redis. Close it with close.
func (e *env) startReplica(o replicaOptions) (r *replica, err error) {
	r = &replica{}
	defer func() {
		if err != nil {
			_ = r.close()
		}
	}()
	if r.client, err = redisstore.NewClient(e.redis.URL()); err != nil {
		return nil, err
	}
	if o.hook != nil {
		r.client.AddHook(o.hook)
	}
	if r.store, err = redisstore.New(r.client, redisstore.Options{Prefix: o.prefix, AllowPlaintext: true}); err != nil {
		return nil, err
	}
	// Wired as cmd/broker wires it with --clients-file and --metrics-addr
	// at their defaults.
	logger := quietLogger()
	trail := audit.New(logger)
	r.reg = prometheus.NewRegistry()
	r.metrics = metrics.New(r.reg, metrics.Options{})
	cfg := broker.Config{Observer: audit.Tee(trail, r.metrics, o.observer)}
	if r.broker, err = broker.New(r.store, &upstream.Client{}, cfg); err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r.addr = lis.Addr().String()
	r.server = grpcapi.NewServer(r.broker, grpcapi.Options{
		Authenticator:     e.auth,
		Limiter:           auth.NewLimiter(clientRate, clientBurst),
		Logger:            logger,
		UnaryInterceptors: []grpc.UnaryServerInterceptor{trail.UnaryServerInterceptor(grpcapi.Code)},
		ObserveCall:       r.metrics.ObserveRPC,
	})
	r.served = make(chan error, 1)
	go func() { r.served <- r.server.Serve(lis) }()
	return r, nil
}

// close stops what startReplica started, in reverse order.
func (r *replica) close() error {
	var errs []error
	if r.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownWait)
		errs = append(errs, r.server.Shutdown(ctx))
		cancel()
		errs = append(errs, served(<-r.served))
	}
	if r.broker != nil {
		errs = append(errs, r.broker.Close())
	}
	if r.store != nil {
		errs = append(errs, r.store.Close())
	}
	if r.client != nil {
		errs = append(errs, r.client.Close())
	}
	return errors.Join(errs...)
}

// quietLogger is the log of the benchmark's servers (access log and audit
// trail): at Info, as cmd/broker logs by default, so OK calls are not
// written; what is written is discarded.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// servedCount is the number of tokens the replica handed out, as its
// metrics count them; -1 if they cannot be read.
func (r *replica) servedCount() int64 {
	families, err := r.reg.Gather()
	if err != nil {
		return -1
	}
	var n float64
	for _, f := range families {
		if f.GetName() != "tokenbroker_tokens_served_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			n += m.GetCounter().GetValue()
		}
	}
	return int64(n)
}
