package metrics

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// The gRPC metrics can be fed in two ways; install exactly one, or requests
// are counted twice.
//
//   - StatsHandler, given to the server with grpc.StatsHandler. It sees
//     every call to a registered method with the status code the client
//     receives, whatever the interceptors do, including calls refused by
//     authentication. This is the one to use with internal/grpcapi, whose
//     own interceptor (authentication, error conversion) runs outside any
//     interceptor added through its ServerOptions.
//   - UnaryServerInterceptor and StreamServerInterceptor. They read the code
//     from the error the next handler returns, so they must run outside
//     whatever turns errors into statuses: an error without a status counts
//     as UNKNOWN.
//
// Either way the labels are the full method name of a registered method
// (gRPC answers unknown methods before either sees them) and the code name.

// StatsHandler returns a grpc stats.Handler that counts every server call by
// method and code and observes its latency.
func (m *Metrics) StatsHandler() stats.Handler { return statsHandler{m} }

// UnaryServerInterceptor returns an interceptor that counts unary calls by
// method and code and observes their latency. See StatsHandler for where it
// must sit.
func (m *Metrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		m.observeRPC(info.FullMethod, status.Code(err), time.Since(start))
		return resp, err
	}
}

// StreamServerInterceptor is the streaming counterpart of
// UnaryServerInterceptor.
func (m *Metrics) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		m.observeRPC(info.FullMethod, status.Code(err), time.Since(start))
		return err
	}
}

func (m *Metrics) observeRPC(method string, code codes.Code, d time.Duration) {
	m.requests.WithLabelValues(method, code.String()).Inc()
	m.latency.WithLabelValues(method).Observe(d.Seconds())
}

type statsHandler struct{ m *Metrics }

type methodKey struct{}

// TagRPC keeps the method name for HandleRPC. gRPC calls it for every
// stream, known method or not; only calls that reach a registered method
// end with a stats.End and are counted.
func (h statsHandler) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, methodKey{}, info.FullMethodName)
}

// HandleRPC counts a server call when it ends.
func (h statsHandler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	end, ok := s.(*stats.End)
	if !ok || end.IsClient() {
		return
	}
	method, ok := ctx.Value(methodKey{}).(string)
	if !ok {
		return
	}
	h.m.observeRPC(method, status.Code(end.Error), end.EndTime.Sub(end.BeginTime))
}

func (statsHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (statsHandler) HandleConn(context.Context, stats.ConnStats) {}
