package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/metrics"
)

// find returns the value of the metric name with exactly labels: a counter's
// or gauge's value, a histogram's sample count.
func find(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; !ok || v != lp.GetValue() {
					continue metric
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue(), true
			case m.Gauge != nil:
				return m.GetGauge().GetValue(), true
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func value(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	v, _ := find(t, g, name, labels)
	return v
}

type L = map[string]string

func TestObserverFromBroker(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := metrics.New(reg, metrics.Options{})
	e := newEnv(t, m)

	if n := value(t, reg, "tokenbroker_tokens_served_total", L{"source": "cache"}); n != 0 {
		t.Fatalf("cache hits before any call: %v", n)
	}
	e.put(t, "cred-1", "")
	tok := e.token(t, "cred-1") // no token yet: waits for a refresh
	if n := value(t, reg, "tokenbroker_tokens_served_total", L{"source": "refresh"}); n != 1 {
		t.Fatalf("served from refresh = %v; want 1", n)
	}
	for range 3 {
		e.token(t, "cred-1")
	}
	if n := value(t, reg, "tokenbroker_tokens_served_total", L{"source": "cache"}); n != 3 {
		t.Fatalf("served from cache = %v; want 3", n)
	}
	if n := value(t, reg, "tokenbroker_lock_wait_seconds", L{"obtained": "true"}); n != 1 {
		t.Fatalf("lock waits obtained = %v; want 1", n)
	}
	first := value(t, reg, "tokenbroker_refreshes_total", L{"reason": broker.ReasonExpired, "outcome": broker.OutcomeOK})
	if first != 1 {
		t.Fatalf("refreshes{expired,ok} = %v; want 1", first)
	}

	if _, err := e.b.RefreshCredential(as(admin), "cred-1"); err != nil {
		t.Fatal(err)
	}
	if n := value(t, reg, "tokenbroker_refreshes_total", L{"reason": broker.ReasonForced, "outcome": broker.OutcomeOK}); n != 1 {
		t.Fatalf("refreshes{forced,ok} = %v; want 1", n)
	}
	cur := e.token(t, "cred-1")
	if cur.AccessToken == tok.AccessToken {
		t.Fatal("forced refresh did not change the token")
	}
	if _, err := e.b.InvalidateToken(as(worker), "cred-1", cur.AccessToken, 0); err != nil {
		t.Fatal(err)
	}
	if n := value(t, reg, "tokenbroker_refreshes_total", L{"reason": broker.ReasonInvalidated, "outcome": broker.OutcomeOK}); n != 1 {
		t.Fatalf("refreshes{invalidated,ok} = %v; want 1", n)
	}
	if n := value(t, reg, "tokenbroker_idp_request_duration_seconds", L{"outcome": broker.OutcomeOK}); n != 3 {
		t.Fatalf("IdP calls observed = %v; want 3", n)
	}

	// A dead grant: the IdP refuses the refresh token.
	e.put(t, "cred-dead", "DEAD-REFRESH-TOKEN-91b2")
	if _, err := e.b.GetToken(as(worker), "cred-dead", 0); !errors.Is(err, broker.ErrReauthRequired) {
		t.Fatalf("GetToken of a dead grant: %v; want ErrReauthRequired", err)
	}
	if n := value(t, reg, "tokenbroker_refreshes_total", L{"reason": broker.ReasonExpired, "outcome": broker.OutcomePermanent}); n != 1 {
		t.Fatalf("refreshes{expired,permanent} = %v; want 1", n)
	}
	if n := value(t, reg, "tokenbroker_idp_request_duration_seconds", L{"outcome": broker.OutcomePermanent}); n != 1 {
		t.Fatalf("IdP calls observed for permanent = %v; want 1", n)
	}
	lint(t, reg)
}

func TestRefreshedLabelsStayFixed(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := metrics.New(reg, metrics.Options{})
	m.Refreshed(broker.RefreshEvent{CredentialID: "c", Reason: "made-up reason", Outcome: "SECRET-OUTCOME", Duration: time.Second})
	if n := value(t, reg, "tokenbroker_refreshes_total", L{"reason": "other", "outcome": "other"}); n != 1 {
		t.Fatalf("unknown reason and outcome counted as other: %v; want 1", n)
	}
	m.Refreshed(broker.RefreshEvent{CredentialID: "c", Reason: broker.ReasonAhead, Outcome: broker.OutcomeAbandoned})
	if n := value(t, reg, "tokenbroker_refreshes_total", L{"reason": broker.ReasonAhead, "outcome": broker.OutcomeAbandoned}); n != 1 {
		t.Fatalf("abandoned refreshes = %v; want 1", n)
	}
	if _, ok := find(t, reg, "tokenbroker_idp_request_duration_seconds", L{"outcome": broker.OutcomeAbandoned}); ok {
		t.Fatal("an abandoned refresh, which made no IdP call, was observed as one")
	}
	m.TokenServed(broker.Source(42))
	if n := value(t, reg, "tokenbroker_tokens_served_total", L{"source": "refresh"}); n != 1 {
		t.Fatalf("unknown source counted as refresh: %v; want 1", n)
	}
	m.LockWaited(time.Millisecond, false)
	if n := value(t, reg, "tokenbroker_lock_wait_seconds", L{"obtained": "false"}); n != 1 {
		t.Fatalf("lock waits not obtained = %v; want 1", n)
	}
}

func TestPerCredentialLabels(t *testing.T) {
	off := prometheus.NewPedanticRegistry()
	mOff := metrics.New(off, metrics.Options{})
	on := prometheus.NewPedanticRegistry()
	mOn := metrics.New(on, metrics.Options{PerCredentialLabels: true})
	for _, m := range []*metrics.Metrics{mOff, mOn} {
		m.Refreshed(broker.RefreshEvent{CredentialID: "cred-a", Reason: broker.ReasonExpired, Outcome: broker.OutcomeOK, Duration: time.Millisecond})
		m.Refreshed(broker.RefreshEvent{CredentialID: "cred-b", Reason: broker.ReasonExpired, Outcome: broker.OutcomeOK, Duration: time.Millisecond})
		m.Refreshed(broker.RefreshEvent{CredentialID: "not a valid id: Bearer xyz", Reason: broker.ReasonExpired, Outcome: broker.OutcomeOK})
	}
	if n := value(t, off, "tokenbroker_refreshes_total", L{"reason": "expired", "outcome": "ok"}); n != 3 {
		t.Fatalf("without per-credential labels: %v; want 3 in one series", n)
	}
	for _, id := range []string{"cred-a", "cred-b", "invalid"} {
		if n := value(t, on, "tokenbroker_refreshes_total", L{"reason": "expired", "outcome": "ok", "credential_id": id}); n != 1 {
			t.Fatalf("refreshes of %s = %v; want 1", id, n)
		}
		if n := value(t, on, "tokenbroker_idp_request_duration_seconds", L{"outcome": "ok", "credential_id": id}); n != 1 {
			t.Fatalf("IdP calls of %s = %v; want 1", id, n)
		}
	}
	mOn.ForgetCredential("cred-a")
	if _, ok := find(t, on, "tokenbroker_refreshes_total", L{"reason": "expired", "outcome": "ok", "credential_id": "cred-a"}); ok {
		t.Fatal("ForgetCredential left the refresh series")
	}
	if _, ok := find(t, on, "tokenbroker_idp_request_duration_seconds", L{"outcome": "ok", "credential_id": "cred-a"}); ok {
		t.Fatal("ForgetCredential left the IdP series")
	}
	if _, ok := find(t, on, "tokenbroker_refreshes_total", L{"reason": "expired", "outcome": "ok", "credential_id": "cred-b"}); !ok {
		t.Fatal("ForgetCredential dropped another credential's series")
	}
	mOff.ForgetCredential("cred-a") // nothing to do
}

func TestObserverDoesNotAllocate(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry(), metrics.Options{})
	ev := broker.RefreshEvent{CredentialID: "cred-1", Reason: broker.ReasonAhead, Outcome: broker.OutcomeOK, Duration: time.Millisecond}
	for name, f := range map[string]func(){
		"TokenServed": func() { m.TokenServed(broker.FromCache) },
		"LockWaited":  func() { m.LockWaited(time.Millisecond, true) },
		"Refreshed":   func() { m.Refreshed(ev) },
		"RotationWaited": func() {
			m.RotationWaited(time.Millisecond)
		},
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s allocates %v times per call; want 0", name, n)
		}
	}
}

