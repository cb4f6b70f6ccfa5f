package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/auth/authtest"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// distinct returns a distinctive secret-looking value: prefix and 128 random
// bits, so that a search for it cannot match by chance.
func distinct(t *testing.T, prefix string) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b[:])
}

// recordingIdP is the fake IdP behind an HTTP server that records every
// token it hands out (access and refresh, seeded and rotated), read from
// the response bodies themselves.
type recordingIdP struct {
	*fakeidp.Server
	url string

	mu     sync.Mutex
	issued map[string]bool
}

func newRecordingIdP(t *testing.T, clients map[string]string) *recordingIdP {
	t.Helper()
	r := &recordingIdP{Server: fakeidp.New(fakeidp.Options{Clients: clients}), issued: map[string]bool{}}
	inner := r.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		tw := &teeWriter{ResponseWriter: w}
		inner.ServeHTTP(tw, req)
		var body struct {
			AccessToken  string `json:"access_token"`
			RefreshToken string `json:"refresh_token"`
		}
		if json.Unmarshal(tw.body.Bytes(), &body) == nil {
			r.mu.Lock()
			for _, tok := range []string{body.AccessToken, body.RefreshToken} {
				if tok != "" {
					r.issued[tok] = true
				}
			}
			r.mu.Unlock()
		}
	}))
	t.Cleanup(func() {
		srv.Close()
		_ = r.Server.Close()
	})
	r.url = srv.URL
	return r
}

func (r *recordingIdP) tokenURL() string { return r.url + fakeidp.TokenPath }

// seed starts a token family and records its refresh token.
func (r *recordingIdP) seed(clientID string) string {
	tok := r.Seed(clientID)
	r.mu.Lock()
	r.issued[tok] = true
	r.mu.Unlock()
	return tok
}

func (r *recordingIdP) tokens() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.issued))
	for tok := range r.issued {
		out = append(out, tok)
	}
	return out
}

// teeWriter keeps a copy of the response body.
type teeWriter struct {
	http.ResponseWriter
	body bytes.Buffer
}

func (w *teeWriter) Write(p []byte) (int, error) {
	w.body.Write(p)
	return w.ResponseWriter.Write(p)
}

func (w *teeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// sample is one line of a Prometheus text page.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

type page []sample

// scrape reads the metrics page at url.
func scrape(t *testing.T, url string) (string, page) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctxFor(t), http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d, %v", url, resp.StatusCode, err)
	}
	var p page
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		p = append(p, s)
	}
	return string(raw), p
}

// parseSample parses `name{k="v",...} value` or `name value`.
func parseSample(line string) (sample, error) {
	s := sample{labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return s, fmt.Errorf("no value")
	}
	s.name = line[:i]
	rest := line[i:]
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.Index(rest, `="`)
			if eq < 0 {
				return s, fmt.Errorf("malformed labels")
			}
			key := strings.TrimPrefix(rest[:eq], ",")
			rest = rest[eq+2:]
			var val strings.Builder
			j := 0
			for ; j < len(rest) && rest[j] != '"'; j++ {
				if rest[j] == '\\' && j+1 < len(rest) {
					j++
				}
				val.WriteByte(rest[j])
			}
			if j == len(rest) {
				return s, fmt.Errorf("unterminated label value")
			}
			s.labels[key] = val.String()
			rest = strings.TrimPrefix(rest[j+1:], ",")
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return s, fmt.Errorf("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, err
	}
	s.value = v
	return s, nil
}

// get sums the samples named name whose labels include all of labels
// ("k", "v", ...); found is false when there is none.
func (p page) get(name string, labels ...string) (sum float64, found bool) {
	for _, s := range p {
		if s.name != name {
			continue
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if s.labels[labels[i]] != labels[i+1] {
				match = false
				break
			}
		}
		if match {
			sum += s.value
			found = true
		}
	}
	return sum, found
}

func (p page) val(name string, labels ...string) float64 {
	v, _ := p.get(name, labels...)
	return v
}

