package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// ErrInvalidClients is matched (errors.Is) by every error about a client
// registry: a file that does not parse, an invalid or duplicate entry. Such
// errors name the entry by index and id, never by a key hash.
var ErrInvalidClients = errors.New("auth: invalid client registry")

// Limits of a client registry.
const (
	MaxClientIDLen     = 128  // a client id is 1 to 128 characters of [A-Za-z0-9._:-]
	MaxCertIdentityLen = 1024 // a cert_identity is 1 to 1024 printable bytes
	MaxKeysPerClient   = 8    // keys accepted at once per client, for rotation
	maxRegistryBytes   = 16 << 20
)

// Client is one registered caller of the broker: the identity that
// credentials list in allowed_clients, and how it proves who it is.
type Client struct {
	// ID is the client's identity, as listed in a credential's
	// allowed_clients.
	ID string
	// KeySHA256 are the hex SHA-256 hashes (HashKey) of the bearer keys
	// the client may present. Several let a key be rotated without downtime:
	// add the new one, roll the client over, remove the old one.
	KeySHA256 []string
	// CertIdentity, when set, is the identity in the client's TLS
	// certificate that names this client: its URI SAN (e.g.
	// spiffe://example.org/svc-b) or, for a certificate without URI SANs,
	// its Subject CN.
	CertIdentity string
	// Admin lets the client call AdminService.
	Admin bool
}

// registryFile is the JSON form ParseClients reads.
type registryFile struct {
	Clients []clientJSON `json:"clients"`
}

type clientJSON struct {
	ID           string          `json:"id"`
	KeySHA256    json.RawMessage `json:"key_sha256,omitempty"`
	CertIdentity string          `json:"cert_identity,omitempty"`
	Admin        bool            `json:"admin,omitempty"`
}

// ParseClients parses a client registry:
//
//	{"clients": [
//	  {"id": "worker-a", "key_sha256": "<64 hex digits>"},
//	  {"id": "ops", "key_sha256": ["<new>", "<old>"], "admin": true},
//	  {"id": "svc-b", "cert_identity": "spiffe://example.org/svc-b"}
//	]}
//
// key_sha256 is one hash (HashKey) or a list of them. Unknown fields,
// trailing data, invalid ids, malformed hashes, a client with neither a key
// nor a cert_identity, and any id, key hash or cert_identity used twice are
// errors matching ErrInvalidClients. An empty list is valid: it lets no one
// in.
func ParseClients(data []byte) ([]Client, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f registryFile
	if err := dec.Decode(&f); err != nil {
		return nil, jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalidClients)
	}
	clients := make([]Client, 0, len(f.Clients))
	for i, cj := range f.Clients {
		c := Client{ID: cj.ID, CertIdentity: cj.CertIdentity, Admin: cj.Admin}
		hashes, err := parseHashes(cj.KeySHA256)
		if err != nil {
			return nil, entryError(i, cj.ID, "key_sha256: %s", err)
		}
		c.KeySHA256 = hashes
		clients = append(clients, c)
	}
	if _, err := index(clients); err != nil {
		return nil, err
	}
	return clients, nil
}

// LoadClients reads and parses the client registry file at path (see
// ParseClients).
func LoadClients(path string) ([]Client, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth: reading the client registry: %w", err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxRegistryBytes+1))
	if err != nil {
		return nil, fmt.Errorf("auth: reading the client registry: %w", err)
	}
	if len(data) > maxRegistryBytes {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalidClients, path, maxRegistryBytes)
	}
	clients, err := ParseClients(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return clients, nil
}

// jsonError rewords a decoding error so that it says where, not what: the
// encoding/json messages are safe today, but a registry holds key hashes,
// and no error about it should ever quote its contents.
func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("%w: malformed JSON at byte %d", ErrInvalidClients, syn.Offset)
	case errors.As(err, &typ):
		return fmt.Errorf("%w: %s: expected %s", ErrInvalidClients, typ.Field, typ.Type)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: empty", ErrInvalidClients)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: truncated JSON", ErrInvalidClients)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// The field name is the registry's own key, not a value.
		return fmt.Errorf("%w: %s", ErrInvalidClients, strings.TrimPrefix(err.Error(), "json: "))
	}
	return fmt.Errorf("%w: malformed JSON", ErrInvalidClients)
}

