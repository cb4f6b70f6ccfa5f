package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rpccode "google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// TestErrorTable checks the mapping of every failure to its code, reason
// and details: one row per sentinel, then the cases around them.
func TestErrorTable(t *testing.T) {
	be := func(kind error) *broker.Error {
		return &broker.Error{Kind: kind, CredentialID: "cred-1", Detail: "what happened"}
	}
	rl := be(broker.ErrRateLimited)
	rl.RetryAfter = 3 * time.Second
	idp := be(broker.ErrIdPUnavailable)
	idp.RetryAfter = 1500 * time.Millisecond
	inv := &broker.Error{Kind: broker.ErrInvalidArgument, Field: "credential.token_url", Detail: "must be an absolute http or https URL"}
	storeCtx := &broker.Error{Kind: broker.ErrStoreUnavailable, CredentialID: "cred-1", Err: context.DeadlineExceeded}

	for _, tc := range []struct {
		name     string
		err      error
		code     codes.Code
		reason   string
		retry    time.Duration // 0: no RetryInfo
		field    string
		noCredID bool
		wantMsg  string // "" means err.Error()
	}{
		{name: "not found", err: be(broker.ErrNotFound), code: codes.NotFound, reason: "CREDENTIAL_NOT_FOUND"},
		{name: "invalid argument", err: inv, code: codes.InvalidArgument, reason: "INVALID_ARGUMENT", field: "credential.token_url", noCredID: true},
		{name: "reauth required", err: be(broker.ErrReauthRequired), code: codes.FailedPrecondition, reason: "REAUTH_REQUIRED"},
		{name: "refresh outcome unknown", err: be(broker.ErrOutcomeUnknown), code: codes.FailedPrecondition, reason: "REFRESH_OUTCOME_UNKNOWN"},
		{name: "idp unavailable", err: idp, code: codes.Unavailable, reason: "IDP_UNAVAILABLE", retry: 1500 * time.Millisecond},
		{name: "lock timeout", err: be(broker.ErrLockTimeout), code: codes.Unavailable, reason: "LOCK_TIMEOUT"},
		{name: "store unavailable", err: be(broker.ErrStoreUnavailable), code: codes.Unavailable, reason: "STORE_UNAVAILABLE"},
		{name: "shutting down", err: be(broker.ErrShuttingDown), code: codes.Unavailable, reason: "SHUTTING_DOWN"},
		{name: "rate limited", err: rl, code: codes.ResourceExhausted, reason: "RATE_LIMITED", retry: 3 * time.Second},
		{name: "min valid too long", err: be(broker.ErrMinValidTooLong), code: codes.OutOfRange, reason: "MIN_VALID_TOO_LONG"},
		{name: "permission denied", err: be(broker.ErrPermissionDenied), code: codes.PermissionDenied, reason: "PERMISSION_DENIED"},
		{name: "unauthenticated", err: broker.ErrUnauthenticated, code: codes.Unauthenticated, reason: "UNAUTHENTICATED", noCredID: true},
		{name: "unreadable record", err: &broker.Error{Kind: broker.ErrUnreadable, CredentialID: "cred-1", Detail: "seal: message authentication failed"},
			code: codes.DataLoss, reason: "RECORD_UNREADABLE"},
		{name: "canceled", err: context.Canceled, code: codes.Canceled, reason: "CANCELLED", noCredID: true},
		{name: "deadline", err: context.DeadlineExceeded, code: codes.DeadlineExceeded, reason: "DEADLINE_EXCEEDED", noCredID: true},
		{name: "unknown", err: errors.New("db password=hunter2 rejected"), code: codes.Internal, reason: "INTERNAL", noCredID: true, wantMsg: internalMessage},

		// A plain sentinel, a wrapped one, and a broker error whose cause is
		// a context error: the broker's kind wins.
		{name: "plain sentinel", err: broker.ErrNotFound, code: codes.NotFound, reason: "CREDENTIAL_NOT_FOUND", noCredID: true},
		{name: "wrapped", err: fmt.Errorf("get: %w", be(broker.ErrReauthRequired)), code: codes.FailedPrecondition, reason: "REAUTH_REQUIRED"},
		{name: "wrapped outcome unknown", err: fmt.Errorf("get: %w", be(broker.ErrOutcomeUnknown)), code: codes.FailedPrecondition, reason: "REFRESH_OUTCOME_UNKNOWN"},
		{name: "store cause deadline", err: storeCtx, code: codes.Unavailable, reason: "STORE_UNAVAILABLE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := toStatus(tc.err, "")
			_, info, _ := errInfo(t, st.Err())
			if st.Code() != tc.code || info.GetReason() != tc.reason || info.GetDomain() != "tokenbroker.dev" {
				t.Fatalf("toStatus = %v %q (domain %q); want %v %q", st.Code(), info.GetReason(), info.GetDomain(), tc.code, tc.reason)
			}
			want := tc.wantMsg
			if want == "" {
				want = tc.err.Error()
			}
			if st.Message() != want {
				t.Errorf("message = %q; want %q", st.Message(), want)
			}
			ri := retryInfo(st)
			switch {
			case tc.retry == 0 && ri != nil:
				t.Errorf("RetryInfo %v; want none", ri)
			case tc.retry != 0 && ri.GetRetryDelay().AsDuration() != tc.retry:
				t.Errorf("RetryInfo = %v; want %v", ri, tc.retry)
			}
			md := info.GetMetadata()
			if got := md["credential_id"]; (got == "cred-1") == tc.noCredID {
				t.Errorf("metadata credential_id = %q; want it iff the error names one", got)
			}
			if md["field"] != tc.field {
				t.Errorf("metadata field = %q; want %q", md["field"], tc.field)
			}
			br := badRequest(st)
			if (br != nil) != (tc.field != "") {
				t.Errorf("BadRequest = %v; want one iff a field is named", br)
			}
			if br != nil && br.GetFieldViolations()[0].GetField() != tc.field {
				t.Errorf("BadRequest field = %q; want %q", br.GetFieldViolations()[0].GetField(), tc.field)
			}
		})
	}

	t.Run("status passes through", func(t *testing.T) {
		in := status.Error(codes.NotFound, "unknown service")
		if st := toStatus(in, "x"); st.Code() != codes.NotFound || st.Message() != "unknown service" || len(st.Details()) != 0 {
			t.Errorf("toStatus(status) = %v", st)
		}
	})
	t.Run("request credential id", func(t *testing.T) {
		_, info, _ := errInfo(t, toStatus(broker.ErrNotFound, "from-request").Err())
		if info.GetMetadata()["credential_id"] != "from-request" {
			t.Errorf("metadata = %v; want the request's credential_id", info.GetMetadata())
		}
	})
	t.Run("every sentinel has a row", func(t *testing.T) {
		for _, s := range []error{broker.ErrNotFound, broker.ErrInvalidArgument, broker.ErrReauthRequired,
			broker.ErrIdPUnavailable, broker.ErrLockTimeout, broker.ErrStoreUnavailable, broker.ErrRateLimited,
			broker.ErrMinValidTooLong, broker.ErrPermissionDenied, broker.ErrUnauthenticated, broker.ErrShuttingDown, broker.ErrUnreadable,
			broker.ErrOutcomeUnknown} {
			if toStatus(s, "").Code() == codes.Internal {
				t.Errorf("%v has no row", s)
			}
		}
	})
}

