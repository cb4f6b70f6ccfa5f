package server

import (
	"log/slog"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/tracing"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// Tracing, when Config.TracerProvider is set: otelgrpc on the gRPC server
// (W3C trace context from the callers), the broker's refresh spans, the
// trace context carried to the IdP, and trace and span IDs in the log lines
// of a traced call. Without one none of it is installed, so the hot path
// pays nothing.

// traced returns log adding trace and span IDs when tracing is on.
func (s *Server) traced(log *slog.Logger) *slog.Logger {
	if s.cfg.TracerProvider == nil {
		return log
	}
	return slog.New(tracing.LogHandler(log.Handler()))
}

// tracer is the broker's Tracer, nil without tracing.
func (s *Server) tracer() broker.Tracer {
	if s.cfg.TracerProvider == nil {
		return nil
	}
	return tracing.NewTracer(s.cfg.TracerProvider)
}

// upstreamClient is the IdP client, carrying the trace context when tracing
// is on.
func (s *Server) upstreamClient() *upstream.Client {
	if s.cfg.TracerProvider == nil {
		return &upstream.Client{}
	}
	return &upstream.Client{HTTPClient: upstream.DefaultHTTPClientWith(tracing.Transport)}
}

// tracingOptions are the gRPC server options of tracing.
func (s *Server) tracingOptions() []grpc.ServerOption {
	if s.cfg.TracerProvider == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(s.cfg.TracerProvider), otelgrpc.WithPropagators(tracing.Propagator),
		otelgrpc.WithFilter(filters.Not(filters.HealthCheck())), // probes every few seconds are not worth a trace
	))}
}
