// Package upstream calls an identity provider's RFC 6749 token endpoint
// through golang.org/x/oauth2 and classifies what goes wrong: an Error says
// whether the grant is dead (Permanent) or the trouble will pass (Transient).
package upstream

import (
	"time"
)

// AuthStyle is how the client authenticates to the token endpoint.
type AuthStyle int

// Auth styles. There is deliberately no auto-detection: trying one style and
// then the other would present a single-use refresh token twice.
const (
	AuthBasic AuthStyle = iota // HTTP basic (RFC 6749 section 2.3.1); the default
	AuthPost                   // client_id and client_secret in the form body
)

// GrantType is the grant a Request uses.
type GrantType int

// Grant types.
const (
	GrantRefreshToken      GrantType = iota // grant_type=refresh_token
	GrantClientCredentials                  // grant_type=client_credentials
)

// Request is one token request.
type Request struct {
	TokenURL string
	ClientID string
	// ClientSecrets are tried in order, moving to the next only when the IdP
	// answers invalid_client (it then rejected the client before looking at
	// the grant, so the refresh token was not spent). May be empty.
	ClientSecrets []string
	AuthStyle     AuthStyle
	GrantType     GrantType
	// Scopes, when set, are sent as the scope parameter with either grant.
	// With a refresh they must not exceed what the grant was issued for
	// (RFC 6749 section 6; an IdP answers invalid_scope, a Permanent
	// error); leave them empty to keep the original scope.
	Scopes       []string
	RefreshToken string // with GrantRefreshToken
}

// Token is what the IdP answered.
type Token struct {
	AccessToken string
	TokenType   string // as returned; "Bearer" when the IdP sent none
	// RefreshToken is the new refresh token, or empty when the IdP sent none
	// or sent back the one presented (RFC 6749 section 6: the client keeps
	// the one it has).
	RefreshToken string
	Expiry       time.Time // zero when the IdP sent no expires_in
}

// Class says what a failed exchange means for the credential.
type Class int

// Classes.
const (
	// Transient: infrastructure trouble (network, timeout, 5xx, 429, an
	// unreadable answer). The refresh token may be tried again later.
	Transient Class = iota
	// Permanent: the IdP's verdict that the grant or the client is dead
	// (invalid_grant, invalid_client, unauthorized_client,
	// unsupported_grant_type, invalid_scope, and invalid_request to a
	// refresh, which Dex answers for an already-claimed token). See Error.
	Permanent
)

func (c Class) String() string {
	if c == Permanent {
		return "permanent"
	}
	return "transient"
}