// TestErrorsOverTheWire drives a real broker into each failure it can reach
// and checks what the client receives.
func TestErrorsOverTheWire(t *testing.T) {
	t.Run("reauth required", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		c := e.credential("dead")
		e.idp.Revoke(c.GetRefreshToken())
		e.put(t, c)
		_, err := e.tok.GetToken(ctxT(t), &pb.GetTokenRequest{CredentialId: "dead"})
		wantErr(t, err, codes.FailedPrecondition, pb.ErrorReasonEnum_REAUTH_REQUIRED)
		get, err := e.adm.GetCredential(ctxT(t), &pb.GetCredentialRequest{Id: "dead"})
		if err != nil {
			t.Fatal(err)
		}
		if cr := get.GetCredential(); cr.GetState() != pb.State_REAUTH_REQUIRED || cr.GetReauthReason() != "REAUTH_REQUIRED" ||
			cr.GetLastError() == "" || cr.GetLastErrorAt() == nil {
			t.Errorf("credential = %v; want REAUTH_REQUIRED (reauth_reason too) with the IdP's error", cr)
		}
	})
	t.Run("idp unavailable", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		e.put(t, e.credential("flaky"))
		e.idp.FailNext(1, http.StatusServiceUnavailable)
		_, err := e.tok.GetToken(ctxT(t), &pb.GetTokenRequest{CredentialId: "flaky"})
		st := wantErr(t, err, codes.Unavailable, pb.ErrorReasonEnum_IDP_UNAVAILABLE)
		if retryInfo(st) == nil {
			t.Errorf("no RetryInfo on IDP_UNAVAILABLE")
		}
		get, err := e.adm.GetCredential(ctxT(t), &pb.GetCredentialRequest{Id: "flaky"})
		if err != nil {
			t.Fatal(err)
		}
		if cr := get.GetCredential(); cr.GetState() != pb.State_ACTIVE || cr.GetNextAttemptAt() == nil || cr.GetLastError() == "" {
			t.Errorf("credential = %v; want ACTIVE, backing off", cr)
		}
	})
	t.Run("rate limited", func(t *testing.T) {
		e := newEnv(t, envOptions{cfg: broker.Config{ForceInterval: time.Hour}})
		e.put(t, e.credential("busy"))
		if _, err := e.adm.RefreshCredential(ctxT(t), &pb.RefreshCredentialRequest{Id: "busy"}); err != nil {
			t.Fatal(err)
		}
		_, err := e.adm.RefreshCredential(ctxT(t), &pb.RefreshCredentialRequest{Id: "busy"})
		st := wantErr(t, err, codes.ResourceExhausted, pb.ErrorReasonEnum_RATE_LIMITED)
		if ri := retryInfo(st); ri == nil || ri.GetRetryDelay().AsDuration() <= 0 {
			t.Errorf("RetryInfo = %v; want a delay", ri)
		}
	})
	t.Run("min valid too long", func(t *testing.T) {
		e := newEnv(t, envOptions{idp: fakeidpTTL(time.Minute)})
		e.put(t, e.credential("short"))
		_, err := e.tok.GetToken(ctxT(t), &pb.GetTokenRequest{CredentialId: "short", MinValid: durationpb.New(2 * time.Hour)})
		wantErr(t, err, codes.OutOfRange, pb.ErrorReasonEnum_MIN_VALID_TOO_LONG)
	})
	t.Run("lock timeout", func(t *testing.T) {
		e := newEnv(t, envOptions{cfg: broker.Config{RefreshTimeout: time.Second, LockTTL: 2 * time.Second, LockWait: 50 * time.Millisecond, PollInterval: 10 * time.Millisecond}})
		lease, err := e.store.TryLock(context.Background(), "locked", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		defer lease.Release(context.Background())
		_, err = e.adm.PutCredential(ctxT(t), &pb.PutCredentialRequest{Credential: e.credential("locked")})
		st := wantErr(t, err, codes.Unavailable, pb.ErrorReasonEnum_LOCK_TIMEOUT)
		if retryInfo(st) == nil {
			t.Errorf("no RetryInfo on LOCK_TIMEOUT")
		}
	})
	t.Run("shutting down", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		e.put(t, e.credential("closing"))
		if err := e.b.Close(); err != nil {
			t.Fatal(err)
		}
		_, err := e.tok.GetToken(ctxT(t), &pb.GetTokenRequest{CredentialId: "closing"})
		wantErr(t, err, codes.Unavailable, pb.ErrorReasonEnum_SHUTTING_DOWN)
	})
	t.Run("not found", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		_, err := e.tok.GetToken(ctxT(t), &pb.GetTokenRequest{CredentialId: "nobody"})
		wantErr(t, err, codes.NotFound, pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND)
		_, err = e.adm.RefreshCredential(ctxT(t), &pb.RefreshCredentialRequest{Id: "nobody"})
		wantErr(t, err, codes.NotFound, pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND)
	})
}

