package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

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
