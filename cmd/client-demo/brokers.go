package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/clientsdk"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/grpcapi"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

const (
	adminTimeout    = 10 * time.Second // one AdminService call
	shutdownTimeout = 5 * time.Second  // a replica's gRPC server draining
	redisPrefix     = "tokenbroker-demo"
)

// replica is one in-process broker serving gRPC on its own 127.0.0.1 port.
type replica struct {
	addr   string
	b      *broker.Broker
	srv    *grpcapi.Server
	served chan error // Serve's result
	// closers release what the replica was built on (store, Redis client),
	// in order, after the broker is closed.
	closers []func() error
}

// startReplica starts a broker over store and serves it on 127.0.0.1:0. On
// failure it runs closers itself.
func startReplica(store broker.Store, closers ...func() error) (*replica, error) {
	r := &replica{served: make(chan error, 1), closers: closers}
	b, err := broker.New(store, &upstream.Client{}, broker.Config{Open: true})
	if err != nil {
		r.closeAll()
		return nil, err
	}
	r.b = b
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = b.Close()
		r.closeAll()
		return nil, err
	}
	r.addr = lis.Addr().String()
	// The access log would drown the progress line; the summary counts
	// what matters.
	r.srv = grpcapi.NewServer(b, grpcapi.Options{Logger: slog.New(slog.DiscardHandler)})
	go func() { r.served <- r.srv.Serve(lis) }()
	return r, nil
}

// stop shuts the gRPC server down, closes the broker and releases the store.
func (r *replica) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err := r.srv.Shutdown(ctx)
	if serr := <-r.served; serr != nil {
		err = errors.Join(err, serr)
	}
	err = errors.Join(err, r.b.Close())
	return errors.Join(err, r.closeAll())
}

func (r *replica) closeAll() error {
	var err error
	for _, c := range r.closers {
		err = errors.Join(err, c())
	}
	r.closers = nil
	return err
}

// startMemReplica starts the dev-mode broker: one replica, in-memory store.
func startMemReplica() (*replica, error) {
	return startReplica(memstore.New())
}

// startRedisReplicas starts n replicas on the Redis at url, each with its
// own go-redis client and Store. Records are sealed with a key made for this
// run, as a production broker's would be.
func startRedisReplicas(ctx context.Context, url string, n int) ([]*replica, error) {
	keyring, err := newRunKeyring()
	if err != nil {
		return nil, err
	}
	var reps []*replica
	stopAll := func() {
		for _, r := range reps {
			_ = r.stop()
		}
	}
	for i := range n {
		rc, err := redisstore.NewClient(url)
		if err != nil {
			stopAll()
			return nil, fmt.Errorf("--redis-url: %w", err)
		}
		if i == 0 {
			pctx, cancel := context.WithTimeout(ctx, adminTimeout)
			err := rc.Ping(pctx).Err()
			cancel()
			if err != nil {
				_ = rc.Close()
				return nil, fmt.Errorf("redis does not answer: %w", err)
			}
		}
		st, err := redisstore.New(rc, redisstore.Options{Prefix: redisPrefix, Keyring: keyring})
		if err != nil {
			_ = rc.Close()
			stopAll()
			return nil, err
		}
		r, err := startReplica(st, st.Close, rc.Close)
		if err != nil {
			stopAll()
			return nil, err
		}
		reps = append(reps, r)
	}
	return reps, nil
}

// newRunKeyring returns a keyring with one random key, for this run only.
func newRunKeyring() (*seal.Keyring, error) {
	key := make([]byte, seal.KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	return seal.NewKeyring("demo", map[string][]byte{"demo": key})
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