// TestBadInput sends every kind of bad input: each gets INVALID_ARGUMENT
// naming the field, and nothing stored changes.
func TestBadInput(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.put(t, e.credential("good"))
	if _, err := e.tok.GetToken(ctxT(t), &pb.GetTokenRequest{CredentialId: "good"}); err != nil {
		t.Fatal(err)
	}
	before := e.stored(t, "good")
	good := func(mod func(c *pb.Credential)) *pb.Credential {
		c := e.credential("good")
		mod(c)
		return c
	}
	newCred := func(mod func(c *pb.Credential)) *pb.Credential {
		c := e.credential("fresh")
		mod(c)
		return c
	}
	long := func(n int) string { return strings.Repeat("a", n) }
	dur := func(s int64, n int32) *durationpb.Duration { return &durationpb.Duration{Seconds: s, Nanos: n} }

	type call func(ctx context.Context) error
	getToken := func(r *pb.GetTokenRequest) call {
		return func(ctx context.Context) error { _, err := e.tok.GetToken(ctx, r); return err }
	}
	invalidate := func(r *pb.InvalidateTokenRequest) call {
		return func(ctx context.Context) error { _, err := e.tok.InvalidateToken(ctx, r); return err }
	}
	put := func(c *pb.Credential) call {
		return func(ctx context.Context) error {
			_, err := e.adm.PutCredential(ctx, &pb.PutCredentialRequest{Credential: c})
			return err
		}
	}
	getCred := func(id string) call {
		return func(ctx context.Context) error {
			_, err := e.adm.GetCredential(ctx, &pb.GetCredentialRequest{Id: id})
			return err
		}
	}
	del := func(id string) call {
		return func(ctx context.Context) error {
			_, err := e.adm.DeleteCredential(ctx, &pb.DeleteCredentialRequest{Id: id})
			return err
		}
	}
	refresh := func(id string) call {
		return func(ctx context.Context) error {
			_, err := e.adm.RefreshCredential(ctx, &pb.RefreshCredentialRequest{Id: id})
			return err
		}
	}
	list := func(size int32, token string) call {
		return func(ctx context.Context) error {
			_, err := e.adm.ListCredentials(ctx, &pb.ListCredentialsRequest{PageSize: size, PageToken: token})
			return err
		}
	}

	for _, tc := range []struct {
		name  string
		call  call
		field string
	}{
		{"GetToken empty id", getToken(&pb.GetTokenRequest{}), "credential_id"},
		{"GetToken malformed id", getToken(&pb.GetTokenRequest{CredentialId: "good id"}), "credential_id"},
		{"GetToken id starting with dash", getToken(&pb.GetTokenRequest{CredentialId: "-good"}), "credential_id"},
		{"GetToken overlong id", getToken(&pb.GetTokenRequest{CredentialId: long(129)}), "credential_id"},
		{"GetToken negative min_valid", getToken(&pb.GetTokenRequest{CredentialId: "good", MinValid: durationpb.New(-time.Second)}), "min_valid"},
		{"GetToken min_valid over 24h", getToken(&pb.GetTokenRequest{CredentialId: "good", MinValid: durationpb.New(25 * time.Hour)}), "min_valid"},
		{"GetToken invalid min_valid", getToken(&pb.GetTokenRequest{CredentialId: "good", MinValid: dur(1, -1)}), "min_valid"},
		{"GetToken min_valid out of range", getToken(&pb.GetTokenRequest{CredentialId: "good", MinValid: dur(400e9, 0)}), "min_valid"},
		{"Invalidate empty id", invalidate(&pb.InvalidateTokenRequest{RejectedAccessToken: before.Token.AccessToken}), "credential_id"},
		{"Invalidate empty token", invalidate(&pb.InvalidateTokenRequest{CredentialId: "good"}), "rejected_access_token"},
		{"Invalidate overlong token", invalidate(&pb.InvalidateTokenRequest{CredentialId: "good", RejectedAccessToken: long(16385)}), "rejected_access_token"},
		{"Invalidate control char token", invalidate(&pb.InvalidateTokenRequest{CredentialId: "good", RejectedAccessToken: "a\nb"}), "rejected_access_token"},
		{"Invalidate invalid min_valid", invalidate(&pb.InvalidateTokenRequest{CredentialId: "good", RejectedAccessToken: before.Token.AccessToken, MinValid: dur(0, 2e9)}), "min_valid"},
		{"Invalidate negative min_valid", invalidate(&pb.InvalidateTokenRequest{CredentialId: "good", RejectedAccessToken: before.Token.AccessToken, MinValid: durationpb.New(-time.Minute)}), "min_valid"},

		{"Put no credential", put(nil), "credential"},
		{"Put empty id", put(newCred(func(c *pb.Credential) { c.Id = "" })), "credential.id"},
		{"Put malformed id", put(newCred(func(c *pb.Credential) { c.Id = "a/b" })), "credential.id"},
		{"Put overlong id", put(newCred(func(c *pb.Credential) { c.Id = long(129) })), "credential.id"},
		{"Put empty token_url", put(good(func(c *pb.Credential) { c.TokenUrl = "" })), "credential.token_url"},
		{"Put relative token_url", put(good(func(c *pb.Credential) { c.TokenUrl = "/token" })), "credential.token_url"},
		{"Put non-http token_url", put(good(func(c *pb.Credential) { c.TokenUrl = "ftp://idp.example/token" })), "credential.token_url"},
		{"Put hostless token_url", put(good(func(c *pb.Credential) { c.TokenUrl = "https:///token" })), "credential.token_url"},
		{"Put token_url with user info", put(good(func(c *pb.Credential) { c.TokenUrl = "https://u:p@idp.example/token" })), "credential.token_url"},
		{"Put overlong token_url", put(good(func(c *pb.Credential) { c.TokenUrl = "https://idp.example/" + long(2048) })), "credential.token_url"},
		{"Put empty client_id", put(good(func(c *pb.Credential) { c.ClientId = "" })), "credential.client_id"},
		{"Put overlong client_id", put(good(func(c *pb.Credential) { c.ClientId = long(257) })), "credential.client_id"},
		{"Put overlong client_secret", put(good(func(c *pb.Credential) { c.ClientSecret = long(1025) })), "credential.client_secret"},
		{"Put fallback without primary", put(good(func(c *pb.Credential) { c.ClientSecret = ""; c.FallbackClientSecrets = []string{"x"} })), "credential.client_secret"},
		{"Put too many secrets", put(good(func(c *pb.Credential) { c.FallbackClientSecrets = make([]string, 8) })), "credential.fallback_client_secrets"},
		{"Put unknown auth_style", put(good(func(c *pb.Credential) { c.AuthStyle = 99 })), "credential.auth_style"},
		{"Put unknown grant_type", put(good(func(c *pb.Credential) { c.GrantType = 99 })), "credential.grant_type"},
		{"Put new without refresh_token", put(newCred(func(c *pb.Credential) { c.RefreshToken = "" })), "credential.refresh_token"},
		{"Put refresh_token with client_credentials", put(good(func(c *pb.Credential) { c.GrantType = pb.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS })), "credential.refresh_token"},
		{"Put overlong refresh_token", put(good(func(c *pb.Credential) { c.RefreshToken = long(8193) })), "credential.refresh_token"},
		{"Put control char refresh_token", put(good(func(c *pb.Credential) { c.RefreshToken = "rt\x00" })), "credential.refresh_token"},
		{"Put scope with space", put(good(func(c *pb.Credential) { c.Scopes = []string{"a b"} })), "credential.scopes"},
		{"Put empty scope", put(good(func(c *pb.Credential) { c.Scopes = []string{""} })), "credential.scopes"},
		{"Put too many scopes", put(good(func(c *pb.Credential) { c.Scopes = strings.Fields(strings.Repeat("s ", 65)) })), "credential.scopes"},
		{"Put overlong allowed client", put(good(func(c *pb.Credential) { c.AllowedClients = []string{long(129)} })), "credential.allowed_clients"},
		{"Put negative refresh_ahead", put(good(func(c *pb.Credential) { c.RefreshAhead = durationpb.New(-time.Second) })), "credential.refresh_ahead"},
		{"Put refresh_ahead over 24h", put(good(func(c *pb.Credential) { c.RefreshAhead = durationpb.New(48 * time.Hour) })), "credential.refresh_ahead"},
		{"Put invalid refresh_ahead", put(good(func(c *pb.Credential) { c.RefreshAhead = dur(-1, 1) })), "credential.refresh_ahead"},
		{"Put negative reuse_grace", put(good(func(c *pb.Credential) { c.ReuseGrace = durationpb.New(-time.Second) })), "credential.reuse_grace"},
		{"Put reuse_grace over 24h", put(good(func(c *pb.Credential) { c.ReuseGrace = durationpb.New(25 * time.Hour) })), "credential.reuse_grace"},
		{"Put invalid reuse_grace", put(good(func(c *pb.Credential) { c.ReuseGrace = dur(1, -1) })), "credential.reuse_grace"},

		{"GetCredential empty id", getCred(""), "id"},
		{"GetCredential malformed id", getCred("ü"), "id"},
		{"DeleteCredential malformed id", del("good\n"), "id"},
		{"DeleteCredential overlong id", del(long(200)), "id"},
		{"RefreshCredential empty id", refresh(""), "id"},
		{"RefreshCredential malformed id", refresh("*"), "id"},
		{"List negative page_size", list(-1, ""), "page_size"},
		{"List page_size over max", list(1001, ""), "page_size"},
		{"List malformed page_token", list(0, "!!not base64!!"), "page_token"},
		{"List page_token of a bad id", list(0, "LWJhZA"), "page_token"}, // base64url("-bad")
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(ctxT(t))
			st := wantErr(t, err, codes.InvalidArgument, pb.ErrorReasonEnum_INVALID_ARGUMENT)
			_, info, _ := errInfo(t, err)
			if got := info.GetMetadata()["field"]; got != tc.field {
				t.Errorf("ErrorInfo field = %q; want %q (%v)", got, tc.field, err)
			}
			br := badRequest(st)
			if br == nil || len(br.GetFieldViolations()) != 1 || br.GetFieldViolations()[0].GetField() != tc.field {
				t.Errorf("BadRequest = %v; want a violation of %q", br, tc.field)
			}
			if !strings.Contains(st.Message(), tc.field) {
				t.Errorf("message %q does not name %q", st.Message(), tc.field)
			}
			after := e.stored(t, "good")
			if after.Generation != before.Generation || after.RefreshToken != before.RefreshToken || after.TokenURL != before.TokenURL {
				t.Fatalf("stored record changed: generation %d -> %d", before.Generation, after.Generation)
			}
			if e.stored(t, "fresh") != nil {
				t.Fatalf("a refused put stored a credential")
			}
		})
	}
	if n := e.idp.Stats().Refreshes; n != 1 {
		t.Errorf("IdP refreshes = %d; want only the first GetToken's", n)
	}
}

