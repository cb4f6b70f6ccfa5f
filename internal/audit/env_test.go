package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/audit"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

const (
	idpClientID = "audit-test-client"
	idpSecret   = "PRIMARY-CLIENT-SECRET-5c1e"
)

var (
	admin  = broker.Caller{ID: "ops", Admin: true}
	worker = broker.Caller{ID: "worker-a"}
)

func as(c broker.Caller) context.Context { return broker.NewContext(context.Background(), c) }

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// events returns the captured JSON log lines with the given msg.
func (b *syncBuffer) events(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if ev["msg"] == msg {
			out = append(out, ev)
		}
	}
	return out
}

// env is a real Broker over a memstore and a fake IdP, whose audit Log
// writes JSON at debug level into buf.
type env struct {
	b     *broker.Broker
	idp   *fakeidp.Server
	store *memstore.Store
	log   *audit.Log
	buf   *syncBuffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	buf := &syncBuffer{}
	e := &env{
		idp:   fakeidptest.Start(t, fakeidp.Options{Clients: map[string]string{idpClientID: idpSecret}}),
		store: memstore.New(),
		buf:   buf,
		log:   audit.New(slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))),
	}
	b, err := broker.New(e.store, &upstream.Client{}, broker.Config{
		Observer:       e.log,
		RefreshTimeout: 2 * time.Second,
		ForceInterval:  time.Nanosecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	e.b = b
	return e
}

// adminServer is a minimal tokenbroker.v1.AdminService over a Broker, as the
// transport has one: it returns the broker's errors as they are.
type adminServer struct {
	pb.UnimplementedAdminServiceServer
	b *broker.Broker
}

func view(r *broker.Record) *pb.Credential {
	st := pb.State_ACTIVE
	if r.State == broker.StateReauthRequired {
		st = pb.State_REAUTH_REQUIRED
	}
	return &pb.Credential{Id: r.ID, TokenUrl: r.TokenURL, ClientId: r.ClientID, Generation: r.Generation, State: st}
}

func (s *adminServer) PutCredential(ctx context.Context, req *pb.PutCredentialRequest) (*pb.PutCredentialResponse, error) {
	c := req.GetCredential()
	rec, err := s.b.PutCredential(ctx, broker.Credential{
		ID: c.GetId(), TokenURL: c.GetTokenUrl(), ClientID: c.GetClientId(),
		ClientSecrets:  append([]string{c.GetClientSecret()}, c.GetFallbackClientSecrets()...),
		Scopes:         c.GetScopes(),
		AllowedClients: c.GetAllowedClients(),
	}, c.GetRefreshToken())
	if err != nil {
		return nil, err
	}
	return &pb.PutCredentialResponse{Credential: view(rec)}, nil
}

func (s *adminServer) GetCredential(ctx context.Context, req *pb.GetCredentialRequest) (*pb.GetCredentialResponse, error) {
	rec, err := s.b.GetCredential(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return &pb.GetCredentialResponse{Credential: view(rec)}, nil
}

func (s *adminServer) ListCredentials(ctx context.Context, req *pb.ListCredentialsRequest) (*pb.ListCredentialsResponse, error) {
	recs, next, err := s.b.ListCredentials(ctx, int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp := &pb.ListCredentialsResponse{NextPageToken: next}
	for _, r := range recs {
		resp.Credentials = append(resp.Credentials, view(r))
	}
	return resp, nil
}

func (s *adminServer) DeleteCredential(ctx context.Context, req *pb.DeleteCredentialRequest) (*pb.DeleteCredentialResponse, error) {
	if err := s.b.DeleteCredential(ctx, req.GetId()); err != nil {
		return nil, err
	}
	return &pb.DeleteCredentialResponse{}, nil
}

func (s *adminServer) RefreshCredential(ctx context.Context, req *pb.RefreshCredentialRequest) (*pb.RefreshCredentialResponse, error) {
	rec, err := s.b.RefreshCredential(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return &pb.RefreshCredentialResponse{Credential: view(rec)}, nil
}

// codeOf is the test's error table, as the transport has one.
func codeOf(err error) codes.Code {
	for _, row := range []struct {
		err  error
		code codes.Code
	}{
		{broker.ErrNotFound, codes.NotFound},
		{broker.ErrInvalidArgument, codes.InvalidArgument},
		{broker.ErrPermissionDenied, codes.PermissionDenied},
		{broker.ErrReauthRequired, codes.FailedPrecondition},
		{broker.ErrRateLimited, codes.ResourceExhausted},
	} {
		if errors.Is(err, row.err) {
			return row.code
		}
	}
	return codes.Internal
}

// serveAdmin runs the AdminService of e on 127.0.0.1 behind an outer
// interceptor that takes the caller from the "x-caller" and "x-admin"
// metadata (standing in for authentication) and converts errors with
// codeOf, and the audit interceptor inside it. It returns a client.
func (e *env) serveAdmin(t *testing.T) pb.AdminServiceClient {
	t.Helper()
	outer := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if ids := md.Get("x-caller"); len(ids) == 1 {
			ctx = broker.NewContext(ctx, broker.Caller{ID: ids[0], Admin: strings.Join(md.Get("x-admin"), "") == "1"})
		}
		resp, err := h(ctx, req)
		if err != nil {
			return nil, status.Error(codeOf(err), err.Error())
		}
		return resp, nil
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(outer, e.log.UnaryServerInterceptor(codeOf)))
	pb.RegisterAdminServiceServer(s, &adminServer{b: e.b})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		s.Stop()
		<-done
	})
	return pb.NewAdminServiceClient(conn)
}

// rpc returns a context for a call as c, with a deadline.
func rpc(t *testing.T, c broker.Caller) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	adminFlag := "0"
	if c.Admin {
		adminFlag = "1"
	}
	return metadata.AppendToOutgoingContext(ctx, "x-caller", c.ID, "x-admin", adminFlag)
}
