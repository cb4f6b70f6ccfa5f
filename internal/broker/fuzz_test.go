package broker

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

// FuzzValidateID checks that every accepted ID fits the key layout of every
// Store: no braces, spaces or control characters, bounded length.
func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"cred", "a.b_c:d-e", "", " ", "{x}", ".a", "a b", "é", strings.Repeat("a", 129), "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := ValidateID("id", id)
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("error %v is not ErrInvalidArgument", err)
			}
			if len(id) > 16 && strings.Contains(err.Error(), id) {
				t.Fatal("the error echoes the input")
			}
			return
		}
		if id == "" || len(id) > MaxIDLen || strings.ContainsAny(id, "{} \t\r\n\x00/") {
			t.Fatalf("accepted %q", id)
		}
	})
}

// FuzzValidateCredential checks that an accepted credential has an absolute
// http(s) token URL without user info, and that refusals are
// ErrInvalidArgument naming a field and never echo a secret.
func FuzzValidateCredential(f *testing.F) {
	f.Add("cred", "https://idp.example/token", "client", "secret-value-1", "api.read", "rt-value-12345", int64(0), 0, 0, true)
	f.Add("cred", "http://127.0.0.1:9/t", "c", "", "", "", int64(time.Minute), 1, 0, false)
	f.Add("x", "ftp://idp/token", "c", "s", "a b", "rt", int64(-1), 2, 1, true)
	f.Add("x", "https://user:pw@idp/token", "c", "s\n", "", "r\x00t", int64(25*time.Hour), 0, 2, true)
	f.Add("x", "//idp/token", "c", "s", "", "rt", int64(0), 0, 1, false)
	f.Fuzz(func(t *testing.T, id, tokenURL, clientID, secret, scope, rt string, ahead int64, auth, grant int, isNew bool) {
		c := Credential{ID: id, TokenURL: tokenURL, ClientID: clientID, AuthStyle: AuthStyle(auth),
			GrantType: GrantType(grant), RefreshAhead: time.Duration(ahead)}
		if secret != "" {
			c.ClientSecrets = []string{secret}
		}
		if scope != "" {
			c.Scopes = []string{scope}
		}
		err := validateCredential(&c, rt, isNew)
		if err != nil {
			var be *Error
			if !errors.As(err, &be) || !errors.Is(err, ErrInvalidArgument) || be.Field == "" {
				t.Fatalf("error %v is not an ErrInvalidArgument naming a field", err)
			}
			for _, s := range []string{secret, rt} {
				if len(s) >= 8 && strings.Contains(err.Error(), s) {
					t.Fatal("the error echoes a secret")
				}
			}
			return
		}
		u, perr := url.Parse(tokenURL)
		if perr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			t.Fatalf("accepted token URL %q", tokenURL)
		}
		if ValidateID("id", id) != nil || clientID == "" || ahead < 0 || time.Duration(ahead) > MaxDuration {
			t.Fatalf("accepted %+v", c)
		}
		if isNew && c.GrantType == GrantRefreshToken && rt == "" {
			t.Fatal("accepted a new refresh_token credential without a refresh token")
		}
	})
}
