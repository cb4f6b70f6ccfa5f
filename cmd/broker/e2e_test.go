package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

const (
	e2eClientID     = "e2e-client"
	e2eClientSecret = "SECRET-e2e-5ca1ab1e"
	startTimeout    = 60 * time.Second // a cold build on a busy machine
	exitTimeout     = 30 * time.Second
)

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// brokerBinary builds the broker once per test run.
func brokerBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the broker binary")
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "broker-e2e-")
		if buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "broker")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", buildBin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// proc is a running broker binary.
type proc struct {
	cmd    *exec.Cmd
	lines  chan map[string]any // parsed JSON log lines of stderr
	mu     sync.Mutex
	stderr strings.Builder // all of stderr
	exited chan struct{}
	err    error // of Wait, once exited is closed
}

// startBroker starts the binary with args (JSON logs) and the environment
// variables env, and kills it, by PID,
// when the test ends.
func startBroker(t *testing.T, args []string, env []string) *proc {
	t.Helper()
	bin := brokerBinary(t)
	cmd := exec.Command(bin, append([]string{"--log-format", "json", "--log-level", "debug"}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...) // no TOKENBROKER_* from the caller's environment
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, lines: make(chan map[string]any, 1024), exited: make(chan struct{})}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		defer close(p.lines)
		sc := bufio.NewScanner(errPipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				select {
				case p.lines <- m:
				default: // nobody is waiting for that many lines
				}
			}
		}
		_, _ = io.Copy(io.Discard, errPipe)
	}()
	go func() {
		<-scanned // Wait closes the pipe: read it to the end first
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
	})
	return p
}

// waitLog returns the attribute attr of the first log line with message msg.
func (p *proc) waitLog(t *testing.T, msg, attr string) string {
	t.Helper()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	for {
		select {
		case m, ok := <-p.lines:
			if !ok {
				t.Fatalf("broker exited before logging %q:\n%s", msg, p.output())
			}
			if m["msg"] == msg {
				v, _ := m[attr].(string)
				return v
			}
		case <-timer.C:
			t.Fatalf("no %q log line within %v:\n%s", msg, startTimeout, p.output())
		}
	}
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(exitTimeout):
		t.Fatalf("broker did not exit within %v:\n%s", exitTimeout, p.output())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("wait: %v", p.err)
	}
	return 0
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

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestBinaryEndToEnd starts the real broker with a credentials file seeded
// from the fake IdP, gets a token the IdP's resource accepts, checks health
// and reflection, and stops it with SIGTERM.
func TestBinaryEndToEnd(t *testing.T) {
	t.Parallel()
	idp := fakeidptest.Start(t, fakeidp.Options{Clients: map[string]string{e2eClientID: e2eClientSecret}})
	refreshToken := idp.Seed(e2eClientID)
	creds := writeFile(t, fmt.Sprintf(`{"credentials": [{"id": "demo", "token_url": %q, "client_id": %q, "client_secret": %q, "refresh_token": %q}]}`,
		idp.TokenURL(), e2eClientID, e2eClientSecret, refreshToken))

	p := startBroker(t, []string{"--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--credentials-file", creds, "--shutdown-timeout", "20s"}, nil)
	metricsAddr := p.waitLog(t, "metrics listening", "addr")
	addr := p.waitLog(t, "listening", "addr")
	if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
		t.Fatalf("listening on %q; want 127.0.0.1 and a real port", addr)
	}
	if !strings.Contains(p.output(), `"msg":"dev mode: single replica`) {
		t.Errorf("no dev mode warning:\n%s", p.output())
	}
	conn := dial(t, addr)
	ctx := ctxFor(t)

	// GetToken: a token the IdP's protected resource accepts.
	tok, err := pb.NewTokenServiceClient(conn).GetToken(ctx, &pb.GetTokenRequest{CredentialId: "demo"})
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, idp.ResourceURL(), nil)
	req.Header.Set("Authorization", "Bearer "+tok.GetAccessToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("resource answered %d to the broker's token", resp.StatusCode)
	}
	cred, err := pb.NewAdminServiceClient(conn).GetCredential(ctx, &pb.GetCredentialRequest{Id: "demo"})
	if err != nil || cred.GetCredential().GetState() != pb.State_ACTIVE || cred.GetCredential().GetGeneration() < 2 {
		t.Fatalf("GetCredential = %v, %v; want ACTIVE after a refresh", cred, err)
	}

	// Health, over gRPC and HTTP.
	hc := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", "tokenbroker.v1.TokenService", "tokenbroker.v1.AdminService"} {
		h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health %q = %v, %v; want SERVING", svc, h, err)
		}
	}
	if code := httpStatus(t, "http://"+metricsAddr+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d; want 200", code)
	}

	// Reflection lists the services, so grpcurl works.
	rs, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	lr, err := rs.Recv()
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	var names []string
	for _, s := range lr.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"tokenbroker.v1.TokenService", "tokenbroker.v1.AdminService", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v; missing %s", names, want)
		}
	}
	_ = rs.CloseSend()
	if _, err := rs.Recv(); err != io.EOF {
		t.Fatalf("reflection stream end = %v", err)
	}

	// SIGTERM: a watcher sees NOT_SERVING; once it leaves, the broker exits 0.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	w, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch = %v, %v", m, err)
	}
	if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch after SIGTERM = %v, %v; want NOT_SERVING", m, err)
	}
	wcancel()
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit code %d after SIGTERM; want 0:\n%s", code, p.output())
	}
	out := p.output()
	if !strings.Contains(out, `"msg":"stopped"`) || strings.Contains(out, "calls in flight were cut") {
		t.Errorf("no clean stop in the log:\n%s", out)
	}
	for _, secret := range []string{e2eClientSecret, refreshToken, tok.GetAccessToken()} {
		if strings.Contains(out, secret) {
			t.Errorf("the log holds a secret or token:\n%s", out)
		}
	}
	if !strings.Contains(out, `"method":"/tokenbroker.v1.TokenService/GetToken"`) {
		t.Errorf("no access log line for GetToken:\n%s", out)
	}
}

