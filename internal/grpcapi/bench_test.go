package grpcapi

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// BenchmarkGetToken is a cached GetToken through the whole server (bufconn,
// interceptors, access log at Info, so OK calls are not written).
func BenchmarkGetToken(b *testing.B) {
	e := newEnv(b, envOptions{opts: Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}})
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
	for b.Loop() {
		if _, err := e.tok.GetToken(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkToStatus is the error path's conversion of a broker error.
func BenchmarkToStatus(b *testing.B) {
	err := &broker.Error{Kind: broker.ErrRateLimited, CredentialID: "c", RetryAfter: 1e9, Detail: "x"}
	b.ReportAllocs()
	for b.Loop() {
		_ = toStatus(err, "c")
	}
}
