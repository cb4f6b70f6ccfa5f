package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

const (
	idpClientID     = "srv-client"
	idpClientSecret = "SECRET-srv-5ca1ab1e"
)

// logBuffer collects a server's log lines; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newIdP starts a fake IdP that knows the test's upstream client.
func newIdP(t *testing.T) *fakeidp.Server {
	t.Helper()
	idp := fakeidp.New(fakeidp.Options{Clients: map[string]string{idpClientID: idpClientSecret}})
	if err := idp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = idp.Close() })
	return idp
}

// testConfig is DefaultConfig on free loopback ports.
func testConfig() Config {
	c := DefaultConfig()
	c.GRPCAddr = "127.0.0.1:0"
	return c
}

// running is a Server whose Serve runs on its own goroutine.
type running struct {
	*Server
	logs   *logBuffer
	served chan error // Serve's result
	once   sync.Once  // reads served
}

// start builds a Server from cfg with JSON logs at debug level and serves
// it until stop, or until the test ends.
func start(t *testing.T, cfg Config) *running {
	t.Helper()
	logs := &logBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(ctxFor(t), cfg, log)
	if err != nil {
		t.Fatalf("New: %v\n%s", err, logs)
	}
	r := &running{Server: s, logs: logs, served: make(chan error, 1)}
	go func() { r.served <- s.Serve(context.Background()) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop shuts the server down and checks that Serve returned nil. Stopping
// it again does nothing.
func (r *running) stop(t *testing.T) {
	t.Helper()
	if err := r.Shutdown(ctxFor(t)); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	r.once.Do(func() {
		select {
		case err := <-r.served:
			if err != nil {
				t.Errorf("Serve = %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Serve has not returned after Shutdown")
		}
	})
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctxFor(t), http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func seedFile(t *testing.T, idp *fakeidp.Server, id, refreshToken string) string {
	return writeFile(t, fmt.Sprintf(`{"credentials": [{"id": %q, "token_url": %q, "client_id": %q, "client_secret": %q, "refresh_token": %q}]}`,
		id, idp.TokenURL(), idpClientID, idpClientSecret, refreshToken))
}

// TestDevMode: a dev-mode server seeded from a credentials file serves a
// token the IdP issued, health, /healthz and /metrics with the Go and
// process collectors, and stops in order: health NOT_SERVING first, then
// "stopped", with no secret in the log.
func TestDevMode(t *testing.T) {
	idp := newIdP(t)
	rt := idp.Seed(idpClientID)
	cfg := testConfig()
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.CredentialsFile = seedFile(t, idp, "one", rt)
	s := start(t, cfg)
	if strings.HasSuffix(s.GRPCAddr(), ":0") || strings.HasSuffix(s.MetricsAddr(), ":0") || s.MetricsAddr() == "" {
		t.Fatalf("addresses %q and %q; want real ports", s.GRPCAddr(), s.MetricsAddr())
	}
	if s.Registry() == nil || s.Broker() == nil {
		t.Fatal("no registry or broker")
	}
	conn := dial(t, s.GRPCAddr())
	ctx := ctxFor(t)

	tok, err := pb.NewTokenServiceClient(conn).GetToken(ctx, &pb.GetTokenRequest{CredentialId: "one"})
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	if info, ok := idp.Lookup(tok.GetAccessToken()); !ok || !info.Live {
		t.Errorf("token not live at the IdP: %+v", info)
	}
	rec, err := s.Broker().GetCredential(ctx, "one")
	if err != nil || rec.Generation < 2 {
		t.Errorf("the Broker's view = %+v, %v; want the refreshed credential", rec, err)
	}

	hc := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", "tokenbroker.v1.TokenService", "tokenbroker.v1.AdminService"} {
		h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health %q = %v, %v; want SERVING", svc, h, err)
		}
	}
	if code, _ := httpGet(t, "http://"+s.MetricsAddr()+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d; want 200", code)
	}
	code, page := httpGet(t, "http://"+s.MetricsAddr()+"/metrics")
	for _, want := range []string{"go_goroutines", "process_resident_memory_bytes", `tokenbroker_grpc_requests_total{code="OK",method="/tokenbroker.v1.TokenService/GetToken"} 1`, `tokenbroker_credentials{state="ACTIVE"} 1`} {
		if code != http.StatusOK || !strings.Contains(page, want) {
			t.Errorf("/metrics (%d) lacks %s", code, want)
		}
	}

	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	w, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch = %v, %v", m, err)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		_ = s.Shutdown(context.Background())
	}()
	if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch during Shutdown = %v, %v; want NOT_SERVING", m, err)
	}
	wcancel() // the last call in flight; the server stops once it is gone
	<-stopped
	s.stop(t)

	out := s.logs.String()
	for _, want := range []string{`"msg":"credentials file loaded"`, `"msg":"metrics listening"`, `"msg":"listening"`, `"msg":"shutting down"`, `"msg":"stopped"`, `"msg":"dev mode: single replica`} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "calls in flight were cut") {
		t.Errorf("a clean stop cut calls:\n%s", out)
	}
	for _, secret := range []string{idpClientSecret, rt, tok.GetAccessToken()} {
		if strings.Contains(out, secret) {
			t.Errorf("the log holds a secret or token:\n%s", out)
		}
	}
}

