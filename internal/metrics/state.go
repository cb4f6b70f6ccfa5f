package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// StateSource counts the stored credentials by state, typically by listing
// them all through the broker's admin API. It is called with a deadline.
type StateSource func(ctx context.Context) (map[broker.State]int, error)

// knownStates are always reported, at 0 when no credential is in them, so
// that alerts on REAUTH_REQUIRED > 0 have a series to look at.
var knownStates = []broker.State{broker.StateActive, broker.StateReauthRequired, broker.StateUnreadable, broker.StatePendingAuthorization}

// StateListing is a StateSource that also names the credentials in
// REAUTH_REQUIRED, for tokenbroker_credential_reauth_required.
type StateListing func(ctx context.Context) (counts map[broker.State]int, reauth []string, err error)

// SetStateListing is SetStateSource with the names of the credentials in
// REAUTH_REQUIRED: from the same listings, the gauge
// tokenbroker_credential_reauth_required{credential_id} is 1 for each of
// them and absent for every other credential, so its series are bounded by
// the credentials in trouble, not by the fleet.
func (m *Metrics) SetStateListing(src StateListing) {
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	m.state.src = src
	m.state.at = time.Time{}
}

// SetStateSource sets what feeds the tokenbroker_credentials gauge
// (credentials by state). Listing every credential is not free, so the
// result is cached: a scrape calls src only when the last call is at least
// Options.StateInterval old, concurrent scrapes share one call, and a failed
// call is not retried before the interval is over either (it counts in
// tokenbroker_credentials_listing_errors_total and leaves the gauge out of
// the scrapes until a call succeeds). Each call gets Options.StateTimeout.
// Until a source is set the gauge is absent.
func (m *Metrics) SetStateSource(src StateSource) {
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	m.state.src = func(ctx context.Context) (map[broker.State]int, []string, error) {
		counts, err := src(ctx)
		return counts, nil, err
	}
	m.state.at = time.Time{} // list at the next scrape
}

// stateCollector is the prometheus.Collector of the credentials gauge.
type stateCollector struct {
	interval, timeout time.Duration
	desc              *prometheus.Desc
	reauthDesc        *prometheus.Desc
	errors            prometheus.Counter

	mu     sync.Mutex // held across a listing: concurrent scrapes share it
	src    StateListing
	at     time.Time // of the last listing; zero: never
	counts map[string]int
	reauth []string
	ok     bool // the last listing succeeded
}

func newStateCollector(interval, timeout time.Duration) *stateCollector {
	return &stateCollector{
		interval: interval,
		timeout:  timeout,
		desc: prometheus.NewDesc(namespace+"_credentials",
			"Stored credentials by state (ACTIVE, REAUTH_REQUIRED), as of the last listing.",
			[]string{"state"}, nil),
		reauthDesc: prometheus.NewDesc(namespace+"_credential_reauth_required",
			"1 for each credential in REAUTH_REQUIRED, as of the last listing; absent for the others.",
			[]string{"credential_id"}, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "credentials_listing_errors_total",
			Help: "Listings of the credentials for the tokenbroker_credentials gauge that failed.",
		}),
	}
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.reauthDesc
	c.errors.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.src != nil && (c.at.IsZero() || time.Since(c.at) >= c.interval) {
		c.list()
	}
	if c.src != nil && c.ok {
		for state, n := range c.counts {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), state)
		}
		for _, id := range c.reauth {
			ch <- prometheus.MustNewConstMetric(c.reauthDesc, prometheus.GaugeValue, 1, id)
		}
	}
	c.errors.Collect(ch)
}

// list calls the source and keeps its answer. c.mu is held.
func (c *stateCollector) list() {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	got, reauth, err := c.src(ctx)
	c.at = time.Now()
	if err != nil {
		c.ok = false
		c.errors.Inc()
		return
	}
	counts := make(map[string]int, len(knownStates))
	for _, s := range knownStates {
		counts[s.String()] = 0
	}
	for s, n := range got {
		// State.String is a fixed set of names: no other label value.
		counts[s.String()] += n
	}
	c.counts, c.reauth, c.ok = counts, reauth, true
}
