// Package seal encrypts stored records at rest with AES-256-GCM.
//
// A Keyring holds one or more named 256-bit keys. Seal always encrypts under
// the primary key; Open accepts a record sealed under any key in the ring, so
// keys can be rotated by adding a new primary, re-sealing old records (KeyID
// tells which key a record uses without opening it) and then dropping the old
// key.
//
// A sealed record is laid out as
//
//	magic   4 bytes  "\x00tbs"
//	version 1 byte   '1'
//	idlen   1 byte   1..32
//	id      idlen bytes, [A-Za-z0-9._-]
//	nonce   12 bytes, random
//	sealed  ciphertext followed by the 16-byte GCM tag
//
// The header (magic, version, idlen and id) is authenticated together with the
// caller's additional data, so a record cannot be moved to another key id,
// truncated or re-labelled without Open failing. The leading zero byte tells a
// sealed record apart from JSON and protobuf records, which never start with
// it (protobuf has no field number 0).
//
// Because nonces are random, a single key should seal no more than 2^32
// records; rotate keys long before that.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
)

// KeySize is the length in bytes of every key in a Keyring (AES-256).
const KeySize = 32

// MaxKeyIDLen is the longest key id a Keyring accepts.
const MaxKeyIDLen = 32

const (
	magic     = "\x00tbs"
	version   = '1'
	nonceSize = 12
	tagSize   = 16
	// overhead is what NewGCMWithRandomNonce adds: the nonce and the tag.
	overhead = nonceSize + tagSize
)

var (
	// ErrUnknownKey means a record was sealed under a key id that is not in
	// the keyring.
	ErrUnknownKey = errors.New("seal: unknown key")
	// ErrOpen means a record failed authentication: it was tampered with,
	// sealed under different key bytes, or opened with different additional
	// data.
	ErrOpen = errors.New("seal: message authentication failed")
	// ErrFormat means the input is not a well-formed sealed record.
	ErrFormat = errors.New("seal: malformed sealed record")
)

// Keyring is a set of named AES-256-GCM keys, one of which is primary. It is
// immutable and safe for concurrent use. It holds its keys only inside their
// ciphers, never as raw bytes, and never prints them: its String, GoString,
// Format and LogValue methods show only key ids.
type Keyring struct {
	primary string
	header  []byte      // the primary key's record header
	aead    cipher.AEAD // the primary key's AEAD
	keys    map[string]cipher.AEAD
	ids     []string // sorted
}

// NewKeyring returns a Keyring holding keys, which maps key ids to keys.
// Every key must be exactly KeySize bytes; every id must be 1 to MaxKeyIDLen
// characters from [A-Za-z0-9._-]; primary must be one of the ids. Seal uses
// the primary key; Open accepts any of them. NewKeyring does not retain keys:
// the caller may clear them afterwards.
func NewKeyring(primary string, keys map[string][]byte) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("seal: no keys")
	}
	k := &Keyring{
		primary: primary,
		keys:    make(map[string]cipher.AEAD, len(keys)),
		ids:     make([]string, 0, len(keys)),
	}
	for id, key := range keys {
		if !validID(id) {
			return nil, errBadID
		}
		aead, err := newAEAD(id, key)
		if err != nil {
			return nil, err
		}
		k.keys[id] = aead
		k.ids = append(k.ids, id)
	}
	slices.Sort(k.ids)
	if !validID(primary) {
		return nil, fmt.Errorf("seal: primary: %w", errBadID)
	}
	k.aead = k.keys[primary]
	if k.aead == nil {
		return nil, fmt.Errorf("seal: primary key %q is not in the keyring", primary)
	}
	k.header = appendHeader(nil, primary)
	return k, nil
}

// errBadID deliberately does not quote the offending id: a string that fails
// validation may well be key material pasted into the wrong place.
var errBadID = errors.New("seal: invalid key id (want 1 to 32 characters from A-Z a-z 0-9 . _ -)")

