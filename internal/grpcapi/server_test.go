package grpcapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

func TestTokenService(t *testing.T) {
	e := newEnv(t, envOptions{cfg: broker.Config{ForceInterval: time.Millisecond}})
	ctx := ctxT(t)
	e.put(t, e.credential("svc-a"))

	got, err := e.tok.GetToken(ctx, &pb.GetTokenRequest{CredentialId: "svc-a", MinValid: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	if got.GetAccessToken() == "" || got.GetTokenType() == "" || got.GetExpiresAt() == nil {
		t.Fatalf("GetToken = %v; want a token, its type and expiry", got)
	}
	if until := time.Until(got.GetExpiresAt().AsTime()); until < time.Minute {
		t.Errorf("token valid for %v; want at least min_valid", until)
	}
	if code := e.resourceStatus(t, got.GetAccessToken()); code != http.StatusOK {
		t.Fatalf("resource answered %d to the broker's token", code)
	}

	again, err := e.tok.GetToken(ctx, &pb.GetTokenRequest{CredentialId: "svc-a"})
	if err != nil {
		t.Fatalf("GetToken again: %v", err)
	}
	if again.GetAccessToken() != got.GetAccessToken() {
		t.Errorf("a fresh cached token was not reused")
	}

	inv, err := e.tok.InvalidateToken(ctx, &pb.InvalidateTokenRequest{CredentialId: "svc-a", RejectedAccessToken: got.GetAccessToken()})
	if err != nil {
		t.Fatalf("InvalidateToken: %v", err)
	}
	if inv.GetAccessToken() == "" || inv.GetAccessToken() == got.GetAccessToken() || inv.GetExpiresAt() == nil {
		t.Fatalf("InvalidateToken returned the rejected token or none")
	}
	if code := e.resourceStatus(t, inv.GetAccessToken()); code != http.StatusOK {
		t.Fatalf("resource answered %d to the replacement token", code)
	}
	if n := e.idp.Stats().Refreshes; n != 2 {
		t.Errorf("IdP refreshes = %d; want 2 (first GetToken, InvalidateToken)", n)
	}
}

func TestAdminService(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t)

	c := e.credential("svc-b")
	c.Scopes = []string{"read", "write"}
	c.RefreshToken = e.idp.Seed(testClientID, "read", "write")
	c.AuthStyle = pb.AuthStyle_AUTH_STYLE_POST
	c.AllowedClients = []string{"worker"}
	c.RefreshAhead = durationpb.New(2 * time.Minute)
	c.FallbackClientSecrets = []string{"SECRET-old-1"}
	put := e.put(t, c)
	want := &pb.Credential{
		Id: "svc-b", TokenUrl: e.idp.TokenURL(), ClientId: testClientID,
		Scopes: []string{"read", "write"}, AuthStyle: pb.AuthStyle_AUTH_STYLE_POST,
		AllowedClients: []string{"worker"}, RefreshAhead: durationpb.New(2 * time.Minute),
		GrantType: pb.GrantType_GRANT_TYPE_REFRESH_TOKEN, State: pb.State_ACTIVE,
		Generation: 1, HasRefreshToken: true, ClientSecretCount: 2,
	}
	if put.GetCreateTime() == nil || put.GetUpdateTime() == nil {
		t.Errorf("create/update time unset: %v", put)
	}
	if put.GetExpiresAt() != nil || put.GetLastRefreshAt() != nil || put.GetLastErrorAt() != nil || put.GetNextAttemptAt() != nil {
		t.Errorf("times set before any refresh: %v", put)
	}
	cmp := proto.Clone(put).(*pb.Credential)
	cmp.CreateTime, cmp.UpdateTime = nil, nil
	if !proto.Equal(cmp, want) {
		t.Fatalf("PutCredential =\n%v\nwant\n%v", cmp, want)
	}
	rec := e.stored(t, "svc-b")
	if !slices.Equal(rec.ClientSecrets, []string{testClientSecret, "SECRET-old-1"}) {
		t.Errorf("stored client secrets not primary first then fallbacks")
	}

	get, err := e.adm.GetCredential(ctx, &pb.GetCredentialRequest{Id: "svc-b"})
	if err != nil {
		t.Fatalf("GetCredential: %v", err)
	}
	if !proto.Equal(get.GetCredential(), put) {
		t.Errorf("GetCredential = %v; want %v", get.GetCredential(), put)
	}

	ref, err := e.adm.RefreshCredential(ctx, &pb.RefreshCredentialRequest{Id: "svc-b"})
	if err != nil {
		t.Fatalf("RefreshCredential: %v", err)
	}
	rc := ref.GetCredential()
	if rc.GetGeneration() <= put.GetGeneration() || rc.GetExpiresAt() == nil || rc.GetLastRefreshAt() == nil ||
		rc.GetState() != pb.State_ACTIVE || !rc.GetHasRefreshToken() {
		t.Errorf("RefreshCredential = %v; want a newer generation with expiry and last refresh", rc)
	}
	if n := e.idp.Stats().Refreshes; n != 1 {
		t.Errorf("IdP refreshes = %d; want 1", n)
	}

	// Pagination: three more credentials, pages of two.
	for _, id := range []string{"svc-a", "svc-c", "svc-d"} {
		e.put(t, e.credential(id))
	}
	var ids []string
	token := ""
	for page := 0; page < 10; page++ {
		resp, err := e.adm.ListCredentials(ctx, &pb.ListCredentialsRequest{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatalf("ListCredentials: %v", err)
		}
		if len(resp.GetCredentials()) > 2 {
			t.Fatalf("page of %d; want at most 2", len(resp.GetCredentials()))
		}
		for _, c := range resp.GetCredentials() {
			ids = append(ids, c.GetId())
			if c.GetState() != pb.State_ACTIVE || !c.GetHasRefreshToken() || c.GetGeneration() == 0 {
				t.Errorf("listed %v without its public view", c)
			}
		}
		token = resp.GetNextPageToken()
		if token == "" {
			break
		}
	}
	if want := []string{"svc-a", "svc-b", "svc-c", "svc-d"}; !slices.Equal(ids, want) {
		t.Errorf("listed %v; want %v", ids, want)
	}
	all, err := e.adm.ListCredentials(ctx, &pb.ListCredentialsRequest{})
	if err != nil || len(all.GetCredentials()) != 4 || all.GetNextPageToken() != "" {
		t.Errorf("ListCredentials default page = %d credentials, next %q, %v; want 4, last page", len(all.GetCredentials()), all.GetNextPageToken(), err)
	}

	if _, err := e.adm.DeleteCredential(ctx, &pb.DeleteCredentialRequest{Id: "svc-b"}); err != nil {
		t.Fatalf("DeleteCredential: %v", err)
	}
	_, err = e.adm.GetCredential(ctx, &pb.GetCredentialRequest{Id: "svc-b"})
	st := wantErr(t, err, codes.NotFound, pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND)
	_, info, _ := errInfo(t, st.Err())
	if info.GetMetadata()["credential_id"] != "svc-b" {
		t.Errorf("ErrorInfo metadata = %v; want credential_id", info.GetMetadata())
	}
	_, err = e.adm.DeleteCredential(ctx, &pb.DeleteCredentialRequest{Id: "svc-b"})
	wantErr(t, err, codes.NotFound, pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND)
}

func TestPutCredentialClientCredentials(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t)
	c := e.credential("cc")
	c.RefreshToken = ""
	c.GrantType = pb.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS
	put := e.put(t, c)
	if put.GetGrantType() != pb.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS || put.GetHasRefreshToken() {
		t.Fatalf("PutCredential = %v", put)
	}
	got, err := e.tok.GetToken(ctx, &pb.GetTokenRequest{CredentialId: "cc"})
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	if code := e.resourceStatus(t, got.GetAccessToken()); code != http.StatusOK {
		t.Fatalf("resource answered %d", code)
	}
}

// TestNoSecretInResponses puts a credential with distinctive secrets and
// checks that no response, no error and no log line carries them, nor the
// rotated refresh token.
func TestNoSecretInResponses(t *testing.T) {
	e := newEnv(t, envOptions{cfg: broker.Config{ForceInterval: time.Millisecond}})
	ctx := ctxT(t)
	const fallback = "SECRET-fallback-c0ffee"
	c := e.credential("secretive")
	c.FallbackClientSecrets = []string{fallback}
	seed := c.GetRefreshToken()

	var out []proto.Message
	put, err := e.adm.PutCredential(ctx, &pb.PutCredentialRequest{Credential: c})
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, put)
	tok, err := e.tok.GetToken(ctx, &pb.GetTokenRequest{CredentialId: "secretive"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		get, err := e.adm.GetCredential(ctx, &pb.GetCredentialRequest{Id: "secretive"})
		if err != nil {
			t.Fatal(err)
		}
		list, err := e.adm.ListCredentials(ctx, &pb.ListCredentialsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, get, list)
		if i == 0 {
			time.Sleep(10 * time.Millisecond) // past ForceInterval
			ref, err := e.adm.RefreshCredential(ctx, &pb.RefreshCredentialRequest{Id: "secretive"})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, ref)
		}
	}
	// Put again without secrets: keeps them, and answers without them.
	c2 := e.credential("secretive")
	c2.ClientSecret, c2.RefreshToken = "", ""
	put2, err := e.adm.PutCredential(ctx, &pb.PutCredentialRequest{Credential: c2})
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, put2)
	if put2.GetCredential().GetClientSecretCount() != 2 {
		t.Errorf("client_secret_count = %d after a put without secrets; want 2 kept", put2.GetCredential().GetClientSecretCount())
	}

	rec := e.stored(t, "secretive")
	if rec.RefreshToken == seed {
		t.Fatalf("refresh token not rotated; the test would prove less")
	}
	secrets := []string{testClientSecret, fallback, seed, rec.RefreshToken}
	for _, m := range out {
		js, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range secrets {
			if strings.Contains(string(js), s) {
				t.Errorf("%T carries a secret: %s", m, js)
			}
		}
		if m != nil && strings.Contains(string(js), tok.GetAccessToken()) {
			t.Errorf("admin response %T carries an access token", m)
		}
	}
	// Errors and logs do not carry them either: a bad put of the same
	// credential (the secret is echoed nowhere).
	bad := e.credential("secretive")
	bad.ClientSecret = testClientSecret + "\x01"
	_, err = e.adm.PutCredential(ctx, &pb.PutCredentialRequest{Credential: bad})
	st := wantErr(t, err, codes.InvalidArgument, pb.ErrorReasonEnum_INVALID_ARGUMENT)
	js, _ := protojson.Marshal(st.Proto())
	logs := e.logs.String()
	for _, s := range append(secrets, tok.GetAccessToken()) {
		if strings.Contains(string(js), s) {
			t.Errorf("error carries a secret: %s", js)
		}
		if strings.Contains(logs, s) {
			t.Errorf("access log carries a secret")
		}
	}
}

