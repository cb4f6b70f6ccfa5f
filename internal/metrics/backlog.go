package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BacklogSource reports the refreshes ahead of expiry waiting for their
// turn and how far behind the oldest is (broker.Broker.Backlog).
type BacklogSource func() (queued int, behind time.Duration)

// SetBacklogSource sets what the refresh-ahead backlog gauges report; until
// it is set they report 0.
func (m *Metrics) SetBacklogSource(src BacklogSource) { m.backlog.src.Store(&src) }

// backlogCollector is the prometheus.Collector of the backlog gauges, read
// at each scrape.
type backlogCollector struct {
	src    atomic.Pointer[BacklogSource]
	queued *prometheus.Desc
	behind *prometheus.Desc
}

func newBacklogCollector() *backlogCollector {
	return &backlogCollector{
		queued: prometheus.NewDesc(namespace+"_refresh_ahead_queued",
			"Refreshes ahead of expiry waiting for a worker or for the IdP's turn (--idp-rate, --idp-max-concurrency).", nil, nil),
		behind: prometheus.NewDesc(namespace+"_refresh_ahead_behind_seconds",
			"How long ago the token of the soonest-expiring queued refresh expired: 0 while the refreshes ahead keep up.", nil, nil),
	}
}

func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.queued
	ch <- c.behind
}

func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	var q int
	var behind time.Duration
	if src := c.src.Load(); src != nil {
		q, behind = (*src)()
	}
	ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(q))
	ch <- prometheus.MustNewConstMetric(c.behind, prometheus.GaugeValue, behind.Seconds())
}
