package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Failure reasons, as counted in Summary.FailuresByReason. A final HTTP
// status other than 2xx is counted as "http_<status>".
const (
	reasonReauth      = "reauth_required"      // the grant is dead: the IdP revoked it
	reasonUnavailable = "unavailable"          // broker or IdP unavailable, rate limited
	reasonDenied      = "permission_denied"    // the broker refused the worker
	reasonNotFound    = "credential_not_found" // the broker has no such credential
	reasonTimeout     = "timeout"              // the request ran out of time
	reasonTransport   = "transport"            // any other error before an answer
)

// Summary is the outcome of a run. The JSON names are the ones DESIGN.md
// promises to scripts.
type Summary struct {
	Mode              string           `json:"mode"`
	Workers           int              `json:"workers"`
	DurationSeconds   float64          `json:"duration_seconds"`
	TokenTTLSeconds   float64          `json:"token_ttl_seconds"`
	Interrupted       bool             `json:"interrupted"`
	Requests          int64            `json:"requests"`
	Succeeded         int64            `json:"succeeded"`
	Failed            int64            `json:"failed"`
	FailuresByReason  map[string]int64 `json:"failures_by_reason"`
	Recovered401      int64            `json:"recovered_401"`
	IdPRefreshes      int64            `json:"idp_refreshes"`
	Reuses            int64            `json:"reuses"`
	Revocations       int64            `json:"revocations"`
	LatencyP50MS      float64          `json:"latency_p50_ms"`
	LatencyP99MS      float64          `json:"latency_p99_ms"`
	Replicas          int              `json:"replicas"`
	RequestsByReplica []int64          `json:"requests_by_replica"`
	// CredentialState is the broker's view of the credential at the end
	// (ACTIVE, REAUTH_REQUIRED); empty without a broker.
	CredentialState string `json:"credential_state,omitempty"`
	// RevokePrevious: the IdP revoked the previous access token on every
	// refresh (--revoke-previous). Watch: the workers' SDK followed the
	// credential over WatchToken (--watch; false in naive mode).
	RevokePrevious bool `json:"revoke_previous"`
	Watch          bool `json:"watch"`
	// With --reauth: the grant was revoked mid-run, and re-authorized
	// through the device flow; the outage lasted from the revocation to
	// the AUTHORIZED event, of which the re-authorization took the time
	// from the REAUTH_REQUIRED event on.
	Revoked       bool    `json:"revoked,omitempty"`
	Reauthorized  bool    `json:"reauthorized,omitempty"`
	OutageSeconds float64 `json:"outage_seconds,omitempty"`
	ReauthSeconds float64 `json:"reauth_seconds,omitempty"`
}

// tally counts the outcomes of requests as the workers make them. It is safe
// for concurrent use.
type tally struct {
	requests, succeeded, failed, recovered atomic.Int64
	byReplica                              []atomic.Int64

	mu      sync.Mutex // guards reasons and latency
	reasons map[string]int64
	latency []time.Duration
}

func newTally(replicas int) *tally {
	return &tally{byReplica: make([]atomic.Int64, replicas), reasons: make(map[string]int64)}
}

// outcome is one finished request.
type outcome struct {
	replica   int    // index into byReplica, -1 for none
	ok        bool   // a 2xx answer
	reason    string // why it failed, when !ok
	recovered bool   // the first attempt got 401 and the retry succeeded
}

// add records o. Latencies are handed over in batches by flushLatency, so
// that workers do not contend on the lock for every request.
func (t *tally) add(o outcome) {
	t.requests.Add(1)
	if o.replica >= 0 && o.replica < len(t.byReplica) {
		t.byReplica[o.replica].Add(1)
	}
	if o.recovered {
		t.recovered.Add(1)
	}
	if o.ok {
		t.succeeded.Add(1)
		return
	}
	t.failed.Add(1)
	t.mu.Lock()
	t.reasons[o.reason]++
	t.mu.Unlock()
}

