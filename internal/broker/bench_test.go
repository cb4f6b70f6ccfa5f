package broker_test

import (
	"context"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// BenchmarkGetTokenCached is the hot path: a token served from the local
// cache, with authorization on.
func BenchmarkGetTokenCached(b *testing.B) {
	e := newBenchEnv(b)
	ctx := broker.NewContext(context.Background(), broker.Caller{ID: "worker"})
	if _, err := e.GetToken(ctx, "cred", 0); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.GetToken(ctx, "cred", 0); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGetTokenCachedParallel(b *testing.B) {
	e := newBenchEnv(b)
	ctx := broker.NewContext(context.Background(), broker.Caller{ID: "worker"})
	if _, err := e.GetToken(ctx, "cred", 0); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.GetToken(ctx, "cred", 0); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func newBenchEnv(b *testing.B) *broker.Broker {
	idp := fakeidptest.Start(b, fakeidp.Options{Clients: map[string]string{testClientID: testSecret}})
	br, err := broker.New(memstore.New(), &upstream.Client{}, broker.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	admin := broker.NewContext(context.Background(), broker.Caller{ID: "ops", Admin: true})
	if _, err := br.PutCredential(admin, broker.Credential{ID: "cred", TokenURL: idp.TokenURL(), ClientID: testClientID,
		ClientSecrets: []string{testSecret}, AllowedClients: []string{"other", "worker"}}, idp.Seed(testClientID)); err != nil {
		b.Fatal(err)
	}
	return br
}
