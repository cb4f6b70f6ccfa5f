package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

// summaryKeys are the JSON keys of the summary: DESIGN.md's and the rest of
// the documented set.
var summaryKeys = []string{
	"mode", "workers", "duration_seconds", "requests", "succeeded", "failed",
	"failures_by_reason", "recovered_401", "idp_refreshes", "reuses", "revocations",
	"latency_p50_ms", "latency_p99_ms", "replicas", "requests_by_replica",
	"revoke_previous", "watch",
}

// runJSON runs realMain with args plus --json, expects exit status 0 and
// returns the parsed summary.
func runJSON(t *testing.T, ctx context.Context, args ...string) Summary {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := realMain(ctx, append(args, "--json"), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit status %d; stderr:\n%s", code, stderr.String())
	}
	var raw map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &raw); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, stdout.String())
	}
	for _, k := range summaryKeys {
		if _, ok := raw[k]; !ok {
			t.Errorf("JSON summary lacks %q:\n%s", k, stdout.String())
		}
	}
	var s Summary
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	t.Logf("summary: %s", stdout.String())
	return s
}

// noChildren fails the test if the test process still has a child process
// (such as a redis-server the demo started). Linux only.
func noChildren(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" {
		return
	}
	files, _ := filepath.Glob("/proc/self/task/*/children")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && strings.TrimSpace(string(b)) != "" {
			t.Errorf("child processes left running: %s", strings.TrimSpace(string(b)))
		}
	}
}

func TestBrokerNoReuseNoFailure(t *testing.T) {
	s := runJSON(t, context.Background(), "--duration", "3s", "--workers", "8", "--token-ttl", "1s")
	if s.Mode != modeBroker || s.Workers != 8 || s.Replicas != 1 {
		t.Errorf("mode %q, workers %d, replicas %d; want broker, 8, 1", s.Mode, s.Workers, s.Replicas)
	}
	if s.Requests == 0 || s.Succeeded != s.Requests {
		t.Errorf("requests %d, succeeded %d; want all of some succeeded", s.Requests, s.Succeeded)
	}
	if s.Failed != 0 || len(s.FailuresByReason) != 0 {
		t.Errorf("failed %d %v; want none", s.Failed, s.FailuresByReason)
	}
	if s.Reuses != 0 || s.Revocations != 0 {
		t.Errorf("reuses %d, revocations %d; want 0", s.Reuses, s.Revocations)
	}
	if s.IdPRefreshes < 1 {
		t.Errorf("idp_refreshes %d; want at least 1", s.IdPRefreshes)
	}
	if len(s.RequestsByReplica) != 1 || s.RequestsByReplica[0] != s.Requests {
		t.Errorf("requests_by_replica %v; want [%d]", s.RequestsByReplica, s.Requests)
	}
	if s.CredentialState != "ACTIVE" {
		t.Errorf("credential_state %q; want ACTIVE", s.CredentialState)
	}
}

// Against an IdP that revokes the previous access token on every refresh,
// the workers' SDK watching the credential drops the old token when the
// broker announces a refresh and gets no 401 over many rotations; without
// watching, tokens cached in the SDK die early and the workers recover from
// 401s (which shows the first run could have seen them).
func TestRevokePreviousWatchAvoids401(t *testing.T) {
	args := []string{"--revoke-previous", "--duration", "5s", "--workers", "20", "--token-ttl", "1s"}
	on := runJSON(t, context.Background(), args...)
	if !on.RevokePrevious || !on.Watch {
		t.Errorf("revoke_previous %v, watch %v; want both", on.RevokePrevious, on.Watch)
	}
	if on.IdPRefreshes < 5 || on.Reuses != 0 {
		t.Errorf("idp_refreshes %d, reuses %d; want at least 5 rotations and no reuse", on.IdPRefreshes, on.Reuses)
	}
	if on.Recovered401 != 0 || on.Failed != 0 || on.Succeeded != on.Requests {
		t.Errorf("watching: recovered_401 %d, failed %d %v; want none", on.Recovered401, on.Failed, on.FailuresByReason)
	}
	off := runJSON(t, context.Background(), append(args, "--watch=false")...)
	if off.Watch || off.IdPRefreshes < 5 {
		t.Errorf("watch %v, idp_refreshes %d; want false and at least 5 rotations", off.Watch, off.IdPRefreshes)
	}
	if off.Recovered401 == 0 {
		t.Errorf("not watching: recovered_401 0; want the 401s of tokens cached past their revocation")
	}
	if off.Failed != 0 {
		t.Errorf("not watching: failed %d %v; want every 401 recovered", off.Failed, off.FailuresByReason)
	}
}

