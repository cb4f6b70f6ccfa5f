package broker

import (
	"context"
	"errors"
	"time"
)

// Upstream exchanges a grant for a token at an identity provider. It must be
// safe for concurrent use. A failed exchange returns an error that is, or
// wraps, an *UpstreamError saying what the failure means for the credential;
// any other error counts as Unanswered. No error holds a secret.
//
// ctx bounds the whole exchange; when it ends, Exchange returns at once.
type Upstream interface {
	Exchange(ctx context.Context, r UpstreamRequest) (*UpstreamToken, error)
}

// UpstreamRequest is one token request.
type UpstreamRequest struct {
	TokenURL string
	ClientID string
	// ClientSecrets are tried in order, moving to the next only when the IdP
	// rejected the client before looking at the grant (invalid_client). May
	// be empty: a public client.
	ClientSecrets []string
	AuthStyle     AuthStyle
	GrantType     GrantType
	// Scopes, when set, are sent as the scope parameter.
	Scopes []string
	// RefreshToken is presented with GrantRefreshToken. Secret.
	RefreshToken string
}

// UpstreamToken is what the IdP answered.
type UpstreamToken struct {
	AccessToken string
	TokenType   string
	// RefreshToken is the new refresh token, or empty when the IdP sent none
	// (RFC 6749 section 6: the old one stays valid). Secret.
	RefreshToken string
	Expiry       time.Time // zero when the IdP sent no expires_in
}

// UpstreamClass says what a failed exchange means for the credential.
type UpstreamClass int

// Classes of failed exchanges.
const (
	// Transient: the IdP answered, or provably was not reached, and the
	// refresh token is unspent: a 5xx, a 429, a refused connection, a
	// request that could not be sent. It may be tried again later.
	Transient UpstreamClass = iota
	// Permanent: the IdP's verdict that the grant or the client is dead
	// (invalid_grant, or the IdP's equivalent).
	Permanent
	// Unanswered: the request may have reached the IdP, and no usable answer
	// came back (a reset connection or a timeout after the request was
	// sent, an unreadable 2xx, a gateway timeout). The IdP may have rotated
	// the refresh token.
	Unanswered
)

func (c UpstreamClass) String() string {
	switch c {
	case Permanent:
		return "permanent"
	case Unanswered:
		return "unanswered"
	}
	return "transient"
}

// UpstreamError is a classified failure of an exchange.
type UpstreamError struct {
	Class UpstreamClass
	// RetryAfter is how long the IdP asked to be left alone (a 429's or
	// 503's Retry-After); 0 if it said nothing.
	RetryAfter time.Duration
	// Code is the IdP's RFC 6749 error code (invalid_grant, slow_down,
	// ...), empty when it sent none.
	Code string
	// Err is the adapter's account of the failure. Its message is safe to
	// show: it never holds a secret.
	Err error
}

func (e *UpstreamError) Error() string {
	if e.Err == nil {
		return "upstream: " + e.Class.String() + " failure"
	}
	return e.Err.Error()
}

// Unwrap returns Err.
func (e *UpstreamError) Unwrap() error { return e.Err }

// classOf returns the class and retry delay of an Upstream's error.
func classOf(err error) (UpstreamClass, time.Duration) {
	var ue *UpstreamError
	if errors.As(err, &ue) {
		return ue.Class, ue.RetryAfter
	}
	return Unanswered, 0
}
