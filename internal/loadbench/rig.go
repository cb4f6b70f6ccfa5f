package loadbench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/metadata"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/redisproc"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	"github.com/tokenbroker/tokenbroker/internal/server"
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

// env is what every measurement shares: one private redis-server (bound to
// 127.0.0.1, no persistence, noeviction as the broker requires), a client
// of it for the rig's own commands, the client registry and the keyring
// that seals every record. Each measurement makes its own IdP and key
// prefix.
type env struct {
	redis    *redisproc.Server
	rdb      redis.UniversalClient // the rig's own: replicas have theirs
	auth     *auth.Authenticator
	key      string // the bench client's bearer key
	adminKey string // the admin client's
	sealKeys string // --seal-keys of every replica: one fresh key
	runID    string // unique per run, starts every key prefix
	seq      atomic.Int64
}

func newEnv(ctx context.Context) (*env, error) {
	key, hash, err := auth.GenerateKey()
	if err != nil {
		return nil, err
	}
	adminKey, adminHash, err := auth.GenerateKey()
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
	sealKey, err := seal.GenerateKey()
	if err != nil {
		return nil, err
	}
	rs, err := redisproc.Start(ctx, redisproc.Options{Args: []string{"--maxmemory-policy", "noeviction"}})
	if err != nil {
		return nil, err
	}
	rdb, err := redisstore.NewClient(rs.URL())
	if err != nil {
		_ = rs.Close()
		return nil, err
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &env{redis: rs, rdb: rdb, auth: a, key: key, adminKey: adminKey, sealKeys: "bench1:" + sealKey, runID: "bench" + hex.EncodeToString(b[:])}, nil
}

func (e *env) close() error { return errors.Join(e.rdb.Close(), e.redis.Close()) }

// callerContext returns ctx with the bench client's key in the outgoing
// metadata, as clientsdk sends it.
func (e *env) callerContext(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+e.key)
}

// adminCallerContext returns ctx with the admin client's key in the
// outgoing metadata.
func (e *env) adminCallerContext(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+e.adminKey)
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

// replica is one broker replica built by server.New as cmd/broker builds
// it in Redis mode with --seal-keys, --clients-file and --metrics-addr,
// their other settings at the defaults: records sealed (AES-256-GCM),
// authentication, the per-client limit, metrics (with the Go and process
// collectors) and the audit trail on; its own go-redis client and Store;
// its gRPC port on 127.0.0.1, without TLS.
type replica struct {
	*server.Server
	addr   string
	served chan error // Serve's result
}

// replicaOptions tune startReplica.
type replicaOptions struct {
	prefix   string
	observer broker.Observer // told besides the metrics; may be nil
	hook     redis.Hook      // added to the replica's client; may be nil
	// tune, when set, changes settings of the replica's flags (as an
	// operator would on cmd/broker's command line) before it is built.
	tune func(*server.Config)
}

// startReplica starts a replica on e's Redis. Close it with close.
func (e *env) startReplica(ctx context.Context, o replicaOptions) (*replica, error) {
	cfg := server.DefaultConfig()
	cfg.GRPCAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.RedisURL, cfg.RedisPrefix, cfg.SealKeys = e.redis.URL(), o.prefix, e.sealKeys
	cfg.Authenticator, cfg.Observer, cfg.RedisHook = e.auth, o.observer, o.hook
	cfg.ShutdownTimeout = shutdownWait
	if o.tune != nil {
		o.tune(&cfg)
	}
	srv, err := server.New(ctx, cfg, quietLogger())
	if err != nil {
		return nil, err
	}
	r := &replica{Server: srv, addr: srv.GRPCAddr(), served: make(chan error, 1)}
	go func() { r.served <- srv.Serve(context.Background()) }() // ends with close
	return r, nil
}

// close shuts the replica down and releases what it was built on.
func (r *replica) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*shutdownWait)
	defer cancel()
	return errors.Join(r.Shutdown(ctx), <-r.served)
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
	families, err := r.Registry().Gather()
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
