package grpcapi

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"

	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// BenchmarkGetTokenTraced is BenchmarkGetToken with tracing on, as
// internal/server installs it when OTLP export is configured: otelgrpc on
// the server, every call sampled, spans to an in-memory exporter. Tracing
// off installs nothing: that is BenchmarkGetToken.
func BenchmarkGetTokenTraced(b *testing.B) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	e := newEnv(b, envOptions{opts: Options{
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		ServerOptions: []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp)))},
	}})
	put := e.credential("bench")
	if _, err := e.adm.PutCredential(context.Background(), &pb.PutCredentialRequest{Credential: put}); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	req := &pb.GetTokenRequest{CredentialId: "bench"}
	if _, err := e.tok.GetToken(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := e.tok.GetToken(ctx, req); err != nil {
			b.Fatal(err)
		}
		if i%1024 == 0 {
			exp.Reset() // keep the exporter's memory bounded
		}
	}
}
