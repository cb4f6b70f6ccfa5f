package clientsdk

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tbv1 "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// Sentinel errors. An error returned by this package for a failed broker call
// is an *Error that matches one or more of them with errors.Is.
var (
	// ErrReauthRequired: the credential's refresh token cannot be used: the
	// identity provider declared the grant dead, or (see
	// ErrRefreshOutcomeUnknown) a refresh's outcome is unknown. An operator
	// must put in a new refresh token. Retrying does not help.
	ErrReauthRequired = errors.New("clientsdk: credential needs re-authorization")
	// ErrRefreshOutcomeUnknown: the broker does not know how a refresh of the
	// credential ended (the reply was lost, or the replica that sent it
	// died), and the identity provider may have rotated the refresh token, so
	// the broker does not present it again. It is no verdict of the identity
	// provider, but the remedy is the same: an operator must put in a new
	// refresh token. Errors matching it also match ErrReauthRequired.
	ErrRefreshOutcomeUnknown = errors.New("clientsdk: refresh outcome unknown; credential needs re-authorization")
	// ErrCredentialNotFound: the broker holds no credential with that ID.
	ErrCredentialNotFound = errors.New("clientsdk: credential not found")
	// ErrPermissionDenied: the broker refused this client access to the
	// credential, or did not accept its identity (see ErrUnauthenticated).
	ErrPermissionDenied = errors.New("clientsdk: permission denied")
	// ErrUnauthenticated: the broker did not accept this client's identity
	// (API key or certificate). Errors matching it also match
	// ErrPermissionDenied.
	ErrUnauthenticated = errors.New("clientsdk: not authenticated to the broker")
	// ErrUnavailable: a transient failure (broker, its store, its lock or the
	// identity provider unavailable, or rate limited). Retry later, after
	// Error.RetryAfter when it is set.
	ErrUnavailable = errors.New("clientsdk: broker unavailable")
	// ErrInvalidArgument: the request was malformed, or asked for a minimum
	// validity the credential's tokens cannot satisfy.
	ErrInvalidArgument = errors.New("clientsdk: invalid argument")
	// ErrRateLimited: the broker rate-limited the request (for example forced
	// refreshes of one credential). Errors matching it also match
	// ErrUnavailable, since it is retryable.
	ErrRateLimited = errors.New("clientsdk: rate limited")
)

// ErrorDomain is the google.rpc.ErrorInfo domain of the broker's errors.
// Reasons carried under any other domain are ignored.
const ErrorDomain = "tokenbroker.dev"

// Error is a failed broker call. It matches its sentinel errors with errors.Is
// (and context.Canceled or context.DeadlineExceeded for those codes), and it
// keeps the gRPC status: status.FromError and status.Code work on it and on
// errors that wrap it. Its message never holds a token.
type Error struct {
	Code         codes.Code    // the gRPC code
	Reason       string        // the broker's ErrorInfo reason, e.g. "REAUTH_REQUIRED"; empty if none
	CredentialID string        // the credential concerned, if the broker said
	Field        string        // with ErrInvalidArgument: the offending request field, if the broker said
	RetryAfter   time.Duration // with retryable errors: the delay the broker asked for, if any

	st    *status.Status
	kinds []error
}

