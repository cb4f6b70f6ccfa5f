package server

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// registerBuildInfo adds tokenbroker_build_info{version,revision,goversion}
// 1 to reg, so dashboards can tell which build each replica runs.
func registerBuildInfo(reg prometheus.Registerer, cfg *Config) {
	orUnknown := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tokenbroker_build_info",
		Help: "Always 1; its labels tell the build: version and revision as stamped into cmd/broker, and the Go version.",
		ConstLabels: prometheus.Labels{
			"version":   orUnknown(cfg.Version),
			"revision":  orUnknown(cfg.Revision),
			"goversion": runtime.Version(),
		},
	})
	g.Set(1)
	reg.MustRegister(g)
}
