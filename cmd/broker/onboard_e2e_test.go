package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
	"github.com/tokenbroker/tokenbroker/internal/webhook"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// onboardRig is two broker processes on one redis-server, each with the
// authorization callback (--http-addr), callers authenticated ("ops" is an
// admin, "worker" reads tokens), and the strict IdP with its authorization
// and device endpoints.
type onboardRig struct {
	t        *testing.T
	idp      *fakeidp.Server
	replicas []*proc
	http     []string // --http-addr of each replica
	admin    []pb.AdminServiceClient
	tokens   []pb.TokenServiceClient
	ops      context.Context // calls as ops
	worker   context.Context // calls as worker
}

func newOnboardRig(t *testing.T, idpOpts fakeidp.Options, extra ...string) *onboardRig {
	t.Helper()
	brokerBinary(t)
	idpOpts.Clients = map[string]string{e2eClientID: e2eClientSecret}
	rs := redistest.Start(t)
	r := &onboardRig{t: t, idp: fakeidptest.Start(t, idpOpts)}
	clients, keys := registry(t, t.TempDir(), []string{"ops", "worker"}, nil)
	r.ops, r.worker = bearer(ctxFor(t), keys["ops"]), bearer(ctxFor(t), keys["worker"])
	args := append([]string{"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--redis-url", rs.URL(),
		"--redis-prefix", "onboard", "--seal-keys", "k1:" + testSealKey, "--clients-file", clients}, extra...)
	for range 2 {
		p := startBroker(t, args, nil)
		r.http = append(r.http, p.waitLog(t, "http listening", "addr"))
		conn := dial(t, p.waitLog(t, "listening", "addr"))
		r.replicas = append(r.replicas, p)
		r.admin = append(r.admin, pb.NewAdminServiceClient(conn))
		r.tokens = append(r.tokens, pb.NewTokenServiceClient(conn))
	}
	return r
}

// callback is replica i's callback URL.
func (r *onboardRig) callback(i int) string {
	return "http://" + r.http[i] + "/oauth2/callback"
}

func (r *onboardRig) get(i int, id string) *pb.Credential {
	r.t.Helper()
	resp, err := r.admin[i].GetCredential(r.ops, &pb.GetCredentialRequest{Id: id})
	if err != nil {
		r.t.Fatalf("GetCredential: %v", err)
	}
	return resp.GetCredential()
}

// browse opens u as a browser would, following redirects, and returns the
// last response's status, body and URL.
func browse(t *testing.T, u string) (int, string, *url.URL) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctxFor(t), http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Request.URL
}

