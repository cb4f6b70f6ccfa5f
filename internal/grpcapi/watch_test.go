package grpcapi

import (
	"encoding/json"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// TokenService/WatchToken over a real grpc.Server: messages, authorization,
// the error table, the end of the stream, shutdown, and what the access log
// and ObserveCall see.

// watchEnv is an env with authentication, a credential "cred" that "worker"
// and "admin" may read, and refreshes that are not rate-limited.
func watchEnv(t *testing.T, idp fakeidp.Options, opts Options, c func(*pb.Credential)) *env {
	t.Helper()
	opts.Authenticator = keyAuth{}
	e := newEnv(t, envOptions{cfg: broker.Config{ForceInterval: time.Nanosecond}, opts: opts, idp: idp})
	cred := e.credential("cred")
	cred.AllowedClients = []string{"worker", "admin"}
	if c != nil {
		c(cred)
	}
	_, err := e.adm.PutCredential(withKey(ctxT(t), "admin"), &pb.PutCredentialRequest{Credential: cred})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) watch(t *testing.T, key, id string) pb.TokenService_WatchTokenClient {
	t.Helper()
	s, err := e.tok.WatchToken(withKey(ctxT(t), key), &pb.WatchTokenRequest{CredentialId: id})
	if err != nil {
		t.Fatalf("WatchToken: %v", err)
	}
	return s
}

func recv(t *testing.T, s pb.TokenService_WatchTokenClient) *pb.WatchTokenResponse {
	t.Helper()
	m, err := s.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return m
}

// refresh forces a refresh of "cred" as an admin.
func (e *env) refresh(t *testing.T) {
	t.Helper()
	time.Sleep(time.Millisecond) // a refresh that finished before the call began does not count
	if _, err := e.adm.RefreshCredential(withKey(ctxT(t), "admin"), &pb.RefreshCredentialRequest{Id: "cred"}); err != nil {
		t.Fatal(err)
	}
}

func TestWatchTokenMessages(t *testing.T) {
	e := watchEnv(t, fakeidp.Options{AccessTokenTTL: time.Hour}, Options{}, nil)
	s := e.watch(t, "worker", "cred")
	first := recv(t, s)
	rec := e.stored(t, "cred")
	if first.GetAccessToken() != rec.Token.AccessToken || first.GetTokenType() != rec.Token.TokenType ||
		!first.GetExpiresAt().AsTime().Equal(rec.Token.Expiry) || first.GetGeneration() != rec.Generation || first.GetRotating() {
		t.Fatalf("first message %v; want the stored token at generation %d", first, rec.Generation)
	}
	for range 3 {
		prev := first
		e.refresh(t)
		first = recv(t, s)
		if first.GetGeneration() <= prev.GetGeneration() || first.GetAccessToken() == prev.GetAccessToken() ||
			first.GetAccessToken() != e.stored(t, "cred").Token.AccessToken || first.GetRotating() {
			t.Fatalf("after a refresh: %v; want the new token at a higher generation", first)
		}
		if e.resourceStatus(t, first.GetAccessToken()) != 200 {
			t.Fatal("the token sent is not accepted")
		}
	}
}

// A credential whose IdP revokes the previous access token: the rotating
// message, without a token, comes before its successor.
func TestWatchTokenRotatingMessage(t *testing.T) {
	e := watchEnv(t, fakeidp.Options{AccessTokenTTL: time.Hour, RevokePreviousAccessToken: true}, Options{},
		func(c *pb.Credential) { c.RevokesPreviousAccessToken = true })
	if got, err := e.adm.GetCredential(withKey(ctxT(t), "admin"), &pb.GetCredentialRequest{Id: "cred"}); err != nil || !got.GetCredential().GetRevokesPreviousAccessToken() {
		t.Fatalf("GetCredential: %v; want revokes_previous_access_token shown", err)
	}
	s := e.watch(t, "worker", "cred")
	first := recv(t, s)
	refreshed := make(chan error, 1)
	go func() {
		time.Sleep(time.Millisecond)
		_, err := e.adm.RefreshCredential(withKey(ctxT(t), "admin"), &pb.RefreshCredentialRequest{Id: "cred"})
		refreshed <- err
	}()
	defer func() {
		if err := <-refreshed; err != nil {
			t.Error(err)
		}
	}()
	notice := recv(t, s)
	if !notice.GetRotating() || notice.GetGeneration() != first.GetGeneration() || notice.GetAccessToken() != "" || notice.GetExpiresAt() != nil {
		t.Fatalf("message %v; want rotating for generation %d, without a token", notice, first.GetGeneration())
	}
	next := recv(t, s)
	if next.GetRotating() || next.GetGeneration() <= first.GetGeneration() || e.resourceStatus(t, next.GetAccessToken()) != 200 ||
		e.resourceStatus(t, first.GetAccessToken()) != 401 {
		t.Fatalf("message %v; want the successor, with the old token revoked", next)
	}
}

func TestWatchTokenRefused(t *testing.T) {
	e := watchEnv(t, fakeidp.Options{}, Options{}, nil)
	for _, tc := range []struct {
		name, key, id string
		minValid      *durationpb.Duration
		code          codes.Code
		reason        reason
	}{
		{"no key", "bad", "cred", nil, codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED},
		{"not allowed", "stranger", "cred", nil, codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"unknown, not admin", "worker", "missing", nil, codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
		{"unknown, admin", "admin", "missing", nil, codes.NotFound, pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND},
		{"bad id", "worker", "a b", nil, codes.InvalidArgument, pb.ErrorReasonEnum_INVALID_ARGUMENT},
		{"bad min_valid", "worker", "cred", &durationpb.Duration{Seconds: 1, Nanos: -1}, codes.InvalidArgument, pb.ErrorReasonEnum_INVALID_ARGUMENT},
		{"negative min_valid", "worker", "cred", durationpb.New(-time.Second), codes.InvalidArgument, pb.ErrorReasonEnum_INVALID_ARGUMENT},
		{"min_valid too long", "worker", "cred", durationpb.New(23 * time.Hour), codes.OutOfRange, pb.ErrorReasonEnum_MIN_VALID_TOO_LONG},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := e.tok.WatchToken(withKey(ctxT(t), tc.key), &pb.WatchTokenRequest{CredentialId: tc.id, MinValid: tc.minValid})
			if err == nil {
				_, err = s.Recv()
			}
			st := wantErr(t, err, tc.code, tc.reason)
			if _, info, _ := errInfo(t, err); tc.code != codes.Unauthenticated && tc.name != "bad id" && info.GetMetadata()["credential_id"] != tc.id {
				t.Fatalf("ErrorInfo metadata %v; want credential_id %q", info.GetMetadata(), tc.id)
			}
			if strings.Contains(st.Message(), "SECRET") {
				t.Fatalf("message %q leaks a secret", st.Message())
			}
		})
	}
}

