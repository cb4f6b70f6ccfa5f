package broker

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Every error a Broker method returns matches exactly one of
// them with errors.Is; the transport maps each to one code in one table.
var (
	ErrNotFound         = errors.New("broker: credential not found")
	ErrInvalidArgument  = errors.New("broker: invalid argument")
	ErrReauthRequired   = errors.New("broker: credential needs a new refresh token")
	ErrIdPUnavailable   = errors.New("broker: identity provider unavailable")
	ErrLockTimeout      = errors.New("broker: timed out waiting for the refresh lock")
	ErrStoreUnavailable = errors.New("broker: store unavailable")
	ErrRateLimited      = errors.New("broker: rate limited")
	ErrMinValidTooLong  = errors.New("broker: min_valid exceeds the token lifetime")
	ErrPermissionDenied = errors.New("broker: permission denied")
	ErrUnauthenticated  = errors.New("broker: unauthenticated")
	ErrShuttingDown     = errors.New("broker: shutting down")
	// ErrUnreadable: a stored record exists but cannot be opened (tampered
	// with, sealed under a key no longer configured, corrupt). It is never
	// returned as data and never marks the credential REAUTH_REQUIRED.
	ErrUnreadable = errors.New("broker: stored record cannot be read")
	// ErrOutcomeUnknown: the credential needs a new refresh token because a
	// refresh's outcome is unknown (its reply was lost, or the replica that
	// sent it died, outside the IdP's reuse grace), not because the IdP
	// said the grant is dead. An Error of this kind also matches
	// ErrReauthRequired.
	ErrOutcomeUnknown = errors.New("broker: refresh outcome unknown; the IdP may have rotated the refresh token")
	// ErrIdPRejected: the IdP refused a request of an authorization flow
	// (an authorization code it would not exchange, a device authorization
	// it would not start, an error sent back to the callback): the
	// credential's configuration, or the flow, does not fit the IdP's.
	ErrIdPRejected = errors.New("broker: the identity provider refused the authorization")
)

// Errors of the Store seam. The Broker handles them; they never reach a caller.
var (
	ErrLockHeld = errors.New("broker: lock held by another holder")
	ErrLockLost = errors.New("broker: lock lost")
	ErrConflict = errors.New("broker: stored generation changed")
)

// Error is a failure with details for the caller. It matches its Kind with
// errors.Is. Its message never holds a secret.
type Error struct {
	Kind         error         // one of the sentinel errors above
	CredentialID string        // the credential concerned, if any
	Field        string        // with ErrInvalidArgument: the offending field
	RetryAfter   time.Duration // with retryable kinds: when to try again
	Detail       string        // what happened, safe to show
	Err          error         // the cause, if any; never holds a secret
}

func (e *Error) Error() string {
	msg := e.Kind.Error()
	if e.Field != "" {
		msg += ": " + e.Field
	}
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	if e.CredentialID != "" {
		msg += fmt.Sprintf(" (credential %q)", e.CredentialID)
	}
	return msg
}

// Is reports whether target is e's Kind; an ErrOutcomeUnknown is also an
// ErrReauthRequired.
func (e *Error) Is(target error) bool {
	return target == e.Kind || (e.Kind == ErrOutcomeUnknown && target == ErrReauthRequired)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func invalidArg(field, format string, args ...any) *Error {
	return &Error{Kind: ErrInvalidArgument, Field: field, Detail: fmt.Sprintf(format, args...)}
}
