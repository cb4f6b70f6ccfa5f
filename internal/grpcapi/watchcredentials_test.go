package grpcapi

import (
	"context"
	"io"
	"testing"

	"google.golang.org/grpc/codes"

	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

func TestWatchCredentialsOverTheWire(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	w, err := e.adm.WatchCredentials(ctx, &pb.WatchCredentialsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Header(); err != nil { // the watch is established
		t.Fatal(err)
	}
	e.put(t, e.credential("crm"))
	dead := e.credential("dead")
	dead.RefreshToken = "NOT-A-LIVE-TOKEN-7b3c"
	e.put(t, dead)
	_, err = e.tok.GetToken(ctxT(t), &pb.GetTokenRequest{CredentialId: "dead"})
	wantErr(t, err, codes.FailedPrecondition, pb.ErrorReasonEnum_REAUTH_REQUIRED)
	var got []*pb.WatchCredentialsResponse
	for len(got) < 3 {
		m, err := w.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		got = append(got, m)
	}
	want := []struct {
		id   string
		kind pb.CredentialEvent_Kind
	}{{"crm", pb.CredentialEvent_CREATED}, {"dead", pb.CredentialEvent_CREATED}, {"dead", pb.CredentialEvent_REAUTH_REQUIRED}}
	for i, m := range got {
		if ev := m.GetEvent(); ev.GetCredentialId() != want[i].id || ev.GetKind() != want[i].kind || m.GetResumeToken() == "" {
			t.Fatalf("event %d: %v, want %v", i, m, want[i])
		}
	}
	reauth := got[2].GetEvent()
	if reauth.GetReason() != "REAUTH_REQUIRED" || reauth.GetState() != pb.State_REAUTH_REQUIRED || reauth.GetPreviousState() != pb.State_ACTIVE ||
		reauth.GetDetail() == "" || reauth.GetEventTime() == nil || reauth.GetReplica() == "" {
		t.Fatalf("REAUTH_REQUIRED event %v", reauth)
	}
	cancel()

	// Resumed after the first: the other two; a bad token: refused.
	w2, err := e.adm.WatchCredentials(ctxT(t), &pb.WatchCredentialsRequest{ResumeToken: got[0].GetResumeToken()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 3; i++ {
		m, err := w2.Recv()
		if err != nil || m.GetResumeToken() != got[i].GetResumeToken() {
			t.Fatalf("resumed watch: %v, %v; want %v", m, err, got[i])
		}
	}
	w3, err := e.adm.WatchCredentials(ctxT(t), &pb.WatchCredentialsRequest{ResumeToken: "12345"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = w3.Recv()
	if err == io.EOF {
		t.Fatal("stream ended without an error")
	}
	wantField(t, err, "resume_token")
}
