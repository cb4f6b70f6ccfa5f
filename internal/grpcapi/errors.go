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
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// ErrorDomain is the domain of every google.rpc.ErrorInfo the server sends.
const ErrorDomain = "tokenbroker.dev"

// statusOK is the status of every successful call; a Status is immutable.
var statusOK = status.New(codes.OK, "")

// internalMessage is the status message of every error the table does not
// know: its text may say anything, so it stays in the server's log.
const internalMessage = "internal error"

// reason is an ErrorInfo reason: a value of the API's one list of them,
// sent as its name.
type reason = pb.ErrorReasonEnum_ErrorReason

// reasonInternal is the reason of every error no row of errorTable matches.
const reasonInternal = pb.ErrorReasonEnum_INTERNAL

// errorTable maps every failure a call can end with to one gRPC code and one
// reason. Rows are tried in order with errors.Is: the broker's sentinels come
// before the context errors, because a broker error may wrap a context error
// as its cause, and ErrOutcomeUnknown comes before ErrReauthRequired, which
// its errors also match. An error no row matches is INTERNAL
// (reasonInternal). Every reason of the API but ERROR_REASON_UNSPECIFIED is
// sent by exactly one row or as reasonInternal (TestErrorReasonsAllMapped).
var errorTable = []struct {
	err    error
	code   codes.Code
	reason reason
}{
	{broker.ErrNotFound, codes.NotFound, pb.ErrorReasonEnum_CREDENTIAL_NOT_FOUND},
	{broker.ErrInvalidArgument, codes.InvalidArgument, pb.ErrorReasonEnum_INVALID_ARGUMENT},
	{broker.ErrOutcomeUnknown, codes.FailedPrecondition, pb.ErrorReasonEnum_REFRESH_OUTCOME_UNKNOWN},
	{broker.ErrReauthRequired, codes.FailedPrecondition, pb.ErrorReasonEnum_REAUTH_REQUIRED},
	{broker.ErrIdPUnavailable, codes.Unavailable, pb.ErrorReasonEnum_IDP_UNAVAILABLE},
	{broker.ErrLockTimeout, codes.Unavailable, pb.ErrorReasonEnum_LOCK_TIMEOUT},
	{broker.ErrStoreUnavailable, codes.Unavailable, pb.ErrorReasonEnum_STORE_UNAVAILABLE},
	{broker.ErrShuttingDown, codes.Unavailable, pb.ErrorReasonEnum_SHUTTING_DOWN},
	{broker.ErrRateLimited, codes.ResourceExhausted, pb.ErrorReasonEnum_RATE_LIMITED},
	{broker.ErrMinValidTooLong, codes.OutOfRange, pb.ErrorReasonEnum_MIN_VALID_TOO_LONG},
	{broker.ErrPermissionDenied, codes.PermissionDenied, pb.ErrorReasonEnum_PERMISSION_DENIED},
	{broker.ErrUnauthenticated, codes.Unauthenticated, pb.ErrorReasonEnum_UNAUTHENTICATED},
	{broker.ErrUnreadable, codes.DataLoss, pb.ErrorReasonEnum_RECORD_UNREADABLE},
	{broker.ErrIdPRejected, codes.FailedPrecondition, pb.ErrorReasonEnum_IDP_REJECTED},
	{context.Canceled, codes.Canceled, pb.ErrorReasonEnum_CANCELLED},
	{context.DeadlineExceeded, codes.DeadlineExceeded, pb.ErrorReasonEnum_DEADLINE_EXCEEDED},
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
	code, why, msg := codes.Internal, reasonInternal, internalMessage
	for _, row := range errorTable {
		if errors.Is(err, row.err) {
			code, why, msg = row.code, row.reason, err.Error()
			break
		}
	}
	info := &errdetails.ErrorInfo{Reason: why.String(), Domain: ErrorDomain}
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
