package tracing

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// TestEnabled: export is on only when an OTLP endpoint is named, and the
// SDK is not disabled.
func TestEnabled(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want bool
	}{
		{nil, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}, false},
	} {
		if got := Enabled(env(tc.env)); got != tc.want {
			t.Errorf("Enabled(%v) = %v", tc.env, got)
		}
	}
	tp, err := FromEnv(context.Background(), env(nil), "v1")
	if tp != nil || err != nil {
		t.Errorf("FromEnv without an endpoint = %v, %v; want nil, nil", tp, err)
	}
	if _, err := FromEnv(context.Background(), env(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}), "v1"); err == nil {
		t.Error("FromEnv accepted an unknown protocol")
	}
	tp, err = FromEnv(context.Background(), env(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}), "v1")
	if err != nil || tp == nil {
		t.Fatalf("FromEnv = %v, %v", tp, err)
	}
	_ = tp.Shutdown(context.Background())
}

// TestLogHandler: a record logged with a traced context names the trace and
// span; one without does not.
func TestLogHandler(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(LogHandler(slog.NewJSONHandler(&buf, nil)))
	tp := sdktrace.NewTracerProvider()
	ctx, sp := tp.Tracer("t").Start(context.Background(), "op")
	log.InfoContext(ctx, "traced")
	log.Info("plain")
	sp.End()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"trace_id":"`+sp.SpanContext().TraceID().String()) ||
		!strings.Contains(lines[0], `"span_id":"`+sp.SpanContext().SpanID().String()) || strings.Contains(lines[1], "trace_id") {
		t.Errorf("log = %s", buf.String())
	}
}
