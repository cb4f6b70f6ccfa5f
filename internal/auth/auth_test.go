package auth_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/auth/authtest"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// pki is the CA, server certificate and client certificates of a test.
type pki struct {
	ca                         *authtest.CA
	server                     *authtest.Pair
	svcB, svcC, stranger, twin *authtest.Pair
	foreign                    *authtest.Pair // signed by another CA
	caFile, certFile, keyFile  string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	must := func(p *authtest.Pair, err error) *authtest.Pair {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca, err := authtest.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	other, err := authtest.NewCA("other CA")
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{
		ca:       ca,
		server:   must(ca.Server()),
		svcB:     must(ca.Client("ignored-cn", "spiffe://example.org/svc-b")),
		svcC:     must(ca.Client("svc-c.internal")),
		stranger: must(ca.Client("stranger", "spiffe://example.org/stranger")),
		twin:     must(ca.Client("svc-c.internal", "spiffe://example.org/svc-b", "spiffe://example.org/other")),
		foreign:  must(other.Client("svc-c.internal", "spiffe://example.org/svc-b")),
	}
	dir := t.TempDir()
	if p.caFile, err = ca.WriteCert(dir, "ca.crt"); err != nil {
		t.Fatal(err)
	}
	if p.certFile, p.keyFile, err = p.server.Write(dir, "server"); err != nil {
		t.Fatal(err)
	}
	return p
}

// keys of the registered clients.
type keys struct{ workerA, ops, svcB string }

func registry(t *testing.T) (*auth.Authenticator, keys) {
	t.Helper()
	var k keys
	var hA, hOps, hB string
	var err error
	for _, p := range []struct{ key, hash *string }{{&k.workerA, &hA}, {&k.ops, &hOps}, {&k.svcB, &hB}} {
		if *p.key, *p.hash, err = auth.GenerateKey(); err != nil {
			t.Fatal(err)
		}
	}
	clients, err := auth.ParseClients([]byte(`{"clients": [
		{"id": "worker-a", "key_sha256": "` + hA + `"},
		{"id": "ops", "key_sha256": "` + hOps + `", "admin": true},
		{"id": "svc-b", "key_sha256": "` + hB + `", "cert_identity": "spiffe://example.org/svc-b"},
		{"id": "svc-c", "cert_identity": "svc-c.internal"}
	]}`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := auth.NewAuthenticator(clients)
	if err != nil {
		t.Fatal(err)
	}
	return a, k
}

// serve runs a gRPC server on 127.0.0.1 with the health service behind an
// interceptor that authenticates every call with a and returns the caller in
// the "x-caller" and "x-admin" headers. It is stopped when the test ends.
func serve(t *testing.T, a *auth.Authenticator, cfg *tls.Config) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := []grpc.ServerOption{grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		c, err := a.Authenticate(ctx)
		if err != nil {
			var be *broker.Error
			if !errors.As(err, &be) || !errors.Is(err, broker.ErrUnauthenticated) {
				return nil, status.Errorf(codes.Internal, "Authenticate returned %T %v", err, err)
			}
			return nil, status.Error(codes.Unauthenticated, err.Error())
		}
		admin := "false"
		if c.Admin {
			admin = "true"
		}
		if err := grpc.SetHeader(ctx, metadata.Pairs("x-caller", c.ID, "x-admin", admin)); err != nil {
			return nil, err
		}
		return h(ctx, req)
	})}
	if cfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	s := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(s, health.NewServer())
	done := make(chan error, 1)
	go func() { done <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

// call makes one health check as a client presenting cert (nil: none) over
// TLS (or plaintext when p is nil) with the given authorization values, and
// returns the caller the server saw.
func call(t *testing.T, addr string, p *pki, cert *authtest.Pair, authz ...string) (caller string, admin bool, err error) {
	t.Helper()
	var creds credentials.TransportCredentials
	if p == nil {
		creds = insecureCreds()
	} else {
		cfg := &tls.Config{RootCAs: p.ca.Pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
		if cert != nil {
			// Sent even when the server's CA list does not match, as a
			// client with a foreign certificate would.
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert.TLS, nil }
		}
		creds = credentials.NewTLS(cfg)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, v := range authz {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", v)
	}
	var hdr metadata.MD
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&hdr))
	if err != nil {
		return "", false, err
	}
	return strings.Join(hdr.Get("x-caller"), ","), strings.Join(hdr.Get("x-admin"), ",") == "true", nil
}

func TestAuthenticateMatrix(t *testing.T) {
	p := newPKI(t)
	a, k := registry(t)
	cfg, err := auth.ServerTLS(p.certFile, p.keyFile, p.caFile, false)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, a, cfg)
	unknown, _, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		cert      *authtest.Pair
		authz     []string
		want      string // caller; "" means UNAUTHENTICATED
		wantAdmin bool
	}{
		{name: "no credentials"},
		{name: "worker key", authz: []string{"Bearer " + k.workerA}, want: "worker-a"},
		{name: "admin key", authz: []string{"Bearer " + k.ops}, want: "ops", wantAdmin: true},
		{name: "scheme in lower case", authz: []string{"bearer " + k.workerA}, want: "worker-a"},
		{name: "scheme in upper case, extra spaces", authz: []string{"BEARER   " + k.workerA + " "}, want: "worker-a"},
		{name: "unknown key", authz: []string{"Bearer " + unknown}},
		{name: "key without scheme", authz: []string{k.workerA}},
		{name: "basic scheme", authz: []string{"Basic " + k.workerA}},
		{name: "empty bearer", authz: []string{"Bearer "}},
		{name: "hash instead of key", authz: []string{"Bearer " + auth.HashKey(k.workerA)}},
		{name: "two authorization values", authz: []string{"Bearer " + k.workerA, "Bearer " + k.workerA}},
		{name: "oversized key", authz: []string{"Bearer " + strings.Repeat("k", 4096)}},
		{name: "cert URI SAN", cert: p.svcB, want: "svc-b"},
		{name: "cert CN", cert: p.svcC, want: "svc-c"},
		{name: "cert and key of the same client", cert: p.svcB, authz: []string{"Bearer " + k.svcB}, want: "svc-b"},
		{name: "cert and key of different clients", cert: p.svcB, authz: []string{"Bearer " + k.workerA}},
		{name: "cert CN and key of different clients", cert: p.svcC, authz: []string{"Bearer " + k.ops}},
		{name: "good cert, unknown key", cert: p.svcB, authz: []string{"Bearer " + unknown}},
		{name: "good cert, malformed authorization", cert: p.svcB, authz: []string{"Token x"}},
		{name: "unregistered cert alone", cert: p.stranger},
		{name: "unregistered cert with a key", cert: p.stranger, authz: []string{"Bearer " + k.workerA}, want: "worker-a"},
		{name: "cert with two URI SANs names no one", cert: p.twin},
		{name: "cert with two URI SANs and a key", cert: p.twin, authz: []string{"Bearer " + k.ops}, want: "ops", wantAdmin: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, admin, err := call(t, addr, p, tt.cert, tt.authz...)
			if tt.want == "" {
				if status.Code(err) != codes.Unauthenticated {
					t.Fatalf("got caller %q, err %v; want UNAUTHENTICATED", got, err)
				}
				msg := status.Convert(err).Message()
				for _, secret := range []string{k.workerA, k.ops, k.svcB, unknown, auth.HashKey(k.workerA)} {
					if strings.Contains(msg, secret) || strings.Contains(msg, secret[4:20]) {
						t.Fatalf("error %q echoes a key", msg)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("call: %v; want caller %q", err, tt.want)
			}
			if got != tt.want || admin != tt.wantAdmin {
				t.Fatalf("caller %q admin %v; want %q admin %v", got, admin, tt.want, tt.wantAdmin)
			}
		})
	}

	t.Run("cert from another CA", func(t *testing.T) {
		_, _, err := call(t, addr, p, p.foreign, "Bearer "+k.workerA)
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("err %v; want the handshake to fail (UNAVAILABLE)", err)
		}
	})
}

