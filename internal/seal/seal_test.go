package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
)

// testKey returns a fixed key for name, so that the committed fuzz corpus
// holds records that really open.
func testKey(name string) []byte {
	sum := sha256.Sum256([]byte("tokenbroker seal test key " + name))
	return sum[:]
}

func mustKeyring(t testing.TB, primary string, keys map[string][]byte) *Keyring {
	t.Helper()
	k, err := NewKeyring(primary, keys)
	if err != nil {
		t.Fatalf("NewKeyring: %v", err)
	}
	return k
}

// testRing is the keyring the fuzz targets use: A is primary; dupA has the
// same key bytes as A under another id.
func testRing(t testing.TB) *Keyring {
	return mustKeyring(t, "A", map[string][]byte{
		"A":    testKey("A"),
		"B":    testKey("B"),
		"dupA": testKey("A"),
	})
}

func mustSeal(t testing.TB, k *Keyring, pt, ad []byte) []byte {
	t.Helper()
	s, err := k.Seal(pt, ad)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return s
}

// openIndependently opens a record following the documented layout with a
// plain crypto/cipher GCM, as an oracle for Open.
func openIndependently(key, sealed, ad []byte) ([]byte, error) {
	if len(sealed) < 6 || string(sealed[:5]) != "\x00tbs1" {
		return nil, errors.New("bad prefix")
	}
	h := 6 + int(sealed[5])
	if len(sealed) < h+12+16 {
		return nil, errors.New("short")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	fullAD := append(slices.Clone(sealed[:h]), ad...)
	return gcm.Open(nil, sealed[h:h+12], sealed[h+12:], fullAD)
}

func isSentinel(err error) bool {
	return errors.Is(err, ErrFormat) || errors.Is(err, ErrOpen) || errors.Is(err, ErrUnknownKey)
}

func TestRoundTrip(t *testing.T) {
	k := testRing(t)
	for _, size := range []int{0, 1, 15, 16, 17, 1024, 64 << 10} {
		for _, ad := range [][]byte{nil, []byte("cred-1"), bytes.Repeat([]byte{0xff}, 300)} {
			pt := make([]byte, size)
			for i := range pt {
				pt[i] = byte(i*7 + 3)
			}
			sealed := mustSeal(t, k, pt, ad)
			if want := 5 + 1 + 1 + 12 + size + 16; len(sealed) != want {
				t.Fatalf("size %d: sealed length %d, want %d", size, len(sealed), want)
			}
			if !IsSealed(sealed) {
				t.Fatalf("size %d: IsSealed = false", size)
			}
			if id, err := KeyID(sealed); err != nil || id != "A" {
				t.Fatalf("KeyID = %q, %v; want A", id, err)
			}
			if size >= 16 && bytes.Contains(sealed, pt) {
				t.Fatalf("size %d: sealed record contains the plaintext", size)
			}
			got, id, err := k.Open(sealed, ad)
			if err != nil || id != "A" || !bytes.Equal(got, pt) {
				t.Fatalf("size %d: Open = %d bytes, %q, %v", size, len(got), id, err)
			}
			if got == nil {
				t.Fatalf("size %d: Open returned nil plaintext without error", size)
			}
			if len(got) != cap(got) {
				t.Fatalf("size %d: plaintext has hidden capacity %d > %d", size, cap(got), len(got))
			}
			ind, err := openIndependently(testKey("A"), sealed, ad)
			if err != nil || !bytes.Equal(ind, pt) {
				t.Fatalf("size %d: record does not follow the documented layout: %v", size, err)
			}
		}
	}
}

// TestGoldenRecord opens a record sealed by an earlier build: stored records
// must stay readable, so the layout may only change under a new version.
func TestGoldenRecord(t *testing.T) {
	const golden = "00746273310141898c09cd70dfab8a747108e80e39304ecf7658ce5b3b1155920f61d40c7ad4f4072aa1fd79311e2cca"
	sealed, err := hex.DecodeString(golden)
	if err != nil {
		t.Fatal(err)
	}
	pt, id, err := testRing(t).Open(sealed, []byte("cred-1"))
	if err != nil || id != "A" || string(pt) != "refresh-token" {
		t.Fatalf("Open(golden) = %q, %q, %v", pt, id, err)
	}
}

func TestSealedRecordHasNoSpareCapacity(t *testing.T) {
	k := testRing(t)
	sealed := mustSeal(t, k, []byte("secret"), []byte("cred-1"))
	if len(sealed) != cap(sealed) {
		t.Fatalf("sealed record: len %d, cap %d", len(sealed), cap(sealed))
	}
	// Appending must not scribble over anything the record depends on.
	_ = append(sealed, 'x')
	if _, _, err := k.Open(sealed, []byte("cred-1")); err != nil {
		t.Fatal(err)
	}
}

func TestNoncesDiffer(t *testing.T) {
	k := testRing(t)
	seen := make(map[string]bool)
	for range 100 {
		s := string(mustSeal(t, k, []byte("same"), nil))
		if seen[s] {
			t.Fatal("two seals of the same plaintext are identical")
		}
		seen[s] = true
	}
}

func TestNilAndEmptyAdditionalDataAreEqual(t *testing.T) {
	k := testRing(t)
	sealed := mustSeal(t, k, []byte("x"), nil)
	if _, _, err := k.Open(sealed, []byte{}); err != nil {
		t.Fatal(err)
	}
}

func TestWrongAdditionalData(t *testing.T) {
	k := testRing(t)
	sealed := mustSeal(t, k, []byte("refresh-token"), []byte("cred-1"))
	for _, ad := range [][]byte{nil, []byte("cred-2"), []byte("cred-1 "), []byte("cred-"), []byte("Cred-1")} {
		pt, id, err := k.Open(sealed, ad)
		if !errors.Is(err, ErrOpen) || pt != nil {
			t.Fatalf("Open with ad %q = %q, %v; want nil, ErrOpen", ad, pt, err)
		}
		if id != "A" {
			t.Fatalf("Open with wrong ad reported key id %q, want A", id)
		}
	}
}

func TestEveryBitFlipIsRefused(t *testing.T) {
	k := testRing(t)
	pt := []byte("a refresh token, which must never come back tampered")
	ad := []byte("cred-1")
	sealed := mustSeal(t, k, pt, ad)
	for i := range sealed {
		for bit := range 8 {
			mod := slices.Clone(sealed)
			mod[i] ^= 1 << bit
			got, _, err := k.Open(mod, ad)
			if err == nil || got != nil {
				t.Fatalf("byte %d bit %d flipped: Open = %q, %v", i, bit, got, err)
			}
			if !isSentinel(err) {
				t.Fatalf("byte %d bit %d flipped: unexpected error %v", i, bit, err)
			}
		}
	}
}

func TestTruncatedAndExtended(t *testing.T) {
	k := testRing(t)
	ad := []byte("cred-1")
	sealed := mustSeal(t, k, []byte("some plaintext"), ad)
	for n := range len(sealed) {
		got, _, err := k.Open(sealed[:n], ad)
		if got != nil || !(errors.Is(err, ErrFormat) || errors.Is(err, ErrOpen)) {
			t.Fatalf("truncated to %d: Open = %q, %v; want ErrFormat or ErrOpen", n, got, err)
		}
	}
	for _, extra := range []string{"\x00", "x", strings.Repeat("y", 16)} {
		got, _, err := k.Open(append(slices.Clone(sealed), extra...), ad)
		if got != nil || !errors.Is(err, ErrOpen) {
			t.Fatalf("extended by %d bytes: Open = %q, %v; want ErrOpen", len(extra), got, err)
		}
	}
}

func TestKeyIDTampered(t *testing.T) {
	k := testRing(t)
	ad := []byte("cred-1")
	sealed := mustSeal(t, k, []byte("secret"), ad)
	const idAt = 6 // magic, version, length

	// B exists with other key bytes; the id is authenticated anyway.
	toB := slices.Clone(sealed)
	toB[idAt] = 'B'
	if pt, id, err := k.Open(toB, ad); !errors.Is(err, ErrOpen) || pt != nil || id != "B" {
		t.Fatalf("id changed to B: Open = %q, %q, %v; want ErrOpen", pt, id, err)
	}

	// dupA has the same key bytes as A: only the authenticated header stops
	// the relabelled record from opening.
	dup := slices.Concat(appendHeader(nil, "dupA"), sealed[idAt+1:])
	if pt, _, err := k.Open(dup, ad); !errors.Is(err, ErrOpen) || pt != nil {
		t.Fatalf("relabelled to a key with the same bytes: Open = %q, %v; want ErrOpen", pt, err)
	}
	if _, err := openIndependently(testKey("A"), dup, ad); err == nil {
		t.Fatal("oracle opened a relabelled record: header is not authenticated")
	}

	toC := slices.Clone(sealed)
	toC[idAt] = 'C'
	if pt, id, err := k.Open(toC, ad); !errors.Is(err, ErrUnknownKey) || pt != nil || id != "C" {
		t.Fatalf("id changed to C: Open = %q, %q, %v; want ErrUnknownKey", pt, id, err)
	}

	badChar := slices.Clone(sealed)
	badChar[idAt] = '/'
	if _, _, err := k.Open(badChar, ad); !errors.Is(err, ErrFormat) {
		t.Fatalf("id with a bad character: %v; want ErrFormat", err)
	}
	if _, err := KeyID(badChar); !errors.Is(err, ErrFormat) {
		t.Fatalf("KeyID of an id with a bad character: %v; want ErrFormat", err)
	}
}

func TestRotation(t *testing.T) {
	keyA, keyB := testKey("A"), testKey("B")
	ad := []byte("cred-1")
	old := mustKeyring(t, "A", map[string][]byte{"A": keyA})
	sealedA := mustSeal(t, old, []byte("v1"), ad)

	rotated := mustKeyring(t, "B", map[string][]byte{"A": keyA, "B": keyB})
	if rotated.Primary() != "B" {
		t.Fatalf("Primary = %q", rotated.Primary())
	}
	if id, err := KeyID(sealedA); err != nil || id != "A" {
		t.Fatalf("KeyID = %q, %v; want A", id, err)
	}
	pt, id, err := rotated.Open(sealedA, ad)
	if err != nil || id != "A" || string(pt) != "v1" {
		t.Fatalf("Open after rotation = %q, %q, %v", pt, id, err)
	}

	// Re-seal, as a re-encryption sweep would, then retire A.
	sealedB := mustSeal(t, rotated, pt, ad)
	if id, _ := KeyID(sealedB); id != "B" {
		t.Fatalf("re-sealed record KeyID = %q, want B", id)
	}
	retired := mustKeyring(t, "B", map[string][]byte{"B": keyB})
	if pt, _, err := retired.Open(sealedB, ad); err != nil || string(pt) != "v1" {
		t.Fatalf("Open of re-sealed record = %q, %v", pt, err)
	}
	pt, id, err = retired.Open(sealedA, ad)
	if !errors.Is(err, ErrUnknownKey) || pt != nil || id != "A" {
		t.Fatalf("Open under retired key = %q, %q, %v; want ErrUnknownKey for A", pt, id, err)
	}
	if !strings.Contains(err.Error(), `"A"`) {
		t.Fatalf("unknown-key error %q does not name the key id", err)
	}
}

func TestWrongKeyBytes(t *testing.T) {
	a := mustKeyring(t, "k", map[string][]byte{"k": testKey("A")})
	b := mustKeyring(t, "k", map[string][]byte{"k": testKey("B")})
	sealed := mustSeal(t, a, []byte("secret"), nil)
	if pt, _, err := b.Open(sealed, nil); !errors.Is(err, ErrOpen) || pt != nil {
		t.Fatalf("Open under other key bytes = %q, %v; want ErrOpen", pt, err)
	}
}

func TestIsSealedAndKeyIDOnPlaintext(t *testing.T) {
	for _, b := range []string{"", "\x00", "\x00tb", `{"id":"x"}`, "\x0a\x03abc", "tbs1", "\x00tbs", "\x00tbs1"} {
		if _, err := KeyID([]byte(b)); !errors.Is(err, ErrFormat) {
			t.Errorf("KeyID(%q) = %v; want ErrFormat", b, err)
		}
		if _, _, err := testRing(t).Open([]byte(b), nil); !errors.Is(err, ErrFormat) {
			t.Errorf("Open(%q) = %v; want ErrFormat", b, err)
		}
	}
	if IsSealed([]byte(`{"id":"x"}`)) || IsSealed([]byte("\x0a\x03abc")) || IsSealed([]byte("tbs1")) {
		t.Error("IsSealed reports a plaintext record as sealed")
	}
	// A record of a future version is sealed, but not one this package opens.
	v2 := mustSeal(t, testRing(t), []byte("x"), nil)
	v2[4] = '2'
	if !IsSealed(v2) {
		t.Error("IsSealed(version 2) = false")
	}
	if _, err := KeyID(v2); !errors.Is(err, ErrFormat) {
		t.Errorf("KeyID(version 2) = %v; want ErrFormat", err)
	}
}

func TestNewKeyringErrors(t *testing.T) {
	good := testKey("A")
	cases := []struct {
		name    string
		primary string
		keys    map[string][]byte
	}{
		{"no keys", "A", nil},
		{"short key", "A", map[string][]byte{"A": good[:31]}},
		{"long key", "A", map[string][]byte{"A": append(slices.Clone(good), 0)}},
		{"AES-128 key", "A", map[string][]byte{"A": good[:16]}},
		{"empty id", "", map[string][]byte{"": good}},
		{"long id", strings.Repeat("a", 33), map[string][]byte{strings.Repeat("a", 33): good}},
		{"bad character", "a/b", map[string][]byte{"a/b": good}},
		{"colon", "a:b", map[string][]byte{"a:b": good}},
		{"space", "a b", map[string][]byte{"a b": good}},
		{"non-ASCII", "é", map[string][]byte{"é": good}},
		{"primary missing", "B", map[string][]byte{"A": good}},
		{"primary empty", "", map[string][]byte{"A": good}},
	}
	for _, c := range cases {
		if k, err := NewKeyring(c.primary, c.keys); err == nil {
			t.Errorf("%s: NewKeyring succeeded: %v", c.name, k)
		}
	}
	if _, err := NewKeyring(strings.Repeat("a", 32), map[string][]byte{strings.Repeat("a", 32): good}); err != nil {
		t.Errorf("32-character id refused: %v", err)
	}
	if _, err := NewKeyring("x", map[string][]byte{"x": good}); err != nil {
		t.Errorf("1-character id refused: %v", err)
	}
}

func TestNewKeyringDoesNotRetainKeys(t *testing.T) {
	key := slices.Clone(testKey("A"))
	k := mustKeyring(t, "A", map[string][]byte{"A": key})
	sealed := mustSeal(t, k, []byte("x"), nil)
	clear(key)
	if pt, _, err := k.Open(sealed, nil); err != nil || string(pt) != "x" {
		t.Fatalf("Open after clearing the caller's key = %q, %v", pt, err)
	}
}

func TestParseKeyring(t *testing.T) {
	keyA, keyB, keyC := testKey("A"), testKey("B"), testKey("C")
	std := base64.StdEncoding.EncodeToString
	url := base64.URLEncoding.EncodeToString
	raw := base64.RawStdEncoding.EncodeToString
	rawURL := base64.RawURLEncoding.EncodeToString
	spec := fmt.Sprintf(" new-2025:%s , old_2024.1: %s,c:%s,d:%s",
		std(keyA), url(keyB), raw(keyC), rawURL(keyB))
	k, err := ParseKeyring(spec)
	if err != nil {
		t.Fatal(err)
	}
	if k.Primary() != "new-2025" {
		t.Fatalf("Primary = %q", k.Primary())
	}
	if ids := k.IDs(); !slices.Equal(ids, []string{"c", "d", "new-2025", "old_2024.1"}) {
		t.Fatalf("IDs = %q", ids)
	}
	// Each parsed key is the one given: records cross-open with NewKeyring.
	for id, key := range map[string][]byte{"new-2025": keyA, "old_2024.1": keyB, "c": keyC, "d": keyB} {
		other := mustKeyring(t, id, map[string][]byte{id: key})
		pt, gotID, err := k.Open(mustSeal(t, other, []byte("x"), nil), nil)
		if err != nil || gotID != id || string(pt) != "x" {
			t.Errorf("key %s: Open = %q, %q, %v", id, pt, gotID, err)
		}
	}
	ids := k.IDs()
	ids[0] = "mutated"
	if k.IDs()[0] != "c" {
		t.Fatal("IDs returned the keyring's own slice")
	}
}

func TestParseKeyringErrors(t *testing.T) {
	keyA := base64.StdEncoding.EncodeToString(testKey("A"))
	urlKey := base64.URLEncoding.EncodeToString(testKey("B"))
	short := base64.StdEncoding.EncodeToString(testKey("C")[:31])
	long := base64.StdEncoding.EncodeToString(append(testKey("C"), testKey("D")...))
	badB64 := keyA[:10] + "!" + keyA[11:]
	mixed := "+-" + urlKey[2:] // both alphabets at once
	cases := []struct {
		name, spec string
		mention    string // what the error must name
	}{
		{"empty", "", "empty"},
		{"blank", "  ", "empty"},
		{"bad base64", "a:" + keyA + ",bad:" + badB64, `"bad"`},
		{"mixed alphabets", "mix:" + mixed, `"mix"`},
		{"short key", "a:" + keyA + ",short:" + short, `"short" is 31 bytes`},
		{"long key", "long:" + long, `"long" is 64 bytes`},
		{"duplicate id", "a:" + keyA + ",a:" + urlKey, `duplicate key id "a"`},
		{"empty key", "a:" + keyA + ",b:", `"b" is empty`},
		{"trailing comma", "a:" + keyA + ",", "entry 2 is empty"},
		{"empty entry", "a:" + keyA + ",,b:" + urlKey, "entry 2 is empty"},
		{"key without id", keyA, "entry 1"},
		{"key and id swapped", keyA + ":a", "entry 1"},
		{"bad id", "a:" + keyA + ",b/c:" + urlKey, "entry 2"},
		{"empty id", ":" + keyA, "entry 1"},
		{"long id", strings.Repeat("x", 33) + ":" + keyA, "entry 1"},
	}
	secrets := []string{keyA, urlKey, short, long, badB64, mixed}
	for _, c := range cases {
		k, err := ParseKeyring(c.spec)
		if err == nil {
			t.Errorf("%s: ParseKeyring succeeded: %v", c.name, k)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "seal: ") {
			t.Errorf("%s: error %q lacks the package prefix", c.name, msg)
		}
		if !strings.Contains(msg, c.mention) {
			t.Errorf("%s: error %q does not mention %q", c.name, msg, c.mention)
		}
		for _, s := range secrets {
			// Any 8-character run of a key's encoding is too much.
			for i := 0; i+8 <= len(s); i++ {
				if strings.Contains(msg, s[i:i+8]) {
					t.Fatalf("%s: error %q contains key material", c.name, msg)
				}
			}
		}
	}
}

func TestGenerateKey(t *testing.T) {
	a, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatal("GenerateKey returned the same key twice")
	}
	raw, err := base64.StdEncoding.DecodeString(a)
	if err != nil || len(raw) != KeySize {
		t.Fatalf("GenerateKey = %q: %d bytes, %v", a, len(raw), err)
	}
	k, err := ParseKeyring("gen:" + a + ",gen2:" + b)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := k.Open(mustSeal(t, k, []byte("x"), nil), nil); err != nil {
		t.Fatal(err)
	}
}

