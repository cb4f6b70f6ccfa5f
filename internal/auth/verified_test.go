package auth

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"
)

func bearerCtx(key string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+key))
}

// Verified keys are remembered, one per registered hash at most, and a
// remembered key never stands in for another, however close.
func TestVerifiedKeys(t *testing.T) {
	var keys []string
	var clients []Client
	for i, id := range []string{"a", "b"} {
		k1, h1, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		k2, h2, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k1, k2)
		clients = append(clients, Client{ID: id, KeySHA256: []string{h1, h2}, Admin: i == 1})
	}
	a, err := NewAuthenticator(clients)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "a", "b", "b"}
	for round := range 3 {
		for i, k := range keys {
			c, err := a.Authenticate(bearerCtx(k))
			if err != nil || c.ID != want[i] || c.Admin != (want[i] == "b") {
				t.Fatalf("round %d, key %d: %+v, %v", round, i, c, err)
			}
		}
	}
	if n := len(*a.verified.Load()); n != len(keys) {
		t.Errorf("%d keys remembered, want %d", n, len(keys))
	}
	// Keys of the same length that differ from a remembered one anywhere,
	// or are a prefix or an extension of it, are unknown.
	k := keys[0]
	for _, bad := range []string{
		"x" + k[1:], k[:len(k)-1] + "x", k[:len(k)/2] + strings.Repeat("x", len(k)-len(k)/2),
		k[:len(k)-1], k + "x", strings.ToUpper(k),
	} {
		if c, err := a.Authenticate(bearerCtx(bad)); err == nil {
			t.Errorf("key %q authenticated as %+v", bad, c)
		}
	}
	if n := len(*a.verified.Load()); n != len(keys) {
		t.Errorf("after unknown keys, %d keys remembered, want %d", n, len(keys))
	}
}

func TestEqualConstantTime(t *testing.T) {
	for _, c := range []struct {
		a, b string
		eq   bool
	}{{"", "", true}, {"a", "a", true}, {"ab", "ac", false}, {"a", "ab", false}, {"ba", "ca", false}} {
		if got := equalConstantTime(c.a, c.b); got != c.eq {
			t.Errorf("equalConstantTime(%q, %q) = %v", c.a, c.b, got)
		}
	}
}

// A remembered key authenticates with no allocation but the metadata's
// copy of its value.
func TestVerifiedKeyAllocs(t *testing.T) {
	key, hash, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAuthenticator([]Client{{ID: "w", KeySHA256: []string{hash}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := bearerCtx(key)
	if n := testing.AllocsPerRun(200, func() {
		if c, err := a.Authenticate(ctx); err != nil || c.ID != "w" {
			t.Fatal(c, err)
		}
	}); n > 1 {
		t.Errorf("%v allocations per call, want at most 1", n)
	}
}