// parseHashes decodes key_sha256: absent, null, a string or a list of
// strings. Its errors never quote the input.
func parseHashes(raw json.RawMessage) ([]string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, errors.New("must be a string or a list of strings")
	}
	return many, nil
}

func entryError(i int, id, format string, args ...any) error {
	name := ""
	if validClientID(id) {
		name = fmt.Sprintf(" (%q)", id)
	}
	return fmt.Errorf("%w: clients[%d]%s: %s", ErrInvalidClients, i, name, fmt.Sprintf(format, args...))
}

// validClientID reports whether id is 1 to MaxClientIDLen characters of
// [A-Za-z0-9._:-].
func validClientID(id string) bool {
	if id == "" || len(id) > MaxClientIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.' || c == '_' || c == ':' || c == '-':
		default:
			return false
		}
	}
	return true
}

// client is a registry entry as the Authenticator holds it.
type client struct {
	id     string
	admin  bool
	hashes [][sha256.Size]byte
}

// registry is a validated client list indexed for lookup.
type registry struct {
	byHash map[[sha256.Size]byte]*client
	byCert map[string]*client
}

// index validates clients and indexes them. Its errors match
// ErrInvalidClients and never quote a hash.
func index(clients []Client) (*registry, error) {
	r := &registry{
		byHash: make(map[[sha256.Size]byte]*client),
		byCert: make(map[string]*client),
	}
	ids := make(map[string]int, len(clients))
	for i, c := range clients {
		if !validClientID(c.ID) {
			return nil, entryError(i, c.ID, "id must be 1 to %d characters of [A-Za-z0-9._:-]", MaxClientIDLen)
		}
		if j, dup := ids[c.ID]; dup {
			return nil, entryError(i, c.ID, "id already used by clients[%d]", j)
		}
		ids[c.ID] = i
		if len(c.KeySHA256) == 0 && c.CertIdentity == "" {
			return nil, entryError(i, c.ID, "needs a key_sha256 or a cert_identity")
		}
		if len(c.KeySHA256) > MaxKeysPerClient {
			return nil, entryError(i, c.ID, "key_sha256: at most %d keys", MaxKeysPerClient)
		}
		e := &client{id: c.ID, admin: c.Admin}
		for k, h := range c.KeySHA256 {
			var sum [sha256.Size]byte
			if len(h) != hex.EncodedLen(sha256.Size) {
				return nil, entryError(i, c.ID, "key_sha256[%d]: must be %d hex digits (a SHA-256, see HashKey), not the key itself", k, hex.EncodedLen(sha256.Size))
			}
			if _, err := hex.Decode(sum[:], []byte(h)); err != nil {
				return nil, entryError(i, c.ID, "key_sha256[%d]: must be %d hex digits", k, hex.EncodedLen(sha256.Size))
			}
			if other, dup := r.byHash[sum]; dup {
				return nil, entryError(i, c.ID, "key_sha256[%d]: the same key is already registered for %q", k, other.id)
			}
			r.byHash[sum] = e
			e.hashes = append(e.hashes, sum)
		}
		if c.CertIdentity != "" {
			if err := validCertIdentity(c.CertIdentity); err != nil {
				return nil, entryError(i, c.ID, "cert_identity: %s", err)
			}
			if other, dup := r.byCert[c.CertIdentity]; dup {
				return nil, entryError(i, c.ID, "cert_identity already used by %q", other.id)
			}
			r.byCert[c.CertIdentity] = e
		}
	}
	return r, nil
}

func validCertIdentity(s string) error {
	if len(s) > MaxCertIdentityLen {
		return fmt.Errorf("longer than %d bytes", MaxCertIdentityLen)
	}
	if strings.TrimSpace(s) != s {
		return errors.New("must not start or end with white space")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return errors.New("must not contain control characters")
		}
	}
	return nil
}