// reasonKinds is the one table from the broker's ErrorInfo reasons, the
// names of the API's ErrorReasonEnum.ErrorReason, to the sentinel errors.
// Every reason of the enum but ERROR_REASON_UNSPECIFIED has an entry
// (TestEveryReasonMapped); one with no sentinels (INTERNAL,
// RECORD_UNREADABLE, IDP_REJECTED: admin calls only) matches none, whatever
// the code.
var reasonKinds = map[string][]error{
	tbv1.ErrorReasonEnum_CREDENTIAL_NOT_FOUND.String():    {ErrCredentialNotFound},
	tbv1.ErrorReasonEnum_INVALID_ARGUMENT.String():        {ErrInvalidArgument},
	tbv1.ErrorReasonEnum_MIN_VALID_TOO_LONG.String():      {ErrInvalidArgument},
	tbv1.ErrorReasonEnum_REAUTH_REQUIRED.String():         {ErrReauthRequired},
	tbv1.ErrorReasonEnum_REFRESH_OUTCOME_UNKNOWN.String(): {ErrRefreshOutcomeUnknown, ErrReauthRequired},
	tbv1.ErrorReasonEnum_IDP_UNAVAILABLE.String():         {ErrUnavailable},
	tbv1.ErrorReasonEnum_LOCK_TIMEOUT.String():            {ErrUnavailable},
	tbv1.ErrorReasonEnum_STORE_UNAVAILABLE.String():       {ErrUnavailable},
	tbv1.ErrorReasonEnum_SHUTTING_DOWN.String():           {ErrUnavailable},
	tbv1.ErrorReasonEnum_RATE_LIMITED.String():            {ErrRateLimited, ErrUnavailable},
	tbv1.ErrorReasonEnum_UNAUTHENTICATED.String():         {ErrUnauthenticated, ErrPermissionDenied},
	tbv1.ErrorReasonEnum_PERMISSION_DENIED.String():       {ErrPermissionDenied},
	tbv1.ErrorReasonEnum_CANCELLED.String():               {context.Canceled},
	tbv1.ErrorReasonEnum_DEADLINE_EXCEEDED.String():       {context.DeadlineExceeded},
	tbv1.ErrorReasonEnum_INTERNAL.String():                nil,
	tbv1.ErrorReasonEnum_RECORD_UNREADABLE.String():       nil,
	tbv1.ErrorReasonEnum_IDP_REJECTED.String():            nil,
}

// kindsOf returns the sentinel errors a broker error matches: the ErrorInfo
// reason decides (reasonKinds); an unknown or missing reason falls back on
// the gRPC code.
func kindsOf(code codes.Code, reason string) []error {
	if kinds, ok := reasonKinds[reason]; ok {
		return kinds
	}
	switch code {
	case codes.NotFound:
		return []error{ErrCredentialNotFound}
	case codes.FailedPrecondition:
		return []error{ErrReauthRequired}
	case codes.Unavailable:
		return []error{ErrUnavailable}
	case codes.ResourceExhausted:
		return []error{ErrRateLimited, ErrUnavailable}
	case codes.InvalidArgument, codes.OutOfRange:
		return []error{ErrInvalidArgument}
	case codes.Unauthenticated:
		return []error{ErrUnauthenticated, ErrPermissionDenied}
	case codes.PermissionDenied:
		return []error{ErrPermissionDenied}
	case codes.Canceled:
		return []error{context.Canceled}
	case codes.DeadlineExceeded:
		return []error{context.DeadlineExceeded}
	}
	return nil
}

// toError turns the error of a broker call into an *Error. Errors that carry
// no gRPC status are returned unchanged.
func toError(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	e := &Error{Code: st.Code(), st: st}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() != ErrorDomain {
				continue
			}
			e.Reason = d.GetReason()
			e.CredentialID = d.GetMetadata()["credential_id"]
			e.Field = d.GetMetadata()["field"]
		case *errdetails.RetryInfo:
			if d.GetRetryDelay() != nil {
				e.RetryAfter = d.GetRetryDelay().AsDuration()
			}
		}
	}
	e.kinds = kindsOf(e.Code, e.Reason)
	return e
}

// Error describes the failure: the first matching sentinel's text, then the
// broker's code, reason and message.
func (e *Error) Error() string {
	msg := "clientsdk: broker call failed"
	if len(e.kinds) > 0 {
		msg = e.kinds[0].Error()
	}
	msg += " (" + e.Code.String()
	if e.Reason != "" {
		msg += ", " + e.Reason
	}
	msg += ")"
	if m := e.st.Message(); m != "" {
		msg += ": " + m
	}
	if e.CredentialID != "" {
		msg += fmt.Sprintf(" [credential %q]", e.CredentialID)
	}
	return msg
}

// Is reports whether target is one of the sentinel errors e matches.
func (e *Error) Is(target error) bool {
	for _, k := range e.kinds {
		if k == target {
			return true
		}
	}
	return false
}

// GRPCStatus returns the broker's status, details included.
func (e *Error) GRPCStatus() *status.Status { return e.st }
