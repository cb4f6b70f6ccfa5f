package metrics

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// The gRPC metrics can be fed in three ways; install exactly one, or
// requests are counted twice.
//
//   - ObserveRPC, called by the outermost interceptor once it knows the
//     final code: with internal/grpcapi, as Options.ObserveCall. It sees
//     calls refused by authentication too, and costs no allocation. This is
//     the one the broker uses.
//   - StatsHandler, given to the server with grpc.StatsHandler. It sees
//     every call to a registered method with the status code the client
//     receives, whatever the interceptors do, but makes gRPC build and copy
//     several events per call.
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
	m.ObserveRPC(method, code, d)
}

// ObserveRPC counts one server call by method and code and observes its
// latency. It is what an outermost interceptor that already knows the final
// code calls (grpcapi.Options.ObserveCall); it costs no allocation once a
// method and code were seen, unlike a stats handler, which makes gRPC build
// and copy several events per call. method must be a registered method's
// full name: it becomes a label value.
func (m *Metrics) ObserveRPC(method string, code codes.Code, d time.Duration) {
	s := m.rpc(method)
	s.latency.Observe(d.Seconds())
	if int(code) < len(s.codes) {
		if c := s.codes[code].Load(); c != nil {
			c.c.Inc()
			return
		}
		c := &counter{m.requests.WithLabelValues(method, code.String())}
		s.codes[code].Store(c)
		c.c.Inc()
		return
	}
	m.requests.WithLabelValues(method, code.String()).Inc()
}

// rpcSeries are the resolved series of one method.
type rpcSeries struct {
	latency prometheus.Observer
	codes   [codes.Unauthenticated + 1]atomic.Pointer[counter]
}

type counter struct{ c prometheus.Counter }

func (m *Metrics) rpc(method string) *rpcSeries {
	m.rmu.RLock()
	s := m.rpcs[method]
	m.rmu.RUnlock()
	if s != nil {
		return s
	}
	m.rmu.Lock()
	defer m.rmu.Unlock()
	if s = m.rpcs[method]; s == nil {
		s = &rpcSeries{latency: m.latency.WithLabelValues(method)}
		if m.rpcs == nil {
			m.rpcs = make(map[string]*rpcSeries)
		}
		m.rpcs[method] = s
	}
	return s
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