func TestHealth(t *testing.T) {
	e := newEnv(t, envOptions{opts: Options{Authenticator: keyAuth{}}}) // health needs no key
	ctx := ctxT(t)
	hc := healthpb.NewHealthClient(e.conn)
	for _, svc := range []string{"", "tokenbroker.v1.TokenService", "tokenbroker.v1.AdminService"} {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatalf("Check(%q): %v", svc, err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q) = %v; want SERVING", svc, resp.GetStatus())
		}
	}
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("Check(unknown) = %v; want NOT_FOUND", err)
	}

	// A watcher sees NOT_SERVING once Shutdown begins; Shutdown completes
	// gracefully once the watcher goes away.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	w, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{Service: ""})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch first = %v, %v; want SERVING", m, err)
	}
	done := make(chan error, 1)
	go func() { done <- e.stop(t) }()
	if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch after Shutdown = %v, %v; want NOT_SERVING", m, err)
	}
	wcancel()
	if err := <-done; err != nil {
		t.Errorf("Shutdown = %v; want a graceful stop", err)
	}
}

func TestShutdownForcesStopAtDeadline(t *testing.T) {
	e := newEnv(t, envOptions{})
	hc := healthpb.NewHealthClient(e.conn)
	w, err := hc.Watch(ctxT(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	// The watch never ends on its own: GracefulStop cannot finish.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := e.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v; want the deadline after a forced stop", err)
	}
	if err := <-e.served; err != nil {
		t.Errorf("Serve = %v", err)
	}
	e.stopOnce.Do(func() {})
}

func TestReflection(t *testing.T) {
	e := newEnv(t, envOptions{opts: Options{Authenticator: keyAuth{}}}) // reflection needs no key
	stream, err := reflectionpb.NewServerReflectionClient(e.conn).ServerReflectionInfo(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"tokenbroker.v1.TokenService", "tokenbroker.v1.AdminService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v; missing %s", names, want)
		}
	}
	// The services' descriptors resolve, so grpcurl can call them.
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "tokenbroker.v1.AdminService"},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err = stream.Recv()
	if err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Fatalf("FileContainingSymbol = %v, %v", resp, err)
	}
	_ = stream.CloseSend()
}

