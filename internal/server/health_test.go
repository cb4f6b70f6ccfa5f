package server

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tokenbroker/tokenbroker/internal/redistest"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// healthOf asks the gRPC health service for svc.
func healthOf(t *testing.T, hc healthpb.HealthClient, svc string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	r, err := hc.Check(ctxFor(t), &healthpb.HealthCheckRequest{Service: svc})
	if err != nil {
		t.Fatalf("health %q: %v", svc, err)
	}
	return r.GetStatus()
}

// waitHealth polls the readiness ("") until it is want, or fails after
// within; it returns how long that took.
func waitHealth(t *testing.T, hc healthpb.HealthClient, want healthpb.HealthCheckResponse_ServingStatus, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if healthOf(t, hc, "") == want {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("readiness is not %v after %v", want, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReadinessFollowsRedis: with a real redis-server, readiness ("" and
// each service, /readyz) turns NOT_SERVING within --unready-after (plus one
// check) once the server is stopped, and SERVING again once it restarts;
// liveness ("liveness", /healthz) stays SERVING throughout.
func TestReadinessFollowsRedis(t *testing.T) {
	const after = time.Second
	rs := redistest.Start(t)
	cfg := testConfig()
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.RedisURL, cfg.AllowPlaintext, cfg.AllowUnauthenticated = rs.URL()+"?max_retries=-1&dial_timeout=200ms", true, true
	cfg.UnreadyAfter = after
	s := start(t, cfg)
	hc := healthpb.NewHealthClient(dial(t, s.GRPCAddr()))
	services := []string{"", "tokenbroker.v1.TokenService", "tokenbroker.v1.AdminService"}
	for _, svc := range append(services, "liveness") {
		if st := healthOf(t, hc, svc); st != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health %q = %v at start; want SERVING", svc, st)
		}
	}
	readyz := "http://" + s.MetricsAddr() + "/readyz"
	healthz := "http://" + s.MetricsAddr() + "/healthz"
	if code, _ := httpGet(t, readyz); code != http.StatusOK {
		t.Fatalf("/readyz = %d at start", code)
	}

	stopped := time.Now()
	rs.Stop()
	// Not before the threshold: a short blip does not take the replica out.
	time.Sleep(after / 2)
	if st := healthOf(t, hc, ""); st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("readiness %v %v after Redis stopped; want SERVING until %v", st, time.Since(stopped), after)
	}
	waitHealth(t, hc, healthpb.HealthCheckResponse_NOT_SERVING, 2*after)
	took := time.Since(stopped)
	if limit := after + storeCheckInterval(after) + 300*time.Millisecond; took > limit {
		t.Errorf("readiness went NOT_SERVING %v after Redis stopped; want within %v", took, limit)
	}
	for _, svc := range services {
		if st := healthOf(t, hc, svc); st != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("health %q = %v with Redis down; want NOT_SERVING", svc, st)
		}
	}
	if st := healthOf(t, hc, "liveness"); st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("liveness = %v with Redis down; want SERVING", st)
	}
	if code, body := httpGet(t, readyz); code != http.StatusServiceUnavailable || !strings.Contains(body, "store unreachable") {
		t.Errorf("/readyz = %d %q with Redis down", code, body)
	}
	if code, _ := httpGet(t, healthz); code != http.StatusOK {
		t.Errorf("/healthz = %d with Redis down; want 200", code)
	}

	rs.Restart()
	back := waitHealth(t, hc, healthpb.HealthCheckResponse_SERVING, 5*time.Second)
	t.Logf("NOT_SERVING %v after the stop, SERVING %v after the restart", took, back)
	if code, _ := httpGet(t, readyz); code != http.StatusOK {
		t.Errorf("/readyz = %d after the restart", code)
	}
	s.stop(t)
	out := s.logs.String()
	for _, want := range []string{"redis does not answer; readiness NOT_SERVING", "redis answers; ready"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the log:\n%s", want, out)
		}
	}
}

// TestRedisUnreachableAtStart: a Redis that is not there at start is not
// fatal: the server starts NOT_SERVING, logs it once, and once Redis
// answers it seeds the credentials file and turns SERVING.
func TestRedisUnreachableAtStart(t *testing.T) {
	rs := redistest.Start(t)
	rs.Stop()
	idp := newIdP(t)
	cfg := testConfig()
	cfg.RedisURL, cfg.AllowPlaintext, cfg.AllowUnauthenticated = rs.URL()+"?max_retries=-1&dial_timeout=200ms", true, true
	cfg.UnreadyAfter = 500 * time.Millisecond
	cfg.CredentialsFile = seedFile(t, idp, "late", idp.Seed(idpClientID))
	s := start(t, cfg)
	conn := dial(t, s.GRPCAddr())
	hc := healthpb.NewHealthClient(conn)
	if st := healthOf(t, hc, ""); st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("readiness = %v without Redis; want NOT_SERVING", st)
	}
	if st := healthOf(t, hc, "liveness"); st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("liveness = %v without Redis; want SERVING", st)
	}
	time.Sleep(time.Second)
	rs.Restart()
	waitHealth(t, hc, healthpb.HealthCheckResponse_SERVING, 5*time.Second)
	if _, err := pb.NewTokenServiceClient(conn).GetToken(ctxFor(t), &pb.GetTokenRequest{CredentialId: "late"}); err != nil {
		t.Fatalf("GetToken of the credential seeded late: %v\n%s", err, s.logs)
	}
	s.stop(t)
	if n := strings.Count(s.logs.String(), "redis does not answer"); n != 1 {
		t.Errorf("logged %d times that Redis does not answer; want once:\n%s", n, s.logs)
	}
}

// TestFatalStart: a keyring that opens none of the stored records stops the
// start with a ConfigError (exit status 2) naming the keys they need.
func TestFatalStart(t *testing.T) {
	rs := redistest.Start(t)
	idp := newIdP(t)
	k1, _ := seal.GenerateKey()
	k2, _ := seal.GenerateKey()
	cfg := testConfig()
	cfg.RedisURL, cfg.AllowUnauthenticated, cfg.SealKeys = rs.URL(), true, "k1:"+k1
	cfg.CredentialsFile = seedFile(t, idp, "sealed", idp.Seed(idpClientID))
	s := start(t, cfg)
	healthOf(t, healthpb.NewHealthClient(dial(t, s.GRPCAddr())), "") // serving
	s.stop(t)

	cfg.SealKeys, cfg.CredentialsFile = "k2:"+k2, ""
	_, err := New(ctxFor(t), cfg, nil)
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), `--seal-keys opens none of the 1 credentials`) || !strings.Contains(err.Error(), `"k1"`) {
		t.Errorf("New with the wrong keyring = %v; want a ConfigError naming k1", err)
	}
	cfg.SealKeys = "k2:" + k2 + ",k1:" + k1
	s = start(t, cfg)
	healthOf(t, healthpb.NewHealthClient(dial(t, s.GRPCAddr())), "")
	s.stop(t)

	cfg.SealKeys = "k1:" + k1
	cfg.RedisURL = rs.URL()[:len(rs.URL())-2] + "/99"
	if _, err := New(ctxFor(t), cfg, nil); !errors.As(err, &ce) || !strings.Contains(err.Error(), "database number is out of range") {
		t.Errorf("New with db 99 = %v; want a ConfigError", err)
	}
}
