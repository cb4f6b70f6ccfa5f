package server

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// newMetrics returns the metrics of cfg on a new registry that also holds
// the Go and process collectors, or nil, nil without MetricsAddr.
func newMetrics(cfg *Config) (*metrics.Metrics, *prometheus.Registry) {
	if cfg.MetricsAddr == "" {
		return nil, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerBuildInfo(reg, cfg)
	m := metrics.New(reg, metrics.Options{PerCredentialLabels: cfg.MetricsPerCredential, StateInterval: cfg.MetricsStateInterval})
	return m, reg
}

// metricsCaller is the identity the credentials-by-state gauge lists the
// credentials as.
var metricsCaller = broker.Caller{ID: "tokenbroker-metrics", Admin: true}

// countStates returns the source of the credentials-by-state gauge: it pages
// through every credential as an admin, counts their states as shown
// (PENDING_AUTHORIZATION too) and names those in REAUTH_REQUIRED.
func countStates(b *broker.Broker) metrics.StateListing {
	return func(ctx context.Context) (map[broker.State]int, []string, error) {
		ctx = broker.NewContext(ctx, metricsCaller)
		counts := make(map[broker.State]int)
		var reauth []string
		page := ""
		for {
			if err := ctx.Err(); err != nil {
				return nil, nil, err
			}
			recs, next, err := b.ListCredentials(ctx, broker.MaxPageSize, page)
			if err != nil {
				return nil, nil, err
			}
			now := time.Now()
			for _, r := range recs {
				st := r.ViewState(now)
				counts[st]++
				if st == broker.StateReauthRequired {
					reauth = append(reauth, r.ID)
				}
			}
			if next == "" {
				return counts, reauth, nil
			}
			page = next
		}
	}
}

// forgetDeleted is an interceptor that drops the per-credential metric
// series of a credential once DeleteCredential removed it.
func forgetDeleted(m *metrics.Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err == nil && info.FullMethod == pb.AdminService_DeleteCredential_FullMethodName {
			if r, ok := req.(*pb.DeleteCredentialRequest); ok {
				m.ForgetCredential(r.GetId())
			}
		}
		return resp, err
	}
}

// httpMux serves the HTTP endpoints of MetricsAddr: /metrics, the
// Prometheus page, and /healthz and /readyz (healthMux).
func httpMux(h *health, metricsPage http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metricsPage)
	healthMux(mux, h)
	return mux
}
