package grpcapi

import (
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// The security package's types plug into the seams.
var (
	_ Authenticator = (*auth.Authenticator)(nil)
	_ Limiter       = (*auth.Limiter)(nil)
)

// countLimiter allows each client n calls.
type countLimiter struct {
	mu    sync.Mutex
	n     int
	calls map[string]int
}

func (l *countLimiter) Allow(clientID string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls[clientID]++
	if l.calls[clientID] > l.n {
		return false, 2 * time.Second
	}
	return true, 0
}

func TestLimiter(t *testing.T) {
	lim := &countLimiter{n: 1, calls: map[string]int{}}
	e := newEnv(t, envOptions{cfg: broker.Config{ForceInterval: time.Millisecond}, opts: Options{Authenticator: keyAuth{}, Limiter: lim}})
	ctx := ctxT(t)
	c := e.credential("limited")
	c.AllowedClients = []string{"w1", "w2"}
	if _, err := e.adm.PutCredential(withKey(ctx, "admin"), &pb.PutCredentialRequest{Credential: c}); err != nil {
		t.Fatal(err)
	}
	tok, err := e.tok.GetToken(withKey(ctx, "w1"), &pb.GetTokenRequest{CredentialId: "limited"})
	if err != nil {
		t.Fatal(err)
	}
	inv := &pb.InvalidateTokenRequest{CredentialId: "limited", RejectedAccessToken: tok.GetAccessToken()}
	if _, err := e.tok.InvalidateToken(withKey(ctx, "w1"), inv); err != nil {
		t.Fatalf("first InvalidateToken: %v", err)
	}
	_, err = e.tok.InvalidateToken(withKey(ctx, "w1"), inv)
	st := wantErr(t, err, codes.ResourceExhausted, pb.ErrorReasonEnum_RATE_LIMITED)
	if ri := retryInfo(st); ri.GetRetryDelay().AsDuration() != 2*time.Second {
		t.Errorf("RetryInfo = %v; want the limiter's 2s", ri)
	}
	// Another client has its own budget; GetToken is not limited.
	if _, err := e.tok.InvalidateToken(withKey(ctx, "w2"), inv); err != nil {
		t.Errorf("w2 InvalidateToken: %v", err)
	}
	for i := 0; i < 3; i++ {
		if _, err := e.tok.GetToken(withKey(ctx, "w1"), &pb.GetTokenRequest{CredentialId: "limited"}); err != nil {
			t.Fatalf("GetToken is limited: %v", err)
		}
	}
	time.Sleep(5 * time.Millisecond) // past the broker's own ForceInterval: only the limiter may refuse
	if _, err := e.adm.RefreshCredential(withKey(ctx, "admin"), &pb.RefreshCredentialRequest{Id: "limited"}); err != nil {
		t.Fatalf("first RefreshCredential: %v", err)
	}
	_, err = e.adm.RefreshCredential(withKey(ctx, "admin"), &pb.RefreshCredentialRequest{Id: "limited"})
	wantErr(t, err, codes.ResourceExhausted, pb.ErrorReasonEnum_RATE_LIMITED)
}
