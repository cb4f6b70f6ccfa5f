package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// seen records what the interceptors of a test saw, in order.
type seen struct {
	mu    sync.Mutex
	calls []string
}

func (s *seen) add(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, fmt.Sprintf(format, args...))
}

func (s *seen) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.calls
	s.calls = nil
	return out
}

// recorder is an interceptor that records the caller it sees before the
// call and the code the call's error will be sent with after it.
func recorder(name string, s *seen) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		c, ok := broker.CallerFrom(ctx)
		s.add("%s before %s caller=%q/%v", name, info.FullMethod, c.ID, ok)
		resp, err := handler(ctx, req)
		s.add("%s after %s", name, Code(err))
		return resp, err
	}
}

// TestUnaryInterceptors: Options.UnaryInterceptors run in order, inside
// authentication (they see the caller; unauthenticated calls never reach
// them) and outside the per-client limit (they see its refusals), and their
// errors and panics go through the error table and the recovery.
func TestUnaryInterceptors(t *testing.T) {
	var s seen
	deny := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if info.FullMethod == pb.AdminService_DeleteCredential_FullMethodName {
			return nil, &broker.Error{Kind: broker.ErrPermissionDenied, Detail: "deletes are switched off"}
		}
		if info.FullMethod == pb.AdminService_GetCredential_FullMethodName {
			panic("interceptor bug")
		}
		return handler(ctx, req)
	}
	lim := &countLimiter{n: 1, calls: map[string]int{}}
	e := newEnv(t, envOptions{cfg: broker.Config{ForceInterval: time.Millisecond}, opts: Options{
		Authenticator:     keyAuth{},
		Limiter:           lim,
		UnaryInterceptors: []grpc.UnaryServerInterceptor{recorder("outer", &s), nil, recorder("inner", &s), deny},
	}})
	ctx := ctxT(t)
	c := e.credential("intercepted")
	c.AllowedClients = []string{"w1"}
	if _, err := e.adm.PutCredential(withKey(ctx, "admin"), &pb.PutCredentialRequest{Credential: c}); err != nil {
		t.Fatal(err)
	}
	put := pb.AdminService_PutCredential_FullMethodName
	if got, want := s.take(), []string{
		`outer before ` + put + ` caller="admin"/true`,
		`inner before ` + put + ` caller="admin"/true`,
		`inner after OK`,
		`outer after OK`,
	}; !slices.Equal(got, want) {
		t.Errorf("interceptors saw\n%q\nwant\n%q", got, want)
	}

	// Unauthenticated: refused before the interceptors.
	_, err := e.tok.GetToken(ctx, &pb.GetTokenRequest{CredentialId: "intercepted"})
	wantErr(t, err, codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED)
	if got := s.take(); len(got) != 0 {
		t.Errorf("an unauthenticated call reached the interceptors: %q", got)
	}

	// The broker's own refusal is seen with the code it is sent with.
	_, err = e.tok.GetToken(withKey(ctx, "w2"), &pb.GetTokenRequest{CredentialId: "intercepted"})
	wantErr(t, err, codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED)
	if got := s.take(); len(got) != 4 || got[2] != "inner after PermissionDenied" {
		t.Errorf("interceptors saw %q; want PermissionDenied after the call", got)
	}

	// The per-client limit runs inside them.
	inv := &pb.InvalidateTokenRequest{CredentialId: "intercepted", RejectedAccessToken: "stale"}
	if _, err := e.tok.InvalidateToken(withKey(ctx, "w1"), inv); err != nil {
		t.Fatal(err)
	}
	s.take()
	_, err = e.tok.InvalidateToken(withKey(ctx, "w1"), inv)
	st := wantErr(t, err, codes.ResourceExhausted, pb.ErrorReasonEnum_RATE_LIMITED)
	if retryInfo(st) == nil {
		t.Errorf("no RetryInfo")
	}
	if got := s.take(); len(got) != 4 || got[2] != "inner after ResourceExhausted" || got[3] != "outer after ResourceExhausted" {
		t.Errorf("interceptors saw %q; want the limit's refusal", got)
	}

	// An interceptor's broker error goes through the table; its panic is
	// recovered as INTERNAL.
	_, err = e.adm.DeleteCredential(withKey(ctx, "admin"), &pb.DeleteCredentialRequest{Id: "intercepted"})
	wantErr(t, err, codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED)
	if e.stored(t, "intercepted") == nil {
		t.Fatalf("the handler ran after the interceptor refused")
	}
	_, err = e.adm.GetCredential(withKey(ctx, "admin"), &pb.GetCredentialRequest{Id: "intercepted"})
	wantErr(t, err, codes.Internal, pb.ErrorReasonEnum_INTERNAL)
	s.take()

	// Public services run through them without a caller.
	if _, err := healthpb.NewHealthClient(e.conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := s.take(); len(got) != 4 || got[0] != `outer before /grpc.health.v1.Health/Check caller=""/false` {
		t.Errorf("health: interceptors saw %q", got)
	}
}

// TestCode: Code gives the code toStatus sends, for every kind of error.
func TestCode(t *testing.T) {
	errs := []error{
		nil,
		errors.New("anything"),
		status.Error(codes.AlreadyExists, "from grpc"),
		fmt.Errorf("wrapped: %w", status.Error(codes.Aborted, "from grpc")),
		&broker.Error{Kind: broker.ErrStoreUnavailable, Err: context.DeadlineExceeded},
		fmt.Errorf("get: %w", &broker.Error{Kind: broker.ErrReauthRequired}),
	}
	for _, row := range errorTable {
		errs = append(errs, row.err, &broker.Error{Kind: row.err, CredentialID: "x"})
	}
	for _, err := range errs {
		if got, want := Code(err), toStatus(err, "").Code(); got != want {
			t.Errorf("Code(%v) = %v; toStatus sends %v", err, got, want)
		}
	}
	if Code(nil) != codes.OK || Code(errors.New("x")) != codes.Internal || Code(broker.ErrRateLimited) != codes.ResourceExhausted {
		t.Errorf("Code: wrong basics")
	}
}