// securePKI writes a server certificate, a client CA and returns a client
// certificate for identity.
func securePKI(t *testing.T, dir, identity string) (ca *authtest.CA, certFile, keyFile, caFile string, client *authtest.Pair) {
	t.Helper()
	ca, err := authtest.NewCA("e2e CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	if certFile, keyFile, err = srv.Write(dir, "server"); err != nil {
		t.Fatal(err)
	}
	if caFile, err = ca.WriteCert(dir, "client-ca.crt"); err != nil {
		t.Fatal(err)
	}
	if client, err = ca.Client("svc-m", identity); err != nil {
		t.Fatal(err)
	}
	return ca, certFile, keyFile, caFile, client
}

// registry writes a client registry of fresh keys for the given ids (an id
// starting with "ops" is an admin) plus cert-only clients, and returns the
// keys by id.
func registry(t *testing.T, dir string, ids []string, certClients map[string]string) (string, map[string]string) {
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
	for id, identity := range certClients {
		entries = append(entries, fmt.Sprintf(`{"id": %q, "cert_identity": %q}`, id, identity))
	}
	path := filepath.Join(dir, "clients.json")
	if err := os.WriteFile(path, []byte(`{"clients": [`+strings.Join(entries, ",")+`]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, keys
}

func dialTLS(t *testing.T, addr string, ca *authtest.CA, cert *authtest.Pair) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{cert.TLS}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func bearer(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

// forceRefresh calls RefreshCredential, again after the delay of the
// broker's own per-credential limit (--force-interval) if a forced refresh
// ran just before: loopback calls can be quicker than any interval.
func forceRefresh(t *testing.T, adm pb.AdminServiceClient, ctx context.Context, id string) {
	t.Helper()
	for i := 0; ; i++ {
		_, err := adm.RefreshCredential(ctx, &pb.RefreshCredentialRequest{Id: id})
		if err == nil {
			return
		}
		st := status.Convert(err)
		var retry time.Duration
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				retry = ri.GetRetryDelay().AsDuration()
			}
		}
		if st.Code() != codes.ResourceExhausted || retry <= 0 || retry > time.Second || i == 10 {
			t.Fatalf("RefreshCredential(%s): %v", id, err)
		}
		time.Sleep(retry)
	}
}

// TestBinarySecurityFullRun runs the real binary in Redis mode with sealed
// records, a client registry, TLS with client certificates, metrics with
// per-credential labels and debug logs, and drives it through every kind of
// outcome: tokens served from refresh and cache, by key and by certificate,
// an invalidation, forced refreshes, a transient IdP failure, a dead grant,
// bad input, authentication and authorization failures, a deletion. Then:
//
//   - no refresh token the IdP issued (seeded or rotated), no access token,
//     no client secret, no API key and no seal key appears in the captured
//     logs, any scraped metrics page, any error returned or any admin
//     response;
//   - the audit trail holds the admin calls and the refreshes, with caller,
//     credential, outcome and generation;
//   - the metrics counters moved as the calls were made.
func TestBinarySecurityFullRun(t *testing.T) {
	t.Parallel()
	brokerBinary(t)
	rs := redistest.Start(t)
	dir := t.TempDir()
	sealKey, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	const svcIdentity = "spiffe://tokenbroker.test/svc-m"
	ca, certFile, keyFile, caFile, svcCert := securePKI(t, dir, svcIdentity)
	clientsFile, keys := registry(t, dir, []string{"ops", "reader-a", "reader-b"}, map[string]string{"svc-m": svcIdentity})
	unknownKey, _, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}

	secretA, secretB := distinct(t, "SECRET-client-a-"), distinct(t, "SECRET-client-b-")
	fallbackA := distinct(t, "SECRET-fallback-a-")
	badSecret, badRefresh := distinct(t, "SECRET-bad-put-"), distinct(t, "RT-bad-put-")
	idp := newRecordingIdP(t, map[string]string{"idp-client-a": secretA, "idp-client-b": secretB})

	p := startBroker(t, []string{
		"--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
		"--redis-url", rs.URL(), "--redis-prefix", "sec",
		"--clients-file", clientsFile,
		"--tls-cert", certFile, "--tls-key", keyFile, "--tls-client-ca", caFile,
		"--metrics-per-credential", "--metrics-state-interval", "1s",
		"--force-interval", "1ms", "--shutdown-timeout", "20s",
	}, []string{"TOKENBROKER_SEAL_KEYS=k1:" + sealKey})
	metricsURL := "http://" + p.waitLog(t, "metrics listening", "addr") + "/metrics"
	addr := p.waitLog(t, "listening", "addr")

	conn := dialTLS(t, addr, ca, nil)
	svcConn := dialTLS(t, addr, ca, svcCert)
	tok, adm := pb.NewTokenServiceClient(conn), pb.NewAdminServiceClient(conn)
	ctx := ctxFor(t)
	as := func(id string) context.Context { return bearer(ctx, keys[id]) }

	// Everything a client might see: error texts and details, admin
	// responses. Searched for secrets at the end.
	var seen []string
	var served []string
	collect := func(err error) {
		st := status.Convert(err)
		seen = append(seen, st.Message())
		for _, d := range st.Details() {
			seen = append(seen, fmt.Sprint(d))
		}
	}
	expect := func(what string, err error, code codes.Code, reason string) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s succeeded; want %v", what, code)
		}
		collect(err)
		st := status.Convert(err)
		got := ""
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				got = info.GetReason()
			}
		}
		if st.Code() != code || got != reason {
			t.Fatalf("%s = %v (reason %q); want %v %s", what, err, got, code, reason)
		}
	}
	getToken := func(c pb.TokenServiceClient, ctx context.Context, id string) *pb.GetTokenResponse {
		t.Helper()
		resp, err := c.GetToken(ctx, &pb.GetTokenRequest{CredentialId: id})
		if err != nil {
			t.Fatalf("GetToken(%s): %v", id, err)
		}
		served = append(served, resp.GetAccessToken())
		return resp
	}

	// Credentials, put by the admin.
	seeds := map[string]string{}
	for _, c := range []*pb.Credential{
		{Id: "alpha", ClientId: "idp-client-a", ClientSecret: secretA, FallbackClientSecrets: []string{fallbackA}, AllowedClients: []string{"reader-a", "svc-m"}},
		{Id: "beta", ClientId: "idp-client-b", ClientSecret: secretB, AllowedClients: []string{"reader-b"}},
		{Id: "gamma", ClientId: "idp-client-a", ClientSecret: secretA, AllowedClients: []string{"reader-a"}},
	} {
		seeds[c.Id] = idp.seed(c.ClientId)
		c.TokenUrl, c.RefreshToken = idp.tokenURL(), seeds[c.Id]
		if _, err := adm.PutCredential(as("ops"), &pb.PutCredentialRequest{Credential: c}); err != nil {
			t.Fatalf("PutCredential(%s): %v", c.Id, err)
		}
	}
	_, m0 := scrape(t, metricsURL)
	if m0.val("tokenbroker_credentials", "state", "ACTIVE") != 3 || m0.val("tokenbroker_credentials", "state", "REAUTH_REQUIRED") != 0 {
		t.Errorf("credentials by state at start: ACTIVE %v, REAUTH_REQUIRED %v; want 3 and 0",
			m0.val("tokenbroker_credentials", "state", "ACTIVE"), m0.val("tokenbroker_credentials", "state", "REAUTH_REQUIRED"))
	}

	// Tokens: refreshed, then cached, by key and by certificate.
	first := getToken(tok, as("reader-a"), "alpha")
	if again := getToken(tok, as("reader-a"), "alpha"); again.GetAccessToken() != first.GetAccessToken() {
		t.Errorf("second GetToken did not come from the cache")
	}
	getToken(pb.NewTokenServiceClient(svcConn), ctx, "alpha") // mTLS identity, no key
	inv, err := tok.InvalidateToken(as("reader-a"), &pb.InvalidateTokenRequest{CredentialId: "alpha", RejectedAccessToken: first.GetAccessToken()})
	if err != nil || inv.GetAccessToken() == first.GetAccessToken() {
		t.Fatalf("InvalidateToken = %v, %v; want a new token", inv, err)
	}
	served = append(served, inv.GetAccessToken())
	getToken(tok, as("reader-b"), "beta")
	forceRefresh(t, adm, as("ops"), "alpha") // right after the invalidation

	// A transient IdP failure: retryable, the credential stays ACTIVE.
	idp.FailNext(1, http.StatusServiceUnavailable)
	_, err = adm.RefreshCredential(as("ops"), &pb.RefreshCredentialRequest{Id: "beta"})
	expect("RefreshCredential during an IdP outage", err, codes.Unavailable, "IDP_UNAVAILABLE")

	// A dead grant: the IdP revoked gamma's family.
	if !idp.Revoke(seeds["gamma"]) {
		t.Fatal("the IdP does not know gamma's seed")
	}
	_, err = tok.GetToken(as("reader-a"), &pb.GetTokenRequest{CredentialId: "gamma"})
	expect("GetToken of a dead grant", err, codes.FailedPrecondition, "REAUTH_REQUIRED")

	// Bad input, with secrets in the refused request.
	_, err = tok.GetToken(as("reader-a"), &pb.GetTokenRequest{CredentialId: "not an id"})
	expect("GetToken of a malformed id", err, codes.InvalidArgument, "INVALID_ARGUMENT")
	_, err = tok.GetToken(as("reader-a"), &pb.GetTokenRequest{CredentialId: "alpha", MinValid: durationpb.New(-time.Second)})
	expect("GetToken with a negative min_valid", err, codes.InvalidArgument, "INVALID_ARGUMENT")
	_, err = adm.PutCredential(as("ops"), &pb.PutCredentialRequest{Credential: &pb.Credential{
		Id: "bad", TokenUrl: "ftp://" + badSecret + "@idp/token", ClientId: "c", ClientSecret: badSecret, RefreshToken: badRefresh,
	}})
	expect("PutCredential with a bad token URL", err, codes.InvalidArgument, "INVALID_ARGUMENT")
	_, err = tok.InvalidateToken(as("reader-a"), &pb.InvalidateTokenRequest{CredentialId: "alpha", RejectedAccessToken: strings.Repeat("x", 100<<10)})
	expect("InvalidateToken with an oversized token", err, codes.InvalidArgument, "INVALID_ARGUMENT")

	// Who may ask.
	_, err = tok.GetToken(ctx, &pb.GetTokenRequest{CredentialId: "alpha"})
	expect("GetToken without a key", err, codes.Unauthenticated, "UNAUTHENTICATED")
	_, err = tok.GetToken(bearer(ctx, unknownKey), &pb.GetTokenRequest{CredentialId: "alpha"})
	expect("GetToken with an unknown key", err, codes.Unauthenticated, "UNAUTHENTICATED")
	_, err = tok.GetToken(bearer(ctx, auth.HashKey(keys["reader-a"])), &pb.GetTokenRequest{CredentialId: "alpha"})
	expect("GetToken with a key's hash", err, codes.Unauthenticated, "UNAUTHENTICATED")
	_, err = tok.GetToken(as("reader-b"), &pb.GetTokenRequest{CredentialId: "alpha"})
	expect("GetToken of another client's credential", err, codes.PermissionDenied, "PERMISSION_DENIED")
	_, err = adm.ListCredentials(as("reader-a"), &pb.ListCredentialsRequest{})
	expect("ListCredentials by a reader", err, codes.PermissionDenied, "PERMISSION_DENIED")

	// What the admin sees.
	list, err := adm.ListCredentials(as("ops"), &pb.ListCredentialsRequest{})
	if err != nil || len(list.GetCredentials()) != 3 {
		t.Fatalf("ListCredentials = %v, %v", list, err)
	}
	raw, _ := protojson.Marshal(list)
	seen = append(seen, string(raw))

	// The counters moved with the calls.
	page1, m1 := scrape(t, metricsURL)
	delta := func(name string, labels ...string) float64 { return m1.val(name, labels...) - m0.val(name, labels...) }
	const getTok, invTok = "/tokenbroker.v1.TokenService/GetToken", "/tokenbroker.v1.TokenService/InvalidateToken"
	const refCred = "/tokenbroker.v1.AdminService/RefreshCredential"
	for _, c := range []struct {
		method, code string
		want         float64
	}{
		{getTok, "OK", 4}, {getTok, "Unauthenticated", 3}, {getTok, "PermissionDenied", 1},
		{getTok, "FailedPrecondition", 1}, {getTok, "InvalidArgument", 2},
		{invTok, "OK", 1}, {invTok, "InvalidArgument", 1},
		{refCred, "OK", 1}, {refCred, "Unavailable", 1},
		{"/tokenbroker.v1.AdminService/ListCredentials", "PermissionDenied", 1},
		{"/tokenbroker.v1.AdminService/PutCredential", "InvalidArgument", 1},
	} {
		if got := delta("tokenbroker_grpc_requests_total", "method", c.method, "code", c.code); got != c.want {
			t.Errorf("grpc_requests_total{%s, %s} moved by %v; want %v", c.method, c.code, got, c.want)
		}
	}
	if got := delta("tokenbroker_grpc_request_duration_seconds_count", "method", getTok); got != 11 {
		t.Errorf("GetToken latency observations moved by %v; want 11", got)
	}
	if got := delta("tokenbroker_tokens_served_total", "source", "cache"); got < 2 {
		t.Errorf("tokens served from the cache moved by %v; want at least 2", got)
	}
	if got := delta("tokenbroker_tokens_served_total", "source", "refresh"); got < 3 {
		t.Errorf("tokens served by a refresh moved by %v; want at least 3", got)
	}
	for _, c := range []struct {
		reason, outcome, id string
		want                float64
	}{
		{"expired", "ok", "alpha", 1}, {"invalidated", "ok", "alpha", 1}, {"forced", "ok", "alpha", 1},
		{"expired", "ok", "beta", 1}, {"forced", "transient", "beta", 1}, {"expired", "permanent", "gamma", 1},
	} {
		if got := delta("tokenbroker_refreshes_total", "reason", c.reason, "outcome", c.outcome, "credential_id", c.id); got != c.want {
			t.Errorf("refreshes_total{%s, %s, %s} moved by %v; want %v", c.reason, c.outcome, c.id, got, c.want)
		}
	}
	if got := delta("tokenbroker_idp_request_duration_seconds_count", "outcome", "ok", "credential_id", "alpha"); got != 3 {
		t.Errorf("IdP latency observations for alpha moved by %v; want 3", got)
	}
	if _, ok := m1.get("tokenbroker_lock_wait_seconds_count", "obtained", "true"); !ok {
		t.Errorf("no lock wait observed")
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := m1.get(name); !ok {
			t.Errorf("no %s: the Go and process collectors are missing", name)
		}
	}
	pages := []string{page1}
	waitMetric := func(what string, cond func(page) bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for i := 0; ; i++ {
			raw, m := scrape(t, metricsURL)
			pages = append(pages, raw)
			if cond(m) {
				return
			}
			if time.Now().After(deadline) || i > 300 {
				t.Fatalf("%s: not seen within 30s:\n%s", what, raw)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitMetric("credentials by state: 2 ACTIVE, 1 REAUTH_REQUIRED", func(m page) bool {
		return m.val("tokenbroker_credentials", "state", "ACTIVE") == 2 && m.val("tokenbroker_credentials", "state", "REAUTH_REQUIRED") == 1
	})

	// A deleted credential's series go away.
	if _, ok := m1.get("tokenbroker_refreshes_total", "credential_id", "beta"); !ok {
		t.Fatalf("no per-credential series for beta")
	}
	if _, err := adm.DeleteCredential(as("ops"), &pb.DeleteCredentialRequest{Id: "beta"}); err != nil {
		t.Fatalf("DeleteCredential: %v", err)
	}
	raw2, m2 := scrape(t, metricsURL)
	pages = append(pages, raw2)
	if _, ok := m2.get("tokenbroker_refreshes_total", "credential_id", "beta"); ok {
		t.Errorf("beta's series outlived its deletion")
	}
	if _, ok := m2.get("tokenbroker_refreshes_total", "credential_id", "alpha"); !ok {
		t.Errorf("alpha's series went away with beta's")
	}
	waitMetric("credentials by state after the deletion: 1 ACTIVE", func(m page) bool {
		return m.val("tokenbroker_credentials", "state", "ACTIVE") == 1
	})

	if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, p.output())
	}
	logs := p.output()

	// The search: every value that must stay inside, in everything that
	// came out.
	issued := idp.tokens()
	if len(issued) < 10 {
		t.Fatalf("the IdP issued only %d tokens; the search would prove little", len(issued))
	}
	for _, s := range served {
		if !slices.Contains(issued, s) {
			t.Errorf("a served access token was not issued by the IdP")
		}
	}
	secrets := map[string]string{
		"client secret a": secretA, "client secret b": secretB, "fallback secret": fallbackA,
		"refused client secret": badSecret, "refused refresh token": badRefresh,
		"unknown API key": unknownKey, "seal key": sealKey,
	}
	for id, key := range keys {
		secrets["API key of "+id] = key
		secrets["API key hash of "+id] = auth.HashKey(key)
	}
	for id, s := range seeds {
		secrets["seed refresh token of "+id] = s
	}
	for i, s := range issued {
		secrets[fmt.Sprintf("IdP-issued token %d", i)] = s
	}
	for i, s := range served {
		secrets[fmt.Sprintf("served access token %d", i)] = s
	}
	haystacks := map[string]string{"logs": logs, "errors and admin responses": strings.Join(seen, "\n")}
	for i, pg := range pages {
		haystacks[fmt.Sprintf("metrics page %d", i)] = pg
	}
	for what, s := range secrets {
		if len(s) < 16 {
			t.Fatalf("%s is too short to search for", what)
		}
		for where, h := range haystacks {
			if strings.Contains(h, s) {
				t.Errorf("the %s hold the %s", where, what)
			}
		}
	}
	if !strings.Contains(logs, `"level":"DEBUG"`) {
		t.Errorf("the run did not log at debug level")
	}

	// The audit trail.
	type event struct {
		Msg          string
		Audit        bool
		Caller       string
		CredentialID string `json:"credential_id"`
		Method       string
		Code         string
		Reason       string
		Outcome      string
		Generation   *uint64
	}
	var events []event
	for _, line := range strings.Split(logs, "\n") {
		var ev event
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Audit {
			events = append(events, ev)
		}
	}
	has := func(want event, needGen bool) bool {
		for _, ev := range events {
			if ev.Msg == want.Msg && ev.Caller == want.Caller && ev.CredentialID == want.CredentialID &&
				(want.Method == "" || ev.Method == want.Method) && (want.Code == "" || ev.Code == want.Code) &&
				(want.Reason == "" || ev.Reason == want.Reason) && (want.Outcome == "" || ev.Outcome == want.Outcome) &&
				(!needGen || (ev.Generation != nil && *ev.Generation > 0)) {
				return true
			}
		}
		return false
	}
	for _, c := range []struct {
		want    event
		needGen bool
	}{
		{event{Msg: "admin", Caller: "ops", CredentialID: "alpha", Method: "/tokenbroker.v1.AdminService/PutCredential", Code: "OK"}, true},
		{event{Msg: "admin", Caller: "ops", CredentialID: "alpha", Method: refCred, Code: "OK"}, true},
		{event{Msg: "admin", Caller: "ops", CredentialID: "beta", Method: refCred, Code: "Unavailable"}, false},
		{event{Msg: "admin", Caller: "ops", CredentialID: "beta", Method: "/tokenbroker.v1.AdminService/DeleteCredential", Code: "OK"}, false},
		{event{Msg: "admin", Caller: "reader-a", Method: "/tokenbroker.v1.AdminService/ListCredentials", Code: "PermissionDenied"}, false},
		{event{Msg: "refresh", Caller: "reader-a", CredentialID: "alpha", Reason: "expired", Outcome: "ok"}, true},
		{event{Msg: "refresh", Caller: "reader-a", CredentialID: "alpha", Reason: "invalidated", Outcome: "ok"}, true},
		{event{Msg: "refresh", Caller: "ops", CredentialID: "alpha", Reason: "forced", Outcome: "ok"}, true},
		{event{Msg: "refresh", Caller: "ops", CredentialID: "beta", Reason: "forced", Outcome: "transient"}, true},
		{event{Msg: "refresh", Caller: "reader-a", CredentialID: "gamma", Reason: "expired", Outcome: "permanent"}, true},
	} {
		if !has(c.want, c.needGen) {
			t.Errorf("no audit event %+v (with a generation: %v)", c.want, c.needGen)
		}
	}
	if t.Failed() {
		t.Logf("audit events: %+v", events)
	}
}

// TestBinarySecurityConfig: the security rules refuse to start (exit 2, one
// line on stderr) before anything listens.
func TestBinarySecurityConfig(t *testing.T) {
	t.Parallel()
	bin := brokerBinary(t)
	dir := t.TempDir()
	badClients := filepath.Join(dir, "bad-clients.json")
	if err := os.WriteFile(badClients, []byte(`{"clients": [{"id": "ops", "key_sha256": "tbk_SECRET-not-a-hash"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"redis mode without clients", []string{"--redis-url", "redis://127.0.0.1:6379"}, []string{"TOKENBROKER_SEAL_KEYS=k1:" + key},
			"broker: redis mode needs --clients-file (caller authentication), or --allow-unauthenticated to let every caller read every credential and call the admin methods\n"},
		{"tls cert without key", []string{"--tls-cert", "x.crt"}, nil, "broker: --tls-cert and --tls-key go together: give both or neither\n"},
		{"require client cert without CA", nil, []string{"TOKENBROKER_TLS_CERT=x.crt", "TOKENBROKER_TLS_KEY=x.key", "TOKENBROKER_TLS_REQUIRE_CLIENT_CERT=true"},
			"broker: --tls-require-client-cert needs --tls-client-ca to verify the certificates against\n"},
		{"client rate", []string{"--client-rate", "0"}, nil, "broker: --client-rate must be a positive number of calls per second, at most 1e+06 (got 0)\n"},
		{"client burst", nil, []string{"TOKENBROKER_CLIENT_BURST=0"}, "broker: --client-burst must be 1 to 1000000 (got 0)\n"},
		{"unreadable TLS files", []string{"--tls-cert", filepath.Join(dir, "none.crt"), "--tls-key", filepath.Join(dir, "none.key")}, nil, "broker: auth: invalid TLS configuration: server certificate: "},
		{"a key instead of its hash", []string{"--clients-file", badClients}, nil, "broker: --clients-file: " + badClients + ": auth: invalid client registry: clients[0] (\"ops\"): key_sha256[0]: must be 64 hex digits (a SHA-256, see HashKey), not the key itself\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append([]string{"--grpc-addr", "127.0.0.1:0"}, tc.args...)...)
			cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, tc.env...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			if code := cmd.ProcessState.ExitCode(); code != 2 {
				t.Fatalf("run = %v (exit %d); want exit status 2\n%s", err, code, stderr.String())
			}
			if got := stderr.String(); !strings.HasPrefix(got, tc.want) || strings.Count(got, "\n") != 1 {
				t.Errorf("stderr = %q; want one line starting %q", got, tc.want)
			}
			if strings.Contains(stderr.String(), "listening") || strings.Contains(stderr.String(), "SECRET") || strings.Contains(stderr.String(), key) {
				t.Errorf("stderr = %q: listened or leaked a secret", stderr.String())
			}
		})
	}
}
