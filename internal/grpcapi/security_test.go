package grpcapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/audit"
	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/auth/authtest"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// Identities of the security matrix.
const (
	svcIdentity      = "spiffe://tokenbroker.test/svc-m"
	strangerIdentity = "spiffe://tokenbroker.test/stranger"
)

// pki is a CA and what it signed for one test, plus a foreign CA's client
// certificate.
type pki struct {
	ca                   *authtest.CA
	certFile, keyFile    string // the server's
	caFile               string
	svc, stranger, alien *authtest.Pair
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := authtest.NewCA("tokenbroker test CA")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := authtest.NewCA("foreign CA")
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{ca: ca}
	dir := t.TempDir()
	srv, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	if p.certFile, p.keyFile, err = srv.Write(dir, "server"); err != nil {
		t.Fatal(err)
	}
	if p.caFile, err = ca.WriteCert(dir, "ca.crt"); err != nil {
		t.Fatal(err)
	}
	if p.svc, err = ca.Client("svc-m", svcIdentity); err != nil {
		t.Fatal(err)
	}
	if p.stranger, err = ca.Client("stranger", strangerIdentity); err != nil {
		t.Fatal(err)
	}
	// The same identity as svc-m, signed by a CA the server does not trust.
	if p.alien, err = foreign.Client("svc-m", svcIdentity); err != nil {
		t.Fatal(err)
	}
	return p
}

// secureEnv is a broker with authorization on, behind the real
// Authenticator and a TLS listener on 127.0.0.1.
type secureEnv struct {
	pki  *pki
	addr string
	idp  *fakeidp.Server
	logs *syncBuffer
	keys map[string]string // client id -> bearer key
}

// newSecureEnv starts the server: clients ops (admin), reader-a and
// reader-b with keys, svc-m by certificate; requireCert makes client
// certificates mandatory.
func newSecureEnv(t *testing.T, requireCert bool) *secureEnv {
	t.Helper()
	e := &secureEnv{
		pki:  newPKI(t),
		idp:  fakeidptest.Start(t, fakeidp.Options{Clients: map[string]string{testClientID: testClientSecret}}),
		logs: &syncBuffer{},
		keys: map[string]string{},
	}
	var clients []auth.Client
	for _, id := range []string{"ops", "reader-a", "reader-b"} {
		key, hash, err := auth.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		e.keys[id] = key
		clients = append(clients, auth.Client{ID: id, KeySHA256: []string{hash}, Admin: id == "ops"})
	}
	clients = append(clients, auth.Client{ID: "svc-m", CertIdentity: svcIdentity})
	authn, err := auth.NewAuthenticator(clients)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := auth.ServerTLS(e.pki.certFile, e.pki.keyFile, e.pki.caFile, requireCert)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(memstore.New(), &upstream.Client{}, broker.Config{ForceInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := NewServer(b, Options{
		Authenticator:     authn,
		Logger:            log,
		UnaryInterceptors: []grpc.UnaryServerInterceptor{audit.New(log).UnaryServerInterceptor(Code)},
		ServerOptions:     []grpc.ServerOption{grpc.Creds(credentials.NewTLS(tlsCfg))},
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		_ = b.Close()
	})
	return e
}

// dial connects over TLS trusting the test CA, presenting cert if not nil.
// The certificate is presented whatever CAs the server says it accepts (a
// client with tls.Config.Certificates would keep a foreign one to itself).
func (e *secureEnv) dial(t *testing.T, cert *authtest.Pair) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: e.pki.ca.Pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert.TLS, nil }
	}
	return e.dialWith(t, credentials.NewTLS(cfg))
}

