package server

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "credentials.json")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadCredentials(t *testing.T) {
	seeds, err := loadCredentials(writeFile(t, `{"credentials": [
		{"id": "a", "token_url": "https://idp.example/token", "client_id": "c", "client_secret": "s1",
		 "fallback_client_secrets": ["s0"], "refresh_token": "rt-a", "scopes": ["x"], "auth_style": "AUTH_STYLE_POST",
		 "refresh_ahead": "90s", "state": "REAUTH_REQUIRED", "generation": "7"},
		{"id": "b", "tokenUrl": "http://127.0.0.1:1/token", "clientId": "c", "grantType": "GRANT_TYPE_CLIENT_CREDENTIALS"},
		{"id": "c", "token_url": "https://idp.example/token", "client_id": "c"}
	]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(seeds) != 3 {
		t.Fatalf("%d seeds; want 3", len(seeds))
	}
	a := seeds[0]
	if a.cred.ID != "a" || a.refreshToken != "rt-a" || a.cred.AuthStyle != broker.AuthStylePost ||
		a.cred.RefreshAhead != 90*time.Second || len(a.cred.ClientSecrets) != 2 || a.cred.ClientSecrets[0] != "s1" {
		t.Errorf("seed a = %+v", a)
	}
	if seeds[1].cred.GrantType != broker.GrantClientCredentials || seeds[1].cred.TokenURL != "http://127.0.0.1:1/token" {
		t.Errorf("seed b = %+v", seeds[1])
	}
	if seeds[2].refreshToken != "" {
		t.Errorf("seed c = %+v", seeds[2])
	}

	for _, tc := range []struct {
		name, content, want string
	}{
		{"malformed JSON", `{"credentials": [`, "unexpected end of input"},
		{"not an object", `[1, 2]`, `not a JSON object {"credentials": [...]}`},
		{"unknown top-level key", `{"creds": []}`, `unknown field "creds"`},
		{"trailing data", `{"credentials": []} {}`, "data after the JSON object"},
		{"entry not an object", `{"credentials": ["SECRET-x"]}`, "credentials[0]"},
		{"unknown field", `{"credentials": [{"id": "a", "tokenurl": "x"}]}`, `credentials[0]: (line 1:13): unknown field "tokenurl"`},
		{"secret of the wrong type", `{"credentials": [{"id": "a", "client_secret": 123456789}]}`, "credentials[0]: (line 1:30): invalid value for string field clientSecret"},
		{"unknown enum", `{"credentials": [{"id": "a", "auth_style": "SECRET-x"}]}`, "invalid value for enum field authStyle"},
		{"bad duration", `{"credentials": [{"id": "a", "refresh_ahead": "soon"}]}`, "invalid google.protobuf.Duration"},
		{"bad id", `{"credentials": [{"id": "a b", "token_url": "https://idp.example/token", "client_id": "c", "refresh_token": "SECRET-x"}]}`,
			"credentials[0] (id \"a b\"): broker: invalid argument: credential.id"},
		{"bad token url", `{"credentials": [{"id": "ok", "token_url": "https://idp/token", "client_id": "c", "refresh_token": "r"}, {"id": "x", "token_url": "ftp://idp/token", "client_id": "c", "client_secret": "SECRET-x", "refresh_token": "SECRET-x"}]}`,
			`credentials[1] (id "x"): broker: invalid argument: credential.token_url`},
		{"fallback without primary", `{"credentials": [{"id": "x", "token_url": "https://idp/token", "client_id": "c", "fallback_client_secrets": ["SECRET-x"]}]}`,
			`credentials[0] (id "x"): broker: invalid argument: credential.client_secret`},
		{"overlong secret", `{"credentials": [{"id": "x", "token_url": "https://idp/token", "client_id": "c", "client_secret": "SECRET-x` + strings.Repeat("y", 2000) + `"}]}`,
			`credentials[0] (id "x"): broker: invalid argument: credential.client_secret`},
		{"duplicate id", `{"credentials": [{"id": "x", "token_url": "https://idp/token", "client_id": "c"}, {"id": "x"}]}`,
			`credentials[1] (id "x"): same id as credentials[0]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadCredentials(writeFile(t, tc.content))
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("loadCredentials = %v; want a ConfigError", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) || strings.Contains(msg, "SECRET") || strings.Contains(msg, "123456789") || strings.Contains(msg, "\n") {
				t.Errorf("message %q; want one line with %q and no secret", msg, tc.want)
			}
		})
	}

	_, err = loadCredentials(filepath.Join(t.TempDir(), "missing.json"))
	if ce := (*ConfigError)(nil); !errors.As(err, &ce) || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file = %v", err)
	}
}

// FuzzCredentialsFile feeds arbitrary files to the credentials-file loader:
// it never panics, refusals are configuration errors that do not echo a
// client secret or refresh token from the file, and whatever it accepts the
// broker accepts.
func FuzzCredentialsFile(f *testing.F) {
	f.Add([]byte(`{"credentials": [{"id": "a", "token_url": "https://idp/t", "client_id": "c", "client_secret": "SECRET-fz-1", "refresh_token": "RT-fz-12345"}]}`))
	f.Add([]byte(`{"credentials": [{"id": "a b", "token_url": "ftp://x", "client_id": "c", "client_secret": "SECRET-fz-1"}]}`))
	f.Add([]byte(`{"credentials": [{"id": "a", "refresh_token": 7}]}`))
	f.Add([]byte(`{"credentials": [{"id": "a", "token_url": "https://idp/t", "client_id": "c", "refresh_token": "RT-fz-12345"}, {"id": "a"}]}`))
	f.Add([]byte(`{"credentials": []} trailing`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "creds.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		seeds, err := loadCredentials(path)
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("refusal %v is not a configuration error", err)
			}
			for _, secret := range []string{"SECRET-fz-1", "RT-fz-12345"} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("the error echoes a secret: %v", err)
				}
			}
			return
		}
		for _, s := range seeds {
			if s.cred.ID == "" || s.cred.TokenURL == "" {
				t.Fatalf("accepted an incomplete credential %q", s.cred.ID)
			}
		}
	})
}