// TestBinaryAuthorizationCodeAcrossReplicas: a credential put without a
// refresh token is authorized through the authorization code flow started
// on one replica, the browser (an HTTP client following redirects) landing
// on the other's callback; the credential is ACTIVE and GetToken serves a
// token the IdP accepts. A replayed or forged callback is refused and
// changes nothing; after the grant is revoked, a denied consent leaves the
// credential in REAUTH_REQUIRED and a second authorization recovers it
// with its allowed clients and secret.
func TestBinaryAuthorizationCodeAcrossReplicas(t *testing.T) {
	t.Parallel()
	r := newOnboardRig(t, fakeidp.Options{})
	r.idp.RegisterRedirect(e2eClientID, r.callback(1))
	cred := &pb.Credential{
		Id: "crm", TokenUrl: r.idp.TokenURL(), ClientId: e2eClientID, ClientSecret: e2eClientSecret,
		AuthorizationUrl: r.idp.AuthorizeURL(), RedirectUrl: r.callback(1), AllowedClients: []string{"worker"},
	}
	put, err := r.admin[0].PutCredential(r.ops, &pb.PutCredentialRequest{Credential: cred})
	if err != nil {
		t.Fatal(err)
	}
	if got := put.GetCredential(); got.GetState() != pb.State_REAUTH_REQUIRED || got.GetHasRefreshToken() {
		t.Fatalf("put without a refresh token: %v", got)
	}

	authorize := func() (string, *url.URL, int, string) {
		t.Helper()
		start, err := r.admin[0].StartAuthorization(r.ops, &pb.StartAuthorizationRequest{Id: "crm"})
		if err != nil {
			t.Fatalf("StartAuthorization: %v", err)
		}
		if c := r.get(1, "crm"); c.GetState() != pb.State_PENDING_AUTHORIZATION ||
			c.GetPendingAuthorization().GetFlow() != pb.PendingAuthorization_AUTHORIZATION_CODE || c.GetPendingAuthorization().GetStartedBy() != "ops" {
			t.Fatalf("after StartAuthorization, the other replica shows %v", c)
		}
		status, body, last := browse(t, start.GetAuthorizationUrl())
		return start.GetAuthorizationUrl(), last, status, body
	}
	authURL, landed, status, body := authorize()
	if status != http.StatusOK || !strings.Contains(body, "connected: crm; you may close this window") {
		t.Fatalf("callback answered %d:\n%s", status, body)
	}
	if landed.Host != r.http[1] {
		t.Fatalf("the browser landed on %s, want the other replica %s", landed.Host, r.http[1])
	}
	tok, err := r.tokens[0].GetToken(r.worker, &pb.GetTokenRequest{CredentialId: "crm"})
	if err != nil {
		t.Fatalf("GetToken after the authorization: %v", err)
	}
	if !resourceAccepts(t, r.idp, tok.GetAccessToken()) {
		t.Fatal("the IdP's resource refused the token")
	}
	c := r.get(0, "crm")
	if c.GetState() != pb.State_ACTIVE || c.GetPendingAuthorization() != nil || !c.GetHasRefreshToken() {
		t.Fatalf("after the callback: %v", c)
	}

	// The same callback again (a reload, a replay), a forged state, no
	// state, POST: refused, nothing changed.
	gen := c.GetGeneration()
	for _, tc := range []struct {
		method, url string
		want        int
	}{
		{http.MethodGet, landed.String(), http.StatusBadRequest},
		{http.MethodGet, r.callback(0) + "?state=forged&code=x", http.StatusBadRequest},
		{http.MethodGet, r.callback(0) + "?code=x", http.StatusBadRequest},
		{http.MethodPost, r.callback(0), http.StatusMethodNotAllowed},
	} {
		req, _ := http.NewRequestWithContext(ctxFor(t), tc.method, tc.url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.url, resp.StatusCode, tc.want)
		}
	}
	if got := r.get(0, "crm").GetGeneration(); got != gen {
		t.Fatalf("refused callbacks changed the credential: generation %d, want %d", got, gen)
	}

	// The grant dies at the IdP: REAUTH_REQUIRED. A denied consent keeps it
	// there; a second authorization brings it back, configuration intact.
	r.idp.Revoke(tok.GetAccessToken())
	if _, err := r.admin[1].RefreshCredential(r.ops, &pb.RefreshCredentialRequest{Id: "crm"}); reasonOfErr(err) != "REAUTH_REQUIRED" {
		t.Fatalf("refresh of a revoked grant: %v", err)
	}
	r.idp.SetConsent(fakeidp.ConsentDeny)
	if _, _, status, body := authorize(); status != http.StatusForbidden || !strings.Contains(body, "denied") {
		t.Fatalf("denied consent: %d\n%s", status, body)
	}
	if c := r.get(0, "crm"); c.GetState() != pb.State_REAUTH_REQUIRED || !strings.Contains(c.GetLastError(), "denied") {
		t.Fatalf("after a denied consent: %v", c)
	}
	r.idp.SetConsent(fakeidp.ConsentAuto)
	if _, _, status, body := authorize(); status != http.StatusOK {
		t.Fatalf("re-authorization: %d\n%s", status, body)
	}
	c = r.get(0, "crm")
	if c.GetState() != pb.State_ACTIVE || strings.Join(c.GetAllowedClients(), ",") != "worker" || c.GetClientSecretCount() != 1 {
		t.Fatalf("after re-authorization: %v", c)
	}
	if _, err := r.tokens[1].GetToken(r.worker, &pb.GetTokenRequest{CredentialId: "crm"}); err != nil {
		t.Fatalf("GetToken after re-authorization: %v", err)
	}

	// Nothing secret in either log: not the state, the code, the client
	// secret or a token.
	u, _ := url.Parse(authURL)
	secrets := []string{u.Query().Get("state"), landed.Query().Get("code"), landed.Query().Get("state"), e2eClientSecret, tok.GetAccessToken()}
	for i, p := range r.replicas {
		out := p.output()
		for _, s := range secrets {
			if s != "" && strings.Contains(out, s) {
				t.Errorf("replica %d's log holds a secret (%.6s...)", i, s)
			}
		}
		if i == 1 && !strings.Contains(out, `"msg":"authorization callback"`) {
			t.Errorf("replica 1 did not log the callback")
		}
	}
	if out := r.replicas[0].output(); !strings.Contains(out, `"method":"/tokenbroker.v1.AdminService/StartAuthorization"`) || !strings.Contains(out, `"caller":"ops"`) {
		t.Errorf("no audit line of who started the authorization:\n%s", out)
	}
}