// TestForcedStop: a call that does not end within ShutdownTimeout is cut,
// and Serve still returns nil.
func TestForcedStop(t *testing.T) {
	cfg := testConfig()
	cfg.ShutdownTimeout = 200 * time.Millisecond
	s := start(t, cfg)
	w, err := healthpb.NewHealthClient(dial(t, s.GRPCAddr())).Watch(ctxFor(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	s.stop(t)
	if !strings.Contains(s.logs.String(), "calls in flight were cut") {
		t.Errorf("forced stop not logged:\n%s", s.logs)
	}
}

// TestServeOnce: Serve serves once; Shutdown of a Server that never served
// closes what New opened (its port is free again); Shutdown is idempotent.
func TestServeOnce(t *testing.T) {
	s, err := New(ctxFor(t), testConfig(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	addr := s.GRPCAddr()
	if err := s.Shutdown(ctxFor(t)); err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(ctxFor(t)); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if err := s.Serve(ctxFor(t)); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown = %v; want ErrServerClosed", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the port of a shut down Server is still taken: %v", err)
	}
	l.Close()

	r := start(t, testConfig())
	// A call that is answered means r's Serve runs.
	if _, err := healthpb.NewHealthClient(dial(t, r.GRPCAddr())).Check(ctxFor(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Serve(ctxFor(t)); !errors.Is(err, ErrServerClosed) {
		t.Errorf("second Serve = %v; want ErrServerClosed", err)
	}
	// Serve's context ending stops it as Shutdown does.
	ctx, cancel := context.WithCancel(context.Background())
	s, err = New(ctxFor(t), testConfig(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve after its context ended = %v", err)
	}
}

// TestNewFails: New validates before anything else, reads the files before
// it dials, and closes what it opened when a later step fails.
func TestNewFails(t *testing.T) {
	ctx := ctxFor(t)
	var logs logBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	bad := testConfig()
	bad.LockTTL = time.Second
	var ce *ConfigError
	if _, err := New(ctx, bad, log); !errors.As(err, &ce) || !strings.Contains(err.Error(), "--lock-ttl (1s) must exceed --refresh-timeout (10s)") {
		t.Errorf("New with a bad setting = %v; want a ConfigError", err)
	}

	// A bad credentials file in Redis mode: refused before Redis is dialled.
	noRedis := freeAddr(t)
	cfg := testConfig()
	cfg.RedisURL, cfg.AllowPlaintext, cfg.AllowUnauthenticated = "redis://"+noRedis+"/0", true, true
	cfg.CredentialsFile = writeFile(t, `{"credentials": [{"id": "x", "token_url": "/token", "client_id": "c", "client_secret": "SECRET-bad", "refresh_token": "SECRET-rt"}]}`)
	_, err := New(ctx, cfg, log)
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), `credentials[0] (id "x"): broker: invalid argument: credential.token_url`) || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("New with a bad credentials file = %v", err)
	}
	if strings.Contains(logs.String(), "redis") {
		t.Errorf("New went as far as Redis before refusing the file:\n%s", logs.String())
	}

	// The metrics port is taken: New fails after binding the gRPC port,
	// and frees it again.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg = testConfig()
	cfg.GRPCAddr, cfg.MetricsAddr = freeAddr(t), taken.Addr().String()
	if _, err := New(ctx, cfg, log); err == nil || errors.As(err, &ce) || !strings.Contains(err.Error(), "metrics listener") {
		t.Fatalf("New on a taken metrics port = %v; want a metrics listener error (not bad configuration)", err)
	}
	l, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		t.Fatalf("New left the gRPC port bound after failing: %v", err)
	}
	l.Close()

	// Both an in-memory registry and a file.
	a, err := auth.NewAuthenticator(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg = testConfig()
	cfg.Authenticator, cfg.ClientsFile = a, "clients.json"
	if _, err := New(ctx, cfg, log); !errors.As(err, &ce) || !strings.Contains(err.Error(), "give one") {
		t.Errorf("New with two client registries = %v; want a ConfigError", err)
	}
}

// freeAddr returns a 127.0.0.1 address nothing listened on a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestRedisUnreachable: a Redis that does not answer at start is logged,
// without its password, and the server starts; calls fail with UNAVAILABLE.
func TestRedisUnreachable(t *testing.T) {
	const pw = "SECRET-redis-pw"
	cfg := testConfig()
	cfg.RedisURL, cfg.AllowPlaintext, cfg.AllowUnauthenticated = "redis://:"+pw+"@"+freeAddr(t)+"/0?max_retries=-1", true, true
	s := start(t, cfg)
	_, err := pb.NewTokenServiceClient(dial(t, s.GRPCAddr())).GetToken(ctxFor(t), &pb.GetTokenRequest{CredentialId: "x"})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("GetToken without Redis = %v; want UNAVAILABLE", err)
	}
	s.stop(t)
	out := s.logs.String()
	if !strings.Contains(out, "redis does not answer") || strings.Contains(out, pw) {
		t.Errorf("want a warning without the password:\n%s", out)
	}
}

// counter counts the commands a go-redis client sends.
type counter struct{ n atomic.Int64 }

func (*counter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// refreshes records the refresh events an Observer is told.
type refreshes struct {
	mu  sync.Mutex
	evs []broker.RefreshEvent
}

func (*refreshes) TokenServed(broker.Source)        {}
func (*refreshes) LockWaited(time.Duration, bool)   {}
func (*refreshes) Regressed(broker.RegressionEvent) {}
func (r *refreshes) Refreshed(ev broker.RefreshEvent) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

func (r *refreshes) all() []broker.RefreshEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]broker.RefreshEvent(nil), r.evs...)
}

