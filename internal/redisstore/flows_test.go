package redisstore_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

// TestFlowsSealed: Redis holds neither the state nor the verifier of an
// authorization code flow in the clear, and the flow expires with its TTL.
func TestFlowsSealed(t *testing.T) {
	srv := redistest.Start(t)
	s, c := newStore(t, srv)
	ctx := ctxT(t)
	const state, verifier = "STATE-secret-3d5e", "VERIFIER-secret-9a1c"
	f := &broker.CodeFlow{CredentialID: "crm", FlowID: "f1", Verifier: verifier, RedirectURL: "https://b.example/oauth2/callback", ExpiresAt: t0}
	if err := s.SaveFlow(ctx, state, f, time.Minute); err != nil {
		t.Fatal(err)
	}
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || strings.Contains(keys[0], state) || !strings.HasPrefix(keys[0], prefix(t)+":flow:") {
		t.Fatalf("keys %v: want one flow key without the state", keys)
	}
	val, err := c.Get(ctx, keys[0]).Result()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(val, verifier) || strings.Contains(val, "crm") {
		t.Fatalf("the stored flow is not sealed: %q", val)
	}
	if ttl := c.PTTL(ctx, keys[0]).Val(); ttl <= 0 || ttl > time.Minute {
		t.Fatalf("flow TTL %v, want up to a minute", ttl)
	}
	got, err := s.TakeFlow(ctx, state)
	if err != nil || got.Verifier != verifier {
		t.Fatalf("TakeFlow = %+v, %v", got, err)
	}
	if n := c.Exists(ctx, keys[0]).Val(); n != 0 {
		t.Fatal("a taken flow is still stored")
	}
}
