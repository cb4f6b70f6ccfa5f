package grpcapi

import (
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

func mask(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }

// wantField checks an INVALID_ARGUMENT naming field.
func wantField(t *testing.T, err error, field string) {
	t.Helper()
	st := wantErr(t, err, codes.InvalidArgument, pb.ErrorReasonEnum_INVALID_ARGUMENT)
	_, info, _ := errInfo(t, err)
	if info.GetMetadata()["field"] != field {
		t.Fatalf("field %q, want %q (%v)", info.GetMetadata()["field"], field, st.Message())
	}
}

func TestUpdateCredentialChangesMaskedFieldsOnly(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.credential("crm")
	c.Scopes, c.AllowedClients, c.FallbackClientSecrets = []string{"read"}, []string{"a", "b"}, []string{"old-secret"}
	e.put(t, c)
	before := e.stored(t, "crm")
	update := func(c *pb.Credential, m *fieldmaskpb.FieldMask) (*pb.Credential, error) {
		resp, err := e.adm.UpdateCredential(ctxT(t), &pb.UpdateCredentialRequest{Credential: c, UpdateMask: m})
		return resp.GetCredential(), err
	}

	// scopes in the mask; the request's empty allowed_clients, token URL
	// and client ID are not.
	got, err := update(&pb.Credential{Id: "crm", Scopes: []string{"read", "write"}}, mask("scopes"))
	if err != nil {
		t.Fatal(err)
	}
	after := e.stored(t, "crm")
	if strings.Join(after.Scopes, " ") != "read write" || strings.Join(after.AllowedClients, ",") != "a,b" ||
		after.TokenURL != before.TokenURL || after.ClientID != before.ClientID || len(after.ClientSecrets) != 2 ||
		after.RefreshToken != before.RefreshToken || after.Generation != before.Generation+1 || got.GetGeneration() != after.Generation {
		t.Fatalf("after a scopes update: %+v", after)
	}

	// A masked field left empty is cleared.
	if _, err := update(&pb.Credential{Id: "crm"}, mask("allowed_clients")); err != nil {
		t.Fatal(err)
	}
	if after := e.stored(t, "crm"); len(after.AllowedClients) != 0 || len(after.Scopes) != 2 {
		t.Fatalf("after clearing allowed_clients: %+v", after)
	}

	// No mask: the fields the request sets (output-only ones skipped).
	if _, err := update(&pb.Credential{Id: "crm", AllowedClients: []string{"c"}, Generation: 99, State: pb.State_REAUTH_REQUIRED}, nil); err != nil {
		t.Fatal(err)
	}
	if after := e.stored(t, "crm"); strings.Join(after.AllowedClients, ",") != "c" || len(after.Scopes) != 2 || after.State != broker.StateActive {
		t.Fatalf("after an implied mask: %+v", after)
	}

	// refresh_token in the mask re-seeds; the secrets stay.
	rt := e.idp.Seed(testClientID, "read", "write")
	if _, err := update(&pb.Credential{Id: "crm", RefreshToken: rt}, mask("refresh_token")); err != nil {
		t.Fatal(err)
	}
	if after := e.stored(t, "crm"); after.RefreshToken != rt || len(after.ClientSecrets) != 2 || after.Token.AccessToken != "" {
		t.Fatalf("after a refresh_token update: secrets %d", len(after.ClientSecrets))
	}

	// client_secret sets the secrets, fallbacks with it.
	if _, err := update(&pb.Credential{Id: "crm", ClientSecret: testClientSecret}, mask("client_secret")); err != nil {
		t.Fatal(err)
	}
	if after := e.stored(t, "crm"); len(after.ClientSecrets) != 1 || after.ClientSecrets[0] != testClientSecret {
		t.Fatalf("after a client_secret update: %d secrets", len(after.ClientSecrets))
	}
	if _, err := e.tok.GetToken(ctxT(t), &pb.GetTokenRequest{CredentialId: "crm"}); err != nil {
		t.Fatalf("GetToken after the updates: %v", err)
	}
}

func TestUpdateCredentialBadInput(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.put(t, e.credential("crm"))
	before := e.stored(t, "crm")
	for _, tc := range []struct {
		name  string
		c     *pb.Credential
		m     *fieldmaskpb.FieldMask
		field string
	}{
		{"wildcard", &pb.Credential{Id: "crm"}, mask("*"), "update_mask"},
		{"id", &pb.Credential{Id: "crm"}, mask("id"), "update_mask"},
		{"output only", &pb.Credential{Id: "crm"}, mask("state"), "update_mask"},
		{"output only nested", &pb.Credential{Id: "crm"}, mask("pending_authorization.user_code"), "update_mask"},
		{"unknown path", &pb.Credential{Id: "crm"}, mask("nope"), "update_mask"},
		{"empty mask", &pb.Credential{Id: "crm"}, mask(), "update_mask"},
		{"nothing implied", &pb.Credential{Id: "crm"}, nil, "update_mask"},
		{"no credential", nil, mask("scopes"), "credential"},
		{"bad id", &pb.Credential{Id: "no spaces"}, mask("scopes"), "credential.id"},
		{"empty refresh token", &pb.Credential{Id: "crm"}, mask("refresh_token"), "credential.refresh_token"},
		{"bad token url", &pb.Credential{Id: "crm", TokenUrl: "/token"}, mask("token_url"), "credential.token_url"},
		{"token url to another host keeps no secret", &pb.Credential{Id: "crm", TokenUrl: "https://elsewhere.example/token"}, mask("token_url"), "credential.client_secret"},
		{"authorization url not https", &pb.Credential{Id: "crm", AuthorizationUrl: "http://idp.example/authorize"}, mask("authorization_url"), "credential.authorization_url"},
		{"redirect not the callback", &pb.Credential{Id: "crm", RedirectUrl: "https://broker.example/cb"}, mask("redirect_url"), "credential.redirect_url"},
	} {
		_, err := e.adm.UpdateCredential(ctxT(t), &pb.UpdateCredentialRequest{Credential: tc.c, UpdateMask: tc.m})
		t.Run(tc.name, func(t *testing.T) { wantField(t, err, tc.field) })
	}
	_, err := e.adm.UpdateCredential(ctxT(t), &pb.UpdateCredentialRequest{Credential: &pb.Credential{Id: "missing"}, UpdateMask: mask("scopes")})
	wantErr(t, err, codes.NotFound, pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND)
	if after := e.stored(t, "crm"); after.Generation != before.Generation {
		t.Fatalf("refused updates changed the record: generation %d, want %d", after.Generation, before.Generation)
	}
}

func TestPutRefusesToDropAllowedClients(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.credential("crm")
	c.AllowedClients = []string{"worker"}
	e.put(t, c)
	gen := e.stored(t, "crm").Generation
	again := e.credential("crm")
	again.RefreshToken = ""
	_, err := e.adm.PutCredential(ctxT(t), &pb.PutCredentialRequest{Credential: again})
	wantField(t, err, "credential.allowed_clients")
	if got := e.stored(t, "crm"); got.Generation != gen || strings.Join(got.AllowedClients, ",") != "worker" {
		t.Fatalf("a refused put changed the record: %+v", got)
	}
	// Another list replaces the old one; clear_allowed_clients clears it.
	again.AllowedClients = []string{"batch"}
	e.put(t, again)
	again.AllowedClients = nil
	if _, err := e.adm.PutCredential(ctxT(t), &pb.PutCredentialRequest{Credential: again, ClearAllowedClients: true}); err != nil {
		t.Fatal(err)
	}
	if got := e.stored(t, "crm"); len(got.AllowedClients) != 0 {
		t.Fatalf("allowed clients %v after an explicit clear", got.AllowedClients)
	}
}

func TestStartAuthorizationOverTheWire(t *testing.T) {
	e := newEnv(t, envOptions{})
	redirect := "http://127.0.0.1:1" + broker.CallbackPath
	e.idp.RegisterRedirect(testClientID, redirect)
	bare := e.credential("bare")
	e.put(t, bare)
	c := &pb.Credential{Id: "crm", TokenUrl: e.idp.TokenURL(), ClientId: testClientID, ClientSecret: testClientSecret,
		AuthorizationUrl: e.idp.AuthorizeURL(), DeviceAuthorizationUrl: e.idp.DeviceAuthorizationURL(), RedirectUrl: redirect}
	if got := e.put(t, c); got.GetState() != pb.State_REAUTH_REQUIRED {
		t.Fatalf("authorizable credential without a refresh token: state %v", got.GetState())
	}
	start := func(r *pb.StartAuthorizationRequest) (*pb.StartAuthorizationResponse, error) {
		return e.adm.StartAuthorization(ctxT(t), r)
	}
	_, err := start(&pb.StartAuthorizationRequest{Id: "bare"})
	wantField(t, err, "credential.authorization_url")
	_, err = start(&pb.StartAuthorizationRequest{Id: "crm", ExtraParams: map[string]string{"code_challenge": "x"}})
	wantField(t, err, "extra_params")
	_, err = start(&pb.StartAuthorizationRequest{Id: "crm", Scopes: []string{"has space"}})
	wantField(t, err, "scopes")
	_, err = start(&pb.StartAuthorizationRequest{Id: "missing"})
	wantErr(t, err, codes.NotFound, pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND)

	resp, err := start(&pb.StartAuthorizationRequest{Id: "crm", Scopes: []string{"api"}, ExtraParams: map[string]string{"access_type": "offline"}})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(resp.GetAuthorizationUrl())
	if q := u.Query(); q.Get("scope") != "api" || q.Get("access_type") != "offline" || q.Get("code_challenge_method") != "S256" {
		t.Fatalf("authorization URL %s", resp.GetAuthorizationUrl())
	}
	if resp.GetCredential().GetState() != pb.State_PENDING_AUTHORIZATION || resp.GetExpireTime() == nil {
		t.Fatalf("response %v", resp)
	}

	// The state filter sees the view's state.
	list, err := e.adm.ListCredentials(ctxT(t), &pb.ListCredentialsRequest{State: pb.State_PENDING_AUTHORIZATION})
	if err != nil || len(list.GetCredentials()) != 1 || list.GetCredentials()[0].GetId() != "crm" {
		t.Fatalf("ListCredentials(PENDING_AUTHORIZATION) = %v, %v", list, err)
	}
	list, err = e.adm.ListCredentials(ctxT(t), &pb.ListCredentialsRequest{State: pb.State_ACTIVE})
	if err != nil || len(list.GetCredentials()) != 1 || list.GetCredentials()[0].GetId() != "bare" {
		t.Fatalf("ListCredentials(ACTIVE) = %v, %v", list, err)
	}
	_, err = e.adm.ListCredentials(ctxT(t), &pb.ListCredentialsRequest{State: pb.State(42)})
	wantField(t, err, "state")

	// The device flow over the wire: user code, URIs, interval; the open
	// one again on a second call.
	e.idp.SetDeviceInterval(0)
	d1, err := e.adm.StartDeviceAuthorization(ctxT(t), &pb.StartDeviceAuthorizationRequest{Id: "crm"})
	if err != nil {
		t.Fatal(err)
	}
	if d1.GetUserCode() == "" || !strings.HasPrefix(d1.GetVerificationUri(), e.idp.URL()) || !strings.Contains(d1.GetVerificationUriComplete(), "user_code=") ||
		d1.GetInterval().AsDuration() != fakeidp.DefaultDeviceInterval || d1.GetExpireTime() == nil {
		t.Fatalf("StartDeviceAuthorization = %v", d1)
	}
	d2, err := e.adm.StartDeviceAuthorization(ctxT(t), &pb.StartDeviceAuthorizationRequest{Id: "crm"})
	if err != nil || d2.GetUserCode() != d1.GetUserCode() {
		t.Fatalf("second StartDeviceAuthorization = %v, %v; want the open one", d2, err)
	}
	pa := d2.GetCredential().GetPendingAuthorization()
	if pa.GetFlow() != pb.PendingAuthorization_DEVICE_CODE || pa.GetUserCode() != d1.GetUserCode() || !pa.GetExpireTime().AsTime().Equal(d1.GetExpireTime().AsTime()) {
		t.Fatalf("pending authorization %v", pa)
	}
	_, err = e.adm.StartDeviceAuthorization(ctxT(t), &pb.StartDeviceAuthorizationRequest{Id: "bare"})
	wantField(t, err, "credential.device_authorization_url")
}