// TestRedisModeRestart runs a server on a real Redis with sealed records,
// twice: the second start finds the credential, does not re-seed it with
// the spent seed token, and refreshes with the rotated one. Records are
// sealed at rest; Config.RedisHook sees the commands and Config.Observer
// the refreshes.
func TestRedisModeRestart(t *testing.T) {
	rs := redistest.Start(t)
	key, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	idp := newIdP(t)
	seed := idp.Seed(idpClientID)
	cfg := testConfig()
	cfg.RedisURL, cfg.RedisPrefix, cfg.SealKeys = rs.URL(), "e2e", "k1:"+key
	cfg.CredentialsFile = seedFile(t, idp, "shared", seed)
	cfg.ForceInterval, cfg.AllowUnauthenticated = time.Millisecond, true

	var first string
	for run := 0; run < 2; run++ {
		cfg := cfg
		commands, observed := &counter{}, &refreshes{}
		cfg.RedisHook, cfg.Observer = commands, observed
		s := start(t, cfg)
		conn := dial(t, s.GRPCAddr())
		ctx := ctxFor(t)
		tok, err := pb.NewTokenServiceClient(conn).GetToken(ctx, &pb.GetTokenRequest{CredentialId: "shared"})
		if err != nil {
			t.Fatalf("run %d: GetToken: %v\n%s", run, err, s.logs)
		}
		if run == 0 {
			first = tok.GetAccessToken()
		} else {
			if tok.GetAccessToken() != first {
				t.Errorf("the restarted server did not serve the stored token")
			}
			ref, err := pb.NewAdminServiceClient(conn).RefreshCredential(ctx, &pb.RefreshCredentialRequest{Id: "shared"})
			if err != nil || ref.GetCredential().GetState() != pb.State_ACTIVE {
				t.Fatalf("RefreshCredential after restart = %v, %v", ref, err)
			}
		}
		s.stop(t)
		if commands.n.Load() == 0 {
			t.Errorf("run %d: RedisHook saw no command", run)
		}
		if evs := observed.all(); len(evs) != 1 || evs[0].CredentialID != "shared" || evs[0].Outcome != broker.OutcomeOK {
			t.Errorf("run %d: Observer saw %+v; want one successful refresh of shared", run, evs)
		}
		if out := s.logs.String(); strings.Contains(out, idpClientSecret) || strings.Contains(out, seed) || strings.Contains(out, key) {
			t.Errorf("run %d: the log holds a secret", run)
		}
	}
	if st := idp.Stats(); st.Refreshes != 2 || st.Reuses != 0 {
		t.Errorf("IdP refreshes %d, reuses %d; want 2 and 0", st.Refreshes, st.Reuses)
	}
	// Sealed at rest: Redis holds neither the client secret nor a token.
	dump, err := rs.NewClient(t).HGet(ctxFor(t), "e2e:{shared}:cred", "data").Result()
	if err != nil {
		t.Fatalf("reading the record from Redis: %v", err)
	}
	if strings.Contains(dump, idpClientSecret) || strings.Contains(dump, first) || strings.Contains(dump, "refresh_token") {
		t.Errorf("the record in Redis is not sealed")
	}
}

