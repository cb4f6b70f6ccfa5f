package auth_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strconv"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/auth/authtest"
)

// BenchmarkAuthenticate measures the hot path of every call, on contexts as
// gRPC builds them, with a registry of 1000 clients.
func BenchmarkAuthenticate(b *testing.B) {
	clients := make([]auth.Client, 0, 1001)
	var key string
	for i := range 1000 {
		k, h, err := auth.GenerateKey()
		if err != nil {
			b.Fatal(err)
		}
		if i == 500 {
			key = k
		}
		clients = append(clients, auth.Client{ID: "worker-" + strconv.Itoa(i), KeySHA256: []string{h}})
	}
	clients = append(clients, auth.Client{ID: "svc-b", CertIdentity: "spiffe://example.org/svc-b"})
	a, err := auth.NewAuthenticator(clients)
	if err != nil {
		b.Fatal(err)
	}
	ca, err := authtest.NewCA("bench")
	if err != nil {
		b.Fatal(err)
	}
	cert, err := ca.Client("", "spiffe://example.org/svc-b")
	if err != nil {
		b.Fatal(err)
	}
	tlsPeer := &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
		VerifiedChains: [][]*x509.Certificate{{cert.Cert, ca.Cert}},
	}}}

	run := func(name string, ctx context.Context, want string) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c, err := a.Authenticate(ctx)
				if err != nil || c.ID != want {
					b.Fatalf("Authenticate = %+v, %v", c, err)
				}
			}
		})
	}
	run("bearer", metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+key)), clients[500].ID)
	run("mtls", peer.NewContext(context.Background(), tlsPeer), "svc-b")
}
