package clientsdk_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/clientsdk"
	tbv1 "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

var sentinels = []error{
	clientsdk.ErrReauthRequired,
	clientsdk.ErrRefreshOutcomeUnknown,
	clientsdk.ErrCredentialNotFound,
	clientsdk.ErrPermissionDenied,
	clientsdk.ErrUnauthenticated,
	clientsdk.ErrUnavailable,
	clientsdk.ErrInvalidArgument,
	clientsdk.ErrRateLimited,
}

// TestErrorsEveryReason sends every reason of the broker's error contract over
// the wire and checks which sentinels the client's error matches.
func TestErrorsEveryReason(t *testing.T) {
	type reasonCase struct {
		code   codes.Code
		reason string
		want   []error
	}
	tests := []reasonCase{
		{codes.NotFound, "CREDENTIAL_NOT_FOUND", []error{clientsdk.ErrCredentialNotFound}},
		{codes.FailedPrecondition, "REAUTH_REQUIRED", []error{clientsdk.ErrReauthRequired}},
		{codes.FailedPrecondition, "REFRESH_OUTCOME_UNKNOWN", []error{clientsdk.ErrRefreshOutcomeUnknown, clientsdk.ErrReauthRequired}},
		{codes.Unavailable, "IDP_UNAVAILABLE", []error{clientsdk.ErrUnavailable}},
		{codes.Unavailable, "LOCK_TIMEOUT", []error{clientsdk.ErrUnavailable}},
		{codes.Unavailable, "STORE_UNAVAILABLE", []error{clientsdk.ErrUnavailable}},
		{codes.Unavailable, "SHUTTING_DOWN", []error{clientsdk.ErrUnavailable}},
		{codes.ResourceExhausted, "RATE_LIMITED", []error{clientsdk.ErrRateLimited, clientsdk.ErrUnavailable}},
		{codes.InvalidArgument, "INVALID_ARGUMENT", []error{clientsdk.ErrInvalidArgument}},
		{codes.OutOfRange, "MIN_VALID_TOO_LONG", []error{clientsdk.ErrInvalidArgument}},
		{codes.Unauthenticated, "UNAUTHENTICATED", []error{clientsdk.ErrUnauthenticated, clientsdk.ErrPermissionDenied}},
		{codes.PermissionDenied, "PERMISSION_DENIED", []error{clientsdk.ErrPermissionDenied}},
		{codes.DataLoss, "RECORD_UNREADABLE", nil},
		{codes.FailedPrecondition, "IDP_REJECTED", nil}, // admin calls only: not a reauth of a token reader
		{codes.Internal, "INTERNAL", nil},
		{codes.Canceled, "CANCELLED", nil},                 // matches context.Canceled
		{codes.DeadlineExceeded, "DEADLINE_EXCEEDED", nil}, // matches context.DeadlineExceeded
		// An unknown reason, or none, falls back on the code.
		{codes.Unavailable, "SOMETHING_NEW", []error{clientsdk.ErrUnavailable}},
		{codes.NotFound, "", []error{clientsdk.ErrCredentialNotFound}},
		{codes.FailedPrecondition, "", []error{clientsdk.ErrReauthRequired}},
		{codes.ResourceExhausted, "", []error{clientsdk.ErrRateLimited, clientsdk.ErrUnavailable}},
		{codes.OutOfRange, "", []error{clientsdk.ErrInvalidArgument}},
		{codes.Unauthenticated, "", []error{clientsdk.ErrUnauthenticated, clientsdk.ErrPermissionDenied}},
		{codes.PermissionDenied, "", []error{clientsdk.ErrPermissionDenied}},
		{codes.Internal, "", nil},
		{codes.Unimplemented, "", nil},
	}
	// Every reason of the API's enum is among the cases.
	for _, name := range tbv1.ErrorReasonEnum_ErrorReason_name {
		if name == tbv1.ErrorReasonEnum_ERROR_REASON_UNSPECIFIED.String() {
			continue
		}
		if !slices.ContainsFunc(tests, func(tt reasonCase) bool { return tt.reason == name }) {
			t.Errorf("reason %s of the API is not tested", name)
		}
	}
	f := newFakeBroker()
	c := startBroker(t, f)
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s", tt.code, tt.reason), func(t *testing.T) {
			var details []protoadapt.MessageV1
			if tt.reason != "" {
				details = append(details, &errdetails.ErrorInfo{
					Domain:   clientsdk.ErrorDomain,
					Reason:   tt.reason,
					Metadata: map[string]string{"credential_id": "orders", "field": "min_valid"},
				})
			}
			details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})
			st, err := status.New(tt.code, "broker says no").WithDetails(details...)
			if err != nil {
				t.Fatal(err)
			}
			f.failNext(st.Err())
			_, err = c.TokenSource("orders").Token()

			for _, s := range sentinels {
				want := false
				for _, w := range tt.want {
					want = want || w == s
				}
				if got := errors.Is(err, s); got != want {
					t.Errorf("errors.Is(%v, %v) = %v, want %v", err, s, got, want)
				}
			}
			var e *clientsdk.Error
			if !errors.As(err, &e) {
				t.Fatalf("errors.As(%T, *Error) failed", err)
			}
			if e.Code != tt.code || e.Reason != tt.reason || e.RetryAfter != 1500*time.Millisecond {
				t.Errorf("Error = {Code %v, Reason %q, RetryAfter %v}", e.Code, e.Reason, e.RetryAfter)
			}
			if tt.reason != "" && (e.CredentialID != "orders" || e.Field != "min_valid") {
				t.Errorf("Error = {CredentialID %q, Field %q}", e.CredentialID, e.Field)
			}
			// The status stays reachable, also through wrapping.
			wrapped := fmt.Errorf("worker: %w", err)
			if got, ok := status.FromError(wrapped); !ok || got.Code() != tt.code || len(got.Details()) != len(details) {
				t.Errorf("status.FromError = %v, %v", got, ok)
			}
			if !strings.Contains(err.Error(), "broker says no") {
				t.Errorf("message %q lacks the broker's", err.Error())
			}
		})
	}
}