// encodings returns the forms in which key could leak into text.
func encodings(key []byte) []string {
	return []string{
		string(key),
		base64.StdEncoding.EncodeToString(key),
		base64.URLEncoding.EncodeToString(key),
		base64.RawStdEncoding.EncodeToString(key)[:20],
		base64.RawURLEncoding.EncodeToString(key)[:20],
		hex.EncodeToString(key)[:20],
		strings.ToUpper(hex.EncodeToString(key)[:20]),
		fmt.Sprint(key)[:20], // [12 34 ...]
		fmt.Sprintf("%#v", key)[:30],
		string(key[:12]),
	}
}

func TestKeyringPrintsNoKeyMaterial(t *testing.T) {
	encA, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	encB, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keyA, _ := base64.StdEncoding.DecodeString(encA)
	keyB, _ := base64.StdEncoding.DecodeString(encB)
	k, err := ParseKeyring("prim:" + encA + ",second:" + encB)
	if err != nil {
		t.Fatal(err)
	}

	var out []string
	for _, v := range []any{k, *k} {
		out = append(out, fmt.Sprintf("%v|%+v|%#v|%s|%q|%x|%X|%d|%T|%10.3v", v, v, v, v, v, v, v, v, v, v))
		out = append(out, fmt.Sprint(v), fmt.Sprintln(v))
	}
	out = append(out, k.String(), k.GoString(), fmt.Sprintf("%v", []*Keyring{k}),
		fmt.Sprintf("%+v", struct{ K *Keyring }{k}), fmt.Sprintf("%#v", map[string]any{"k": k}))
	for _, h := range []func(*bytes.Buffer) slog.Handler{
		func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
		func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
	} {
		var buf bytes.Buffer
		log := slog.New(h(&buf))
		log.Info("keyring loaded", "keyring", k, "deref", *k)
		log.Info("keyring", slog.Any("k", k))
		out = append(out, buf.String())
	}
	all := strings.Join(out, "\n")
	for _, key := range [][]byte{keyA, keyB} {
		for _, enc := range encodings(key) {
			if strings.Contains(all, enc) {
				t.Fatalf("printed keyring contains key material %q:\n%s", enc, all)
			}
		}
	}
	for _, s := range out {
		if !strings.Contains(s, "prim") || !strings.Contains(s, "second") {
			t.Errorf("printed keyring %q does not name its key ids", s)
		}
	}
	if got, want := fmt.Sprintf("%#v", k), `seal.Keyring{Primary: "prim", IDs: []string{"prim", "second"}}`; got != want {
		t.Errorf("%%#v = %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(k), "seal.Keyring{primary=prim ids=[prim second]}"; got != want {
		t.Errorf("%%v = %s, want %s", got, want)
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("m", "keyring", k)
	if !strings.Contains(buf.String(), `"keyring":{"primary":"prim","ids":["prim","second"]}`) {
		t.Errorf("slog JSON = %s", buf.String())
	}
}

func TestConcurrentUse(t *testing.T) {
	k := mustKeyring(t, "B", map[string][]byte{"A": testKey("A"), "B": testKey("B")})
	old := mustSeal(t, mustKeyring(t, "A", map[string][]byte{"A": testKey("A")}), []byte("old"), []byte("cred-0"))
	const workers, rounds = 8, 200
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			ad := fmt.Appendf(nil, "cred-%d", w)
			for i := range rounds {
				pt := fmt.Appendf(nil, "token %d/%d", w, i)
				s, err := k.Seal(pt, ad)
				if err != nil {
					errs <- err
					return
				}
				got, id, err := k.Open(s, ad)
				if err != nil || id != "B" || !bytes.Equal(got, pt) {
					errs <- fmt.Errorf("worker %d round %d: Open = %q, %q, %v", w, i, got, id, err)
					return
				}
				if got, _, err := k.Open(old, []byte("cred-0")); err != nil || string(got) != "old" {
					errs <- fmt.Errorf("worker %d: Open(old) = %q, %v", w, got, err)
					return
				}
				_ = k.IDs()
				_ = k.String()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func BenchmarkSeal(b *testing.B) {
	k := mustKeyring(b, "A", map[string][]byte{"A": testKey("A")})
	pt := make([]byte, 1024)
	ad := []byte("credential-id")
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Seal(pt, ad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	k := mustKeyring(b, "A", map[string][]byte{"A": testKey("A")})
	ad := []byte("credential-id")
	sealed := mustSeal(b, k, make([]byte, 1024), ad)
	b.SetBytes(1024)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := k.Open(sealed, ad); err != nil {
			b.Fatal(err)
		}
	}
}