func resourceAccepts(t *testing.T, idp *fakeidp.Server, tok string) bool {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctxFor(t), http.MethodGet, idp.ResourceURL(), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// reasonOfErr is the ErrorInfo reason of a call's error, "" for none.
func reasonOfErr(err error) string {
	st, _ := status.FromError(err)
	return reasonOf(st)
}

// TestBinaryDeviceFlowOneReplicaPolls: the device flow started on one
// replica, seen by both (each would take the polling over), polls the IdP
// once per interval in all, waits 5 s longer after slow_down (the IdP
// answers slow_down to any poll that comes too soon, and only one was asked
// for), and stores the grant once the user approves at the verification
// page; a second StartDeviceAuthorization meanwhile answers with the open
// flow.
func TestBinaryDeviceFlowOneReplicaPolls(t *testing.T) {
	t.Parallel()
	r := newOnboardRig(t, fakeidp.Options{})
	r.idp.SetDeviceInterval(time.Second)
	cred := &pb.Credential{
		Id: "crm", TokenUrl: r.idp.TokenURL(), ClientId: e2eClientID, ClientSecret: e2eClientSecret,
		DeviceAuthorizationUrl: r.idp.DeviceAuthorizationURL(), AllowedClients: []string{"worker"},
	}
	if _, err := r.admin[0].PutCredential(r.ops, &pb.PutCredentialRequest{Credential: cred}); err != nil {
		t.Fatal(err)
	}
	r.idp.SlowDownNext(1)
	start, err := r.admin[0].StartDeviceAuthorization(r.ops, &pb.StartDeviceAuthorizationRequest{Id: "crm"})
	if err != nil {
		t.Fatal(err)
	}
	if start.GetInterval().AsDuration() != time.Second || start.GetUserCode() == "" || !strings.HasPrefix(start.GetVerificationUri(), r.idp.URL()) {
		t.Fatalf("StartDeviceAuthorization = %v", start)
	}
	again, err := r.admin[1].StartDeviceAuthorization(r.ops, &pb.StartDeviceAuthorizationRequest{Id: "crm"})
	if err != nil || again.GetUserCode() != start.GetUserCode() {
		t.Fatalf("StartDeviceAuthorization on the other replica = %v, %v; want the open flow", again, err)
	}
	c := r.get(1, "crm")
	if c.GetState() != pb.State_PENDING_AUTHORIZATION || c.GetPendingAuthorization().GetUserCode() != start.GetUserCode() ||
		!c.GetPendingAuthorization().GetExpireTime().AsTime().Equal(start.GetExpireTime().AsTime()) {
		t.Fatalf("GetCredential while pending: %v", c)
	}
	if _, err := r.tokens[1].GetToken(r.worker, &pb.GetTokenRequest{CredentialId: "crm"}); reasonOfErr(err) != "REAUTH_REQUIRED" {
		t.Fatalf("GetToken while pending: %v", err)
	}

	// The first poll gets slow_down: the interval becomes 6 s.
	waitFor(t, "the first poll", func() bool { return r.idp.AuthStats().DevicePolls >= 1 })
	waitFor(t, "the longer interval stored", func() bool {
		return r.get(0, "crm").GetPendingAuthorization().GetInterval().AsDuration() == 6*time.Second
	})
	// The user approves at the verification page.
	form := url.Values{"user_code": {start.GetUserCode()}, "decision": {"approve"}}
	resp, err := http.PostForm(start.GetVerificationUri(), form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("verification page answered %d", resp.StatusCode)
	}
	waitFor(t, "the credential ACTIVE", func() bool { return r.get(1, "crm").GetState() == pb.State_ACTIVE })
	tok, err := r.tokens[0].GetToken(r.worker, &pb.GetTokenRequest{CredentialId: "crm"})
	if err != nil || !resourceAccepts(t, r.idp, tok.GetAccessToken()) {
		t.Fatalf("GetToken after the device flow: %v", err)
	}
	// Two replicas, one poller at a time: the first poll is answered
	// slow_down, and every later one comes at least the slowed interval
	// after the one before (on a loaded machine the approval may miss a
	// poll: then there are more than two, still spaced).
	st := r.idp.AuthStats()
	if st.DevicePolls < 2 || st.SlowDowns != 1 || len(st.PollTimes) != int(st.DevicePolls) {
		t.Fatalf("%d polls, %d slow_downs from two replicas; want at least 2 and the 1 asked for", st.DevicePolls, st.SlowDowns)
	}
	for i := 1; i < len(st.PollTimes); i++ {
		if gap := st.PollTimes[i].Sub(st.PollTimes[i-1]); gap < 6*time.Second {
			t.Fatalf("poll %d came %v after the one before, with slow_down in effect; want at least 6s", i, gap)
		}
	}
	if out := r.replicas[0].output() + r.replicas[1].output(); !strings.Contains(out, `"msg":"authorization"`) || !strings.Contains(out, `"action":"completed"`) {
		t.Errorf("no audit line of the completed authorization")
	}
}

const e2eWebhookSecret = "SECRET-webhook-0123456789"

// hookReceiver is a webhook endpoint that checks every delivery's
// signature and records the events by ID.
type hookReceiver struct {
	mu    sync.Mutex
	bad   int
	seen  map[string]int // deliveries per event ID
	kinds []string       // in arrival order, first deliveries only
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	if webhook.Verify([]byte(e2eWebhookSecret), r.Header, body, time.Now(), 0) != nil {
		h.bad++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var b struct {
		ID    string `json:"id"`
		Event struct {
			CredentialID string `json:"credential_id"`
			Kind         string `json:"kind"`
			Reason       string `json:"reason"`
		} `json:"event"`
	}
	if json.Unmarshal(body, &b) != nil {
		h.bad++
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	h.seen[b.ID]++
	if h.seen[b.ID] == 1 {
		h.kinds = append(h.kinds, b.Event.CredentialID+":"+b.Event.Kind+":"+b.Event.Reason)
	}
}

func (h *hookReceiver) snapshot() ([]string, map[string]int, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := map[string]int{}
	maps.Copy(seen, h.seen)
	return append([]string(nil), h.kinds...), seen, h.bad
}

// TestBinaryWatchAndWebhookSeeReauthAndRecovery: with two replicas, a
// watch on one and a webhook endpoint configured on both see the grant die
// (REAUTH_REQUIRED, made on the other replica) and the recovery through the
// device flow, each event once, the webhook's signed.
func TestBinaryWatchAndWebhookSeeReauthAndRecovery(t *testing.T) {
	t.Parallel()
	hook := &hookReceiver{seen: map[string]int{}}
	hsrv := httptest.NewServer(hook)
	t.Cleanup(hsrv.Close)
	r := newOnboardRig(t, fakeidp.Options{}, "--webhook-url", hsrv.URL+"/tokenbroker?key=receiver-token", "--webhook-secret", e2eWebhookSecret)
	r.idp.SetDeviceInterval(time.Second)

	wctx, wcancel := context.WithCancel(r.ops)
	defer wcancel()
	w, err := r.admin[1].WatchCredentials(wctx, &pb.WatchCredentialsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Header(); err != nil {
		t.Fatal(err)
	}
	rt := r.idp.Seed(e2eClientID)
	cred := &pb.Credential{Id: "crm", TokenUrl: r.idp.TokenURL(), ClientId: e2eClientID, ClientSecret: e2eClientSecret, RefreshToken: rt,
		DeviceAuthorizationUrl: r.idp.DeviceAuthorizationURL(), AllowedClients: []string{"worker"}}
	if _, err := r.admin[0].PutCredential(r.ops, &pb.PutCredentialRequest{Credential: cred}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.tokens[0].GetToken(r.worker, &pb.GetTokenRequest{CredentialId: "crm"}); err != nil {
		t.Fatal(err)
	}
	r.idp.Revoke(rt)
	if _, err := r.admin[0].RefreshCredential(r.ops, &pb.RefreshCredentialRequest{Id: "crm"}); reasonOfErr(err) != "REAUTH_REQUIRED" {
		t.Fatalf("refresh of a revoked grant: %v", err)
	}
	start, err := r.admin[0].StartDeviceAuthorization(r.ops, &pb.StartDeviceAuthorizationRequest{Id: "crm"})
	if err != nil {
		t.Fatal(err)
	}
	r.idp.ApproveDevice(start.GetUserCode())
	waitFor(t, "the credential ACTIVE", func() bool { return r.get(0, "crm").GetState() == pb.State_ACTIVE })
	if _, err := r.tokens[1].GetToken(r.worker, &pb.GetTokenRequest{CredentialId: "crm"}); err != nil {
		t.Fatalf("GetToken after the recovery: %v", err)
	}

	want := []string{"crm:CREATED:", "crm:REAUTH_REQUIRED:REAUTH_REQUIRED", "crm:AUTHORIZATION_STARTED:", "crm:AUTHORIZED:"}
	var watched []string
	tokens := map[string]bool{}
	for len(watched) < len(want) {
		m, err := w.Recv()
		if err != nil {
			t.Fatalf("watch: %v (after %v)", err, watched)
		}
		ev := m.GetEvent()
		watched = append(watched, ev.GetCredentialId()+":"+ev.GetKind().String()+":"+ev.GetReason())
		if tokens[m.GetResumeToken()] {
			t.Fatalf("resume token %s twice", m.GetResumeToken())
		}
		tokens[m.GetResumeToken()] = true
	}
	if strings.Join(watched, " ") != strings.Join(want, " ") {
		t.Fatalf("watched %v, want %v", watched, want)
	}
	waitFor(t, "the webhook deliveries", func() bool { kinds, _, _ := hook.snapshot(); return len(kinds) >= len(want) })
	kinds, seen, bad := hook.snapshot()
	if strings.Join(kinds, " ") != strings.Join(want, " ") || bad != 0 {
		t.Fatalf("webhook saw %v (%d bad), want %v", kinds, bad, want)
	}
	for id, n := range seen {
		if n != 1 || !tokens[id] {
			t.Fatalf("webhook event %s delivered %d times (watch tokens %v)", id, n, tokens)
		}
	}
	for i, p := range r.replicas {
		if out := p.output(); strings.Contains(out, e2eWebhookSecret) || strings.Contains(out, "receiver-token") {
			t.Errorf("replica %d's log holds the webhook secret or the receiver's token", i)
		}
	}
}

// TestBinaryOnboardingBadInput: through the binary, every bad input of the
// onboarding flows is refused with its code, and nothing stored changes;
// UpdateCredential changes the masked fields only.
func TestBinaryOnboardingBadInput(t *testing.T) {
	t.Parallel()
	r := newOnboardRig(t, fakeidp.Options{})
	r.idp.RegisterRedirect(e2eClientID, r.callback(0))
	good := func() *pb.Credential {
		return &pb.Credential{Id: "crm", TokenUrl: r.idp.TokenURL(), ClientId: e2eClientID, ClientSecret: e2eClientSecret,
			AuthorizationUrl: r.idp.AuthorizeURL(), DeviceAuthorizationUrl: r.idp.DeviceAuthorizationURL(), RedirectUrl: r.callback(0),
			AllowedClients: []string{"worker"}, Scopes: []string{"api"}}
	}
	if _, err := r.admin[0].PutCredential(r.ops, &pb.PutCredentialRequest{Credential: good()}); err != nil {
		t.Fatal(err)
	}
	before := r.get(1, "crm")
	wantInvalid := func(name string, err error, field string) {
		t.Helper()
		st, _ := status.FromError(err)
		if st.Code() != codes.InvalidArgument || reasonOf(st) != "INVALID_ARGUMENT" || !strings.Contains(st.Message(), field) {
			t.Errorf("%s: %v, want INVALID_ARGUMENT naming %s", name, err, field)
		}
	}
	for _, tc := range []struct {
		name  string
		edit  func(c *pb.Credential)
		field string
	}{
		{"authorization_url not https", func(c *pb.Credential) { c.AuthorizationUrl = "http://idp.example/authorize" }, "credential.authorization_url"},
		{"device url relative", func(c *pb.Credential) { c.DeviceAuthorizationUrl = "/device" }, "credential.device_authorization_url"},
		{"redirect not the callback", func(c *pb.Credential) { c.RedirectUrl = "http://127.0.0.1:1/callback" }, "credential.redirect_url"},
		{"allowed clients dropped", func(c *pb.Credential) { c.AllowedClients = nil }, "credential.allowed_clients"},
	} {
		c := good()
		tc.edit(c)
		_, err := r.admin[0].PutCredential(r.ops, &pb.PutCredentialRequest{Credential: c})
		wantInvalid(tc.name, err, tc.field)
	}
	_, err := r.admin[0].UpdateCredential(r.ops, &pb.UpdateCredentialRequest{Credential: &pb.Credential{Id: "crm"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"generation"}}})
	wantInvalid("update of an output-only field", err, "update_mask")
	_, err = r.admin[0].StartAuthorization(r.ops, &pb.StartAuthorizationRequest{Id: "crm", ExtraParams: map[string]string{"redirect_uri": "http://evil.example/"}})
	wantInvalid("extra_params overriding the flow", err, "extra_params")
	if got := r.get(1, "crm"); got.GetGeneration() != before.GetGeneration() {
		t.Fatalf("refused calls changed the credential: generation %d, want %d", got.GetGeneration(), before.GetGeneration())
	}

	// UpdateCredential: the masked field only.
	up, err := r.admin[1].UpdateCredential(r.ops, &pb.UpdateCredentialRequest{
		Credential: &pb.Credential{Id: "crm", Scopes: []string{"api", "more"}, TokenUrl: "https://ignored.example/token"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"scopes"}}})
	if err != nil {
		t.Fatal(err)
	}
	if c := up.GetCredential(); strings.Join(c.GetScopes(), " ") != "api more" || c.GetTokenUrl() != before.GetTokenUrl() ||
		strings.Join(c.GetAllowedClients(), ",") != "worker" || c.GetClientSecretCount() != 1 || c.GetRedirectUrl() != before.GetRedirectUrl() {
		t.Fatalf("after UpdateCredential(scopes): %v", c)
	}

	// A code from another flow (its PKCE verifier is not this flow's):
	// the IdP refuses it, the page says so with 502, the credential keeps
	// waiting for authorization.
	s1, err := r.admin[0].StartAuthorization(r.ops, &pb.StartAuthorizationRequest{Id: "crm"})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := r.admin[0].StartAuthorization(r.ops, &pb.StartAuthorizationRequest{Id: "crm"})
	if err != nil {
		t.Fatal(err)
	}
	cb1, cb2 := stopAtCallback(t, s1.GetAuthorizationUrl()), stopAtCallback(t, s2.GetAuthorizationUrl())
	swapped := *cb2
	q := cb2.Query()
	q.Set("code", cb1.Query().Get("code"))
	swapped.RawQuery = q.Encode()
	page, body, _ := browse(t, swapped.String())
	if page != http.StatusBadGateway || !strings.Contains(body, "PKCE") {
		t.Fatalf("callback with another flow's code: %d\n%s", page, body)
	}
	if c := r.get(0, "crm"); c.GetState() == pb.State_ACTIVE || c.GetHasRefreshToken() {
		t.Fatalf("a refused code authorized the credential: %v", c)
	}
	// The first flow, with its own code, still completes.
	if page, body, _ := browse(t, cb1.String()); page != http.StatusOK {
		t.Fatalf("the first flow's callback: %d\n%s", page, body)
	}
}

// stopAtCallback opens an authorization URL up to the IdP's redirect and
// returns where it points, without following it.
func stopAtCallback(t *testing.T, u string) *url.URL {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequestWithContext(ctxFor(t), http.MethodGet, u, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != http.StatusFound {
		t.Fatalf("authorization endpoint: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	return loc
}

// TestBinaryWebhookURLRefused: a webhook URL that is not http(s) is bad
// configuration: exit 2, before anything listens, without echoing it.
func TestBinaryWebhookURLRefused(t *testing.T) {
	t.Parallel()
	bin := brokerBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--grpc-addr", "127.0.0.1:0", "--webhook-url", "ftp://hooks.example/in?token=SECRET-hook", "--webhook-secret", e2eWebhookSecret)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("run = %v; want exit status 2\n%s", err, stderr.String())
	}
	if got := stderr.String(); got != "broker: --webhook-url #1 (ftp://hooks.example/in): must be an absolute http or https URL\n" {
		t.Errorf("stderr = %q", got)
	}
}