func newAEAD(id string, key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("seal: key %q is %d bytes, want %d", id, len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("seal: key %q: %w", id, err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, fmt.Errorf("seal: key %q: %w", id, err)
	}
	return aead, nil
}

// ParseKeyring parses a keyring spec of the form "id1:KEY1,id2:KEY2", where
// each KEY is a KeySize-byte key in standard or URL-safe base64, padded or
// not. The first entry is the primary key. Spaces around entries, ids and keys
// are ignored. Errors name the offending key id (or, where the id itself is
// unusable, the entry's position) but never include key material.
func ParseKeyring(spec string) (*Keyring, error) {
	if strings.TrimSpace(spec) == "" {
		return nil, errors.New("seal: empty keyring spec")
	}
	var primary string
	keys := make(map[string][]byte)
	defer func() {
		for _, key := range keys {
			clear(key)
		}
	}()
	for i, entry := range strings.Split(spec, ",") {
		n := i + 1
		id, enc, ok := strings.Cut(entry, ":")
		id, enc = strings.TrimSpace(id), strings.TrimSpace(enc)
		_, dup := keys[id]
		switch {
		case strings.TrimSpace(entry) == "":
			return nil, fmt.Errorf("seal: keyring entry %d is empty", n)
		case !ok:
			return nil, fmt.Errorf("seal: keyring entry %d: want id:base64key", n)
		case !validID(id):
			return nil, fmt.Errorf("seal: keyring entry %d: %w", n, errBadID)
		case dup:
			return nil, fmt.Errorf("seal: duplicate key id %q", id)
		case enc == "":
			return nil, fmt.Errorf("seal: key %q is empty", id)
		case isHexKey(enc):
			return nil, fmt.Errorf("seal: key %q looks hex-encoded (64 hex digits); give the 32 bytes in base64 instead (openssl rand -base64 32, or xxd -r -p | base64 to convert)", id)
		}
		key, err := decodeKey(enc)
		if err != nil {
			return nil, fmt.Errorf("seal: key %q is not valid base64", id)
		}
		keys[id] = key
		if n == 1 {
			primary = id
		}
	}
	return NewKeyring(primary, keys)
}

// isHexKey reports whether enc is a 32-byte key in hex: 64 hex digits,
// which would also decode as base64 (to 48 bytes) and so be refused with a
// confusing length.
func isHexKey(enc string) bool {
	if len(enc) != 64 {
		return false
	}
	for _, r := range enc {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f' || 'A' <= r && r <= 'F') {
			return false
		}
	}
	return true
}

// decodeKey accepts standard and URL-safe base64, with or without padding.
// Its errors are replaced by the caller: they carry input offsets, which are
// harmless, but nothing here is worth the risk of echoing input.
func decodeKey(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.Strict().DecodeString(s)
	}
	return base64.RawStdEncoding.Strict().DecodeString(s)
}

