package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionalphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// publicPrefixes are the method prefixes of the services that answer
// without authentication, so that probes and grpcurl work out of the box.
// They expose no credential.
var publicPrefixes = []string{
	"/" + healthpb.Health_ServiceDesc.ServiceName + "/",
	"/" + reflectionpb.ServerReflection_ServiceDesc.ServiceName + "/",
	"/" + reflectionalphapb.ServerReflection_ServiceDesc.ServiceName + "/",
}

func isPublic(fullMethod string) bool {
	for _, p := range publicPrefixes {
		if strings.HasPrefix(fullMethod, p) {
			return true
		}
	}
	return false
}

// errPanic is what a call that panicked ends with: INTERNAL, as the table
// does not know it.
var errPanic = errors.New("grpcapi: handler panicked")

// limitedMethods are the methods that may call the IdP on demand (forced
// refreshes); Options.Limiter limits them per client. This is the one list
// of them: the Limiter, the README and the broker's flag help describe
// these.
var limitedMethods = map[string]bool{
	pb.TokenService_InvalidateToken_FullMethodName:   true,
	pb.AdminService_RefreshCredential_FullMethodName: true,
}

// unary is the one unary interceptor: authenticate, then, with panic
// recovery, run Options.UnaryInterceptors, apply the per-client limit and
// call the handler; convert the error through errorTable, log one line.
func (s *Server) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	id := requestCredentialID(req)
	var caller broker.Caller
	var err error
	if tracked := !isPublic(info.FullMethod); tracked && !s.drain.enter() {
		err = errShuttingDown
	} else {
		if tracked {
			defer s.drain.leave()
		}
		ctx, caller, err = s.authenticate(ctx, info.FullMethod)
	}
	var resp any
	if err == nil {
		err = s.protect(ctx, info.FullMethod, func() error {
			var herr error
			resp, herr = s.call(ctx, req, info, handler, caller, 0)
			return herr
		})
	}
	st := toStatus(err, id)
	s.logCall(ctx, info.FullMethod, start, st, err, id, caller)
	if s.observe != nil {
		s.observe(info.FullMethod, st.Code(), time.Since(start))
	}
	if err != nil {
		return nil, forCaller(st, caller.Admin).Err()
	}
	return resp, nil
}

// call runs the interceptors s.inner[i:], then the per-client limit and the
// handler, for an authenticated call of caller.
func (s *Server) call(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler, caller broker.Caller, i int) (any, error) {
	if i < len(s.inner) {
		return s.inner[i](ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return s.call(ctx, req, info, handler, caller, i+1)
		})
	}
	if s.limit != nil && limitedMethods[info.FullMethod] {
		if ok, wait := s.limit.Allow(caller.ID); !ok {
			return nil, &broker.Error{Kind: broker.ErrRateLimited, RetryAfter: wait, Detail: "too many calls from this client"}
		}
	}
	return handler(ctx, req)
}

// stream is the stream counterpart of unary: authenticate, then, with panic
// recovery, apply the per-client limit (no streaming method is in
// limitedMethods today) and call the handler; convert the error through
// errorTable, log one line (with the credential the request names) and
// observe the call, once the stream is over. UnaryInterceptors are not run:
// the audit trail covers AdminService, which has no streaming method.
func (s *Server) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	ctx, caller, err := s.authenticate(ss.Context(), info.FullMethod)
	rs := &serverStream{ServerStream: ss, ctx: ctx}
	if err == nil {
		err = s.protect(ctx, info.FullMethod, func() error {
			if s.limit != nil && limitedMethods[info.FullMethod] {
				if ok, wait := s.limit.Allow(caller.ID); !ok {
					return &broker.Error{Kind: broker.ErrRateLimited, RetryAfter: wait, Detail: "too many calls from this client"}
				}
			}
			if isPublic(info.FullMethod) {
				return handler(srv, rs)
			}
			return s.drainStream(rs, func(ss grpc.ServerStream) error { return handler(srv, ss) })
		})
	}
	st := toStatus(err, rs.id)
	s.logCall(ctx, info.FullMethod, start, st, err, rs.id, caller)
	if s.observe != nil {
		s.observe(info.FullMethod, st.Code(), time.Since(start))
	}
	return forCaller(st, caller.Admin).Err()
}

// serverStream is a ServerStream whose context carries the caller, and
// which keeps the credential the (first) request names, for the log line
// and the error.
type serverStream struct {
	grpc.ServerStream
	ctx context.Context
	id  string // only the handler's goroutine touches it
}

