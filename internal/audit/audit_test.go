package audit_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/audit"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// want checks that ev has each of the given attributes (JSON numbers as
// float64).
func want(t *testing.T, ev map[string]any, attrs map[string]any) {
	t.Helper()
	for k, v := range attrs {
		if got, ok := ev[k]; !ok || got != v {
			t.Errorf("event %v: %s = %v (%T); want %v (%T)", ev, k, got, got, v, v)
		}
	}
}

func TestRefreshEvents(t *testing.T) {
	e := newEnv(t)
	rt := e.idp.Seed(idpClientID)
	if _, err := e.b.PutCredential(as(admin), broker.Credential{
		ID: "cred-1", TokenURL: e.idp.TokenURL(), ClientID: idpClientID, ClientSecrets: []string{idpSecret},
		AllowedClients: []string{worker.ID},
	}, rt); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := e.b.GetToken(as(worker), "cred-1", 0); err != nil {
			t.Fatal(err)
		}
	}
	rec, err := e.b.RefreshCredential(as(admin), "cred-1")
	if err != nil {
		t.Fatal(err)
	}
	evs := e.buf.events(t, "refresh")
	if len(evs) != 2 {
		t.Fatalf("%d refresh events; want 2 (first GetToken, forced), and none for tokens served:\n%s", len(evs), e.buf)
	}
	want(t, evs[0], map[string]any{"level": "INFO", "audit": true, "caller": worker.ID, "credential_id": "cred-1",
		"reason": broker.ReasonExpired, "outcome": broker.OutcomeOK})
	want(t, evs[1], map[string]any{"level": "INFO", "audit": true, "caller": admin.ID, "credential_id": "cred-1",
		"reason": broker.ReasonForced, "outcome": broker.OutcomeOK, "generation": float64(rec.Generation)})
	if _, ok := evs[1]["duration_ms"].(float64); !ok {
		t.Errorf("no duration in %v", evs[1])
	}
	if _, ok := evs[1]["error"]; ok {
		t.Errorf("a successful refresh has an error: %v", evs[1])
	}

	// A dead grant.
	if _, err := e.b.PutCredential(as(admin), broker.Credential{
		ID: "cred-dead", TokenURL: e.idp.TokenURL(), ClientID: idpClientID, ClientSecrets: []string{idpSecret},
		AllowedClients: []string{worker.ID},
	}, "DEAD-REFRESH-TOKEN-2f7c"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.GetToken(as(worker), "cred-dead", 0); !errors.Is(err, broker.ErrReauthRequired) {
		t.Fatalf("GetToken of a dead grant: %v", err)
	}
	evs = e.buf.events(t, "refresh")
	last := evs[len(evs)-1]
	want(t, last, map[string]any{"level": "ERROR", "caller": worker.ID, "credential_id": "cred-dead",
		"outcome": broker.OutcomePermanent})
	if msg, _ := last["error"].(string); msg == "" {
		t.Errorf("a failed refresh has no error: %v", last)
	}
	if strings.Contains(e.buf.String(), "DEAD-REFRESH-TOKEN-2f7c") || strings.Contains(e.buf.String(), rt) {
		t.Fatal("the audit log holds a refresh token")
	}
}

func TestLevels(t *testing.T) {
	buf := &syncBuffer{}
	l := audit.New(slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelWarn})))
	l.Refreshed(broker.RefreshEvent{CredentialID: "c", Reason: broker.ReasonAhead, Outcome: broker.OutcomeOK})
	l.Refreshed(broker.RefreshEvent{CredentialID: "c", Reason: broker.ReasonAhead, Outcome: broker.OutcomeTransient, Err: broker.ErrIdPUnavailable})
	l.TokenServed(broker.FromCache)
	l.LockWaited(time.Second, true)
	evs := buf.events(t, "refresh")
	if len(evs) != 1 {
		t.Fatalf("%d events at Warn; want only the transient failure:\n%s", len(evs), buf)
	}
	want(t, evs[0], map[string]any{"level": "WARN", "outcome": broker.OutcomeTransient, "caller": "", "error": broker.ErrIdPUnavailable.Error()})
}

