package grpcapi

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

const (
	testClientID     = "client-1"
	testClientSecret = "SECRET-client-f00dfeed"
	callTimeout      = 20 * time.Second
)

// env is one broker behind a real grpc.Server over bufconn, with the fake
// IdP behind it.
type env struct {
	idp   *fakeidp.Server
	store *memstore.Store
	b     *broker.Broker
	srv   *Server
	lis   *bufconn.Listener
	conn  *grpc.ClientConn
	tok   pb.TokenServiceClient
	adm   pb.AdminServiceClient
	logs  *syncBuffer

	stopOnce sync.Once
	served   chan error
}

type envOptions struct {
	cfg  broker.Config
	opts Options
	idp  fakeidp.Options
}

func newEnv(t testing.TB, eo envOptions) *env {
	t.Helper()
	if eo.idp.Clients == nil {
		eo.idp.Clients = map[string]string{testClientID: testClientSecret}
	}
	e := &env{
		idp:    fakeidptest.Start(t, eo.idp),
		store:  memstore.New(),
		logs:   &syncBuffer{},
		lis:    bufconn.Listen(1 << 20),
		served: make(chan error, 1),
	}
	if eo.opts.Authenticator == nil {
		eo.cfg.Open = true
	}
	b, err := broker.New(e.store, &upstream.Client{}, eo.cfg)
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	e.b = b
	if eo.opts.Logger == nil {
		eo.opts.Logger = slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	e.srv = NewServer(b, eo.opts)
	go func() { e.served <- e.srv.Serve(e.lis) }()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return e.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	e.conn = conn
	e.tok = pb.NewTokenServiceClient(conn)
	e.adm = pb.NewAdminServiceClient(conn)
	t.Cleanup(func() {
		_ = conn.Close()
		e.stop(t)
		_ = b.Close()
	})
	return e
}

// stop shuts the server down (once) and waits for Serve to return.
func (e *env) stop(t testing.TB) error {
	var err error
	e.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = e.srv.Shutdown(ctx)
		if serr := <-e.served; serr != nil {
			t.Errorf("Serve: %v", serr)
		}
	})
	return err
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

// credential returns a valid credential for the fake IdP with a freshly
// seeded refresh token.
func (e *env) credential(id string) *pb.Credential {
	return &pb.Credential{
		Id:           id,
		TokenUrl:     e.idp.TokenURL(),
		ClientId:     testClientID,
		ClientSecret: testClientSecret,
		RefreshToken: e.idp.Seed(testClientID),
	}
}

func (e *env) put(t *testing.T, c *pb.Credential) *pb.Credential {
	t.Helper()
	resp, err := e.adm.PutCredential(ctxT(t), &pb.PutCredentialRequest{Credential: c})
	if err != nil {
		t.Fatalf("PutCredential(%s): %v", c.GetId(), err)
	}
	return resp.GetCredential()
}

// stored returns the stored record of id, or nil.
func (e *env) stored(t *testing.T, id string) *broker.Record {
	t.Helper()
	rec, err := e.store.Get(context.Background(), id)
	if errors.Is(err, broker.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("store.Get(%s): %v", id, err)
	}
	return rec
}

// resourceStatus returns the fake IdP's protected resource's answer to token.
func (e *env) resourceStatus(t *testing.T, token string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), http.MethodGet, e.idp.ResourceURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET resource: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// errInfo returns the code and the ErrorInfo of a call's error.
func errInfo(t *testing.T, err error) (codes.Code, *errdetails.ErrorInfo, *status.Status) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("not a status error: %v", err)
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return st.Code(), info, st
		}
	}
	return st.Code(), nil, st
}

// wantErr checks a call's error: its code and ErrorInfo reason.
func wantErr(t *testing.T, err error, code codes.Code, reason reason) *status.Status {
	t.Helper()
	if err == nil {
		t.Fatalf("call succeeded; want %v %s", code, reason)
	}
	got, info, st := errInfo(t, err)
	if got != code || info.GetReason() != reason.String() || info.GetDomain() != ErrorDomain {
		t.Fatalf("error = %v (reason %q, domain %q); want %v %s", err, info.GetReason(), info.GetDomain(), code, reason)
	}
	return st
}

func retryInfo(st *status.Status) *errdetails.RetryInfo {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri
		}
	}
	return nil
}

func badRequest(st *status.Status) *errdetails.BadRequest {
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			return br
		}
	}
	return nil
}

// syncBuffer is a bytes.Buffer safe for the server's concurrent log writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// keyAuth authenticates by the "authorization" metadata: "Bearer admin" is
// an admin, "Bearer <name>" the client <name>; anything else fails.
type keyAuth struct{}

func (keyAuth) Authenticate(ctx context.Context) (broker.Caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get("authorization")
	if len(v) != 1 || !strings.HasPrefix(v[0], "Bearer ") {
		return broker.Caller{}, errors.New("no bearer key: SECRET-auth-detail")
	}
	name := strings.TrimPrefix(v[0], "Bearer ")
	switch name {
	case "admin":
		return broker.Caller{ID: "admin", Admin: true}, nil
	case "banned":
		return broker.Caller{}, broker.ErrPermissionDenied
	case "", "bad":
		return broker.Caller{}, errors.New("unknown key: SECRET-auth-detail")
	}
	return broker.Caller{ID: name}, nil
}

func withKey(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

func fakeidpTTL(d time.Duration) fakeidp.Options {
	return fakeidp.Options{AccessTokenTTL: d}
}