func (s *serverStream) Context() context.Context { return s.ctx }

func (s *serverStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil && s.id == "" {
		s.id = requestCredentialID(m)
	}
	return err
}

// authenticate returns ctx carrying the caller of a call to fullMethod.
// Public services are not authenticated; without an Authenticator every
// caller is anonymous.
func (s *Server) authenticate(ctx context.Context, fullMethod string) (context.Context, broker.Caller, error) {
	if isPublic(fullMethod) {
		return ctx, broker.Caller{}, nil
	}
	if s.auth == nil {
		return broker.NewContext(ctx, broker.Caller{}), broker.Caller{}, nil
	}
	c, err := s.auth.Authenticate(ctx)
	if err != nil {
		var be *broker.Error
		switch {
		case errors.As(err, &be):
		case errors.Is(err, broker.ErrPermissionDenied):
			err = &broker.Error{Kind: broker.ErrPermissionDenied, Err: err}
		default:
			err = &broker.Error{Kind: broker.ErrUnauthenticated, Err: err}
		}
		return ctx, broker.Caller{}, err
	}
	return broker.NewContext(ctx, c), c, nil
}

// protect runs call, turning a panic into errPanic. The panic is logged with
// its stack, as it is a bug.
func (s *Server) protect(ctx context.Context, method string, call func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.LogAttrs(ctx, slog.LevelError, "panic in grpc handler",
				slog.String("method", method), slog.String("panic", fmt.Sprint(r)), slog.String("stack", string(debug.Stack())))
			err = errPanic
		}
	}()
	return call()
}

// logCall writes the access log line of one call: what was called, how it
// ended and how long it took (duration_ms), never a token, a secret or a
// request body. OK is logged at Debug; a failure of the server or of what
// it depends on (serverFailure: the Store, the IdP, a dead grant, INTERNAL)
// at Warn with its cause (the real error, which the client may not see),
// at most once per credential per failureLogInterval (the next line says
// how many were left out); a refusal of the request at Info.
func (s *Server) logCall(ctx context.Context, method string, start time.Time, st *status.Status, err error, id string, caller broker.Caller) {
	level := slog.LevelInfo
	switch {
	case st.Code() == codes.OK:
		level = slog.LevelDebug
	case serverFailure(st.Code()):
		level = slog.LevelWarn
	}
	if !s.log.Enabled(ctx, level) {
		return
	}
	if id == "" {
		var be *broker.Error
		if errors.As(err, &be) {
			id = be.CredentialID
		}
	}
	suppressed := 0
	if level == slog.LevelWarn {
		ok, n := s.failures.allow(id, time.Now(), failureLogInterval)
		if !ok {
			return
		}
		suppressed = n
	}
	attrs := make([]slog.Attr, 0, 9)
	attrs = append(attrs,
		slog.String("method", method),
		slog.String("code", st.Code().String()),
		slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
	)
	if id != "" {
		attrs = append(attrs, slog.String("credential_id", id))
	}
	if caller.ID != "" {
		attrs = append(attrs, slog.String("caller", caller.ID))
	}
	if st.Code() != codes.OK {
		attrs = append(attrs, slog.String("reason", reasonOf(st)))
		msg := st.Message()
		if level == slog.LevelWarn && err != nil {
			msg = err.Error()
		}
		attrs = append(attrs, slog.String("error", msg))
		if level == slog.LevelWarn {
			if cause := errors.Unwrap(err); cause != nil && cause.Error() != msg {
				attrs = append(attrs, slog.String("cause", cause.Error()))
			}
			if suppressed > 0 {
				attrs = append(attrs, slog.Int("suppressed", suppressed))
			}
		}
	}
	s.log.LogAttrs(ctx, level, "grpc call", attrs...)
}

// reasonOf returns the ErrorInfo reason of st, or "".
func reasonOf(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}

// requestCredentialID returns the credential a request names, if it is a
// valid ID (anything else is not worth echoing into logs or errors).
func requestCredentialID(req any) string {
	var id string
	switch r := req.(type) {
	case interface{ GetCredentialId() string }:
		id = r.GetCredentialId()
	case interface{ GetCredential() *pb.Credential }:
		id = r.GetCredential().GetId()
	case interface{ GetId() string }:
		id = r.GetId()
	}
	if id == "" || broker.ValidateID("id", id) != nil {
		return ""
	}
	return id
}
