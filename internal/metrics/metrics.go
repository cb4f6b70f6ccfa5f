// Package metrics exposes what tokenbroker does as Prometheus metrics: tokens
// served by source, refresh lock waits, refreshes by reason and outcome, IdP
// call latency, gRPC requests by method and code with their latency, and
// credentials by state.
//
// A *Metrics is a broker.Observer; give it to broker.Config.Observer. Its
// label values are fixed enums, gRPC method names and codes, and, only when
// Options.PerCredentialLabels is set, credential IDs: never a token, a secret
// or anything else taken from a request.
//
//	reg := prometheus.NewRegistry()
//	m := metrics.New(reg, metrics.Options{})
//	cfg.Observer = m
//	grpcapiOpts.ObserveCall = m.ObserveRPC
//	m.SetStateSource(countStates)
//	http.Handle("/metrics", metrics.Handler(reg))
//
// Every metric is named tokenbroker_*.
package metrics

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

const namespace = "tokenbroker"

// other is the label value of a reason or outcome the package does not know,
// so that label values stay a fixed set whatever the broker reports.
const other = "other"

// reasons and outcomes are the label values of refreshes, in the order of
// the pre-resolved counters.
var (
	reasons  = []string{broker.ReasonExpired, broker.ReasonAhead, broker.ReasonInvalidated, broker.ReasonForced, broker.ReasonJournal, other}
	outcomes = []string{broker.OutcomeOK, broker.OutcomeTransient, broker.OutcomePermanent, broker.OutcomeUnknown, broker.OutcomeLost, broker.OutcomeAbandoned, other}
	sources  = []broker.Source{broker.FromCache, broker.FromStore, broker.FromRefresh}
)

// Histogram buckets, in seconds.
var (
	lockWaitBuckets = []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	idpBuckets      = []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	rpcBuckets      = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
)

// Options configure a Metrics. The zero value is a good default.
type Options struct {
	// PerCredentialLabels adds a credential_id label to the refresh
	// counter and the IdP latency histogram. Each credential then costs
	// about (reasons x outcomes + outcomes x buckets) series: switch it on
	// for small fleets only.
	PerCredentialLabels bool
	// StateInterval is the least time between two listings of the
	// credentials for the credentials-by-state gauge; scrapes in between
	// see the last listing. Default 30s.
	StateInterval time.Duration
	// StateTimeout bounds one listing. Default 10s.
	StateTimeout time.Duration
}

// Metrics records what a broker and its gRPC server do. Create it with New.
// It is safe for concurrent use.
type Metrics struct {
	perCredential bool

	served       [3]prometheus.Counter  // by broker.Source
	lockWaits    [2]prometheus.Observer // by obtained: false, true
	rotationWait prometheus.Histogram

	regressions [2]prometheus.Counter // by repaired: false, true

	refreshes *prometheus.CounterVec
	idp       *prometheus.HistogramVec
	// Without per-credential labels, pre-resolved children of refreshes
	// ([reason][outcome]) and idp ([outcome]).
	refreshesBy [][]prometheus.Counter
	idpBy       []prometheus.Observer

	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	rmu      sync.RWMutex          // guards rpcs
	rpcs     map[string]*rpcSeries // resolved series by full method name

	state   *stateCollector
	backlog *backlogCollector
}