// TestReauthLoop: the grant is revoked a third into the run; workers fail
// with reauth_required until the demo, as the operator, has re-authorized
// the credential through the device flow on the WatchCredentials event;
// then they recover, with the same credential and no restart.
func TestReauthLoop(t *testing.T) {
	s := runJSON(t, context.Background(), "--reauth", "--duration", "6s", "--workers", "4", "--token-ttl", "2s")
	if !s.Revoked || !s.Reauthorized {
		t.Fatalf("revoked %v, reauthorized %v; want both", s.Revoked, s.Reauthorized)
	}
	if s.FailuresByReason[reasonReauth] == 0 || s.Failed != s.FailuresByReason[reasonReauth] {
		t.Errorf("failures %v: want reauth_required ones only", s.FailuresByReason)
	}
	if s.OutageSeconds <= 0 || s.OutageSeconds > 4 || s.ReauthSeconds > s.OutageSeconds {
		t.Errorf("outage %vs, re-authorization %vs", s.OutageSeconds, s.ReauthSeconds)
	}
	if s.CredentialState != "ACTIVE" || s.Revocations != 1 || s.Reuses != 0 {
		t.Errorf("credential %s, revocations %d, reuses %d; want ACTIVE, 1, 0", s.CredentialState, s.Revocations, s.Reuses)
	}
	if s.Succeeded <= s.Failed {
		t.Errorf("succeeded %d, failed %d: the workers did not recover", s.Succeeded, s.Failed)
	}
}

// Every naive worker starts from its own copy of the same token pair, so at
// the first expiry (0.75 s into the run with 1 s tokens) the second worker to
// refresh presents a spent refresh token: against the strict IdP that is a
// reuse, the family is revoked and requests fail from then on. A 3 s run
// spans three expiries.
func TestNaiveReusesAndFails(t *testing.T) {
	s := runJSON(t, context.Background(), "--naive", "--duration", "3s", "--workers", "8", "--token-ttl", "1s")
	if s.Mode != modeNaive || s.Replicas != 0 || len(s.RequestsByReplica) != 0 {
		t.Errorf("mode %q, replicas %d %v; want naive, 0, []", s.Mode, s.Replicas, s.RequestsByReplica)
	}
	if s.Reuses < 1 || s.Revocations < 1 {
		t.Errorf("reuses %d, revocations %d; want both > 0", s.Reuses, s.Revocations)
	}
	if s.Failed < 1 || s.FailuresByReason[reasonReauth] < 1 {
		t.Errorf("failed %d %v; want reauth_required failures", s.Failed, s.FailuresByReason)
	}
	if s.Requests != s.Succeeded+s.Failed {
		t.Errorf("requests %d != succeeded %d + failed %d", s.Requests, s.Succeeded, s.Failed)
	}
}

func TestReplicasWithPrivateRedis(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not in PATH")
	}
	s := runJSON(t, context.Background(), "--replicas", "3", "--duration", "3s", "--workers", "9", "--token-ttl", "1s")
	if s.Mode != modeRedis || s.Replicas != 3 || len(s.RequestsByReplica) != 3 {
		t.Fatalf("mode %q, replicas %d %v; want broker-redis, 3 replicas", s.Mode, s.Replicas, s.RequestsByReplica)
	}
	for i, n := range s.RequestsByReplica {
		if n == 0 {
			t.Errorf("replica %d served no request: %v", i, s.RequestsByReplica)
		}
	}
	if s.Failed != 0 || s.Reuses != 0 || s.Revocations != 0 {
		t.Errorf("failed %d %v, reuses %d, revocations %d; want none", s.Failed, s.FailuresByReason, s.Reuses, s.Revocations)
	}
	if s.IdPRefreshes < 1 {
		t.Errorf("idp_refreshes %d; want at least 1", s.IdPRefreshes)
	}
	noChildren(t)
}

// With --redis-url the replicas share that Redis, and the demo leaves no
// credential behind in it.
func TestReplicasWithRedisURL(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not in PATH")
	}
	srv := redistest.Start(t)
	s := runJSON(t, context.Background(), "--redis-url", srv.URL(), "--replicas", "2", "--duration", "1s", "--workers", "4", "--token-ttl", "1s")
	if s.Mode != modeRedis || len(s.RequestsByReplica) != 2 || s.RequestsByReplica[0] == 0 || s.RequestsByReplica[1] == 0 {
		t.Errorf("mode %q, requests_by_replica %v; want broker-redis on 2 replicas", s.Mode, s.RequestsByReplica)
	}
	if s.Failed != 0 || s.Reuses != 0 {
		t.Errorf("failed %d %v, reuses %d; want none", s.Failed, s.FailuresByReason, s.Reuses)
	}
	keys, err := srv.NewClient(t).Keys(context.Background(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.Contains(k, "client-demo-") {
			t.Errorf("key %q left in Redis", k)
		}
	}
}