// sentReasons is every reason the server can send, with its code: the
// error table's rows and the fallback for errors no row matches.
func sentReasons(t *testing.T) map[reason]codes.Code {
	t.Helper()
	sent := map[reason]codes.Code{reasonInternal: codes.Internal}
	for _, row := range errorTable {
		if _, dup := sent[row.reason]; dup {
			t.Errorf("reason %v is sent by more than one row (or also as the fallback)", row.reason)
		}
		sent[row.reason] = row.code
	}
	return sent
}

// TestErrorReasonsAllMapped fails when a reason of the API's enum is sent
// by no row of the error table (nor as the fallback), or when the table
// sends a reason the enum does not have.
func TestErrorReasonsAllMapped(t *testing.T) {
	sent := sentReasons(t)
	for n, name := range pb.ErrorReasonEnum_ErrorReason_name {
		r := reason(n)
		if r == pb.ErrorReasonEnum_ERROR_REASON_UNSPECIFIED {
			if _, ok := sent[r]; ok {
				t.Errorf("the table sends %s", name)
			}
			continue
		}
		if _, ok := sent[r]; !ok {
			t.Errorf("reason %s of the enum has no row in errorTable", name)
		}
	}
	for r := range sent {
		if _, ok := pb.ErrorReasonEnum_ErrorReason_name[int32(r)]; !ok {
			t.Errorf("errorTable sends reason %d, which the enum does not have", r)
		}
	}
}

