package grpcapi

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// ErrorDomain is the domain of every google.rpc.ErrorInfo the server sends.
const ErrorDomain = "tokenbroker.dev"

// Reasons are the stable google.rpc.ErrorInfo reasons, one per row of
// errorTable. Clients match on them; never rename one.
const (
	ReasonCredentialNotFound = "CREDENTIAL_NOT_FOUND"
	ReasonInvalidArgument    = "INVALID_ARGUMENT"
	ReasonReauthRequired     = "REAUTH_REQUIRED"
	ReasonIdPUnavailable     = "IDP_UNAVAILABLE"
	ReasonLockTimeout        = "LOCK_TIMEOUT"
	ReasonStoreUnavailable   = "STORE_UNAVAILABLE"
	ReasonShuttingDown       = "SHUTTING_DOWN"
	ReasonRateLimited        = "RATE_LIMITED"
	ReasonMinValidTooLong    = "MIN_VALID_TOO_LONG"
	ReasonPermissionDenied   = "PERMISSION_DENIED"
	ReasonUnauthenticated    = "UNAUTHENTICATED"
	ReasonCancelled          = "CANCELLED"
	ReasonDeadlineExceeded   = "DEADLINE_EXCEEDED"
	ReasonInternal           = "INTERNAL"
	ReasonRecordUnreadable   = "RECORD_UNREADABLE"
)

// statusOK is the status of every successful call; a Status is immutable.
var statusOK = status.New(codes.OK, "")

// internalMessage is the status message of every error the table does not
// know: its text may say anything, so it stays in the server's log.
const internalMessage = "internal error"

// errorTable maps every failure a call can end with to one gRPC code and one
// reason. Rows are tried in order with errors.Is: the broker's sentinels come
// before the context errors, because a broker error may wrap a context error
// as its cause. An error no row matches is INTERNAL.
var errorTable = []struct {
	err    error
	code   codes.Code
	reason string
}{
	{broker.ErrNotFound, codes.NotFound, ReasonCredentialNotFound},
	{broker.ErrInvalidArgument, codes.InvalidArgument, ReasonInvalidArgument},
	{broker.ErrReauthRequired, codes.FailedPrecondition, ReasonReauthRequired},
	{broker.ErrIdPUnavailable, codes.Unavailable, ReasonIdPUnavailable},
	{broker.ErrLockTimeout, codes.Unavailable, ReasonLockTimeout},
	{broker.ErrStoreUnavailable, codes.Unavailable, ReasonStoreUnavailable},
	{broker.ErrShuttingDown, codes.Unavailable, ReasonShuttingDown},
	{broker.ErrRateLimited, codes.ResourceExhausted, ReasonRateLimited},
	{broker.ErrMinValidTooLong, codes.OutOfRange, ReasonMinValidTooLong},
	{broker.ErrPermissionDenied, codes.PermissionDenied, ReasonPermissionDenied},
	{broker.ErrUnauthenticated, codes.Unauthenticated, ReasonUnauthenticated},
	{broker.ErrUnreadable, codes.DataLoss, ReasonRecordUnreadable},
	{context.Canceled, codes.Canceled, ReasonCancelled},
	{context.DeadlineExceeded, codes.DeadlineExceeded, ReasonDeadlineExceeded},
}

// Code returns the gRPC code an error a call ends with is sent as: OK for
// nil, the code of an error that already carries a status, the error
// table's code for the broker's errors and the context errors, INTERNAL for
// anything else. It is what an interceptor in Options.UnaryInterceptors,
// which sees errors before they are converted, passes as audit's codeOf.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	for _, row := range errorTable {
		if errors.Is(err, row.err) {
			return row.code
		}
	}
	return codes.Internal
}

// toStatus turns the error a call ended with into the status sent to the
// client. An error that already carries a status (from gRPC itself, health
// or reflection) is kept. Otherwise the status has the table's code, the
// error's own message (broker errors are safe to show by contract) and a
// google.rpc.ErrorInfo; an invalid argument adds a google.rpc.BadRequest
// naming the field, and a retry delay adds a google.rpc.RetryInfo.
// credentialID, when not empty, is reported if the error names none.
func toStatus(err error, credentialID string) *status.Status {
	if err == nil {
		return statusOK
	}
	if st, ok := status.FromError(err); ok {
		return st
	}
	code, reason, msg := codes.Internal, ReasonInternal, internalMessage
	for _, row := range errorTable {
		if errors.Is(err, row.err) {
			code, reason, msg = row.code, row.reason, err.Error()
			break
		}
	}
	info := &errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}
	var be *broker.Error
	if code == codes.Internal || !errors.As(err, &be) {
		be = &broker.Error{}
	}
	if be.CredentialID != "" {
		credentialID = be.CredentialID
	}
	meta := map[string]string{}
	if credentialID != "" {
		meta["credential_id"] = credentialID
	}
	details := []protoadapt.MessageV1{info}
	if code == codes.InvalidArgument && be.Field != "" {
		meta["field"] = be.Field
		details = append(details, &errdetails.BadRequest{
			FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: be.Field, Description: be.Detail}},
		})
	}
	if len(meta) > 0 {
		info.Metadata = meta
	}
	if be.RetryAfter > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(be.RetryAfter)})
	}
	st := status.New(code, msg)
	if withDetails, derr := st.WithDetails(details...); derr == nil {
		st = withDetails
	}
	return st
}