// TestBinaryForcedStop: a call that does not end within --shutdown-timeout
// is cut, and the broker still exits 0.
func TestBinaryForcedStop(t *testing.T) {
	t.Parallel()
	p := startBroker(t, []string{"--grpc-addr", "127.0.0.1:0", "--shutdown-timeout", "200ms"}, nil)
	conn := dial(t, p.waitLog(t, "listening", "addr"))
	w, err := healthpb.NewHealthClient(conn).Watch(ctxFor(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit code %d; want 0:\n%s", code, p.output())
	}
	if !strings.Contains(p.output(), "calls in flight were cut") {
		t.Errorf("forced stop not logged:\n%s", p.output())
	}
}

// TestBinaryBadConfig: bad configuration exits 2 with one line on stderr,
// before anything listens.
func TestBinaryBadConfig(t *testing.T) {
	t.Parallel()
	bin := brokerBinary(t)
	badCreds := writeFile(t, `{"credentials": [{"id": "x", "token_url": "/token", "client_id": "c", "client_secret": "SECRET-bad", "refresh_token": "SECRET-rt"}]}`)
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"env log format", nil, []string{"TOKENBROKER_LOG_FORMAT=xml"}, "broker: --log-format must be text or json, not \"xml\"\n"},
		{"flag duration", []string{"--lock-wait", "forever"}, nil, "broker: invalid value \"forever\" for flag -lock-wait: parse error\n"},
		{"lock ttl", []string{"--refresh-timeout", "20s", "--lock-ttl", "20s"}, nil, "broker: --lock-ttl (20s) must exceed --refresh-timeout (20s), so a refresh gives up before its lock expires\n"},
		{"credentials file", []string{"--credentials-file", badCreds}, nil,
			"broker: --credentials-file " + badCreds + ": credentials[0] (id \"x\"): broker: invalid argument: credential.token_url: must be an absolute http or https URL\n"},
		{"redis mode without keys", nil, []string{"TOKENBROKER_REDIS_URL=redis://:SECRET@127.0.0.1:6379"},
			"broker: redis mode needs --seal-keys (or --allow-plaintext to store refresh tokens and client secrets unencrypted)\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append([]string{"--grpc-addr", "127.0.0.1:0"}, tc.args...)...)
			cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, tc.env...)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("run = %v; want exit status 2\n%s", err, stderr.String())
			}
			if got := stderr.String(); got != tc.want {
				t.Errorf("stderr = %q; want %q", got, tc.want)
			}
			if strings.Contains(stderr.String(), `"listening"`) || strings.Contains(stderr.String(), "msg=listening") || strings.Contains(stderr.String(), "SECRET") {
				t.Errorf("stderr = %q: listened or leaked a secret", stderr.String())
			}
		})
	}
}

func httpStatus(t *testing.T, url string) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctxFor(t), http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
