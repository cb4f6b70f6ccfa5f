package metrics_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
)

func BenchmarkTokenServed(b *testing.B) {
	m := metrics.New(prometheus.NewRegistry(), metrics.Options{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.TokenServed(broker.FromCache)
		}
	})
}

func BenchmarkRefreshed(b *testing.B) {
	for _, perCredential := range []bool{false, true} {
		name := "aggregate"
		if perCredential {
			name = "per-credential"
		}
		b.Run(name, func(b *testing.B) {
			m := metrics.New(prometheus.NewRegistry(), metrics.Options{PerCredentialLabels: perCredential})
			ev := broker.RefreshEvent{CredentialID: "cred-1", Reason: broker.ReasonAhead, Outcome: broker.OutcomeOK, Duration: 30 * time.Millisecond}
			b.ReportAllocs()
			for b.Loop() {
				m.Refreshed(ev)
			}
		})
	}
}

func BenchmarkObserveRPC(b *testing.B) {
	m := metrics.New(prometheus.NewRegistry(), metrics.Options{})
	const method = "/tokenbroker.v1.TokenService/GetToken"
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveRPC(method, codes.OK, time.Millisecond)
	}
}
