package auth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// hashA and hashB are distinctive hashes: no error may quote them, even in
// part.
var (
	hashA = strings.Repeat("a1", 32)
	hashB = strings.Repeat("b2", 32)
	hashC = strings.Repeat("C3", 32) // upper case hex is accepted
)

func TestParseClients(t *testing.T) {
	data := `{"clients": [
		{"id": "worker-a", "key_sha256": "` + hashA + `"},
		{"id": "ops", "key_sha256": ["` + hashB + `", "` + hashC + `"], "admin": true},
		{"id": "svc-b", "cert_identity": "spiffe://example.org/svc-b"},
		{"id": "svc.c:1_x", "key_sha256": null, "cert_identity": "svc-c.internal"}
	]}`
	got, err := ParseClients([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("got %d clients, want 4", len(got))
	}
	want := []Client{
		{ID: "worker-a", KeySHA256: []string{hashA}},
		{ID: "ops", KeySHA256: []string{hashB, hashC}, Admin: true},
		{ID: "svc-b", CertIdentity: "spiffe://example.org/svc-b"},
		{ID: "svc.c:1_x", CertIdentity: "svc-c.internal"},
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.ID != w.ID || g.Admin != w.Admin || g.CertIdentity != w.CertIdentity || strings.Join(g.KeySHA256, ",") != strings.Join(w.KeySHA256, ",") {
			t.Errorf("clients[%d] = %+v, want %+v", i, g, w)
		}
	}
	if _, err := NewAuthenticator(got); err != nil {
		t.Fatalf("NewAuthenticator of parsed clients: %v", err)
	}

	empty, err := ParseClients([]byte(`{"clients": []}`))
	if err != nil || len(empty) != 0 {
		t.Fatalf("empty registry: %v, %d clients", err, len(empty))
	}
}

func TestParseClientsErrors(t *testing.T) {
	long := strings.Repeat("x", MaxClientIDLen+1)
	key := "tbk_" + strings.Repeat("Zq", 22) // a would-be raw key in the wrong field
	tests := []struct {
		name, data, want string
	}{
		{"empty input", ``, "empty"},
		{"not JSON", `{"clients": [` + hashA, "malformed JSON"},
		{"syntax", `{"clients": [{"id": "a", "key_sha256": "` + hashA + `"}}`, "malformed JSON"},
		{"trailing data", `{"clients": []} {"clients": []}`, "trailing data"},
		{"unknown field", `{"clients": [{"id": "a", "key_sha265": "` + hashA + `"}]}`, `unknown field "key_sha265"`},
		{"wrong type", `{"clients": [{"id": 1234567890123456}]}`, "expected string"},
		{"hash wrong type", `{"clients": [{"id": "a", "key_sha256": 12345678901234567890}]}`, "string or a list"},
		{"hash list wrong type", `{"clients": [{"id": "a", "key_sha256": ["` + hashA + `", 7]}]}`, "string or a list"},
		{"no id", `{"clients": [{"key_sha256": "` + hashA + `"}]}`, "clients[0]: id must be"},
		{"bad id", `{"clients": [{"id": "a b", "key_sha256": "` + hashA + `"}]}`, "clients[0]: id must be"},
		{"long id", `{"clients": [{"id": "` + long + `", "key_sha256": "` + hashA + `"}]}`, "id must be"},
		{"duplicate id", `{"clients": [{"id": "a", "key_sha256": "` + hashA + `"}, {"id": "a", "key_sha256": "` + hashB + `"}]}`, `clients[1] ("a"): id already used by clients[0]`},
		{"no means", `{"clients": [{"id": "a"}]}`, "needs a key_sha256 or a cert_identity"},
		{"short hash", `{"clients": [{"id": "a", "key_sha256": "` + hashA[:63] + `"}]}`, "must be 64 hex digits"},
		{"raw key as hash", `{"clients": [{"id": "a", "key_sha256": "` + key + `"}]}`, "not the key itself"},
		{"non-hex hash", `{"clients": [{"id": "a", "key_sha256": "` + strings.Repeat("zz", 32) + `"}]}`, "must be 64 hex digits"},
		{"duplicate hash", `{"clients": [{"id": "a", "key_sha256": "` + hashA + `"}, {"id": "b", "key_sha256": ["` + hashB + `", "` + hashA + `"]}]}`, `key_sha256[1]: the same key is already registered for "a"`},
		{"duplicate hash in one client", `{"clients": [{"id": "a", "key_sha256": ["` + hashA + `", "` + hashA + `"]}]}`, "already registered"},
		{"too many keys", `{"clients": [{"id": "a", "key_sha256": ["` + strings.Repeat(hashA+`","`, MaxKeysPerClient) + hashB + `"]}]}`, "at most 8 keys"},
		{"duplicate cert identity", `{"clients": [{"id": "a", "cert_identity": "spiffe://x/y"}, {"id": "b", "cert_identity": "spiffe://x/y"}]}`, `cert_identity already used by "a"`},
		{"cert identity control", `{"clients": [{"id": "a", "cert_identity": "x\ty"}]}`, "control characters"},
		{"cert identity space", `{"clients": [{"id": "a", "cert_identity": " x"}]}`, "white space"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseClients([]byte(tt.data))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalidClients) {
				t.Errorf("error %v does not match ErrInvalidClients", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not say %q", msg, tt.want)
			}
			for _, secret := range []string{hashA[:16], hashB[:16], strings.ToLower(hashC[:16]), hashC[:16], key[4:20], "zzzzzzzz", "12345678"} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q quotes the input %q", msg, secret)
				}
			}
		})
	}
}

func TestLoadClients(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "clients.json")
	if err := os.WriteFile(path, []byte(`{"clients": [{"id": "a", "key_sha256": "`+hashA+`"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	clients, err := LoadClients(path)
	if err != nil || len(clients) != 1 || clients[0].ID != "a" {
		t.Fatalf("LoadClients = %+v, %v", clients, err)
	}

	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"clients": [{"id": "a", "key_sha256": "`+hashA[:10]+`"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadClients(bad)
	if !errors.Is(err, ErrInvalidClients) || !strings.Contains(err.Error(), bad) || strings.Contains(err.Error(), hashA[:10]) {
		t.Fatalf("LoadClients(bad) = %v; want ErrInvalidClients naming the file and not the hash", err)
	}

	if _, err := LoadClients(filepath.Join(dir, "missing.json")); err == nil || errors.Is(err, ErrInvalidClients) {
		t.Fatalf("LoadClients(missing) = %v; want a read error", err)
	}
}

func TestNewAuthenticatorValidates(t *testing.T) {
	for _, clients := range [][]Client{
		{{ID: "", KeySHA256: []string{hashA}}},
		{{ID: "a"}},
		{{ID: "a", KeySHA256: []string{"nothex"}}},
		{{ID: "a", KeySHA256: []string{hashA}}, {ID: "b", KeySHA256: []string{hashA}}},
		{{ID: "a", CertIdentity: "x"}, {ID: "a", CertIdentity: "y"}},
	} {
		if _, err := NewAuthenticator(clients); !errors.Is(err, ErrInvalidClients) {
			t.Errorf("NewAuthenticator(%+v) = %v; want ErrInvalidClients", clients, err)
		}
	}
}