func (e *secureEnv) dialWith(t *testing.T, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// put creates credential id, readable by the given clients, as ops.
func (e *secureEnv) put(t *testing.T, conn *grpc.ClientConn, id string, allowed ...string) {
	t.Helper()
	_, err := pb.NewAdminServiceClient(conn).PutCredential(withKey(ctxT(t), e.keys["ops"]), &pb.PutCredentialRequest{Credential: &pb.Credential{
		Id: id, TokenUrl: e.idp.TokenURL(), ClientId: testClientID, ClientSecret: testClientSecret,
		RefreshToken: e.idp.Seed(testClientID), AllowedClients: allowed,
	}})
	if err != nil {
		t.Fatalf("PutCredential(%s): %v", id, err)
	}
}

// TestSecurityMatrix drives every cell of the authentication and
// authorization matrix through the real Authenticator and a real TLS
// listener: bearer keys, client certificates, a foreign CA, and what each
// identity may do with its own credential, another's, a missing one and the
// admin methods.
func TestSecurityMatrix(t *testing.T) {
	e := newSecureEnv(t, false)
	plain := e.dial(t, nil)
	svc := e.dial(t, e.pki.svc)
	stranger := e.dial(t, e.pki.stranger)
	alien := e.dial(t, e.pki.alien)
	noTLS := e.dialWith(t, insecure.NewCredentials())
	untrusting := e.dialWith(t, credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})) // system roots only

	e.put(t, plain, "cred-a", "reader-a")
	e.put(t, plain, "cred-b", "reader-b")
	e.put(t, plain, "cred-m", "svc-m")

	unknownKey, _, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	bearer := func(id string) string { return "Bearer " + e.keys[id] }

	getToken := func(id string) func(context.Context, *grpc.ClientConn) error {
		return func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := pb.NewTokenServiceClient(c).GetToken(ctx, &pb.GetTokenRequest{CredentialId: id})
			return err
		}
	}
	invalidate := func(id string) func(context.Context, *grpc.ClientConn) error {
		return func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := pb.NewTokenServiceClient(c).InvalidateToken(ctx, &pb.InvalidateTokenRequest{CredentialId: id, RejectedAccessToken: "not-the-current-token"})
			return err
		}
	}
	admin := map[string]func(context.Context, *grpc.ClientConn) error{
		"PutCredential": func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := pb.NewAdminServiceClient(c).PutCredential(ctx, &pb.PutCredentialRequest{Credential: &pb.Credential{
				Id: "cred-new", TokenUrl: e.idp.TokenURL(), ClientId: testClientID, ClientSecret: testClientSecret,
				RefreshToken: e.idp.Seed(testClientID), AllowedClients: []string{"reader-a"},
			}})
			return err
		},
		"GetCredential": func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := pb.NewAdminServiceClient(c).GetCredential(ctx, &pb.GetCredentialRequest{Id: "cred-a"})
			return err
		},
		"GetCredential missing": func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := pb.NewAdminServiceClient(c).GetCredential(ctx, &pb.GetCredentialRequest{Id: "nope"})
			return err
		},
		"ListCredentials": func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := pb.NewAdminServiceClient(c).ListCredentials(ctx, &pb.ListCredentialsRequest{})
			return err
		},
		"RefreshCredential": func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := pb.NewAdminServiceClient(c).RefreshCredential(ctx, &pb.RefreshCredentialRequest{Id: "cred-b"})
			return err
		},
		"DeleteCredential missing": func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := pb.NewAdminServiceClient(c).DeleteCredential(ctx, &pb.DeleteCredentialRequest{Id: "nope"})
			return err
		},
	}
	health := func(ctx context.Context, c *grpc.ClientConn) error {
		resp, err := healthpb.NewHealthClient(c).Check(ctx, &healthpb.HealthCheckRequest{Service: "tokenbroker.v1.TokenService"})
		if err == nil && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health = %v; want SERVING", resp.GetStatus())
		}
		return err
	}
	reflect := func(ctx context.Context, c *grpc.ClientConn) error {
		stream, err := reflectionpb.NewServerReflectionClient(c).ServerReflectionInfo(ctx)
		if err != nil {
			return err
		}
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
			return err
		}
		resp, err := stream.Recv()
		if err == nil && len(resp.GetListServicesResponse().GetService()) == 0 {
			t.Errorf("reflection lists no service")
		}
		_ = stream.CloseSend()
		return err
	}

	const none = pb.ErrorReasonEnum_ERROR_REASON_UNSPECIFIED
	type row struct {
		name   string
		conn   *grpc.ClientConn
		authz  string // the authorization metadata; "" sends none
		call   func(context.Context, *grpc.ClientConn) error
		code   codes.Code
		reason reason // the ErrorInfo reason; none (0) for OK and transport failures
	}
	rows := []row{
		// Authentication.
		{"no key", plain, "", getToken("cred-a"), codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED},
		{"no key, admin call", plain, "", admin["ListCredentials"], codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED},
		{"unknown key", plain, "Bearer " + unknownKey, getToken("cred-a"), codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED},
		{"unknown key, admin call", plain, "Bearer " + unknownKey, admin["GetCredential"], codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED},
		{"malformed authorization", plain, "Basic " + e.keys["reader-a"], getToken("cred-a"), codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED},
		{"a key hash instead of the key", plain, "Bearer " + auth.HashKey(e.keys["reader-a"]), getToken("cred-a"), codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED},

		// A reader with a bearer key.
		{"reader, its credential", plain, bearer("reader-a"), getToken("cred-a"), codes.OK, none},
		{"reader, invalidates on its credential", plain, bearer("reader-a"), invalidate("cred-a"), codes.OK, none},
		{"reader, another client's credential", plain, bearer("reader-a"), getToken("cred-b"), codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"reader, invalidates on another client's credential", plain, bearer("reader-a"), invalidate("cred-b"), codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"reader, a missing credential", plain, bearer("reader-a"), getToken("nope"), codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"reader, invalidates on a missing credential", plain, bearer("reader-a"), invalidate("nope"), codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"other reader, its credential", plain, bearer("reader-b"), getToken("cred-b"), codes.OK, none},

		// The admin methods need an admin identity.
		{"reader, PutCredential", plain, bearer("reader-a"), admin["PutCredential"], codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"reader, GetCredential", plain, bearer("reader-a"), admin["GetCredential"], codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"reader, GetCredential of a missing one", plain, bearer("reader-a"), admin["GetCredential missing"], codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"reader, ListCredentials", plain, bearer("reader-a"), admin["ListCredentials"], codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"reader, RefreshCredential", plain, bearer("reader-a"), admin["RefreshCredential"], codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"reader, DeleteCredential of a missing one", plain, bearer("reader-a"), admin["DeleteCredential missing"], codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"admin, PutCredential", plain, bearer("ops"), admin["PutCredential"], codes.OK, none},
		{"admin, GetCredential", plain, bearer("ops"), admin["GetCredential"], codes.OK, none},
		{"admin, GetCredential of a missing one", plain, bearer("ops"), admin["GetCredential missing"], codes.NotFound, pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND},
		{"admin, ListCredentials", plain, bearer("ops"), admin["ListCredentials"], codes.OK, none},
		{"admin, RefreshCredential", plain, bearer("ops"), admin["RefreshCredential"], codes.OK, none},
		{"admin, DeleteCredential of a missing one", plain, bearer("ops"), admin["DeleteCredential missing"], codes.NotFound, pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND},
		{"admin, a token it is not allowed", plain, bearer("ops"), getToken("cred-a"), codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},

		// mTLS: the certificate's URI SAN names svc-m.
		{"mTLS identity, its credential", svc, "", getToken("cred-m"), codes.OK, none},
		{"mTLS identity, invalidates on its credential", svc, "", invalidate("cred-m"), codes.OK, none},
		{"mTLS identity, another client's credential", svc, "", getToken("cred-a"), codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"mTLS identity, a missing credential", svc, "", getToken("nope"), codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"mTLS identity, admin call", svc, "", admin["ListCredentials"], codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"mTLS identity with another client's key", svc, bearer("reader-a"), getToken("cred-a"), codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED},
		{"mTLS identity with an unknown key", svc, "Bearer " + unknownKey, getToken("cred-m"), codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED},
		{"unregistered certificate, no key", stranger, "", getToken("cred-a"), codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED},
		{"unregistered certificate with a key", stranger, bearer("reader-a"), getToken("cred-a"), codes.OK, none},

		// Refused at the transport: no status from the broker at all.
		{"certificate from a foreign CA", alien, "", getToken("cred-m"), codes.Unavailable, none},
		{"foreign CA certificate with a valid key", alien, bearer("reader-a"), getToken("cred-a"), codes.Unavailable, none},
		{"plaintext client", noTLS, bearer("reader-a"), getToken("cred-a"), codes.Unavailable, none},
		{"client that does not trust the server", untrusting, bearer("reader-a"), getToken("cred-a"), codes.Unavailable, none},

		// Health and reflection need no key.
		{"health without a key", plain, "", health, codes.OK, none},
		{"reflection without a key", plain, "", reflect, codes.OK, none},
		{"health with an unknown key", plain, "Bearer " + unknownKey, health, codes.OK, none},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			ctx := ctxT(t)
			if r.authz != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", r.authz)
			}
			err := r.call(ctx, r.conn)
			switch {
			case r.code == codes.OK:
				if err != nil {
					t.Fatalf("call = %v; want OK", err)
				}
			case r.reason == none:
				st, _ := status.FromError(err)
				if st.Code() != r.code {
					t.Fatalf("call = %v; want %v", err, r.code)
				}
				for _, d := range st.Details() {
					t.Errorf("transport refusal carries a detail from the broker: %v", d)
				}
			default:
				wantErr(t, err, r.code, r.reason)
			}
		})
	}

	// A missing credential and another client's one look the same.
	ctx := withKey(ctxT(t), e.keys["reader-a"])
	_, errOther := pb.NewTokenServiceClient(plain).GetToken(ctx, &pb.GetTokenRequest{CredentialId: "cred-b"})
	_, errMissing := pb.NewTokenServiceClient(plain).GetToken(ctx, &pb.GetTokenRequest{CredentialId: "cred-x"})
	if so, sm := status.Convert(errOther), status.Convert(errMissing); so.Code() != sm.Code() ||
		strings.ReplaceAll(so.Message(), "cred-b", "ID") != strings.ReplaceAll(sm.Message(), "cred-x", "ID") {
		t.Errorf("another client's credential (%v) and a missing one (%v) can be told apart", errOther, errMissing)
	}

	// No key reached the log; the audit trail names who made each admin call.
	out := e.logs.String()
	for id, key := range e.keys {
		if strings.Contains(out, key) {
			t.Errorf("the log holds %s's key", id)
		}
	}
	if strings.Contains(out, unknownKey) || strings.Contains(out, testClientSecret) {
		t.Errorf("the log holds a key or a client secret")
	}
	var denied, allowed bool
	for _, line := range strings.Split(out, "\n") {
		var ev struct {
			Msg, Caller, Method, Code string
			Audit                     bool
		}
		if json.Unmarshal([]byte(line), &ev) != nil || ev.Msg != "admin" || !ev.Audit {
			continue
		}
		if ev.Caller == "" {
			t.Errorf("admin audit event without a caller: %s", line)
		}
		if ev.Caller == "reader-a" && ev.Method == pb.AdminService_PutCredential_FullMethodName && ev.Code == "PermissionDenied" {
			denied = true
		}
		if ev.Caller == "ops" && ev.Method == pb.AdminService_RefreshCredential_FullMethodName && ev.Code == "OK" {
			allowed = true
		}
	}
	if !denied || !allowed {
		t.Errorf("audit trail misses the denied (%v) or allowed (%v) admin call:\n%s", denied, allowed, out)
	}
}