func TestErrorsForeignDomainIgnored(t *testing.T) {
	f := newFakeBroker()
	st, _ := status.New(codes.Unavailable, "proxy").WithDetails(&errdetails.ErrorInfo{Domain: "proxy.example", Reason: "REAUTH_REQUIRED"})
	f.failNext(st.Err())
	_, err := startBroker(t, f).TokenSource("x").Token()
	var e *clientsdk.Error
	if !errors.As(err, &e) || e.Reason != "" || !errors.Is(err, clientsdk.ErrUnavailable) || errors.Is(err, clientsdk.ErrReauthRequired) {
		t.Fatalf("err = %v (%+v), want plain ErrUnavailable", err, e)
	}
}

func TestErrorsContextEnded(t *testing.T) {
	f := newFakeBroker()
	ts := startBroker(t, f).TokenSource("x")
	ctx, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	_, err := ts.TokenContext(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := ts.TokenContext(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want Canceled", err)
	}
}

// TestEveryReasonMapped fails when a reason of the API's enum has no entry
// in the SDK's mapping to sentinel errors.
func TestEveryReasonMapped(t *testing.T) {
	for n, name := range tbv1.ErrorReasonEnum_ErrorReason_name {
		_, ok := clientsdk.ReasonKinds(name)
		if unspecified := n == int32(tbv1.ErrorReasonEnum_ERROR_REASON_UNSPECIFIED); ok == unspecified {
			t.Errorf("reason %s: mapped = %v", name, ok)
		}
	}
}

// TestErrorsOfTheContext: the reasons of a caller's own context ending
// match the context's errors.
func TestErrorsOfTheContext(t *testing.T) {
	f := newFakeBroker()
	c := startBroker(t, f)
	f.failNext(brokerError(codes.Canceled, "CANCELLED"), brokerError(codes.DeadlineExceeded, "DEADLINE_EXCEEDED"))
	if _, err := c.TokenSource("x").Token(); !errors.Is(err, context.Canceled) || errors.Is(err, clientsdk.ErrUnavailable) {
		t.Errorf("CANCELLED: %v; want context.Canceled", err)
	}
	if _, err := c.TokenSource("x").Token(); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("DEADLINE_EXCEEDED: %v; want context.DeadlineExceeded", err)
	}
}
