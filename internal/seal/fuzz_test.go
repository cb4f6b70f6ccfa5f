package seal

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// FuzzOpen feeds arbitrary records and additional data to Open. Open must
// never panic, must return plaintext only for a record that an independent
// implementation of the documented layout also authenticates, and must
// otherwise fail with one of the package's errors and no plaintext.
func FuzzOpen(f *testing.F) {
	k := testRing(f)
	b := mustKeyring(f, "B", map[string][]byte{"B": testKey("B")})
	f.Add(mustSeal(f, k, []byte("refresh-token"), []byte("cred-1")), []byte("cred-1"))
	f.Add(mustSeal(f, k, nil, nil), []byte(nil))
	f.Add(mustSeal(f, b, []byte(`{"refresh_token":"x"}`), []byte("cred-2")), []byte("cred-2"))
	f.Add([]byte("\x00tbs1\x01A"), []byte(nil))
	f.Add([]byte(`{"id":"cred-1"}`), []byte("cred-1"))
	keys := map[string][]byte{"A": testKey("A"), "B": testKey("B"), "dupA": testKey("A")}

	f.Fuzz(func(t *testing.T, sealed, ad []byte) {
		in := bytes.Clone(sealed)
		pt, id, err := k.Open(sealed, ad)
		if !bytes.Equal(in, sealed) {
			t.Fatal("Open modified its input")
		}
		kid, kerr := KeyID(sealed)
		if err != nil {
			if pt != nil {
				t.Fatalf("Open returned plaintext %q with error %v", pt, err)
			}
			if !isSentinel(err) {
				t.Fatalf("Open error %v matches none of the package errors", err)
			}
			if (kerr != nil) != errors.Is(err, ErrFormat) {
				t.Fatalf("KeyID error %v disagrees with Open error %v", kerr, err)
			}
			if kerr == nil && kid != id {
				t.Fatalf("KeyID = %q, Open reported %q", kid, id)
			}
			return
		}
		if !IsSealed(sealed) || kerr != nil || kid != id {
			t.Fatalf("Open succeeded but IsSealed = %v, KeyID = %q, %v", IsSealed(sealed), kid, kerr)
		}
		want, oerr := openIndependently(keys[id], sealed, ad)
		if oerr != nil || !bytes.Equal(pt, want) {
			t.Fatalf("Open returned %q under %q for a record the oracle rejects (%v)", pt, id, oerr)
		}

		// Whatever opened also round-trips through Seal.
		again, err := k.Seal(pt, ad)
		if err != nil {
			t.Fatal(err)
		}
		if pt2, _, err := k.Open(again, ad); err != nil || !bytes.Equal(pt2, pt) {
			t.Fatalf("re-sealed record: Open = %q, %v", pt2, err)
		}
	})
}

// FuzzParseKeyring checks that ParseKeyring never panics, never echoes key
// material in an error, and that a keyring it accepts works and prints only
// its ids.
func FuzzParseKeyring(f *testing.F) {
	keyA := base64.StdEncoding.EncodeToString(testKey("A"))
	keyB := base64.RawURLEncoding.EncodeToString(testKey("B"))
	f.Add("a:" + keyA)
	f.Add("primary:" + keyA + ",old.1:" + keyB)
	f.Add(" a : " + keyA + " , b:" + keyB + " ")
	f.Add("a:" + keyA + ",a:" + keyB)
	f.Add("a:" + keyA[:20])
	f.Add(keyA)
	f.Add(keyA + ":a")
	f.Add("a:" + keyA + ",")
	f.Add("")

	f.Fuzz(func(t *testing.T, spec string) {
		k, err := ParseKeyring(spec)

		// The secret parts of spec: whatever follows the first colon of an
		// entry, a whole entry that has no colon, and an invalid id (perhaps
		// a key in the wrong place). Short ones, and ones that also occur in
		// a valid id (which errors may name), can appear in messages by
		// coincidence.
		var ids, secrets []string
		for _, e := range strings.Split(spec, ",") {
			id, key, ok := strings.Cut(e, ":")
			id, key = strings.TrimSpace(id), strings.TrimSpace(key)
			switch {
			case !ok:
				secrets = append(secrets, strings.TrimSpace(e))
			case validID(id):
				ids = append(ids, id)
				secrets = append(secrets, key)
			default:
				secrets = append(secrets, id, key)
			}
		}
		leaks := func(text string) string {
			for _, s := range secrets {
				if len(s) < 8 {
					continue
				}
				coincidence := false
				for _, id := range ids {
					coincidence = coincidence || strings.Contains(id, s)
				}
				if !coincidence && strings.Contains(text, s) {
					return s
				}
			}
			return ""
		}

		if err != nil {
			if k != nil {
				t.Fatal("ParseKeyring returned a keyring with an error")
			}
			if s := leaks(err.Error()); s != "" {
				t.Fatalf("error %q echoes key material %q", err, s)
			}
			return
		}
		if !validID(k.Primary()) || len(k.IDs()) == 0 {
			t.Fatalf("accepted keyring %v is malformed", k)
		}
		var buf bytes.Buffer
		slog.New(slog.NewTextHandler(&buf, nil)).Info("k", "k", k)
		printed := fmt.Sprintf("%v %+v %#v %s %q", k, k, k, k, k) + buf.String()
		if s := leaks(printed); s != "" {
			t.Fatalf("printed keyring %q echoes key material %q", printed, s)
		}
		sealed, err := k.Seal([]byte("x"), []byte("ad"))
		if err != nil {
			t.Fatal(err)
		}
		if pt, id, err := k.Open(sealed, []byte("ad")); err != nil || id != k.Primary() || string(pt) != "x" {
			t.Fatalf("round trip = %q, %q, %v", pt, id, err)
		}
	})
}
