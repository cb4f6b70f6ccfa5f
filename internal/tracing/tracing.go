// Package tracing is tokenbroker's OpenTelemetry wiring: a TracerProvider
// exporting over OTLP when the standard OTEL_EXPORTER_OTLP_* variables ask
// for it (and nothing at all otherwise, so that the hot path pays nothing),
// W3C trace context, the broker.Tracer that traces refreshes, a transport
// that carries the trace to the IdP, and a slog handler that adds trace and
// span IDs to the log lines of a traced call.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Propagator is the W3C trace context (and baggage) propagator every
// traced hop uses.
var Propagator propagation.TextMapPropagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// Enabled reports whether the environment asks for OTLP export of traces:
// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set,
// OTEL_SDK_DISABLED is not true and OTEL_TRACES_EXPORTER is not "none".
func Enabled(getenv func(string) string) bool {
	if v, _ := strconv.ParseBool(getenv("OTEL_SDK_DISABLED")); v {
		return false
	}
	if e := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); e != "" && e != "otlp" {
		return false
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// FromEnv returns a TracerProvider exporting over OTLP as the standard
// variables say (endpoint, headers, protocol grpc or http/protobuf, the
// default; OTEL_SERVICE_NAME, default tokenbroker; OTEL_RESOURCE_ATTRIBUTES;
// OTEL_TRACES_SAMPLER), or nil, nil when they ask for none (Enabled). The
// exporter dials lazily: an unreachable collector does not fail the start.
// Shut the provider down at exit to flush the last spans.
func FromEnv(ctx context.Context, getenv func(string) string, version string) (*sdktrace.TracerProvider, error) {
	if !Enabled(getenv) {
		return nil, nil
	}
	protocol := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var client otlptrace.Client
	switch protocol {
	case "", "http/protobuf":
		client = otlptracehttp.NewClient()
	case "grpc":
		client = otlptracegrpc.NewClient()
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q: want grpc or http/protobuf", protocol)
	}
	exp, err := otlptrace.New(ctx, client)
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", "tokenbroker"), attribute.String("service.version", version)}
	res, err := resource.New(ctx, resource.WithAttributes(attrs...), resource.WithTelemetrySDK(),
		resource.WithFromEnv()) // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}

// SetGlobal makes tp and Propagator the process's OpenTelemetry globals,
// for libraries that use them (clientsdk's default, for one).
func SetGlobal(tp trace.TracerProvider) {
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(Propagator)
}

// instrumentation is the name of the tracer of tokenbroker's own spans.
const instrumentation = "github.com/tokenbroker/tokenbroker"

// Attribute keys of tokenbroker's spans.
const (
	AttrCredentialID = attribute.Key("tokenbroker.credential_id")
	AttrGeneration   = attribute.Key("tokenbroker.generation")
	AttrOutcome      = attribute.Key("tokenbroker.outcome")
)

// Tracer is the broker.Tracer of a TracerProvider: its spans are named
// "tokenbroker." + the broker's step.
type Tracer struct{ t trace.Tracer }

// NewTracer returns the broker.Tracer of tp.
func NewTracer(tp trace.TracerProvider) *Tracer {
	return &Tracer{t: tp.Tracer(instrumentation)}
}

var _ broker.Tracer = (*Tracer)(nil)

// Start implements broker.Tracer.
func (t *Tracer) Start(ctx context.Context, name, credentialID string, generation uint64) (context.Context, broker.Span) {
	ctx, s := t.t.Start(ctx, "tokenbroker."+name, trace.WithAttributes(
		AttrCredentialID.String(credentialID), AttrGeneration.Int64(int64(generation))))
	return ctx, span{s}
}

// Carry implements broker.Tracer.
func (*Tracer) Carry(from, to context.Context) context.Context {
	return trace.ContextWithSpanContext(to, trace.SpanContextFromContext(from))
}

type span struct{ s trace.Span }

func (s span) End(outcome string, generation uint64, err error) {
	s.s.SetAttributes(AttrOutcome.String(outcome), AttrGeneration.Int64(int64(generation)))
	if err != nil {
		// The broker's errors name no secret (invariant 7); the IdP's
		// answers are classified, never echoed with a token.
		s.s.SetStatus(codes.Error, err.Error())
	}
	s.s.End()
}

// Transport returns rt carrying the trace context of each request's
// context in its headers (traceparent, tracestate).
func Transport(rt http.RoundTripper) http.RoundTripper {
	return propagating{rt}
}

type propagating struct{ rt http.RoundTripper }

func (p propagating) RoundTrip(r *http.Request) (*http.Response, error) {
	if !trace.SpanContextFromContext(r.Context()).IsValid() {
		return p.rt.RoundTrip(r)
	}
	r = r.Clone(r.Context()) // a RoundTripper must not modify the request
	Propagator.Inject(r.Context(), propagation.HeaderCarrier(r.Header))
	return p.rt.RoundTrip(r)
}

// LogHandler returns h adding trace_id and span_id to every record logged
// with a context that carries a valid span.
func LogHandler(h slog.Handler) slog.Handler { return logHandler{h} }

type logHandler struct{ slog.Handler }

func (h logHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return logHandler{h.Handler.WithAttrs(attrs)}
}

func (h logHandler) WithGroup(name string) slog.Handler { return logHandler{h.Handler.WithGroup(name)} }