// flushLatency adds a worker's request latencies.
func (t *tally) flushLatency(ds []time.Duration) {
	t.mu.Lock()
	t.latency = append(t.latency, ds...)
	t.mu.Unlock()
}

// fill copies the counts into s.
func (t *tally) fill(s *Summary) {
	s.Requests = t.requests.Load()
	s.Succeeded = t.succeeded.Load()
	s.Failed = t.failed.Load()
	s.Recovered401 = t.recovered.Load()
	s.RequestsByReplica = make([]int64, len(t.byReplica))
	for i := range t.byReplica {
		s.RequestsByReplica[i] = t.byReplica[i].Load()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s.FailuresByReason = maps.Clone(t.reasons)
	lat := slices.Clone(t.latency)
	slices.Sort(lat)
	s.LatencyP50MS = ms(percentile(lat, 50))
	s.LatencyP99MS = ms(percentile(lat, 99))
}

// percentile is the nearest-rank p-th percentile of sorted, 0 when empty.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 * n)
	return sorted[max(rank, 1)-1]
}

func ms(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}

// modeTitle describes a mode for the table.
func modeTitle(s *Summary) string {
	switch s.Mode {
	case modeBroker:
		return "broker, in-process (dev mode, in-memory store)"
	case modeRedis:
		return fmt.Sprintf("broker, %d in-process replica(s) sharing Redis", s.Replicas)
	case modeExternal:
		return "broker, already running (--broker)"
	case modeNaive:
		return "naive: every worker refreshes on its own"
	}
	return s.Mode
}

// writeTable prints s as a table.
func writeTable(w io.Writer, s *Summary) error {
	var b strings.Builder
	row := func(label, value string) { fmt.Fprintf(&b, "  %-22s %12s\n", label, value) }
	num := func(label string, n int64) { row(label, strconv.FormatInt(n, 10)) }
	end := ""
	if s.Interrupted {
		end = ", interrupted"
	}
	if s.RevokePrevious {
		end += ", each refresh revokes the previous access token"
	}
	if s.Mode != modeNaive && !s.Watch {
		end += ", SDK not watching"
	}
	fmt.Fprintf(&b, "\nclient-demo summary: %s\n%d workers, %.1fs%s, access tokens live %gs\n\n",
		modeTitle(s), s.Workers, s.DurationSeconds, end, s.TokenTTLSeconds)
	row("mode", s.Mode)
	num("requests", s.Requests)
	num("succeeded", s.Succeeded)
	num("failed", s.Failed)
	for _, r := range slices.Sorted(maps.Keys(s.FailuresByReason)) {
		num("  "+r, s.FailuresByReason[r])
	}
	num("recovered_401", s.Recovered401)
	num("idp_refreshes", s.IdPRefreshes)
	num("reuses", s.Reuses)
	num("revocations", s.Revocations)
	row("latency p50", fmt.Sprintf("%.2f ms", s.LatencyP50MS))
	row("latency p99", fmt.Sprintf("%.2f ms", s.LatencyP99MS))
	if s.Replicas > 1 {
		for i, n := range s.RequestsByReplica {
			num(fmt.Sprintf("requests on replica %d", i), n)
		}
	}
	if s.CredentialState != "" {
		row("credential state", s.CredentialState)
	}
	if s.Revoked {
		row("grant revoked", "mid-run")
		row("reauthorized", strconv.FormatBool(s.Reauthorized))
		if s.Reauthorized {
			row("outage", fmt.Sprintf("%.2f s", s.OutageSeconds))
			row("  re-authorization", fmt.Sprintf("%.2f s", s.ReauthSeconds))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeJSON prints s as one JSON object.
func writeJSON(w io.Writer, s *Summary) error {
	out := *s
	if out.FailuresByReason == nil {
		out.FailuresByReason = map[string]int64{}
	}
	if out.RequestsByReplica == nil {
		out.RequestsByReplica = []int64{}
	}
	b, err := json.MarshalIndent(&out, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