// New returns a Metrics with its collectors registered with reg; a nil reg
// registers nothing. It panics if reg already holds metrics of the same
// names, like prometheus.MustRegister.
func New(reg prometheus.Registerer, opts Options) *Metrics {
	if opts.StateInterval <= 0 {
		opts.StateInterval = 30 * time.Second
	}
	if opts.StateTimeout <= 0 {
		opts.StateTimeout = 10 * time.Second
	}
	m := &Metrics{perCredential: opts.PerCredentialLabels}

	served := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "tokens_served_total",
		Help: "Access tokens handed out, by where they came from: cache (local, no Store call), store (read from the Store) or refresh (the caller waited for a refresh).",
	}, []string{"source"})
	for _, s := range sources {
		m.served[s] = served.WithLabelValues(s.String())
	}

	lockWaits := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "lock_wait_seconds",
		Help:    "Time a refresh waited for its credential's lock, by whether it obtained it (false: another holder refreshed first, or the wait timed out).",
		Buckets: lockWaitBuckets,
	}, []string{"obtained"})
	m.lockWaits[0] = lockWaits.WithLabelValues("false")
	m.lockWaits[1] = lockWaits.WithLabelValues("true")

	m.rotationWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "rotation_wait_seconds",
		Help:    "Time callers of credentials whose IdP revokes the previous access token waited for a refresh under way, whose old token they could not be given (RevokeNotice plus the IdP's answer, normally).",
		Buckets: lockWaitBuckets,
	})

	refreshLabels, idpLabels := []string{"reason", "outcome"}, []string{"outcome"}
	if m.perCredential {
		refreshLabels = append(refreshLabels, "credential_id")
		idpLabels = append(idpLabels, "credential_id")
	}
	m.refreshes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "refreshes_total",
		Help: "Refresh attempts, by reason (expired, ahead, invalidated, forced, journal) and outcome (ok, transient, permanent, unknown: the answer was lost, lost: answered but not stored, abandoned).",
	}, refreshLabels)
	m.idp = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "idp_request_duration_seconds",
		Help:    "Duration of calls to the identity provider's token endpoint, by refresh outcome. Abandoned refreshes made no call and are not observed.",
		Buckets: idpBuckets,
	}, idpLabels)
	if !m.perCredential {
		m.refreshesBy = make([][]prometheus.Counter, len(reasons))
		for i, r := range reasons {
			m.refreshesBy[i] = make([]prometheus.Counter, len(outcomes))
			for j, o := range outcomes {
				m.refreshesBy[i][j] = m.refreshes.WithLabelValues(r, o)
			}
		}
		m.idpBy = make([]prometheus.Observer, len(outcomes))
		for j, o := range outcomes {
			if o != broker.OutcomeAbandoned {
				m.idpBy[j] = m.idp.WithLabelValues(o)
			}
		}
	}

	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "grpc_requests_total",
		Help: "gRPC requests served, by full method name and status code.",
	}, []string{"method", "code"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "grpc_request_duration_seconds",
		Help:    "Time to serve a gRPC request, by full method name.",
		Buckets: rpcBuckets,
	}, []string{"method"})

	regressions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "store_generation_regressions_total",
		Help: "Times the Store answered with an older generation of a credential than one already seen (a failover to a replica that missed writes), by whether this replica wrote the lost outcome back.",
	}, []string{"repaired"})
	m.regressions[0] = regressions.WithLabelValues("false")
	m.regressions[1] = regressions.WithLabelValues("true")

	m.state = newStateCollector(opts.StateInterval, opts.StateTimeout)
	m.backlog = newBacklogCollector()

	if reg != nil {
		reg.MustRegister(served, lockWaits, m.rotationWait, m.refreshes, m.idp, m.requests, m.latency, regressions, m.state, m.backlog)
	}
	return m
}

// TokenServed counts a token handed out. It does not allocate.
func (m *Metrics) TokenServed(from broker.Source) {
	i := int(from)
	if i < 0 || i >= len(m.served) {
		i = int(broker.FromRefresh) // as Source.String names it
	}
	m.served[i].Inc()
}

// LockWaited observes a wait for a credential's refresh lock. It does not
// allocate.
func (m *Metrics) LockWaited(d time.Duration, obtained bool) {
	i := 0
	if obtained {
		i = 1
	}
	m.lockWaits[i].Observe(d.Seconds())
}

// RotationWaited observes a caller's wait for the successor of a token its
// IdP revokes on refresh (broker.RotationObserver). It does not allocate.
func (m *Metrics) RotationWaited(d time.Duration) {
	m.rotationWait.Observe(d.Seconds())
}

// Refreshed counts a refresh attempt and observes its IdP call. Without
// per-credential labels it does not allocate.
func (m *Metrics) Refreshed(ev broker.RefreshEvent) {
	r, o := index(reasons, ev.Reason), index(outcomes, ev.Outcome)
	observe := ev.Outcome != broker.OutcomeAbandoned
	if !m.perCredential {
		m.refreshesBy[r][o].Inc()
		if observe {
			m.idpBy[o].Observe(ev.Duration.Seconds())
		}
		return
	}
	id := ev.CredentialID
	if broker.ValidateID("id", id) != nil {
		id = "invalid" // not a credential ID: never copied into a label
	}
	m.refreshes.WithLabelValues(reasons[r], outcomes[o], id).Inc()
	if observe {
		m.idp.WithLabelValues(outcomes[o], id).Observe(ev.Duration.Seconds())
	}
}

// Regressed counts a generation regression of the Store.
func (m *Metrics) Regressed(ev broker.RegressionEvent) {
	i := 0
	if ev.Repaired {
		i = 1
	}
	m.regressions[i].Inc()
}

// ForgetCredential drops the per-credential series of a deleted credential,
// so that they do not linger until the process restarts. Without
// per-credential labels it does nothing.
func (m *Metrics) ForgetCredential(id string) {
	if !m.perCredential {
		return
	}
	l := prometheus.Labels{"credential_id": id}
	m.refreshes.DeletePartialMatch(l)
	m.idp.DeletePartialMatch(l)
}

// index returns the position of v in values, or that of other.
func index(values []string, v string) int {
	for i, s := range values {
		if s == v {
			return i
		}
	}
	return len(values) - 1
}

// Handler returns the HTTP handler of the metrics page of g. A collector
// that fails leaves its metrics out of the page; the rest is still served.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
