package metrics_test

import (
	"context"
	"net"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
)

const (
	checkMethod = "/grpc.health.v1.Health/Check"
	watchMethod = "/grpc.health.v1.Health/Watch"
)

// requireKey is an outer interceptor like the transport's authentication:
// it refuses calls without "authorization" metadata with UNAUTHENTICATED.
func requireKey(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if len(metadata.ValueFromIncomingContext(ctx, "authorization")) == 0 {
		return nil, status.Error(codes.Unauthenticated, "no key")
	}
	return h(ctx, req)
}

// serveHealth runs a gRPC server with the health service (serving "") on
// 127.0.0.1 until the test ends, and returns a connection to it.
func serveHealth(t *testing.T, opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(opts...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		s.Stop()
		<-done
	})
	return conn
}

const requestSecret = "REQUEST-SECRET-e41d"

// exercise makes calls of every kind: OK, NOT_FOUND (a service name that is
// a secret), UNAUTHENTICATED, an unknown method, and a cancelled stream.
func exercise(t *testing.T, conn *grpc.ClientConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	keyed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+requestSecret)
	hc := healthpb.NewHealthClient(conn)
	for range 2 {
		if _, err := hc.Check(keyed, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := hc.Check(keyed, &healthpb.HealthCheckRequest{Service: requestSecret}); status.Code(err) != codes.NotFound {
		t.Fatalf("Check of an unknown service: %v", err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Check without a key: %v", err)
	}
	err := conn.Invoke(keyed, "/secret.Service/"+requestSecret, &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("unknown method: %v", err)
	}
	sctx, scancel := context.WithCancel(keyed)
	stream, err := hc.Watch(sctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	scancel()
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func checkRequestCounts(t *testing.T, reg prometheus.Gatherer) {
	t.Helper()
	eventually(t, "the cancelled stream to be counted", func() bool {
		return value(t, reg, "tokenbroker_grpc_requests_total", L{"method": watchMethod, "code": "Canceled"}) == 1
	})
	for code, want := range map[string]float64{"OK": 2, "NotFound": 1, "Unauthenticated": 1} {
		if n := value(t, reg, "tokenbroker_grpc_requests_total", L{"method": checkMethod, "code": code}); n != want {
			t.Errorf("Check with %s = %v; want %v", code, n, want)
		}
	}
	if n := value(t, reg, "tokenbroker_grpc_request_duration_seconds", L{"method": checkMethod}); n != 4 {
		t.Errorf("Check latencies observed = %v; want 4", n)
	}
	for _, lp := range labelValues(t, reg) {
		if lp.GetName() == "method" && !slices.Contains([]string{checkMethod, watchMethod}, lp.GetValue()) {
			t.Errorf("method label %q", lp.GetValue())
		}
	}
}

// observed returns server options that feed m.ObserveRPC the way
// grpcapi's Options.ObserveCall hook does: from the outermost interceptor,
// once the call's final code is known, refusals by authentication
// (requireKey) included.
func observed(m *metrics.Metrics) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			start := time.Now()
			resp, err := requireKey(ctx, req, info, h)
			m.ObserveRPC(info.FullMethod, status.Code(err), time.Since(start))
			return resp, err
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			start := time.Now()
			err := h(srv, ss)
			m.ObserveRPC(info.FullMethod, status.Code(err), time.Since(start))
			return err
		}),
	}
}

func TestObserveRPC(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := metrics.New(reg, metrics.Options{})
	conn := serveHealth(t, observed(m)...)
	exercise(t, conn)
	checkRequestCounts(t, reg)
}