// GenerateKey returns a new random KeySize-byte key in standard base64, ready
// for a ParseKeyring spec.
func GenerateKey() (string, error) {
	key := make([]byte, KeySize)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("seal: generate key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(key), nil
}

// Primary returns the id of the key that Seal uses.
func (k *Keyring) Primary() string { return k.primary }

// IDs returns the ids of all keys in the keyring, sorted.
func (k *Keyring) IDs() []string { return slices.Clone(k.ids) }

// Seal encrypts and authenticates plaintext under the primary key with a
// random nonce, and authenticates additionalData, which Open must be given
// again. Binding the record's identity (such as its storage key) as
// additionalData stops a record from being swapped for another one.
func (k *Keyring) Seal(plaintext, additionalData []byte) ([]byte, error) {
	if k == nil || k.aead == nil {
		return nil, errors.New("seal: keyring has no primary key")
	}
	h := len(k.header)
	n := h + overhead + len(plaintext)
	// One allocation holds the record and, past the record's capacity, the
	// header-plus-caller additional data that GCM authenticates.
	buf := make([]byte, n+h+len(additionalData))
	ad := buf[n:]
	copy(ad, k.header)
	copy(ad[h:], additionalData)
	out := buf[:h:n]
	copy(out, k.header)
	return k.aead.Seal(out, nil, plaintext, ad), nil
}

// Open authenticates and decrypts a record made by Seal with the same
// additionalData, under any key in the keyring. It returns the plaintext and
// the id of the key the record was sealed under. Errors match ErrFormat,
// ErrUnknownKey or ErrOpen under errors.Is; with the latter two keyID is
// still reported. Plaintext is nil whenever err is not.
func (k *Keyring) Open(sealed, additionalData []byte) (plaintext []byte, keyID string, err error) {
	id, h, err := parseHeader(sealed)
	if err != nil {
		return nil, "", err
	}
	var aead cipher.AEAD
	if k != nil {
		aead = k.keys[id]
	}
	if aead == nil {
		return nil, id, fmt.Errorf("%w %q", ErrUnknownKey, id)
	}
	body := sealed[h:]
	n := len(body) - overhead
	buf := make([]byte, n+h+len(additionalData))
	ad := buf[n:]
	copy(ad, sealed[:h])
	copy(ad[h:], additionalData)
	pt, err := aead.Open(buf[:0:n], nil, body, ad)
	if err != nil {
		return nil, id, ErrOpen
	}
	return pt, id, nil
}

// KeyID returns the id of the key a record is sealed under, without opening
// it. Use it to find records that still need re-sealing under a new primary
// key. It reports ErrFormat for input that is not a well-formed record.
func KeyID(sealed []byte) (string, error) {
	id, _, err := parseHeader(sealed)
	return id, err
}

// IsSealed reports whether b starts with the sealed-record magic prefix. It
// tells sealed records from plaintext ones; it does not check that b is
// well-formed, so a true result may still fail Open with ErrFormat (for
// instance a record of a newer version).
func IsSealed(b []byte) bool {
	return len(b) >= len(magic) && string(b[:len(magic)]) == magic
}

// appendHeader appends the record header for key id to dst.
func appendHeader(dst []byte, id string) []byte {
	dst = append(dst, magic...)
	dst = append(dst, version, byte(len(id)))
	return append(dst, id...)
}

// parseHeader checks the header and minimum length of a sealed record and
// returns its key id and the header length.
func parseHeader(b []byte) (id string, n int, err error) {
	const fixed = len(magic) + 2 // magic, version, id length
	if !IsSealed(b) {
		return "", 0, fmt.Errorf("%w: missing magic prefix", ErrFormat)
	}
	if len(b) < fixed {
		return "", 0, fmt.Errorf("%w: truncated header", ErrFormat)
	}
	if b[len(magic)] != version {
		return "", 0, fmt.Errorf("%w: unsupported version %q", ErrFormat, b[len(magic)])
	}
	l := int(b[fixed-1])
	n = fixed + l
	if l < 1 || l > MaxKeyIDLen || len(b) < n {
		return "", 0, fmt.Errorf("%w: bad key id length", ErrFormat)
	}
	if len(b) < n+overhead {
		return "", 0, fmt.Errorf("%w: truncated", ErrFormat)
	}
	id = string(b[fixed:n])
	if !validID(id) {
		return "", 0, fmt.Errorf("%w: bad key id", ErrFormat)
	}
	return id, n, nil
}

func validID(id string) bool {
	if len(id) < 1 || len(id) > MaxKeyIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// The printing methods use value receivers so that a dereferenced Keyring
// prints just as safely as a pointer.

// String describes the keyring by its key ids only.
func (k Keyring) String() string {
	return "seal.Keyring{primary=" + k.primary + " ids=[" + strings.Join(k.ids, " ") + "]}"
}

// GoString describes the keyring by its key ids only.
func (k Keyring) GoString() string {
	var b strings.Builder
	b.WriteString(`seal.Keyring{Primary: `)
	b.WriteString(strconv.Quote(k.primary))
	b.WriteString(`, IDs: []string{`)
	for i, id := range k.ids {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(id))
	}
	b.WriteString("}}")
	return b.String()
}

// Format implements fmt.Formatter so that every verb and flag prints key ids
// only: %#v prints GoString, %q a quoted String, anything else String.
func (k Keyring) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		fmt.Fprint(f, k.GoString())
	case verb == 'q':
		fmt.Fprint(f, strconv.Quote(k.String()))
	default:
		fmt.Fprint(f, k.String())
	}
}

// LogValue implements slog.LogValuer: a group of the primary key id and all
// key ids.
func (k Keyring) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("primary", k.primary),
		slog.Any("ids", slices.Clone(k.ids)),
	)
}
