package grpcapi

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// GetToken's answer is built in one allocation and says what the token
// says, expiry included (none for a token without one).
func TestGetTokenResponse(t *testing.T) {
	exp := time.Date(2030, 1, 2, 3, 4, 5, 600, time.UTC)
	r := getTokenResponse(broker.Token{AccessToken: "at", TokenType: "Bearer", Expiry: exp})
	want := &pb.GetTokenResponse{AccessToken: "at", TokenType: "Bearer", ExpiresAt: timestamppb.New(exp)}
	if !proto.Equal(r, want) || r.GetExpiresAt().CheckValid() != nil {
		t.Errorf("response %v, want %v", r, want)
	}
	if b, err := proto.Marshal(r); err != nil {
		t.Fatal(err)
	} else if wb, _ := proto.Marshal(want); string(b) != string(wb) {
		t.Errorf("marshals to %x, want %x", b, wb)
	}
	if r := getTokenResponse(broker.Token{AccessToken: "at"}); r.ExpiresAt != nil {
		t.Errorf("a token without expiry has expires_at %v", r.ExpiresAt)
	}
	if n := testing.AllocsPerRun(100, func() { _ = getTokenResponse(broker.Token{AccessToken: "at", Expiry: exp}) }); n != 1 {
		t.Errorf("%v allocations, want 1", n)
	}
}