// The stream ends with the status a GetToken would now get.
func TestWatchTokenEnds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		key    string
		grace  bool
		act    func(t *testing.T, e *env, first *pb.WatchTokenResponse)
		code   codes.Code
		reason reason
	}{
		{name: "deleted, not admin", key: "worker", code: codes.PermissionDenied, reason: pb.ErrorReasonEnum_PERMISSION_DENIED, act: deleteCred},
		{name: "deleted, admin", key: "admin", code: codes.NotFound, reason: pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND, act: deleteCred},
		{name: "no longer allowed", key: "worker", code: codes.PermissionDenied, reason: pb.ErrorReasonEnum_PERMISSION_DENIED,
			act: func(t *testing.T, e *env, _ *pb.WatchTokenResponse) {
				c := e.credential("cred")
				c.ClientSecret, c.RefreshToken, c.AllowedClients = "", "", []string{"admin"}
				if _, err := e.adm.PutCredential(withKey(ctxT(t), "admin"), &pb.PutCredentialRequest{Credential: c}); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "reauth required", key: "worker", code: codes.FailedPrecondition, reason: pb.ErrorReasonEnum_REAUTH_REQUIRED,
			act: func(t *testing.T, e *env, first *pb.WatchTokenResponse) {
				e.idp.Revoke(first.GetAccessToken())
				time.Sleep(time.Millisecond)
				_, err := e.adm.RefreshCredential(withKey(ctxT(t), "admin"), &pb.RefreshCredentialRequest{Id: "cred"})
				wantErr(t, err, codes.FailedPrecondition, pb.ErrorReasonEnum_REAUTH_REQUIRED)
			}},
		{name: "refresh outcome unknown", key: "worker", code: codes.FailedPrecondition, reason: pb.ErrorReasonEnum_REFRESH_OUTCOME_UNKNOWN,
			act: func(t *testing.T, e *env, _ *pb.WatchTokenResponse) {
				e.idp.LoseReplyNext(1) // the IdP rotates, the answer is lost; no reuse grace
				time.Sleep(time.Millisecond)
				_, err := e.adm.RefreshCredential(withKey(ctxT(t), "admin"), &pb.RefreshCredentialRequest{Id: "cred"})
				wantErr(t, err, codes.FailedPrecondition, pb.ErrorReasonEnum_REFRESH_OUTCOME_UNKNOWN)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := watchEnv(t, fakeidp.Options{AccessTokenTTL: time.Hour}, Options{}, nil)
			s := e.watch(t, tc.key, "cred")
			first := recv(t, s)
			tc.act(t, e, first)
			for {
				m, err := s.Recv()
				if err == nil && m.GetGeneration() > first.GetGeneration() && tc.name == "no longer allowed" {
					t.Fatalf("a token was sent after the caller was no longer allowed: %v", m)
				}
				if err != nil {
					wantErr(t, err, tc.code, tc.reason)
					if _, info, _ := errInfo(t, err); info.GetMetadata()["credential_id"] != "cred" {
						t.Fatalf("ErrorInfo metadata %v; want credential_id cred", info.GetMetadata())
					}
					return
				}
			}
		})
	}
}