func TestAuthentication(t *testing.T) {
	e := newEnv(t, envOptions{opts: Options{Authenticator: keyAuth{}}})
	ctx := ctxT(t)
	c := e.credential("guarded")
	c.AllowedClients = []string{"worker"}
	if _, err := e.adm.PutCredential(withKey(ctx, "admin"), &pb.PutCredentialRequest{Credential: c}); err != nil {
		t.Fatalf("PutCredential as admin: %v", err)
	}

	_, err := e.tok.GetToken(ctx, &pb.GetTokenRequest{CredentialId: "guarded"})
	st := wantErr(t, err, codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED)
	if strings.Contains(st.Message(), "SECRET") {
		t.Errorf("the authenticator's error text reached the client: %q", st.Message())
	}
	_, err = e.tok.GetToken(withKey(ctx, "bad"), &pb.GetTokenRequest{CredentialId: "guarded"})
	wantErr(t, err, codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED)
	_, err = e.tok.GetToken(withKey(ctx, "banned"), &pb.GetTokenRequest{CredentialId: "guarded"})
	wantErr(t, err, codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED)
	_, err = e.tok.GetToken(withKey(ctx, "stranger"), &pb.GetTokenRequest{CredentialId: "guarded"})
	wantErr(t, err, codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED)
	_, err = e.adm.ListCredentials(withKey(ctx, "worker"), &pb.ListCredentialsRequest{})
	wantErr(t, err, codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED)

	if _, err := e.tok.GetToken(withKey(ctx, "worker"), &pb.GetTokenRequest{CredentialId: "guarded"}); err != nil {
		t.Fatalf("GetToken as an allowed client: %v", err)
	}
	if strings.Contains(e.logs.String(), "SECRET") {
		t.Errorf("the authenticator's error text reached the log")
	}
	if !strings.Contains(e.logs.String(), `"caller":"worker"`) {
		t.Errorf("access log does not name the caller:\n%s", e.logs.String())
	}
}