func bearer(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

// registry writes a client registry of fresh keys for the given ids (an id
// starting with "ops" is an admin) and returns its path and the keys by id.
func registry(t *testing.T, ids ...string) (string, map[string]string) {
	t.Helper()
	keys := map[string]string{}
	var entries []string
	for _, id := range ids {
		key, hash, err := auth.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[id] = key
		entries = append(entries, fmt.Sprintf(`{"id": %q, "key_sha256": %q, "admin": %v}`, id, hash, strings.HasPrefix(id, "ops")))
	}
	return writeFile(t, `{"clients": [`+strings.Join(entries, ",")+`]}`), keys
}

// TestClientRateLimit: a client over ClientRate on InvalidateToken (or an
// admin on RefreshCredential) gets RESOURCE_EXHAUSTED, reason RATE_LIMITED,
// with a RetryInfo; other clients keep their own budget and GetToken is not
// limited. Dev mode with a client registry on loopback: no open-mode or
// plaintext warning.
func TestClientRateLimit(t *testing.T) {
	clientsFile, keys := registry(t, "ops", "reader-a", "reader-b")
	idp := newIdP(t)
	cfg := testConfig()
	// A refill of one call per 100s: the third call in a row is refused
	// however slow the machine.
	cfg.ClientsFile, cfg.ClientRate, cfg.ClientBurst, cfg.ForceInterval = clientsFile, 0.01, 2, time.Millisecond
	s := start(t, cfg)
	conn := dial(t, s.GRPCAddr())
	tok, adm := pb.NewTokenServiceClient(conn), pb.NewAdminServiceClient(conn)
	ctx := ctxFor(t)
	as := func(id string) context.Context { return bearer(ctx, keys[id]) }

	for _, id := range []string{"limited", "other-1", "other-2"} {
		if _, err := adm.PutCredential(as("ops"), &pb.PutCredentialRequest{Credential: &pb.Credential{
			Id: id, TokenUrl: idp.TokenURL(), ClientId: idpClientID, ClientSecret: idpClientSecret,
			RefreshToken: idp.Seed(idpClientID), AllowedClients: []string{"reader-a", "reader-b"},
		}}); err != nil {
			t.Fatal(err)
		}
	}
	// A current token, so that reporting a stale one refreshes nothing and
	// only the per-client limit can refuse.
	if _, err := tok.GetToken(as("reader-a"), &pb.GetTokenRequest{CredentialId: "limited"}); err != nil {
		t.Fatal(err)
	}
	inv := &pb.InvalidateTokenRequest{CredentialId: "limited", RejectedAccessToken: "a-token-long-rejected"}
	for i := 0; i < 2; i++ {
		if _, err := tok.InvalidateToken(as("reader-a"), inv); err != nil {
			t.Fatalf("InvalidateToken %d within the burst: %v", i+1, err)
		}
	}
	_, err := tok.InvalidateToken(as("reader-a"), inv)
	st := status.Convert(err)
	var reason string
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			reason = d.GetReason()
		case *errdetails.RetryInfo:
			retry = d
		}
	}
	if st.Code() != codes.ResourceExhausted || reason != "RATE_LIMITED" || !strings.Contains(st.Message(), "from this client") {
		t.Fatalf("InvalidateToken over the limit = %v (reason %q); want RESOURCE_EXHAUSTED RATE_LIMITED from the per-client limit", err, reason)
	}
	if d := retry.GetRetryDelay().AsDuration(); d <= 0 || d > 100*time.Second {
		t.Errorf("RetryInfo = %v; want a delay up to the 100s refill", retry)
	}
	for i := 0; i < 5; i++ {
		if _, err := tok.GetToken(as("reader-a"), &pb.GetTokenRequest{CredentialId: "limited"}); err != nil {
			t.Fatalf("GetToken is limited: %v", err)
		}
	}
	if _, err := tok.InvalidateToken(as("reader-b"), inv); err != nil {
		t.Errorf("another client was limited too: %v", err)
	}
	// One forced refresh per credential, so that the broker's own
	// per-credential limit never refuses.
	for _, id := range []string{"other-1", "other-2"} {
		if _, err := adm.RefreshCredential(as("ops"), &pb.RefreshCredentialRequest{Id: id}); err != nil {
			t.Fatalf("RefreshCredential(%s) within the burst: %v", id, err)
		}
	}
	_, err = adm.RefreshCredential(as("ops"), &pb.RefreshCredentialRequest{Id: "limited"})
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "from this client") {
		t.Errorf("RefreshCredential over the limit = %v; want RESOURCE_EXHAUSTED from the per-client limit", err)
	}

	s.stop(t)
	out := s.logs.String()
	if strings.Contains(out, "no authentication") || strings.Contains(out, "plaintext") {
		t.Errorf("dev mode with a registry on loopback warned about open access or plaintext keys:\n%s", out)
	}
	if !strings.Contains(out, `"msg":"dev mode: single replica`) || !strings.Contains(out, `"authentication":true`) {
		t.Errorf("no dev mode warning or no authentication in the listening line:\n%s", out)
	}
	for id, key := range keys {
		if strings.Contains(out, key) {
			t.Errorf("the log holds %s's key", id)
		}
	}
}

// TestInMemoryRegistry: Config.Authenticator authenticates and authorizes
// callers as a client registry file does.
func TestInMemoryRegistry(t *testing.T) {
	key, hash, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	a, err := auth.NewAuthenticator([]auth.Client{{ID: "ops", KeySHA256: []string{hash}, Admin: true}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Authenticator = a
	s := start(t, cfg)
	adm := pb.NewAdminServiceClient(dial(t, s.GRPCAddr()))
	ctx := ctxFor(t)
	if _, err := adm.ListCredentials(ctx, &pb.ListCredentialsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("ListCredentials without a key = %v; want UNAUTHENTICATED", err)
	}
	if _, err := adm.ListCredentials(bearer(ctx, key), &pb.ListCredentialsRequest{}); err != nil {
		t.Errorf("ListCredentials as ops = %v", err)
	}
	if _, _, err := s.Broker().ListCredentials(ctx, 10, ""); !errors.Is(err, broker.ErrPermissionDenied) {
		t.Errorf("the Broker of an authenticated server runs open: %v", err)
	}
}
