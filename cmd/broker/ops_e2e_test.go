package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// TestBinaryShutdownWithRefreshInFlight: SIGTERM while a GetToken waits for
// an IdP that does not answer. Readiness is NOT_SERVING at once, also on a
// new connection while the call drains, and liveness stays SERVING; a new
// call is refused with SHUTTING_DOWN; the call in flight ends with
// UNAVAILABLE, SHUTTING_DOWN; the process exits 0 within
// --shutdown-timeout + 1s and logs the refresh it abandoned.
func TestBinaryShutdownWithRefreshInFlight(t *testing.T) {
	t.Parallel()
	const shutdownTimeout = 2 * time.Second
	idp := fakeidptest.Start(t, fakeidp.Options{Clients: map[string]string{e2eClientID: e2eClientSecret}})
	creds := writeFile(t, fmt.Sprintf(`{"credentials": [{"id": "slow", "token_url": %q, "client_id": %q, "client_secret": %q, "refresh_token": %q}]}`,
		idp.TokenURL(), e2eClientID, e2eClientSecret, idp.Seed(e2eClientID)))
	p := startBroker(t, []string{"--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--credentials-file", creds,
		"--shutdown-timeout", shutdownTimeout.String(), "--refresh-timeout", "20s"}, nil)
	metricsAddr := p.waitLog(t, "metrics listening", "addr")
	addr := p.waitLog(t, "listening", "addr")

	idp.Pause()
	t.Cleanup(idp.Resume)
	inFlight := make(chan error, 1)
	go func() {
		_, err := pb.NewTokenServiceClient(dial(t, addr)).GetToken(context.Background(), &pb.GetTokenRequest{CredentialId: "slow"})
		inFlight <- err
	}()
	ctx := ctxFor(t)
	if err := idp.WaitStall(ctx, func(s fakeidp.StallState) bool { return s.Held == 1 }); err != nil {
		t.Fatalf("the refresh did not reach the IdP: %v", err)
	}

	sent := time.Now()
	if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// A new connection, while the call drains.
	hc := healthpb.NewHealthClient(dial(t, addr))
	for {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("health on a new connection while draining: %v", err)
		}
		if r.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING {
			break
		}
		if time.Since(sent) > 500*time.Millisecond {
			t.Fatalf("readiness still %v %v after SIGTERM", r.GetStatus(), time.Since(sent))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "liveness"}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("liveness while draining = %v, %v; want SERVING", r, err)
	}
	_, err := pb.NewTokenServiceClient(dial(t, addr)).GetToken(ctx, &pb.GetTokenRequest{CredentialId: "slow"})
	if st := status.Convert(err); st.Code() != codes.Unavailable || reasonOf(st) != "SHUTTING_DOWN" {
		t.Errorf("a new call while draining = %v; want UNAVAILABLE, SHUTTING_DOWN", err)
	}
	if code := httpStatus(t, "http://"+metricsAddr+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining = %d; want 503", code)
	}

	select {
	case err := <-inFlight:
		if st := status.Convert(err); st.Code() != codes.Unavailable || reasonOf(st) != "SHUTTING_DOWN" {
			t.Errorf("the call in flight ended with %v; want UNAVAILABLE, SHUTTING_DOWN", err)
		}
	case <-time.After(shutdownTimeout + 5*time.Second):
		t.Fatal("the call in flight did not end")
	}
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit code %d; want 0:\n%s", code, p.output())
	}
	took := time.Since(sent)
	t.Logf("exited %v after SIGTERM (--shutdown-timeout %v)", took, shutdownTimeout)
	if took > shutdownTimeout+time.Second {
		t.Errorf("exited %v after SIGTERM; want within %v", took, shutdownTimeout+time.Second)
	}
	out := p.output()
	if !strings.Contains(out, `"msg":"refreshes abandoned at shutdown"`) || !strings.Contains(out, "credentials slow") {
		t.Errorf("the abandoned refresh is not logged:\n%s", out)
	}
}

