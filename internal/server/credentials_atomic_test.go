package server

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

// TestCredentialsFileAtomic: an entry the Store refuses (a new credential
// without a refresh token) stops the start before any entry is written.
func TestCredentialsFileAtomic(t *testing.T) {
	rs := redistest.Start(t)
	idp := newIdP(t)
	cfg := testConfig()
	cfg.RedisURL, cfg.AllowPlaintext, cfg.AllowUnauthenticated = rs.URL(), true, true
	cfg.CredentialsFile = writeFile(t, fmt.Sprintf(`{"credentials": [
		{"id": "first", "token_url": %q, "client_id": %q, "client_secret": %q, "refresh_token": %q},
		{"id": "second", "token_url": %q, "client_id": %q, "client_secret": %q}]}`,
		idp.TokenURL(), idpClientID, idpClientSecret, idp.Seed(idpClientID), idp.TokenURL(), idpClientID, idpClientSecret))
	_, err := New(ctxFor(t), cfg, nil)
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), `credentials[1] (id "second")`) || !strings.Contains(err.Error(), "nothing was written") {
		t.Fatalf("New = %v; want a ConfigError about credentials[1]", err)
	}
	keys, err := rs.NewClient(t).Keys(ctxFor(t), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.Contains(k, "first") {
			t.Errorf("credentials[0] was written although credentials[1] was refused: %v", keys)
		}
	}
}
