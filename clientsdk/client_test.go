package clientsdk_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/clientsdk"
	tbv1 "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// dialBroker serves f on bufconn and Dials it with opts (plain text unless
// opts say otherwise).
func dialBroker(t *testing.T, f *fakeBroker, opts ...clientsdk.DialOption) *clientsdk.Client {
	t.Helper()
	dialer := serveBufconn(t, func(s *grpc.Server) { tbv1.RegisterTokenServiceServer(s, f) })
	c, err := clientsdk.Dial(bufconnTarget, append([]clientsdk.DialOption{clientsdk.WithDialOptions(dialer)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestDialRetriesUnavailable(t *testing.T) {
	f := newFakeBroker()
	f.failNext(
		brokerError(codes.Unavailable, "LOCK_TIMEOUT"),
		brokerError(codes.Unavailable, "STORE_UNAVAILABLE"),
	)
	c := dialBroker(t, f, clientsdk.WithInsecure())
	tok, err := c.TokenSource("cred").Token()
	if err != nil || tok.AccessToken != "tok-1" {
		t.Fatalf("got %v, %v; want tok-1 after gRPC's retries", tok, err)
	}
	if got := f.gets.Load(); got != 3 {
		t.Fatalf("broker calls = %d, want 3", got)
	}
}

func TestDialGivesUpAfterMaxAttempts(t *testing.T) {
	f := newFakeBroker()
	for range 10 {
		f.failNext(brokerError(codes.Unavailable, "IDP_UNAVAILABLE"))
	}
	c := dialBroker(t, f, clientsdk.WithInsecure())
	_, err := c.TokenSource("cred").Token()
	if !errors.Is(err, clientsdk.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if got := f.gets.Load(); got != 5 {
		t.Fatalf("broker calls = %d, want 5 (maxAttempts)", got)
	}
}

func TestDialDoesNotRetryOtherCodes(t *testing.T) {
	f := newFakeBroker()
	f.failNext(brokerError(codes.ResourceExhausted, "RATE_LIMITED"))
	c := dialBroker(t, f, clientsdk.WithInsecure())
	if _, err := c.TokenSource("cred").Token(); !errors.Is(err, clientsdk.ErrRateLimited) {
		t.Fatalf("err = %v, want ErrRateLimited", err)
	}
	if got := f.gets.Load(); got != 1 {
		t.Fatalf("broker calls = %d, want 1", got)
	}
}

func TestDialAPIKey(t *testing.T) {
	f := newFakeBroker()
	c := dialBroker(t, f, clientsdk.WithInsecure(), clientsdk.WithAPIKey("k-123"))
	mustToken(t, c.TokenSource("cred"))
	if got := f.authHeaders(); len(got) != 1 || got[0] != "Bearer k-123" {
		t.Fatalf("broker saw authorization %q", got)
	}
}

func TestDialAPIKeyNeedsTransportSecurity(t *testing.T) {
	// Plain text slipped in through WithDialOptions, not chosen with
	// WithInsecure: the key must not be sent, so Dial refuses.
	_, err := clientsdk.Dial(bufconnTarget, clientsdk.WithAPIKey("k-123"),
		clientsdk.WithDialOptions(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err == nil {
		t.Fatal("Dial accepted an API key over plain text")
	}
}

func TestDialTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	f := newFakeBroker()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	tbv1.RegisterTokenServiceServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})

	c, err := clientsdk.Dial(lis.Addr().String(),
		clientsdk.WithTLS(&tls.Config{RootCAs: pool, ServerName: "broker.test"}),
		clientsdk.WithAPIKey("k-tls"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mustToken(t, c.TokenSource("cred"))
	if got := f.authHeaders(); len(got) != 1 || got[0] != "Bearer k-tls" {
		t.Fatalf("broker saw authorization %q", got)
	}

	// The default is TLS too: with the system's roots this server's
	// certificate is not trusted, so the call fails and sends nothing.
	d, err := clientsdk.Dial(lis.Addr().String(), clientsdk.WithAPIKey("k-default"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.TokenSource("cred").TokenContext(ctx); err == nil {
		t.Fatal("call to an untrusted server succeeded")
	}
	if got := f.gets.Load(); got != 1 {
		t.Fatalf("broker calls = %d, want 1", got)
	}
}

func TestDialRejectsConflictingOptions(t *testing.T) {
	if _, err := clientsdk.Dial("127.0.0.1:1", clientsdk.WithInsecure(), clientsdk.WithTLS(nil)); err == nil {
		t.Error("WithInsecure with WithTLS accepted")
	}
	if _, err := clientsdk.Dial("127.0.0.1:1", clientsdk.WithAPIKey("")); err == nil {
		t.Error("empty API key accepted")
	}
}

func TestNewDoesNotOwnConn(t *testing.T) {
	f := newFakeBroker()
	c := startBroker(t, f)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	mustToken(t, c.TokenSource("cred")) // the connection still works
}

// selfSigned makes a certificate for "broker.test" and a pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "broker.test"},
		DNSNames:              []string{"broker.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
