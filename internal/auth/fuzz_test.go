package auth

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
)

// FuzzParseClients feeds arbitrary registries to ParseClients. It must never
// panic; it fails only with ErrInvalidClients; what it accepts holds valid
// ids, 64-hex-digit hashes used once, and builds an Authenticator; and an
// error never quotes a key hash of the input.
func FuzzParseClients(f *testing.F) {
	f.Add([]byte(`{"clients": [{"id": "worker-a", "key_sha256": "` + hashA + `"}]}`))
	f.Add([]byte(`{"clients": [{"id": "ops", "key_sha256": ["` + hashB + `", "` + hashC + `"], "admin": true}, {"id": "svc-b", "cert_identity": "spiffe://example.org/svc-b"}]}`))
	f.Add([]byte(`{"clients": [{"id": "a", "key_sha256": "` + hashA + `"}, {"id": "a", "key_sha256": "` + hashB + `"}]}`))
	f.Add([]byte(`{"clients": [{"id": "a", "key_sha256": "` + hashA[:40] + `"}]}`))
	f.Add([]byte(`{"clients": null}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(``))

	f.Fuzz(func(t *testing.T, data []byte) {
		clients, err := ParseClients(data)
		if err != nil {
			if clients != nil {
				t.Fatal("clients returned with an error")
			}
			if !errors.Is(err, ErrInvalidClients) {
				t.Fatalf("error %v does not match ErrInvalidClients", err)
			}
			for _, h := range keyHashValues(data) {
				if strings.Contains(err.Error(), h) {
					t.Fatalf("error %q quotes the key_sha256 value %q", err, h)
				}
			}
			return
		}
		seen := map[string]bool{}
		for _, c := range clients {
			if !validClientID(c.ID) {
				t.Fatalf("accepted invalid id %q", c.ID)
			}
			if len(c.KeySHA256) == 0 && c.CertIdentity == "" {
				t.Fatalf("accepted client %q with no means to authenticate", c.ID)
			}
			for _, h := range c.KeySHA256 {
				b, err := hex.DecodeString(h)
				if err != nil || len(b) != 32 {
					t.Fatalf("accepted hash of %d characters", len(h))
				}
				if seen[strings.ToLower(h)] {
					t.Fatal("accepted a hash twice")
				}
				seen[strings.ToLower(h)] = true
			}
		}
		if _, err := NewAuthenticator(clients); err != nil {
			t.Fatalf("NewAuthenticator refused what ParseClients accepted: %v", err)
		}
	})
}

// keyHashValues returns the key_sha256 values of a registry that decodes as
// JSON, leaving out values under 8 bytes and those that also occur in a
// client id or an object key (which errors may name).
func keyHashValues(data []byte) []string {
	var reg struct {
		Clients []map[string]any `json:"clients"`
	}
	if json.Unmarshal(data, &reg) != nil {
		return nil
	}
	var names, vals []string
	for _, c := range reg.Clients {
		for k, v := range c {
			names = append(names, k)
			switch {
			case strings.EqualFold(k, "id"):
				if s, ok := v.(string); ok {
					names = append(names, s)
				}
			case strings.EqualFold(k, "key_sha256"):
				switch v := v.(type) {
				case string:
					vals = append(vals, v)
				case []any:
					for _, e := range v {
						if s, ok := e.(string); ok {
							vals = append(vals, s)
						}
					}
				}
			}
		}
	}
	var out []string
	for _, v := range vals {
		if len(v) < 8 || slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, v) }) {
			continue
		}
		out = append(out, v)
	}
	return out
}