// TestAccessLog checks one line per call, with method, code, duration and
// credential ID, at the level the outcome calls for.
func TestAccessLog(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t)
	e.put(t, e.credential("logged"))
	tok, err := e.tok.GetToken(ctx, &pb.GetTokenRequest{CredentialId: "logged"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.adm.GetCredential(ctx, &pb.GetCredentialRequest{Id: "missing"})
	wantErr(t, err, codes.NotFound, pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND)

	type line struct {
		Level, Msg, Method, Code, Reason, Error string
		CredentialID                            string   `json:"credential_id"`
		Duration                                *float64 `json:"duration_ms"`
	}
	var lines []line
	for _, raw := range strings.Split(strings.TrimSpace(e.logs.String()), "\n") {
		var l line
		if err := json.Unmarshal([]byte(raw), &l); err != nil {
			t.Fatalf("log line %q: %v", raw, err)
		}
		if l.Msg == "grpc call" {
			lines = append(lines, l)
		}
	}
	want := []line{
		{Level: "DEBUG", Method: "/tokenbroker.v1.AdminService/PutCredential", Code: "OK", CredentialID: "logged"},
		{Level: "DEBUG", Method: "/tokenbroker.v1.TokenService/GetToken", Code: "OK", CredentialID: "logged"},
		{Level: "INFO", Method: "/tokenbroker.v1.AdminService/GetCredential", Code: "NotFound", CredentialID: "missing", Reason: pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND.String()},
	}
	if len(lines) != len(want) {
		t.Fatalf("%d access log lines; want %d:\n%s", len(lines), len(want), e.logs.String())
	}
	for i, l := range lines {
		w := want[i]
		if l.Level != w.Level || l.Method != w.Method || l.Code != w.Code || l.CredentialID != w.CredentialID || l.Reason != w.Reason || l.Duration == nil {
			t.Errorf("line %d = %+v; want %+v with a duration", i, l, w)
		}
	}
	if strings.Contains(e.logs.String(), tok.GetAccessToken()) {
		t.Errorf("the access token reached the log")
	}
}

// TestPanicRecovery calls the interceptor with a handler that panics: the
// client gets INTERNAL with a generic message, the log gets the rest.
func TestPanicRecovery(t *testing.T) {
	logs := &syncBuffer{}
	s := &Server{log: slog.New(slog.NewJSONHandler(logs, nil))}
	info := &grpc.UnaryServerInfo{FullMethod: "/tokenbroker.v1.TokenService/GetToken"}
	_, err := s.unary(context.Background(), &pb.GetTokenRequest{CredentialId: "p"}, info, func(context.Context, any) (any, error) {
		panic("boom")
	})
	st := wantErr(t, err, codes.Internal, pb.ErrorReasonEnum_INTERNAL)
	if st.Message() != internalMessage {
		t.Errorf("message = %q; want the generic one", st.Message())
	}
	out := logs.String()
	if !strings.Contains(out, `"level":"ERROR","msg":"panic in grpc handler"`) || !strings.Contains(out, "boom") {
		t.Errorf("panic not logged:\n%s", out)
	}
	if !strings.Contains(out, `"level":"WARN","msg":"grpc call"`) || !strings.Contains(out, errPanic.Error()) {
		t.Errorf("INTERNAL access line not at WARN with the real error:\n%s", out)
	}

	// The stream interceptor recovers too.
	err = s.stream(nil, fakeStream{}, &grpc.StreamServerInfo{FullMethod: "/x.Y/Z"}, func(any, grpc.ServerStream) error {
		panic(fmt.Errorf("boom"))
	})
	wantErr(t, err, codes.Internal, pb.ErrorReasonEnum_INTERNAL)
}

type fakeStream struct{ grpc.ServerStream }

func (fakeStream) Context() context.Context { return context.Background() }

func TestMaxRecvMsgSize(t *testing.T) {
	e := newEnv(t, envOptions{opts: Options{MaxRecvMsgSize: 4 << 10}})
	_, err := e.tok.InvalidateToken(ctxT(t), &pb.InvalidateTokenRequest{
		CredentialId: "x", RejectedAccessToken: strings.Repeat("a", 8<<10),
	})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversized request = %v; want RESOURCE_EXHAUSTED", err)
	}
	// The default is 1 MiB: a 512 KiB field is received (and refused by
	// the broker's own limit, naming the field).
	e2 := newEnv(t, envOptions{})
	_, err = e2.tok.InvalidateToken(ctxT(t), &pb.InvalidateTokenRequest{
		CredentialId: "x", RejectedAccessToken: strings.Repeat("a", 512<<10),
	})
	st := wantErr(t, err, codes.InvalidArgument, pb.ErrorReasonEnum_INVALID_ARGUMENT)
	if br := badRequest(st); br == nil || br.GetFieldViolations()[0].GetField() != "rejected_access_token" {
		t.Errorf("BadRequest = %v; want rejected_access_token", br)
	}
}
