package broker

import (
	"net/url"
	"strings"
	"time"
)

// Limits on what callers may send. Anything beyond them is refused with
// ErrInvalidArgument before anything is read or stored.
const (
	MaxIDLen           = 128
	MaxURLLen          = 2048
	MaxClientIDLen     = 256
	MaxSecretLen       = 1024
	MaxSecrets         = 8
	MaxScopes          = 64
	MaxScopeLen        = 256
	MaxAllowedClients  = 256
	MaxClientNameLen   = 128
	MaxRefreshTokenLen = 8192
	MaxAccessTokenLen  = 16384
	MaxDuration        = 24 * time.Hour
)

// ValidateID checks a credential ID: 1 to MaxIDLen characters from
// [A-Za-z0-9._:-], starting with a letter or digit.
func ValidateID(field, id string) error {
	if id == "" {
		return invalidArg(field, "must not be empty")
	}
	if len(id) > MaxIDLen {
		return invalidArg(field, "longer than %d characters", MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == ':' || c == '-'):
		default:
			return invalidArg(field, "must match [A-Za-z0-9][A-Za-z0-9._:-]*")
		}
	}
	return nil
}

// validateDuration checks a caller-supplied duration: 0 (meaning the default)
// up to MaxDuration.
func validateDuration(field string, d time.Duration) error {
	if d < 0 {
		return invalidArg(field, "must not be negative")
	}
	if d > MaxDuration {
		return invalidArg(field, "must be at most %s", MaxDuration)
	}
	return nil
}

// validateTokenURL checks that u is an absolute http(s) URL with a host and no
// user info or fragment.
func validateTokenURL(field, u string) error {
	if u == "" {
		return invalidArg(field, "must not be empty")
	}
	if len(u) > MaxURLLen {
		return invalidArg(field, "longer than %d characters", MaxURLLen)
	}
	p, err := url.Parse(u)
	if err != nil {
		return invalidArg(field, "not a URL")
	}
	if p.Scheme != "http" && p.Scheme != "https" {
		return invalidArg(field, "must be an absolute http or https URL")
	}
	if p.Host == "" || p.Hostname() == "" {
		return invalidArg(field, "must name a host")
	}
	if p.User != nil {
		return invalidArg(field, "must not hold user info; use client_id and client_secret")
	}
	if p.Fragment != "" || strings.HasSuffix(u, "#") {
		return invalidArg(field, "must not have a fragment")
	}
	return nil
}

func validateToken(field, s string, max int, required bool) error {
	if s == "" {
		if required {
			return invalidArg(field, "must not be empty")
		}
		return nil
	}
	if len(s) > max {
		return invalidArg(field, "longer than %d bytes", max)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return invalidArg(field, "must not contain control characters")
		}
	}
	return nil
}

// ValidateCredential checks c and its refresh token as PutCredential does,
// for a credential that may or may not exist yet (so a missing refresh token
// is not an error: only the Store can tell whether one is needed). It needs
// no Broker, so configuration can be checked before anything is dialled.
func ValidateCredential(c Credential, refreshToken string) error {
	return validateCredential(&c, refreshToken, false)
}

// validateCredential checks everything an operator puts in. isNew says
// whether the credential is being created (a refresh token is then required
// for the refresh_token grant).
func validateCredential(c *Credential, refreshToken string, isNew bool) error {
	if err := ValidateID("credential.id", c.ID); err != nil {
		return err
	}
	if err := validateTokenURL("credential.token_url", c.TokenURL); err != nil {
		return err
	}
	if err := validateToken("credential.client_id", c.ClientID, MaxClientIDLen, true); err != nil {
		return err
	}
	if len(c.ClientSecrets) > MaxSecrets {
		return invalidArg("credential.fallback_client_secrets", "at most %d client secrets in all", MaxSecrets)
	}
	for _, s := range c.ClientSecrets {
		if err := validateToken("credential.client_secret", s, MaxSecretLen, true); err != nil {
			return err
		}
	}
	switch c.AuthStyle {
	case AuthStyleBasic, AuthStylePost:
	default:
		return invalidArg("credential.auth_style", "unknown auth style %d", c.AuthStyle)
	}
	switch c.GrantType {
	case GrantRefreshToken:
		if isNew && refreshToken == "" && !c.Authorizable() {
			return invalidArg("credential.refresh_token", "required for a new credential with the refresh_token grant, and when a credential switches to it, unless it has an authorization_url or a device_authorization_url")
		}
	case GrantClientCredentials:
		if refreshToken != "" {
			return invalidArg("credential.refresh_token", "not used with the client_credentials grant")
		}
	default:
		return invalidArg("credential.grant_type", "unknown grant type %d", c.GrantType)
	}
	if err := validateToken("credential.refresh_token", refreshToken, MaxRefreshTokenLen, false); err != nil {
		return err
	}
	if len(c.Scopes) > MaxScopes {
		return invalidArg("credential.scopes", "at most %d scopes", MaxScopes)
	}
	for _, s := range c.Scopes {
		if s == "" || len(s) > MaxScopeLen || strings.ContainsAny(s, " \"\\") {
			return invalidArg("credential.scopes", "each scope must be 1 to %d characters without spaces, quotes or backslashes", MaxScopeLen)
		}
		if err := validateToken("credential.scopes", s, MaxScopeLen, true); err != nil {
			return err
		}
	}
	if len(c.AllowedClients) > MaxAllowedClients {
		return invalidArg("credential.allowed_clients", "at most %d clients", MaxAllowedClients)
	}
	for _, s := range c.AllowedClients {
		if err := validateToken("credential.allowed_clients", s, MaxClientNameLen, true); err != nil {
			return err
		}
	}
	if err := validateDuration("credential.reuse_grace", c.ReuseGrace); err != nil {
		return err
	}
	if err := validateFlowURLs(c); err != nil {
		return err
	}
	return validateDuration("credential.refresh_ahead", c.RefreshAhead)
}