// TestRequireClientCert: with client certificates required, a client
// without one cannot even connect, bearer key or not; one with a registered
// certificate is served.
func TestRequireClientCert(t *testing.T) {
	e := newSecureEnv(t, true)
	plain := e.dial(t, nil)
	svc := e.dial(t, e.pki.svc)
	stranger := e.dial(t, e.pki.stranger)

	_, err := healthpb.NewHealthClient(plain).Check(withKey(ctxT(t), e.keys["ops"]), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("health without a client certificate = %v; want UNAVAILABLE (handshake refused)", err)
	}
	// An admin with a certificate and its key: the certificate is only
	// transport, the key names the client.
	_, err = pb.NewAdminServiceClient(stranger).PutCredential(withKey(ctxT(t), e.keys["ops"]), &pb.PutCredentialRequest{Credential: &pb.Credential{
		Id: "cred-m", TokenUrl: e.idp.TokenURL(), ClientId: testClientID, ClientSecret: testClientSecret,
		RefreshToken: e.idp.Seed(testClientID), AllowedClients: []string{"svc-m"},
	}})
	if err != nil {
		t.Fatalf("PutCredential over mTLS with an admin key: %v", err)
	}
	if _, err := pb.NewTokenServiceClient(svc).GetToken(ctxT(t), &pb.GetTokenRequest{CredentialId: "cred-m"}); err != nil {
		t.Fatalf("GetToken by certificate: %v", err)
	}
	_, err = pb.NewTokenServiceClient(stranger).GetToken(ctxT(t), &pb.GetTokenRequest{CredentialId: "cred-m"})
	wantErr(t, err, codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED)
}