func TestRunningBroker(t *testing.T) {
	r, err := startMemReplica(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := r.stop(); err != nil {
			t.Error(err)
		}
	}()
	s := runJSON(t, context.Background(), "--broker", r.addr, "--insecure", "--duration", "2s", "--workers", "4", "--token-ttl", "1s")
	if s.Mode != modeExternal || s.Requests == 0 || s.Failed != 0 || s.Reuses != 0 {
		t.Errorf("mode %q, requests %d, failed %d, reuses %d; want broker-external, >0, 0, 0", s.Mode, s.Requests, s.Failed, s.Reuses)
	}
	// Without --insecure the demo insists on TLS, and says what to do.
	var stdout, stderr bytes.Buffer
	if code := realMain(context.Background(), []string{"--broker", r.addr, "--duration", "1s"}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "add --insecure") {
		t.Errorf("TLS to a plaintext broker: exit %d, stderr %q; want 1 and a hint at --insecure", code, stderr.String())
	}
	// The demo deletes its credential at the end.
	recs, _, err := r.srv.Broker().ListCredentials(context.Background(), 10, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 0 {
		t.Errorf("%d credentials left in the broker; want 0", len(recs))
	}
}

// With --api-key the demo authenticates its admin calls and its workers.
func TestRunningBrokerWithAPIKey(t *testing.T) {
	a, err := auth.NewAuthenticator([]auth.Client{{ID: "demo-admin", KeySHA256: []string{auth.HashKey("k3y")}, Admin: true}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := replicaConfig()
	cfg.Authenticator = a
	r, err := startReplica(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := r.stop(); err != nil {
			t.Error(err)
		}
	}()
	addr := r.addr

	s := runJSON(t, context.Background(), "--broker", addr, "--insecure", "--api-key", "k3y", "--allowed-client", "demo-admin", "--duration", "1s", "--workers", "2", "--token-ttl", "1s")
	if s.Requests == 0 || s.Failed != 0 {
		t.Errorf("requests %d, failed %d %v; want some, none failed", s.Requests, s.Failed, s.FailuresByReason)
	}

	var stdout, stderr bytes.Buffer
	code := realMain(context.Background(), []string{"--broker", addr, "--insecure", "--api-key", "wrong", "--duration", "1s"}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "Unauthenticated") {
		t.Errorf("wrong key: exit %d, stderr %q; want 1 and Unauthenticated", code, stderr.String())
	}
	if strings.Contains(stderr.String(), "wrong") {
		t.Errorf("the API key appears in the message: %q", stderr.String())
	}
}

func TestRunningBrokerUnreachable(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := realMain(context.Background(), []string{"--broker", "127.0.0.1:" + strconv.Itoa(port), "--insecure", "--duration", "1s"}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "putting the credential into the broker") {
		t.Errorf("exit %d, stderr %q; want 1 and a message about the broker", code, stderr.String())
	}
}

// Interrupting ends the run early and still prints the summary.
func TestInterrupt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	timer := time.AfterFunc(1500*time.Millisecond, cancel)
	defer timer.Stop()
	defer cancel()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- realMain(ctx, []string{"--duration", "10m", "--workers", "4"}, &stdout, &stderr) }()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit status %d; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("realMain did not return within a minute of the interrupt")
	}
	out := stdout.String()
	for _, want := range []string{"client-demo summary", "interrupted", "requests", "idp_refreshes"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--workers", "0"}, "--workers"},
		{[]string{"--workers", "-3"}, "--workers"},
		{[]string{"--workers", "many"}, "workers"},
		{[]string{"--duration", "0"}, "--duration"},
		{[]string{"--duration", "-5s"}, "--duration"},
		{[]string{"--duration", "soon"}, "duration"},
		{[]string{"--token-ttl", "500ms"}, "--token-ttl"},
		{[]string{"--token-ttl", "1.5s"}, "whole seconds"},
		{[]string{"--replicas", "0"}, "--replicas"},
		{[]string{"--naive", "--broker", "127.0.0.1:7070"}, "--naive"},
		{[]string{"--naive", "--replicas", "3"}, "--naive"},
		{[]string{"--naive", "--redis-url", "redis://127.0.0.1:6379"}, "--naive"},
		{[]string{"--broker", "127.0.0.1:7070", "--replicas", "2"}, "--broker"},
		{[]string{"--broker", "nohost"}, "--broker"},
		{[]string{"--api-key", "k"}, "--api-key"},
		{[]string{"--allowed-client", "c"}, "--allowed-client"},
		{[]string{"--idp-only", "--naive"}, "--idp-only"},
		{[]string{"--idp-only", "--reauth"}, "--idp-only"},
		{[]string{"--naive", "--reauth"}, "--naive"},
		{[]string{"--idp-addr", "9090"}, "--idp-addr"},
		{[]string{"--naive", "--watch=false"}, "--naive"},
		{[]string{"--idp-only", "--watch=false"}, "--idp-only"},
		{[]string{"--bogus"}, "bogus"},
		{[]string{"extra"}, "unexpected argument"},
	} {
		var stdout, stderr bytes.Buffer
		code := realMain(context.Background(), tc.args, &stdout, &stderr)
		if code != 2 {
			t.Errorf("%q: exit status %d; want 2", tc.args, code)
		}
		if msg := stderr.String(); !strings.Contains(msg, tc.want) || !strings.Contains(msg, "--help") {
			t.Errorf("%q: stderr %q; want a message naming %q and pointing at --help", tc.args, msg, tc.want)
		}
		if stdout.Len() != 0 {
			t.Errorf("%q: wrote to stdout: %q", tc.args, stdout.String())
		}
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"--help", "-h"} {
		var stdout, stderr bytes.Buffer
		if code := realMain(context.Background(), []string{arg}, &stdout, &stderr); code != 0 {
			t.Errorf("%s: exit status %d; want 0", arg, code)
		}
		for _, want := range []string{"Modes:", "--naive", "--replicas", "--broker", "--idp-only", "-workers", "-token-ttl", "-json"} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("%s: usage lacks %q", arg, want)
			}
		}
	}
}