// TestAdminCallsAndNoSecrets runs admin calls whose requests carry
// distinctive secrets through a real gRPC server, at debug level, and checks
// each call's event and that the captured log holds none of the secrets.
func TestAdminCallsAndNoSecrets(t *testing.T) {
	e := newEnv(t)
	client := e.serveAdmin(t)
	rt := e.idp.Seed(idpClientID)
	secrets := []string{idpSecret, "FALLBACK-SECRET-8a0b", rt}
	cred := &pb.Credential{
		Id: "cred-1", TokenUrl: e.idp.TokenURL(), ClientId: idpClientID,
		ClientSecret: idpSecret, FallbackClientSecrets: []string{"FALLBACK-SECRET-8a0b"},
		RefreshToken: rt, AllowedClients: []string{worker.ID},
	}

	put, err := client.PutCredential(rpc(t, admin), &pb.PutCredentialRequest{Credential: cred})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := client.RefreshCredential(rpc(t, admin), &pb.RefreshCredentialRequest{Id: "cred-1"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := e.b.GetToken(as(worker), "cred-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := e.store.Get(context.Background(), "cred-1")
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, tok.AccessToken, rec.RefreshToken)

	_, err = client.GetCredential(rpc(t, worker), &pb.GetCredentialRequest{Id: "cred-1"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("GetCredential as a worker: %v", err)
	}
	_, err = client.GetCredential(rpc(t, admin), &pb.GetCredentialRequest{Id: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("GetCredential of a missing credential: %v", err)
	}
	bad := &pb.Credential{Id: "bad id " + rt, TokenUrl: e.idp.TokenURL(), ClientId: idpClientID, ClientSecret: idpSecret, RefreshToken: rt}
	if _, err := client.PutCredential(rpc(t, admin), &pb.PutCredentialRequest{Credential: bad}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("PutCredential with a bad id: %v", err)
	}
	list, err := client.ListCredentials(rpc(t, admin), &pb.ListCredentialsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.DeleteCredential(rpc(t, admin), &pb.DeleteCredentialRequest{Id: "cred-1"}); err != nil {
		t.Fatal(err)
	}

	evs := e.buf.events(t, "admin")
	if len(evs) != 7 {
		t.Fatalf("%d admin events; want 7:\n%s", len(evs), e.buf)
	}
	const svc = "/tokenbroker.v1.AdminService/"
	for i, w := range []map[string]any{
		{"level": "INFO", "caller": "ops", "admin": true, "method": svc + "PutCredential", "credential_id": "cred-1", "code": "OK",
			"generation": float64(put.GetCredential().GetGeneration()), "state": "ACTIVE"},
		{"level": "INFO", "caller": "ops", "method": svc + "RefreshCredential", "credential_id": "cred-1", "code": "OK",
			"generation": float64(ref.GetCredential().GetGeneration())},
		{"level": "WARN", "caller": "worker-a", "admin": false, "method": svc + "GetCredential", "credential_id": "cred-1", "code": "PermissionDenied"},
		{"level": "WARN", "caller": "ops", "method": svc + "GetCredential", "credential_id": "nope", "code": "NotFound"},
		{"level": "WARN", "caller": "ops", "method": svc + "PutCredential", "code": "InvalidArgument"},
		{"level": "INFO", "caller": "ops", "method": svc + "ListCredentials", "code": "OK", "count": float64(len(list.GetCredentials()))},
		{"level": "INFO", "caller": "ops", "method": svc + "DeleteCredential", "credential_id": "cred-1", "code": "OK"},
	} {
		want(t, evs[i], w)
		want(t, evs[i], map[string]any{"audit": true})
		if _, ok := evs[i]["duration_ms"]; !ok {
			t.Errorf("event %d has no duration", i)
		}
		if w["code"] != "OK" {
			if msg, _ := evs[i]["error"].(string); msg == "" {
				t.Errorf("event %d of a failed call has no error", i)
			}
		}
	}
	if _, ok := evs[4]["credential_id"]; ok {
		t.Errorf("an invalid credential id was logged: %v", evs[4])
	}
	if ref.GetCredential().GetGeneration() <= put.GetCredential().GetGeneration() {
		t.Fatalf("generation did not move: %d then %d", put.GetCredential().GetGeneration(), ref.GetCredential().GetGeneration())
	}

	log := e.buf.String()
	for _, s := range secrets {
		if s == "" {
			t.Fatal("an empty secret was collected")
		}
		if strings.Contains(log, s) {
			t.Errorf("the audit log contains the secret %q", s)
		}
	}
}

func TestInterceptorSkipsOtherServices(t *testing.T) {
	buf := &syncBuffer{}
	l := audit.New(slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	icpt := l.UnaryServerInterceptor(nil)
	var called atomic.Int32
	handler := func(context.Context, any) (any, error) {
		called.Add(1)
		return &pb.GetTokenResponse{AccessToken: "ACCESS-TOKEN-77"}, nil
	}
	for _, m := range []string{"/tokenbroker.v1.TokenService/GetToken", "/grpc.health.v1.Health/Check", "/tokenbroker.v1.AdminServiceX/PutCredential"} {
		if _, err := icpt(as(worker), &pb.GetTokenRequest{CredentialId: "c"}, &grpc.UnaryServerInfo{FullMethod: m}, handler); err != nil {
			t.Fatal(err)
		}
	}
	if called.Load() != 3 || buf.String() != "" {
		t.Fatalf("handler called %d times, log %q; want 3 calls and no events", called.Load(), buf)
	}

	// Without codeOf, a status error's code is logged.
	_, err := icpt(context.Background(), &pb.DeleteCredentialRequest{Id: "c"},
		&grpc.UnaryServerInfo{FullMethod: "/tokenbroker.v1.AdminService/DeleteCredential"},
		func(context.Context, any) (any, error) { return nil, status.Error(codes.Unauthenticated, "who?") })
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("error changed: %v", err)
	}
	evs := buf.events(t, "admin")
	if len(evs) != 1 {
		t.Fatalf("%d events; want 1", len(evs))
	}
	want(t, evs[0], map[string]any{"caller": "", "admin": false, "code": "Unauthenticated", "credential_id": "c"})
}

// recorder is a broker.Observer that counts calls.
type recorder struct {
	served, waited, refreshed atomic.Int32
}

// rotationRecorder is a recorder that is a broker.RotationObserver too.
type rotationRecorder struct {
	recorder
	rotations atomic.Int32
}

func (r *rotationRecorder) RotationWaited(time.Duration) { r.rotations.Add(1) }

func (r *recorder) TokenServed(broker.Source)        { r.served.Add(1) }
func (r *recorder) LockWaited(time.Duration, bool)   { r.waited.Add(1) }
func (r *recorder) Regressed(broker.RegressionEvent) {}
func (r *recorder) Refreshed(ev broker.RefreshEvent) { r.refreshed.Add(1) }

func TestTee(t *testing.T) {
	a, b := &recorder{}, &recorder{}
	obs := audit.Tee(a, nil, b)
	obs.TokenServed(broker.FromCache)
	obs.LockWaited(time.Millisecond, true)
	obs.Refreshed(broker.RefreshEvent{})
	obs.Refreshed(broker.RefreshEvent{})
	for _, r := range []*recorder{a, b} {
		if r.served.Load() != 1 || r.waited.Load() != 1 || r.refreshed.Load() != 2 {
			t.Fatalf("observer saw %d, %d, %d calls; want 1, 1, 2", r.served.Load(), r.waited.Load(), r.refreshed.Load())
		}
	}
	if audit.Tee(nil, a) != broker.Observer(a) {
		t.Fatal("Tee of one observer is not that observer")
	}
	audit.Tee().Refreshed(broker.RefreshEvent{}) // no observers: nothing happens

	// RotationWaited reaches the observers that take it.
	r := &rotationRecorder{}
	ro, ok := audit.Tee(a, r).(broker.RotationObserver)
	if !ok {
		t.Fatal("Tee is not a RotationObserver")
	}
	ro.RotationWaited(time.Millisecond)
	if r.rotations.Load() != 1 {
		t.Fatalf("RotationWaited reached the observer %d times; want 1", r.rotations.Load())
	}
}
