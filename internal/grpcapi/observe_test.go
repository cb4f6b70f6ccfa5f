package grpcapi

import (
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// ObserveCall sees every call once it is over, with the code the client
// receives, authentication failures included.
func TestObserveCall(t *testing.T) {
	type call struct {
		method string
		code   codes.Code
	}
	var (
		mu   sync.Mutex
		seen []call
	)
	e := newEnv(t, envOptions{opts: Options{Authenticator: keyAuth{}, ObserveCall: func(m string, c codes.Code, d time.Duration) {
		if d <= 0 {
			t.Errorf("%s: duration %v", m, d)
		}
		mu.Lock()
		seen = append(seen, call{m, c})
		mu.Unlock()
	}}})
	ctx := ctxT(t)
	_, _ = e.tok.GetToken(ctx, &pb.GetTokenRequest{CredentialId: "x"})                  // no key
	_, _ = e.tok.GetToken(withKey(ctx, "w1"), &pb.GetTokenRequest{CredentialId: "a b"}) // bad input
	_, _ = e.adm.ListCredentials(withKey(ctx, "admin"), &pb.ListCredentialsRequest{})   // fine
	want := []call{
		{pb.TokenService_GetToken_FullMethodName, codes.Unauthenticated},
		{pb.TokenService_GetToken_FullMethodName, codes.InvalidArgument},
		{pb.AdminService_ListCredentials_FullMethodName, codes.OK},
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != len(want) {
		t.Fatalf("observed %v; want %v", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Errorf("call %d observed as %v; want %v", i, seen[i], want[i])
		}
	}
}
