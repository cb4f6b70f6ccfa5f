package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tokenbroker/tokenbroker/clientsdk"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/tracing"
)

// TestTracedGetToken: a GetToken through the SDK that makes the broker
// refresh yields one trace, SDK client span -> broker server span ->
// tokenbroker.refresh -> tokenbroker.idp.token (and the Store writes), whose
// context reaches the IdP as a W3C traceparent; the spans carry the
// credential ID, generation and outcome and never a token; the call's log
// line names the trace and span.
func TestTracedGetToken(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(ctxFor(t)) }()
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	tracing.SetGlobal(tp) // the SDK's spans, through the globals
	defer func() { otel.SetTracerProvider(prevTP); otel.SetTextMapPropagator(prevProp) }()

	idp := fakeidp.New(fakeidp.Options{Clients: map[string]string{idpClientID: idpClientSecret}})
	var mu sync.Mutex
	var traceparents []string
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		traceparents = append(traceparents, r.Header.Get("traceparent"))
		mu.Unlock()
		idp.Handler().ServeHTTP(w, r)
	}))
	defer front.Close()
	seed := idp.Seed(idpClientID)
	cfg := testConfig()
	cfg.TracerProvider = tp
	cfg.CredentialsFile = writeFile(t, fmt.Sprintf(`{"credentials": [{"id": "traced", "token_url": %q, "client_id": %q, "client_secret": %q, "refresh_token": %q}]}`,
		front.URL+fakeidp.TokenPath, idpClientID, idpClientSecret, seed))
	s := start(t, cfg)

	// Without the WatchToken stream: the stream's fan-out refreshes on the
	// replica's own context, not the caller's, so whether the first
	// refresh ran under the SDK's GetToken would be a race.
	client, err := clientsdk.Dial(s.GRPCAddr(), clientsdk.WithInsecure(), clientsdk.WithoutWatch())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	tok, err := client.TokenSource("traced").Token()
	if err != nil {
		t.Fatalf("Token: %v\n%s", err, s.logs)
	}

	byName := func(name string, kind trace.SpanKind) tracetest.SpanStub {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			for _, sp := range exp.GetSpans() {
				if sp.Name == name && sp.SpanKind == kind {
					return sp
				}
			}
			if time.Now().After(deadline) {
				var names []string
				for _, sp := range exp.GetSpans() {
					names = append(names, sp.Name+"/"+sp.SpanKind.String())
				}
				t.Fatalf("no span %s (%v); spans: %v", name, kind, names)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The refresh runs under the SDK's GetToken: SDK client span -> broker
	// server span.
	refresh := byName("tokenbroker.refresh", trace.SpanKindInternal)
	idpCall := byName("tokenbroker.idp.token", trace.SpanKindInternal)
	mark := byName("tokenbroker.store.mark_pending", trace.SpanKindInternal)
	settle := byName("tokenbroker.store.settle", trace.SpanKindInternal)
	spanByID := func(id trace.SpanID) (tracetest.SpanStub, bool) {
		deadline := time.Now().Add(5 * time.Second)
		for {
			for _, sp := range exp.GetSpans() {
				if sp.SpanContext.SpanID() == id {
					return sp, true
				}
			}
			if time.Now().After(deadline) {
				return tracetest.SpanStub{}, false
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	srvSpan, ok := spanByID(refresh.Parent.SpanID())
	if !ok || srvSpan.SpanKind != trace.SpanKindServer || !strings.HasPrefix(srvSpan.Name, "tokenbroker.v1.TokenService/") {
		t.Fatalf("the refresh's parent %q (%v) is not a broker server span", srvSpan.Name, srvSpan.SpanKind)
	}
	sdkSpan, ok := spanByID(srvSpan.Parent.SpanID())
	if !ok || sdkSpan.SpanKind != trace.SpanKindClient || sdkSpan.Name != srvSpan.Name {
		t.Fatalf("the broker span's parent %q (%v) is not the SDK's client span of %s", sdkSpan.Name, sdkSpan.SpanKind, srvSpan.Name)
	}
	t.Logf("span tree: SDK %s -> broker %s -> %s -> %s", sdkSpan.Name, srvSpan.Name, refresh.Name, idpCall.Name)
	for _, c := range []struct {
		name          string
		child, parent tracetest.SpanStub
	}{
		{"IdP call <- refresh", idpCall, refresh},
		{"mark pending <- broker server", mark, srvSpan},
		{"settle <- refresh", settle, refresh},
	} {
		if c.child.SpanContext.TraceID() != sdkSpan.SpanContext.TraceID() || c.child.Parent.SpanID() != c.parent.SpanContext.SpanID() {
			t.Errorf("%s: %s is not a child of %s", c.name, c.child.Name, c.parent.Name)
		}
	}
	attrs := map[string]string{}
	for _, kv := range idpCall.Attributes {
		attrs[string(kv.Key)] = kv.Value.String()
	}
	if attrs["tokenbroker.credential_id"] != "traced" || attrs["tokenbroker.outcome"] != "ok" || attrs["tokenbroker.generation"] == "" {
		t.Errorf("IdP span attributes = %v", attrs)
	}
	for _, kv := range refresh.Attributes {
		if kv.Key == tracing.AttrOutcome && kv.Value.AsString() != "ok" {
			t.Errorf("refresh outcome %q", kv.Value.AsString())
		}
	}
	for _, sp := range exp.GetSpans() {
		for _, kv := range sp.Attributes {
			for _, secret := range []string{tok.AccessToken, seed, idpClientSecret} {
				if strings.Contains(kv.Value.String(), secret) {
					t.Errorf("span %s attribute %s holds a secret", sp.Name, kv.Key)
				}
			}
		}
	}

	mu.Lock()
	tps := append([]string(nil), traceparents...)
	mu.Unlock()
	want := fmt.Sprintf("00-%s-%s-01", idpCall.SpanContext.TraceID(), idpCall.SpanContext.SpanID())
	if len(tps) == 0 || tps[0] != want {
		t.Errorf("the IdP got traceparent %q; want %q", tps, want)
	}

	// Health probes are not traced.
	if _, err := healthpb.NewHealthClient(dial(t, s.GRPCAddr())).Check(ctxFor(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}

	s.stop(t) // every server span has ended
	getSpan := byName("tokenbroker.v1.TokenService/GetToken", trace.SpanKindServer)
	for _, sp := range exp.GetSpans() {
		if strings.HasPrefix(sp.Name, "grpc.health.v1.Health/") && sp.SpanKind == trace.SpanKindServer {
			t.Errorf("a health check was traced: %s", sp.Name)
		}
	}
	found := false
	for _, line := range strings.Split(s.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["msg"] != "grpc call" || m["method"] != "/tokenbroker.v1.TokenService/GetToken" {
			continue
		}
		found = true
		if m["trace_id"] != getSpan.SpanContext.TraceID().String() || m["span_id"] != getSpan.SpanContext.SpanID().String() {
			t.Errorf("access log line %s: want trace_id %s, span_id %s", line, getSpan.SpanContext.TraceID(), getSpan.SpanContext.SpanID())
		}
	}
	if !found {
		t.Errorf("no access log line for GetToken:\n%s", s.logs)
	}
}
