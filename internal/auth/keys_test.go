package auth

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
)

func TestGenerateKey(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		key, hash, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(key, KeyPrefix) {
			t.Fatalf("key %q lacks the %q prefix", key, KeyPrefix)
		}
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(key, KeyPrefix))
		if err != nil || len(raw) != 32 {
			t.Fatalf("key body is not 32 base64url bytes: %v, %d bytes", err, len(raw))
		}
		sum := sha256.Sum256([]byte(key))
		if hash != hex.EncodeToString(sum[:]) || hash != HashKey(key) {
			t.Fatalf("hash %s is not the hex SHA-256 of the key", hash)
		}
		if strings.Contains(hash, strings.TrimPrefix(key, KeyPrefix)) {
			t.Fatal("hash contains the key")
		}
		if seen[key] {
			t.Fatal("GenerateKey repeated a key")
		}
		seen[key] = true
	}
}

func TestHashKeyInternal(t *testing.T) {
	for _, key := range []string{"a", "tbk_x", strings.Repeat("k", maxKeyLen)} {
		sum, ok := hashKey(key)
		if !ok || hex.EncodeToString(sum[:]) != HashKey(key) {
			t.Fatalf("hashKey(%d bytes) = %x, %v; want HashKey's value", len(key), sum, ok)
		}
	}
	for _, key := range []string{"", strings.Repeat("k", maxKeyLen+1)} {
		if _, ok := hashKey(key); ok {
			t.Fatalf("hashKey accepted a key of %d bytes", len(key))
		}
	}
}
