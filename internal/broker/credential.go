package broker

import (
	"time"
)

// AuthStyle is how the broker authenticates to a token endpoint.
type AuthStyle int

// Auth styles (RFC 6749 section 2.3.1).
const (
	AuthStyleBasic AuthStyle = iota // HTTP basic; the default
	AuthStylePost                   // client_id and client_secret in the form body
)

// GrantType is how new tokens are obtained.
type GrantType int

// Grant types.
const (
	GrantRefreshToken      GrantType = iota // grant_type=refresh_token; the default
	GrantClientCredentials                  // grant_type=client_credentials
)

// State is where a credential stands.
type State int

// States.
const (
	StateActive         State = iota + 1 // tokens are served and refreshed
	StateReauthRequired                  // the IdP said the grant is dead; an operator must re-seed
	// StateUnreadable is never stored: Store.List reports a record it cannot
	// open (see ErrUnreadable) with this state and nothing but its ID, so
	// that listing still works and operators see it.
	StateUnreadable
	// StatePendingAuthorization is never stored either: it is how a
	// credential in StateReauthRequired with an authorization flow open
	// (Record.Authorization, not expired) is shown (Record.ViewState).
	StatePendingAuthorization
)

func (s State) String() string {
	switch s {
	case StateActive:
		return "ACTIVE"
	case StateReauthRequired:
		return "REAUTH_REQUIRED"
	case StateUnreadable:
		return "UNREADABLE"
	case StatePendingAuthorization:
		return "PENDING_AUTHORIZATION"
	}
	return "UNSPECIFIED"
}

// Credential is the configuration of an upstream OAuth2 credential: everything
// an operator puts in, except the refresh token.
type Credential struct {
	ID       string `json:"id"`
	TokenURL string `json:"token_url"`
	ClientID string `json:"client_id"`
	// ClientSecrets are tried in order when the IdP answers invalid_client;
	// the first is the primary. Secret.
	ClientSecrets  []string      `json:"client_secrets,omitempty"`
	AuthStyle      AuthStyle     `json:"auth_style"`
	GrantType      GrantType     `json:"grant_type"`
	Scopes         []string      `json:"scopes,omitempty"`
	AllowedClients []string      `json:"allowed_clients,omitempty"`
	RefreshAhead   time.Duration `json:"refresh_ahead,omitempty"` // 0: the broker's default
	// ReuseGrace is how long the IdP still accepts a refresh token after it
	// rotated it (Dex's reuseInterval, Okta's grace period; 0 for a strict
	// IdP such as Auth0 or Hydra by default). Within it, a refresh whose
	// reply was lost is sent again with the same refresh token; past it, the
	// credential goes to REAUTH_REQUIRED with ErrOutcomeUnknown.
	ReuseGrace time.Duration `json:"reuse_grace,omitempty"`
	// RevokesPreviousAccessToken says that the IdP revokes the previous
	// access token when it answers a refresh (Ory Hydra does). The broker
	// then never hands out the old token once a refresh of it is announced:
	// callers wait for its successor (see Config.RevokeNotice).
	RevokesPreviousAccessToken bool `json:"revokes_previous_access_token,omitempty"`
	// AuthorizationURL is the IdP's authorization endpoint, for the
	// authorization code grant (StartAuthorization).
	AuthorizationURL string `json:"authorization_url,omitempty"`
	// DeviceAuthorizationURL is the IdP's device authorization endpoint
	// (RFC 8628), for StartDeviceAuthorization.
	DeviceAuthorizationURL string `json:"device_authorization_url,omitempty"`
	// RedirectURL is the broker's callback (CallbackPath) as the browser
	// reaches it, registered with the IdP.
	RedirectURL string `json:"redirect_url,omitempty"`
}

// Token is an access token as handed to clients.
type Token struct {
	AccessToken string    `json:"access_token"`
	TokenType   string    `json:"token_type"`
	Expiry      time.Time `json:"expiry"`
	IssuedAt    time.Time `json:"issued_at"` // when the broker received it
}

// Valid reports whether t holds a token that stays valid for at least minValid
// after now.
func (t *Token) Valid(now time.Time, minValid time.Duration) bool {
	return t.AccessToken != "" && t.Expiry.Sub(now) >= minValid
}

// Lifetime is how long the token was valid for when it was issued.
func (t *Token) Lifetime() time.Duration {
	return t.Expiry.Sub(t.IssuedAt)
}

// Record is everything stored for one credential. A Record read from a Store
// belongs to the caller; a Store never retains or mutates it.
type Record struct {
	Credential

	// RefreshToken is the refresh token to spend next. Secret.
	RefreshToken string `json:"refresh_token,omitempty"`
	// Token is the current access token; zero before the first refresh.
	Token Token `json:"token"`

	// Generation is the stored version of the record. A Store bumps it on
	// every Commit; Commit is refused unless it matches the stored one.
	Generation uint64 `json:"-"`
	// Pending is the refresh a holder announced and has not settled yet, or
	// nil. Stores keep it beside the record (MarkPending, Settle).
	Pending *Pending `json:"-"`

	State         State     `json:"state"`
	LastRefreshAt time.Time `json:"last_refresh_at,omitzero"`
	// LastForcedAt is when a forced refresh (invalidation, operator) last
	// called the IdP; forced refreshes are rate-limited from it.
	LastForcedAt time.Time `json:"last_forced_at,omitzero"`
	LastError    string    `json:"last_error,omitempty"` // never holds a secret
	// OutcomeUnknown, with StateReauthRequired, says that no IdP verdict
	// killed the grant: a refresh's reply was lost (or its holder died) and
	// the IdP may have rotated the token; see ErrOutcomeUnknown.
	OutcomeUnknown bool      `json:"outcome_unknown,omitempty"`
	LastErrorAt    time.Time `json:"last_error_at,omitzero"`
	// Failures counts transient failures since the last success; it drives
	// the backoff.
	Failures int `json:"failures,omitempty"`
	// NextAttemptAt holds off IdP calls after a transient failure.
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	// Authorization is the authorization flow under way, if any.
	Authorization *AuthorizationFlow `json:"authorization,omitempty"`
}

// Clone returns a deep copy of r.
func (r *Record) Clone() *Record {
	c := *r
	c.ClientSecrets = append([]string(nil), r.ClientSecrets...)
	c.Scopes = append([]string(nil), r.Scopes...)
	c.AllowedClients = append([]string(nil), r.AllowedClients...)
	if r.Pending != nil {
		p := *r.Pending
		c.Pending = &p
	}
	if r.Authorization != nil {
		a := *r.Authorization
		a.Scopes = append([]string(nil), a.Scopes...)
		c.Authorization = &a
	}
	return &c
}
