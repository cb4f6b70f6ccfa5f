package audit_test

import (
	"context"
	"log/slog"
	"testing"

	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/internal/audit"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// TestAnonymousCaller: on an open broker (dev mode) the caller, which has
// no identity, is named "anonymous" in the trail, not left empty.
func TestAnonymousCaller(t *testing.T) {
	buf := &syncBuffer{}
	l := audit.New(slog.New(slog.NewJSONHandler(buf, nil)))
	icpt := l.UnaryServerInterceptor(nil)
	ctx := broker.NewContext(context.Background(), broker.Caller{})
	_, err := icpt(ctx, &pb.GetCredentialRequest{Id: "c"}, &grpc.UnaryServerInfo{FullMethod: "/tokenbroker.v1.AdminService/GetCredential"},
		func(context.Context, any) (any, error) { return &pb.GetCredentialResponse{}, nil })
	if err != nil {
		t.Fatal(err)
	}
	l.Refreshed(broker.RefreshEvent{CredentialID: "c", Caller: broker.Caller{}.Name(), Reason: broker.ReasonExpired, Outcome: broker.OutcomeOK})
	want(t, buf.events(t, "admin")[0], map[string]any{"caller": "anonymous"})
	want(t, buf.events(t, "refresh")[0], map[string]any{"caller": "anonymous"})
}