func TestDurationFlagTakesSeconds(t *testing.T) {
	cfg, err := parseFlags([]string{"--duration", "2.5", "--token-ttl", "2"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.duration != 2500*time.Millisecond || cfg.tokenTTL != 2*time.Second {
		t.Errorf("duration %s, token-ttl %s; want 2.5s, 2s", cfg.duration, cfg.tokenTTL)
	}
}

// The IdP-only mode prints a credential that works at the printed token URL.
func TestIdPOnly(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		code := realMain(ctx, []string{"--idp-only", "--idp-addr", "127.0.0.1:0", "--token-ttl", "2s"}, pw, &stderr)
		pw.Close()
		done <- code
	}()

	fields := map[string]string{}
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, ":  "); ok {
			fields[k] = strings.TrimSpace(v)
		}
		if strings.HasPrefix(line, "Serving until interrupted") {
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	for _, k := range []string{"token URL", "client id", "client secret", "refresh token"} {
		if fields[k] == "" {
			t.Fatalf("no %q line printed; got %v", k, fields)
		}
	}
	conf := &oauth2.Config{
		ClientID:     fields["client id"],
		ClientSecret: fields["client secret"],
		Endpoint:     oauth2.Endpoint{TokenURL: fields["token URL"], AuthStyle: oauth2.AuthStyleInHeader},
	}
	tok, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: fields["refresh token"]}).Token()
	if err != nil {
		t.Fatalf("refreshing the printed credential: %v", err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == fields["refresh token"] {
		t.Errorf("refresh did not rotate: got access %t, same refresh token %t", tok.AccessToken != "", tok.RefreshToken == fields["refresh token"])
	}

	// /seed hands out a fresh refresh token of its own family each time.
	seedURL := strings.TrimSuffix(fields["token URL"], "/token") + "/seed"
	var seeds []string
	for range 2 {
		resp, err := http.Get(seedURL)
		if err != nil {
			t.Fatal(err)
		}
		var put struct {
			Credential struct {
				TokenURL     string `json:"token_url"`
				RefreshToken string `json:"refresh_token"`
			} `json:"credential"`
		}
		err = json.NewDecoder(resp.Body).Decode(&put)
		resp.Body.Close()
		if err != nil || put.Credential.TokenURL != fields["token URL"] || put.Credential.RefreshToken == "" {
			t.Fatalf("GET /seed = %+v, %v", put, err)
		}
		seeds = append(seeds, put.Credential.RefreshToken)
	}
	if seeds[0] == seeds[1] || seeds[0] == fields["refresh token"] {
		t.Errorf("/seed handed out the same refresh token twice")
	}
	if _, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: seeds[1]}).Token(); err != nil {
		t.Errorf("refreshing a /seed token: %v", err)
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit status %d; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("--idp-only did not stop within 30s of the interrupt")
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 200; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    int
		want time.Duration
	}{{50, 100 * time.Millisecond}, {99, 198 * time.Millisecond}, {100, 200 * time.Millisecond}} {
		if got := percentile(ds, tc.p); got != tc.want {
			t.Errorf("p%d = %s; want %s", tc.p, got, tc.want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("p50 of nothing = %s; want 0", got)
	}
	if got := percentile(ds[:1], 99); got != time.Millisecond {
		t.Errorf("p99 of one = %s; want 1ms", got)
	}
}

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