// TestREADMEErrorsTable checks the table in the README's "### Errors"
// section against the API: it lists exactly the enum's reasons (but
// ERROR_REASON_UNSPECIFIED), each with the code errorTable sends it with. A
// row may list several reasons, with one code for all or one code each.
func TestREADMEErrorsTable(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n### Errors\n")
	if !ok {
		t.Fatal(`README.md has no "### Errors" section`)
	}
	if end := strings.Index(section, "\n#"); end >= 0 {
		section = section[:end]
	}
	listed := map[string]string{} // reason -> code name, as the README says
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 {
			t.Fatalf("README row %q has too few cells", line)
		}
		var reasons, codeNames []string
		for _, r := range strings.Split(cells[1], ",") {
			reasons = append(reasons, strings.Trim(strings.TrimSpace(r), "`"))
		}
		for _, c := range strings.Split(cells[2], ",") {
			codeNames = append(codeNames, strings.TrimSpace(c))
		}
		if len(codeNames) != 1 && len(codeNames) != len(reasons) {
			t.Fatalf("README row %q: %d reasons, %d codes", line, len(reasons), len(codeNames))
		}
		for i, r := range reasons {
			c := codeNames[0]
			if len(codeNames) > 1 {
				c = codeNames[i]
			}
			if _, dup := listed[r]; dup {
				t.Errorf("README lists %s twice", r)
			}
			listed[r] = c
		}
	}
	sent := sentReasons(t)
	for r, want := range sent {
		name := r.String()
		got, ok := listed[name]
		if !ok {
			t.Errorf("README's Errors table lacks %s (%s)", name, canonical(want))
			continue
		}
		if got != canonical(want) {
			t.Errorf("README says %s is %s; the server sends %s", name, got, canonical(want))
		}
		delete(listed, name)
	}
	for name := range listed {
		t.Errorf("README lists %s, which is no reason the server sends", name)
	}
}

// canonical is c's name as google.rpc.Code spells it (NOT_FOUND).
func canonical(c codes.Code) string {
	return rpccode.Code(c).String()
}