func TestRequireClientCert(t *testing.T) {
	p := newPKI(t)
	a, k := registry(t)
	cfg, err := auth.ServerTLS(p.certFile, p.keyFile, p.caFile, true)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, a, cfg)
	if _, _, err := call(t, addr, p, nil, "Bearer "+k.workerA); status.Code(err) != codes.Unavailable {
		t.Fatalf("without a certificate: %v; want the handshake to fail", err)
	}
	if got, _, err := call(t, addr, p, p.svcC); err != nil || got != "svc-c" {
		t.Fatalf("with a certificate: caller %q, %v; want svc-c", got, err)
	}
}

func TestServerTLSWithoutClientCA(t *testing.T) {
	p := newPKI(t)
	a, k := registry(t)
	cfg, err := auth.ServerTLS(p.certFile, p.keyFile, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 || cfg.ClientAuth != tls.NoClientCert {
		t.Fatalf("MinVersion %x ClientAuth %v", cfg.MinVersion, cfg.ClientAuth)
	}
	addr := serve(t, a, cfg)
	if got, _, err := call(t, addr, p, nil, "Bearer "+k.workerA); err != nil || got != "worker-a" {
		t.Fatalf("bearer over TLS: caller %q, %v", got, err)
	}
	// A certificate nobody verified is not an identity.
	if _, _, err := call(t, addr, p, p.svcB); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("unverified certificate: %v; want UNAUTHENTICATED", err)
	}
}

func TestPlaintextBearer(t *testing.T) {
	a, k := registry(t)
	addr := serve(t, a, nil)
	if got, _, err := call(t, addr, nil, nil, "Bearer "+k.workerA); err != nil || got != "worker-a" {
		t.Fatalf("caller %q, %v", got, err)
	}
	if _, _, err := call(t, addr, nil, nil); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no key: %v", err)
	}
}

func TestServerTLSErrors(t *testing.T) {
	p := newPKI(t)
	dir := t.TempDir()
	junk := dir + "/junk.pem"
	if err := writeFile(junk, "not a certificate"); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name                string
		cert, key, ca       string
		require             bool
		wantInMsg, notInMsg string
	}{
		{name: "no cert", key: p.keyFile},
		{name: "missing cert file", cert: dir + "/missing.crt", key: p.keyFile, wantInMsg: "missing.crt"},
		{name: "key is not a key", cert: p.certFile, key: junk},
		{name: "CA file without certificates", cert: p.certFile, key: p.keyFile, ca: junk, wantInMsg: "no PEM certificate"},
		{name: "missing CA", cert: p.certFile, key: p.keyFile, ca: dir + "/missing-ca.crt"},
		{name: "require without CA", cert: p.certFile, key: p.keyFile, require: true, wantInMsg: "client CA"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := auth.ServerTLS(tt.cert, tt.key, tt.ca, tt.require)
			if !errors.Is(err, auth.ErrTLSConfig) {
				t.Fatalf("err %v; want ErrTLSConfig", err)
			}
			if !strings.Contains(err.Error(), tt.wantInMsg) {
				t.Fatalf("err %q does not say %q", err, tt.wantInMsg)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY-----") || strings.Contains(err.Error(), string(p.server.KeyPEM[40:80])) {
				t.Fatalf("err %q quotes key material", err)
			}
		})
	}
}
