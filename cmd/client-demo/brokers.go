package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/clientsdk"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	"github.com/tokenbroker/tokenbroker/internal/server"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

const (
	adminTimeout    = 10 * time.Second // one AdminService call
	shutdownTimeout = 5 * time.Second  // a replica's gRPC server draining
	redisPrefix     = "tokenbroker-demo"
)

// replica is one in-process broker, built by server.New as cmd/broker
// builds it, serving gRPC on its own 127.0.0.1 port.
type replica struct {
	addr   string
	srv    *server.Server
	served chan error // Serve's result
}

// replicaConfig is cmd/broker's default configuration on a free 127.0.0.1
// port, open to every caller (the demo's workers do not authenticate).
func replicaConfig() server.Config {
	cfg := server.DefaultConfig()
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.ShutdownTimeout = shutdownTimeout
	return cfg
}

// startReplica builds a broker from cfg and serves it until stop.
func startReplica(ctx context.Context, cfg server.Config) (*replica, error) {
	// The access log and the audit trail would drown the progress line;
	// the summary counts what matters.
	srv, err := server.New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	r := &replica{addr: srv.GRPCAddr(), srv: srv, served: make(chan error, 1)}
	go func() { r.served <- srv.Serve(context.Background()) }() // ends with stop
	return r, nil
}

// stop shuts the replica down: calls in flight finish, the broker stores
// its refreshes in flight, the store and its Redis client close.
func (r *replica) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*shutdownTimeout)
	defer cancel()
	return errors.Join(r.srv.Shutdown(ctx), <-r.served)
}

// startMemReplica starts the dev-mode broker: one replica, in-memory store.
func startMemReplica(ctx context.Context) (*replica, error) {
	return startReplica(ctx, replicaConfig())
}

// startRedisReplicas starts n replicas on the Redis at url, each with its
// own go-redis client and Store. Records are sealed with a key made for this
// run, as a production broker's would be.
func startRedisReplicas(ctx context.Context, url string, n int) ([]*replica, error) {
	if err := pingRedis(ctx, url); err != nil {
		return nil, err
	}
	key, err := seal.GenerateKey()
	if err != nil {
		return nil, err
	}
	cfg := replicaConfig()
	cfg.RedisURL, cfg.RedisPrefix, cfg.SealKeys, cfg.AllowUnauthenticated = url, redisPrefix, "demo:"+key, true
	var reps []*replica
	for range n {
		r, err := startReplica(ctx, cfg)
		if err != nil {
			for _, r := range reps {
				_ = r.stop()
			}
			return nil, err
		}
		reps = append(reps, r)
	}
	return reps, nil
}

// pingRedis checks that the Redis at url answers, so that a wrong
// --redis-url fails at once rather than in every worker.
func pingRedis(ctx context.Context, url string) error {
	rc, err := redisstore.NewClient(url)
	if err != nil {
		return fmt.Errorf("--redis-url: %w", err)
	}
	defer rc.Close()
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	if err := rc.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis does not answer: %s", redisstore.RedactURL(err.Error(), url))
	}
	return nil
}

// brokerConn holds how the demo reaches a broker: the options workers dial
// with and the admin connection.
type brokerConn struct {
	dialOpts []clientsdk.DialOption
	admin    *grpc.ClientConn
}

// dialBroker connects to the broker at addr for admin calls and returns the
// options the workers dial with. plaintext allows a connection without TLS;
// apiKey, if set, authenticates every call.
func dialBroker(addr string, plaintext bool, apiKey string) (*brokerConn, error) {
	var bc brokerConn
	tc := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
	if plaintext {
		tc = insecure.NewCredentials()
		bc.dialOpts = append(bc.dialOpts, clientsdk.WithInsecure())
	}
	gopts := []grpc.DialOption{grpc.WithTransportCredentials(tc)}
	if apiKey != "" {
		bc.dialOpts = append(bc.dialOpts, clientsdk.WithAPIKey(apiKey))
		gopts = append(gopts, grpc.WithPerRPCCredentials(bearerKey{md: "Bearer " + apiKey, plaintext: plaintext}))
	}
	conn, err := grpc.NewClient(addr, gopts...)
	if err != nil {
		return nil, err
	}
	bc.admin = conn
	return &bc, nil
}

// bearerKey authenticates admin calls with an API key.
type bearerKey struct {
	md        string // "Bearer <key>"; secret
	plaintext bool
}

func (k bearerKey) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": k.md}, nil
}

func (k bearerKey) RequireTransportSecurity() bool { return !k.plaintext }

// putCredential puts the demo's credential into the broker.
func (bc *brokerConn) putCredential(ctx context.Context, c *pb.Credential) error {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	_, err := pb.NewAdminServiceClient(bc.admin).PutCredential(ctx, &pb.PutCredentialRequest{Credential: c})
	return err
}

// credentialState returns the broker's view of the credential's state, or
// "" if it cannot be read.
func (bc *brokerConn) credentialState(ctx context.Context, id string) string {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	resp, err := pb.NewAdminServiceClient(bc.admin).GetCredential(ctx, &pb.GetCredentialRequest{Id: id})
	if err != nil {
		return ""
	}
	return resp.GetCredential().GetState().String()
}

// deleteCredential removes the demo's credential again.
func (bc *brokerConn) deleteCredential(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	_, err := pb.NewAdminServiceClient(bc.admin).DeleteCredential(ctx, &pb.DeleteCredentialRequest{Id: id})
	return err
}

// randomID returns n random bytes in hex.
func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return hex.EncodeToString(b)
}
