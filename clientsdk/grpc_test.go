package clientsdk_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/clientsdk"
)

// protected is another service, guarded by broker tokens: grpc.health.v1
// (unary Check, server-streaming Watch) and a bidirectional Echo. It accepts
// the broker's current token (or none, when rejectAll is set) and records the
// authorization each call carried.
type protected struct {
	healthpb.UnimplementedHealthServer
	broker    *fakeBroker
	rejectAll atomic.Bool

	mu   sync.Mutex
	auth []string
}

func (p *protected) check(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	p.mu.Lock()
	p.auth = append(p.auth, auth...)
	p.mu.Unlock()
	if p.rejectAll.Load() || len(auth) != 1 || auth[0] != "Bearer "+p.broker.current() {
		return status.Error(codes.Unauthenticated, "token rejected")
	}
	return nil
}

func (p *protected) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.auth...)
}

func (p *protected) unaryAuth(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := p.check(ctx); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (p *protected) streamAuth(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := p.check(ss.Context()); err != nil {
		return err
	}
	return h(srv, ss)
}

func (p *protected) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (p *protected) Watch(req *healthpb.HealthCheckRequest, s grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	return s.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
}

// echoDesc is a handwritten bidirectional service: it answers each request
// with SERVING until the client closes.
var echoDesc = grpc.ServiceDesc{
	ServiceName: "clientsdktest.Echo",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Bidi",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(_ any, ss grpc.ServerStream) error {
			for {
				var req healthpb.HealthCheckRequest
				if err := ss.RecvMsg(&req); err == io.EOF {
					return nil
				} else if err != nil {
					return err
				}
				if err := ss.SendMsg(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
					return err
				}
			}
		},
	}},
}

var bidiDesc = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

type grpcFixture struct {
	broker *fakeBroker
	svc    *protected
	ts     *clientsdk.TokenSource
	dialer grpc.DialOption
}

// newGRPCFixture caches tok-1 in the TokenSource, then lets the broker move
// on to tok-2, so the first call carries a token the service rejects.
func newGRPCFixture(t *testing.T) *grpcFixture {
	t.Helper()
	f := newFakeBroker()
	ts := startBroker(t, f).TokenSource("cred")
	if tok := mustToken(t, ts); tok.AccessToken != "tok-1" {
		t.Fatalf("first token %q", tok.AccessToken)
	}
	f.rotate()
	svc := &protected{broker: f}
	dialer := serveBufconn(t, func(s *grpc.Server) {
		healthpb.RegisterHealthServer(s, svc)
		s.RegisterService(&echoDesc, nil)
	}, grpc.UnaryInterceptor(svc.unaryAuth), grpc.StreamInterceptor(svc.streamAuth))
	return &grpcFixture{broker: f, svc: svc, ts: ts, dialer: dialer}
}