// TestNoSecretsInMetrics runs a broker through refreshes (good and dead
// grants, forced, invalidated), gRPC calls whose requests carry secrets,
// and a credentials-by-state listing, with per-credential labels on, then
// scrapes the metrics page: every label value is a fixed enum, a method
// name, a code or a credential ID, and none of the secrets appears.
func TestNoSecretsInMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := metrics.New(reg, metrics.Options{PerCredentialLabels: true})
	e := newEnv(t, m)
	e.put(t, "cred-1", "")
	e.token(t, "cred-1")
	if _, err := e.b.RefreshCredential(as(admin), "cred-1"); err != nil {
		t.Fatal(err)
	}
	cur := e.token(t, "cred-1")
	if _, err := e.b.InvalidateToken(as(worker), "cred-1", cur.AccessToken, 0); err != nil {
		t.Fatal(err)
	}
	e.token(t, "cred-1")
	e.keepStoredSecrets(t, "cred-1")
	e.put(t, "cred-dead", "DEAD-REFRESH-TOKEN-91b2")
	if _, err := e.b.GetToken(as(worker), "cred-dead", 0); err == nil {
		t.Fatal("a dead grant served a token")
	}
	m.SetStateListing(func(ctx context.Context) (map[broker.State]int, []string, error) {
		recs, _, err := e.b.ListCredentials(broker.NewContext(ctx, admin), 100, "")
		if err != nil {
			return nil, nil, err
		}
		counts := map[broker.State]int{}
		var reauth []string
		for _, r := range recs {
			counts[r.State]++
			if r.State == broker.StateReauthRequired {
				reauth = append(reauth, r.ID)
			}
		}
		return counts, reauth, nil
	})
	conn := serveHealth(t, observed(m)...)
	exercise(t, conn)
	e.secrets = append(e.secrets, requestSecret)

	allowed := map[string][]string{
		"source":        {"cache", "store", "refresh"},
		"obtained":      {"true", "false"},
		"reason":        {broker.ReasonExpired, broker.ReasonAhead, broker.ReasonInvalidated, broker.ReasonForced, broker.ReasonJournal, "other"},
		"outcome":       {broker.OutcomeOK, broker.OutcomeTransient, broker.OutcomePermanent, broker.OutcomeUnknown, broker.OutcomeLost, broker.OutcomeAbandoned, "other"},
		"repaired":      {"true", "false"},
		"credential_id": {"cred-1", "cred-dead", "invalid"},
		"method":        {checkMethod, watchMethod},
		"state":         {"ACTIVE", "REAUTH_REQUIRED", "UNREADABLE", "PENDING_AUTHORIZATION", "UNSPECIFIED"},
	}
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		allowed["code"] = append(allowed["code"], c.String())
	}
	eventually(t, "the stream to be counted", func() bool {
		return value(t, reg, "tokenbroker_grpc_requests_total", L{"method": watchMethod, "code": "Canceled"}) == 1
	})
	for _, lp := range labelValues(t, reg) {
		if !slices.Contains(allowed[lp.GetName()], lp.GetValue()) {
			t.Errorf("label %s=%q is not one of the allowed values", lp.GetName(), lp.GetValue())
		}
	}
	if n := value(t, reg, "tokenbroker_credentials", L{"state": "REAUTH_REQUIRED"}); n != 1 {
		t.Errorf("REAUTH_REQUIRED credentials = %v; want 1", n)
	}
	if n := value(t, reg, "tokenbroker_credential_reauth_required", L{"credential_id": "cred-dead"}); n != 1 {
		t.Errorf("tokenbroker_credential_reauth_required{cred-dead} = %v; want 1", n)
	}
	if _, found := find(t, reg, "tokenbroker_credential_reauth_required", L{"credential_id": "cred-1"}); found {
		t.Error("tokenbroker_credential_reauth_required has a series for an ACTIVE credential")
	}

	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	page := get(t, srv.URL)
	if !strings.Contains(page, `credential_id="cred-1"`) {
		t.Fatal("page lacks the per-credential series")
	}
	if len(e.secrets) < 6 {
		t.Fatalf("only %d secrets collected", len(e.secrets))
	}
	for _, s := range e.secrets {
		if s == "" {
			t.Fatal("empty secret collected")
		}
		if strings.Contains(page, s) {
			t.Errorf("the metrics page contains the secret %q", s)
		}
	}
	lint(t, reg)
}
