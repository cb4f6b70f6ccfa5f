package redisstore_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
	"github.com/tokenbroker/tokenbroker/internal/seal"
)

func TestSealedAtRest(t *testing.T) {
	srv := redistest.Start(t)
	s, c := newStore(t, srv)
	ctx := ctxT(t)
	put(t, s, newRecord("a"))
	put(t, s, newRecord("b"))

	raw, err := c.HGet(ctx, recordKey(t, "a"), "data").Result()
	if err != nil {
		t.Fatal(err)
	}
	if !seal.IsSealed([]byte(raw)) {
		t.Fatal("stored record is not sealed")
	}
	for _, secret := range []string{refreshSecret, clientSecret, "client-a", "at-a"} {
		if strings.Contains(raw, secret) {
			t.Fatalf("stored record holds %q in the clear", secret)
		}
	}

	// Tampering with any part of the blob is detected.
	for _, i := range []int{0, len(raw) / 2, len(raw) - 1} {
		b := []byte(raw)
		b[i] ^= 0x01
		if err := c.HSet(ctx, recordKey(t, "a"), "data", b).Err(); err != nil {
			t.Fatal(err)
		}
		rec, err := s.Get(ctx, "a")
		if err == nil || errors.Is(err, broker.ErrNotFound) {
			t.Fatalf("tampered byte %d: Get returned %v, %v", i, rec, err)
		}
		if strings.Contains(err.Error(), refreshSecret) || strings.Contains(err.Error(), clientSecret) {
			t.Fatalf("error holds a secret: %v", err)
		}
		if !errors.Is(err, broker.ErrUnreadable) {
			t.Fatalf("tampered byte %d: %v is not ErrUnreadable", i, err)
		}
		// List reports it, with nothing but its ID, instead of failing.
		recs, err := s.List(ctx, "", 10)
		if err != nil {
			t.Fatalf("tampered byte %d: List: %v", i, err)
		}
		for _, r := range recs {
			if r.ID == "a" && (r.State != broker.StateUnreadable || r.RefreshToken != "" || r.TokenURL != "") {
				t.Fatalf("tampered byte %d: List returned %+v", i, r)
			}
		}
	}

	// A sealed record moved to another credential does not open.
	rawB, err := c.HGet(ctx, recordKey(t, "b"), "data").Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.HSet(ctx, recordKey(t, "a"), "data", rawB).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "a"); err == nil {
		t.Fatal("record of b accepted as a")
	}

	// Without the keyring, a sealed record is an error, not data.
	plain, err := redisstore.New(c, redisstore.Options{Prefix: prefix(t), AllowPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Get(ctx, "b"); err == nil {
		t.Fatal("sealed record read without a keyring")
	}
}

func TestPlaintext(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.NewClient(t)
	if _, err := redisstore.New(c, redisstore.Options{Prefix: prefix(t)}); err == nil {
		t.Fatal("New without a keyring or AllowPlaintext succeeded")
	}
	plain, err := redisstore.New(c, redisstore.Options{Prefix: prefix(t), AllowPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	put(t, plain, newRecord("a"))
	raw, err := c.HGet(ctx, recordKey(t, "a"), "data").Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(raw, "{") || !strings.Contains(raw, refreshSecret) {
		t.Fatal("AllowPlaintext without a keyring did not store plain JSON")
	}

	// A Store with a keyring reads the plaintext record and seals it on its
	// next write.
	sealed, err := redisstore.New(c, redisstore.Options{Prefix: prefix(t), Keyring: testKeyring(t)})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := sealed.Get(ctx, "a")
	if err != nil || rec.RefreshToken != refreshSecret || rec.Generation != 1 {
		t.Fatalf("plaintext record read with a keyring: %v", err)
	}
	put(t, sealed, rec)
	if raw, err = c.HGet(ctx, recordKey(t, "a"), "data").Result(); err != nil {
		t.Fatal(err)
	}
	if !seal.IsSealed([]byte(raw)) || strings.Contains(raw, refreshSecret) {
		t.Fatal("record not sealed on its next write")
	}

	// Neither JSON nor sealed: an error.
	if err := c.HSet(ctx, recordKey(t, "a"), "data", "garbage "+refreshSecret).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := sealed.Get(ctx, "a"); err == nil || strings.Contains(err.Error(), refreshSecret) {
		t.Fatalf("garbage record: %v", err)
	}
	if err := c.HSet(ctx, recordKey(t, "a"), "data", `{"id":"a","refresh_token":"`+refreshSecret).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := sealed.Get(ctx, "a"); err == nil || strings.Contains(err.Error(), refreshSecret) {
		t.Fatalf("truncated JSON record: %v", err)
	}
	// A plaintext record under the wrong key.
	if err := c.HSet(ctx, recordKey(t, "a"), "data", `{"id":"b"}`).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := sealed.Get(ctx, "a"); err == nil {
		t.Fatal("record of b accepted as a")
	}
}