// conn dials the protected service over plain text with opts.
func (fx *grpcFixture) conn(t *testing.T, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{fx.dialer, grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	conn, err := grpc.NewClient(bufconnTarget, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// interceptedConn dials with both client interceptors.
func (fx *grpcFixture) interceptedConn(t *testing.T, opts ...clientsdk.CredentialsOption) *grpc.ClientConn {
	return fx.conn(t,
		grpc.WithUnaryInterceptor(clientsdk.UnaryClientInterceptor(fx.ts, opts...)),
		grpc.WithStreamInterceptor(clientsdk.StreamClientInterceptor(fx.ts, opts...)))
}

func (fx *grpcFixture) wantSeen(t *testing.T, want ...string) {
	t.Helper()
	got := fx.svc.seen()
	if len(got) != len(want) {
		t.Fatalf("service saw %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("service saw %q, want %q", got, want)
		}
	}
}

func (fx *grpcFixture) wantRejected(t *testing.T, want ...string) {
	t.Helper()
	got := fx.broker.rejectedTokens()
	if len(got) != len(want) {
		t.Fatalf("invalidated %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("invalidated %q, want %q", got, want)
		}
	}
}

func TestUnaryInterceptorRetriesOnceWithNewToken(t *testing.T) {
	fx := newGRPCFixture(t)
	hc := healthpb.NewHealthClient(fx.interceptedConn(t, clientsdk.AllowInsecure()))
	resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check: %v, %v", resp, err)
	}
	fx.wantSeen(t, "Bearer tok-1", "Bearer tok-2")
	fx.wantRejected(t, "tok-1")

	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	fx.wantSeen(t, "Bearer tok-1", "Bearer tok-2", "Bearer tok-2")
	fx.wantRejected(t, "tok-1")
}

func TestUnaryInterceptorPassesSecondUnauthenticatedThrough(t *testing.T) {
	fx := newGRPCFixture(t)
	fx.svc.rejectAll.Store(true)
	hc := healthpb.NewHealthClient(fx.interceptedConn(t, clientsdk.AllowInsecure()))
	_, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("err = %v, want Unauthenticated", err)
	}
	fx.wantSeen(t, "Bearer tok-1", "Bearer tok-2")
	fx.wantRejected(t, "tok-1")
}

// TestUnaryInterceptorNothingNewerReturnsTheOriginalError: when the broker
// has no other token, the caller gets the service's own Unauthenticated,
// not the broker's answer, and the call is not made again.
func TestUnaryInterceptorNothingNewerReturnsTheOriginalError(t *testing.T) {
	for _, tc := range nothingNewer {
		t.Run(tc.name, func(t *testing.T) {
			fx := newGRPCFixture(t)
			rejected := tc.setup(t, fx.broker, fx.ts, &fx.svc.rejectAll)
			hc := healthpb.NewHealthClient(fx.interceptedConn(t, clientsdk.AllowInsecure()))
			_, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
			wantOriginalUnauthenticated(t, err)
			fx.wantSeen(t, "Bearer "+rejected)
		})
	}
}

// TestStreamInterceptorNothingNewerReturnsTheOriginalError is the same for
// a server-streaming call.
func TestStreamInterceptorNothingNewerReturnsTheOriginalError(t *testing.T) {
	for _, tc := range nothingNewer {
		t.Run(tc.name, func(t *testing.T) {
			fx := newGRPCFixture(t)
			rejected := tc.setup(t, fx.broker, fx.ts, &fx.svc.rejectAll)
			hc := healthpb.NewHealthClient(fx.interceptedConn(t, clientsdk.AllowInsecure()))
			stream, err := hc.Watch(context.Background(), &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = stream.Recv()
			wantOriginalUnauthenticated(t, err)
			fx.wantSeen(t, "Bearer "+rejected)
		})
	}
}

// wantOriginalUnauthenticated checks that err is the protected service's
// own refusal, not an error of the broker.
func wantOriginalUnauthenticated(t *testing.T, err error) {
	t.Helper()
	var be *clientsdk.Error
	if st, _ := status.FromError(err); st.Code() != codes.Unauthenticated || st.Message() != "token rejected" ||
		errors.As(err, &be) || errors.Is(err, clientsdk.ErrRateLimited) {
		t.Fatalf("err = %v; want the service's Unauthenticated \"token rejected\"", err)
	}
}

func TestUnaryInterceptorRefusesInsecureTransport(t *testing.T) {
	fx := newGRPCFixture(t)
	hc := healthpb.NewHealthClient(fx.interceptedConn(t)) // no AllowInsecure
	_, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("err = %v, want Unauthenticated", err)
	}
	fx.wantSeen(t)     // the token never left
	fx.wantRejected(t) // and was not blamed
}

func TestUnaryInterceptorBrokerError(t *testing.T) {
	fx := newGRPCFixture(t)
	fx.broker.failNext(brokerError(codes.FailedPrecondition, "REAUTH_REQUIRED"))
	hc := healthpb.NewHealthClient(fx.interceptedConn(t, clientsdk.AllowInsecure()))
	_, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if !errors.Is(err, clientsdk.ErrReauthRequired) {
		t.Fatalf("err = %v, want ErrReauthRequired", err)
	}
	fx.wantSeen(t, "Bearer tok-1")
}

func TestStreamInterceptorReopensServerStreamOnce(t *testing.T) {
	fx := newGRPCFixture(t)
	hc := healthpb.NewHealthClient(fx.interceptedConn(t, clientsdk.AllowInsecure()))
	stream, err := hc.Watch(context.Background(), &healthpb.HealthCheckRequest{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Recv: %v, %v", resp, err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("second Recv: %v, want io.EOF", err)
	}
	fx.wantSeen(t, "Bearer tok-1", "Bearer tok-2")
	fx.wantRejected(t, "tok-1")
}

func TestStreamInterceptorPassesSecondUnauthenticatedThrough(t *testing.T) {
	fx := newGRPCFixture(t)
	fx.svc.rejectAll.Store(true)
	hc := healthpb.NewHealthClient(fx.interceptedConn(t, clientsdk.AllowInsecure()))
	stream, err := hc.Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Recv: %v, want Unauthenticated", err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Recv again: %v, want Unauthenticated", err)
	}
	fx.wantSeen(t, "Bearer tok-1", "Bearer tok-2")
	fx.wantRejected(t, "tok-1")
}

func TestStreamInterceptorReportsButDoesNotReplayBidi(t *testing.T) {
	fx := newGRPCFixture(t)
	conn := fx.interceptedConn(t, clientsdk.AllowInsecure())
	method := "/clientsdktest.Echo/Bidi"

	stream, err := conn.NewStream(context.Background(), bidiDesc, method)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&healthpb.HealthCheckRequest{}); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	var resp healthpb.HealthCheckResponse
	if err := stream.RecvMsg(&resp); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("RecvMsg: %v, want Unauthenticated", err)
	}
	fx.wantSeen(t, "Bearer tok-1")
	fx.wantRejected(t, "tok-1")

	// The next stream carries the new token.
	stream, err = conn.NewStream(context.Background(), bidiDesc, method)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := stream.RecvMsg(&resp); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := stream.RecvMsg(&resp); err != io.EOF {
		t.Fatalf("RecvMsg after CloseSend: %v, want io.EOF", err)
	}
	fx.wantSeen(t, "Bearer tok-1", "Bearer tok-2")
	fx.wantRejected(t, "tok-1")
}

func TestPerRPCCredentials(t *testing.T) {
	fx := newGRPCFixture(t)
	if _, err := fx.ts.Invalidate(context.Background(), "tok-1"); err != nil { // catch up with tok-2
		t.Fatal(err)
	}
	if !clientsdk.PerRPCCredentials(fx.ts).RequireTransportSecurity() {
		t.Fatal("PerRPCCredentials does not require transport security by default")
	}

	conn := fx.conn(t, grpc.WithPerRPCCredentials(clientsdk.PerRPCCredentials(fx.ts, clientsdk.AllowInsecure())))
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	fx.wantSeen(t, "Bearer tok-2")

	// Per call, over plain text, without AllowInsecure: refused, nothing sent.
	_, err := healthpb.NewHealthClient(fx.conn(t)).Check(context.Background(), &healthpb.HealthCheckRequest{},
		grpc.PerRPCCredentials(clientsdk.PerRPCCredentials(fx.ts)))
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("err = %v, want Unauthenticated", err)
	}
	fx.wantSeen(t, "Bearer tok-2")
}