func TestStateSource(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := metrics.New(reg, metrics.Options{StateInterval: time.Hour})
	if _, ok := find(t, reg, "tokenbroker_credentials", L{"state": "ACTIVE"}); ok {
		t.Fatal("credentials gauge reported before a source is set")
	}
	var calls atomic.Int32
	m.SetStateSource(func(ctx context.Context) (map[broker.State]int, error) {
		calls.Add(1)
		if _, ok := ctx.Deadline(); !ok {
			t.Error("state source called without a deadline")
		}
		return map[broker.State]int{broker.StateActive: 7}, nil
	})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := reg.Gather(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := value(t, reg, "tokenbroker_credentials", L{"state": "ACTIVE"}); n != 7 {
		t.Fatalf("ACTIVE = %v; want 7", n)
	}
	if n, ok := find(t, reg, "tokenbroker_credentials", L{"state": "REAUTH_REQUIRED"}); !ok || n != 0 {
		t.Fatalf("REAUTH_REQUIRED = %v, %v; want 0 and present", n, ok)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d listings for 10 scrapes within the interval; want 1", n)
	}
}

func TestStateSourceRelistsAndFails(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := metrics.New(reg, metrics.Options{StateInterval: time.Millisecond})
	var calls atomic.Int32
	fail := errors.New("store down")
	m.SetStateSource(func(context.Context) (map[broker.State]int, error) {
		switch calls.Add(1) {
		case 1:
			return map[broker.State]int{broker.StateActive: 2, broker.StateReauthRequired: 1}, nil
		case 2:
			return nil, fail
		}
		return map[broker.State]int{broker.StateActive: 3}, nil
	})
	if n := value(t, reg, "tokenbroker_credentials", L{"state": "REAUTH_REQUIRED"}); n != 1 {
		t.Fatalf("REAUTH_REQUIRED = %v; want 1", n)
	}
	time.Sleep(2 * time.Millisecond) // past the interval: the next scrape lists again, and fails
	if _, ok := find(t, reg, "tokenbroker_credentials", L{"state": "ACTIVE"}); ok {
		t.Fatal("gauge reported after a failed listing")
	}
	if n := value(t, reg, "tokenbroker_credentials_listing_errors_total", nil); n != 1 {
		t.Fatalf("listing errors = %v; want 1", n)
	}
	time.Sleep(2 * time.Millisecond)
	if n := value(t, reg, "tokenbroker_credentials", L{"state": "ACTIVE"}); n != 3 {
		t.Fatalf("ACTIVE after recovery = %v; want 3", n)
	}
}

func TestHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.Options{})
	m.TokenServed(broker.FromCache)
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	page := get(t, srv.URL)
	if !strings.Contains(page, `tokenbroker_tokens_served_total{source="cache"} 1`) {
		t.Fatalf("page lacks the cache counter:\n%s", page)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return string(b)
}

// labelValues returns every label name and value pair the gatherer holds.
func labelValues(t *testing.T, g prometheus.Gatherer) []*dto.LabelPair {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []*dto.LabelPair
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out = append(out, m.GetLabel()...)
		}
	}
	return out
}

// lint fails t if the gathered metrics break Prometheus naming conventions.
func lint(t *testing.T, g prometheus.Gatherer) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// Rotation waits (credentials whose IdP revokes the previous access token)
// are a histogram.
func TestRotationWaited(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	var ro broker.RotationObserver = metrics.New(reg, metrics.Options{})
	ro.RotationWaited(200 * time.Millisecond)
	ro.RotationWaited(250 * time.Millisecond)
	if n := value(t, reg, "tokenbroker_rotation_wait_seconds", L{}); n != 2 {
		t.Fatalf("rotation waits observed = %v; want 2", n)
	}
	lint(t, reg)
}