func deleteCred(t *testing.T, e *env, _ *pb.WatchTokenResponse) {
	if _, err := e.adm.DeleteCredential(withKey(ctxT(t), "admin"), &pb.DeleteCredentialRequest{Id: "cred"}); err != nil {
		t.Fatal(err)
	}
}

// Shutdown ends watch streams at once with UNAVAILABLE, SHUTTING_DOWN (with
// a RetryInfo), so it need not cut them at its deadline.
func TestWatchTokenEndsAtShutdown(t *testing.T) {
	e := watchEnv(t, fakeidp.Options{}, Options{}, nil)
	s := e.watch(t, "worker", "cred")
	recv(t, s)
	start := time.Now()
	if err := e.stop(t); err != nil {
		t.Fatalf("Shutdown: %v; want the watch ended without being cut", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Shutdown took %s with a watch open", d)
	}
	_, err := s.Recv()
	st := wantErr(t, err, codes.Unavailable, pb.ErrorReasonEnum_SHUTTING_DOWN)
	if retryInfo(st) == nil {
		t.Fatal("no RetryInfo")
	}
}

// The stream is observed once it ended, with its code; the access log line
// names the credential; no token reaches the log.
func TestWatchTokenObservedAndLogged(t *testing.T) {
	type call struct {
		method string
		code   codes.Code
	}
	var (
		mu   sync.Mutex
		seen []call
	)
	e := watchEnv(t, fakeidp.Options{}, Options{ObserveCall: func(m string, c codes.Code, d time.Duration) {
		mu.Lock()
		seen = append(seen, call{m, c})
		mu.Unlock()
	}}, nil)
	s := e.watch(t, "worker", "cred")
	first := recv(t, s)
	deleteCred(t, e, first)
	if _, err := s.Recv(); err == nil || err == io.EOF {
		t.Fatalf("Recv after the delete: %v", err)
	}
	e.stop(t)
	mu.Lock()
	found := false
	for _, c := range seen {
		if c.method == pb.TokenService_WatchToken_FullMethodName {
			found = c.code == codes.PermissionDenied
		}
	}
	mu.Unlock()
	if !found {
		t.Fatalf("observed %v; want WatchToken with PermissionDenied", seen)
	}
	var logged bool
	for _, raw := range strings.Split(strings.TrimSpace(e.logs.String()), "\n") {
		var l struct {
			Msg, Method, Code, Reason string
			CredentialID              string `json:"credential_id"`
		}
		if err := json.Unmarshal([]byte(raw), &l); err != nil {
			t.Fatal(err)
		}
		if l.Msg == "grpc call" && l.Method == pb.TokenService_WatchToken_FullMethodName {
			logged = l.CredentialID == "cred" && l.Code == "PermissionDenied" && l.Reason == pb.ErrorReasonEnum_PERMISSION_DENIED.String()
		}
	}
	if !logged {
		t.Fatalf("no access log line for the watch with its credential and code:\n%s", e.logs.String())
	}
	if strings.Contains(e.logs.String(), first.GetAccessToken()) {
		t.Fatal("the access token reached the log")
	}
}

// A streaming method in limitedMethods is limited per client as a unary one
// is; WatchToken itself is not in it (opening a watch costs a GetToken).
func TestStreamLimitedPerClient(t *testing.T) {
	if limitedMethods[pb.TokenService_WatchToken_FullMethodName] {
		t.Fatal("WatchToken is rate-limited per client; reconnects after a restart would be refused")
	}
	limitedMethods[pb.TokenService_WatchToken_FullMethodName] = true
	defer delete(limitedMethods, pb.TokenService_WatchToken_FullMethodName)
	e := watchEnv(t, fakeidp.Options{}, Options{Limiter: denyAll{}}, nil)
	s, err := e.tok.WatchToken(withKey(ctxT(t), "worker"), &pb.WatchTokenRequest{CredentialId: "cred"})
	if err == nil {
		_, err = s.Recv()
	}
	wantErr(t, err, codes.ResourceExhausted, pb.ErrorReasonEnum_RATE_LIMITED)
}

type denyAll struct{}

func (denyAll) Allow(string) (bool, time.Duration) { return false, time.Second }
