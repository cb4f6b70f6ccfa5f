package audit

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// adminPrefix starts the full method name of every AdminService call.
var adminPrefix = "/" + pb.AdminService_ServiceDesc.ServiceName + "/"

// UnaryServerInterceptor returns an interceptor that writes one "admin"
// event for every call to tokenbroker.v1.AdminService and lets every other
// call through untouched. The event holds:
//
//   - caller: the broker.Caller in the call's context (broker.CallerFrom),
//     empty when there is none; admin: whether it is an admin identity;
//   - method: the full method name;
//   - credential_id: the id the request names (Get, Delete, Refresh) or
//     the id of the credential it carries (Put), when it is a valid ID;
//   - code: the call's gRPC code, and error: the error's text when it
//     failed;
//   - generation and state, when the response carries a credential; count,
//     when it carries a list;
//   - duration.
//
// Nothing else is read from the request or the response: not a secret, not
// a body.
//
// The interceptor must run where the caller is known, that is inside the
// one that authenticates. If errors there are not yet gRPC statuses (as in
// internal/grpcapi, which converts the broker's errors on the way out),
// codeOf must give the code each error will be sent with; nil means
// status.Code, right for errors that already are statuses (an error
// without a status is then logged as UNKNOWN).
func (l *Log) UnaryServerInterceptor(codeOf func(error) codes.Code) grpc.UnaryServerInterceptor {
	if codeOf == nil {
		codeOf = status.Code
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !strings.HasPrefix(info.FullMethod, adminPrefix) {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		l.admin(ctx, info.FullMethod, req, resp, err, codeOf, time.Since(start))
		return resp, err
	}
}

// admin writes the event of one AdminService call: at Info when it
// succeeded, at Warn when it failed.
func (l *Log) admin(ctx context.Context, method string, req, resp any, err error, codeOf func(error) codes.Code, d time.Duration) {
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelWarn
	}
	if !l.log.Enabled(ctx, level) {
		return
	}
	caller, ok := broker.CallerFrom(ctx)
	name := "" // not authenticated
	if ok {
		name = caller.Name() // "anonymous" on an open broker
	}
	attrs := make([]slog.Attr, 0, 11)
	attrs = append(attrs,
		slog.Bool("audit", true),
		slog.String("caller", name),
		slog.Bool("admin", caller.Admin),
		slog.String("method", method),
	)
	if id := requestID(req); id != "" {
		attrs = append(attrs, slog.String("credential_id", id))
	}
	code := codes.OK
	if err != nil {
		code = codeOf(err)
	}
	attrs = append(attrs, slog.String("code", code.String()))
	if err != nil {
		// Errors from the broker and the transport hold no secret by
		// contract.
		attrs = append(attrs, slog.String("error", err.Error()))
	} else {
		switch r := resp.(type) {
		case interface{ GetCredential() *pb.Credential }:
			if c := r.GetCredential(); c != nil {
				attrs = append(attrs,
					slog.Uint64("generation", c.GetGeneration()),
					slog.String("state", c.GetState().String()))
			}
		case interface{ GetCredentials() []*pb.Credential }:
			attrs = append(attrs, slog.Int("count", len(r.GetCredentials())))
		}
	}
	attrs = append(attrs, slog.Float64("duration_ms", float64(d.Microseconds())/1000))
	l.log.LogAttrs(ctx, level, "admin", attrs...)
}

// requestID returns the credential ID an admin request names, when it is a
// valid one: anything else is not worth echoing into the trail.
func requestID(req any) string {
	var id string
	switch r := req.(type) {
	case interface{ GetCredential() *pb.Credential }:
		id = r.GetCredential().GetId()
	case interface{ GetId() string }:
		id = r.GetId()
	}
	if broker.ValidateID("id", id) != nil {
		return ""
	}
	return id
}
