package grpcapi

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/tokenbroker/tokenbroker/internal/audit"
	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// BenchmarkUnaryProduction is the server side of a cached GetToken as
// internal/server assembles it (bearer-key authentication, the per-client
// limit, the audit interceptor, request metrics, the access log at Info),
// without the transport: the interceptor, the service and the broker.
func BenchmarkUnaryProduction(b *testing.B) {
	e := newEnv(b, envOptions{})
	key, hash, err := auth.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	a, err := auth.NewAuthenticator([]auth.Client{{ID: "bench", KeySHA256: []string{hash}}})
	if err != nil {
		b.Fatal(err)
	}
	br, err := broker.New(memstore.New(), &upstream.Client{}, broker.Config{Observer: metrics.New(prometheus.NewRegistry(), metrics.Options{})})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	admin := broker.NewContext(context.Background(), broker.Caller{ID: "ops", Admin: true})
	if _, err := br.PutCredential(admin, broker.Credential{ID: "hot", TokenURL: e.idp.TokenURL(), ClientID: testClientID,
		ClientSecrets: []string{testClientSecret}, AllowedClients: []string{"bench"}}, e.idp.Seed(testClientID)); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	m := metrics.New(prometheus.NewRegistry(), metrics.Options{})
	s := NewServer(br, Options{
		Authenticator:     a,
		Limiter:           auth.NewLimiter(10, 20),
		UnaryInterceptors: []grpc.UnaryServerInterceptor{audit.New(log).UnaryServerInterceptor(Code)},
		ObserveCall:       m.ObserveRPC,
		Logger:            log,
	})
	svc := &tokenService{b: br}
	info := &grpc.UnaryServerInfo{Server: svc, FullMethod: pb.TokenService_GetToken_FullMethodName}
	handler := func(ctx context.Context, req any) (any, error) { return svc.GetToken(ctx, req.(*pb.GetTokenRequest)) }
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+key))
	req := &pb.GetTokenRequest{CredentialId: "hot"}
	if _, err := s.unary(ctx, req, info, handler); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.unary(ctx, req, info, handler); err != nil {
			b.Fatal(err)
		}
	}
}