// TestBinaryFatalStart: each Redis that disagrees with the configuration in
// a way waiting will not fix exits 2 with one line naming the cause, and
// never the password; an unreachable Redis does not.
func TestBinaryFatalStart(t *testing.T) {
	t.Parallel()
	bin := brokerBinary(t)
	const pw = "SECRET-fatal-pw"
	plain := redistest.Start(t)
	locked := redistest.Start(t)
	if err := locked.NewClient(t).ConfigSet(context.Background(), "requirepass", pw).Err(); err != nil {
		t.Fatal(err)
	}
	cluster := redistest.StartCluster(t, 0)
	clusterNode := cluster.Addrs()[0]

	// A record sealed with k1, for the keyring case.
	sealed := redistest.Start(t)
	idp := fakeidptest.Start(t, fakeidp.Options{Clients: map[string]string{e2eClientID: e2eClientSecret}})
	creds := writeFile(t, fmt.Sprintf(`{"credentials": [{"id": "c1", "token_url": %q, "client_id": %q, "client_secret": %q, "refresh_token": %q}]}`,
		idp.TokenURL(), e2eClientID, e2eClientSecret, idp.Seed(e2eClientID)))
	seeder := startBroker(t, []string{"--grpc-addr", "127.0.0.1:0", "--redis-url", sealed.URL(), "--seal-keys", "k1:" + testSealKey,
		"--allow-unauthenticated", "--credentials-file", creds}, nil)
	seeder.waitLog(t, "listening", "addr")
	_ = syscall.Kill(seeder.cmd.Process.Pid, syscall.SIGTERM)
	if code := seeder.wait(t); code != 0 {
		t.Fatalf("seeding broker exited %d:\n%s", code, seeder.output())
	}
	otherKey := "k2:" + strings.Repeat("A", 43) + "="

	for _, tc := range []struct {
		name, url, keys, want string
	}{
		{"wrong password", "redis://:wrong-" + pw + "@" + locked.Addr() + "/0", "", "broker: --redis-url: Redis refused the user name or password (WRONGPASS)\n"},
		{"no password", "redis://" + locked.Addr() + "/0", "", "broker: --redis-url: Redis requires a password, and the URL gives none (NOAUTH)\n"},
		{"db out of range", "redis://:" + pw + "@" + locked.Addr() + "/16", "", "broker: --redis-url: the database number is out of range for this Redis server (ERR DB index is out of range)\n"},
		{"cluster url, single server", "redis+cluster://" + plain.Addr(), "", "broker: --redis-url: redis+cluster:// names a server that is not a Cluster node; use redis:// (or redis+sentinel://)\n"},
		{"single url, cluster server", "redis://" + clusterNode, "", "broker: --redis-url: the server is a Redis Cluster node; use redis+cluster:// (or rediss+cluster://)\n"},
		{"keyring opens nothing", sealed.URL(), otherKey, "broker: --seal-keys opens none of the 1 credentials read from Redis (prefix \"tokenbroker\"); they are sealed with key \"k1\": give the keys they were sealed with\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"--grpc-addr", "127.0.0.1:0", "--redis-url", tc.url, "--allow-unauthenticated"}
			if tc.keys != "" {
				args = append(args, "--seal-keys", tc.keys)
			} else {
				args = append(args, "--allow-plaintext")
			}
			ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("run = %v; want exit status 2\n%s", err, stderr.String())
			}
			// The warnings before it are log lines; the last line is the one
			// that says why.
			out := stderr.String()
			last := out[strings.LastIndex(strings.TrimSuffix(out, "\n"), "\n")+1:]
			if last != tc.want {
				t.Errorf("last line %q; want %q\n%s", last, tc.want, out)
			}
			if strings.Contains(out, pw) || strings.Contains(out, "msg=listening") {
				t.Errorf("stderr leaks the password or listened:\n%s", out)
			}
		})
	}
}
