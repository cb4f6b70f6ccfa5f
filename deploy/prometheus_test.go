package deploy

import (
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
)

// TestAlertRules parses deploy/prometheus/alerts.yaml with Prometheus' rule
// parser (unknown fields fail, every expression and template must parse),
// and checks that every rule names only metrics the broker exports.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	const file = "prometheus/alerts.yaml"
	groups, problems := rulefmt.ParseFile(file, false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	for _, err := range problems {
		t.Errorf("%v", err)
	}
	if groups == nil {
		t.FailNow()
	}
	f := getFacts(t)
	alerts := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			if alerts[r.Alert] {
				t.Errorf("alert %s is defined twice", r.Alert)
			}
			alerts[r.Alert] = true
			if err := f.checkQuery(r.Expr); err != nil {
				t.Errorf("alert %s: %v", r.Alert, err)
			}
			if sev := r.Labels["severity"]; sev != "warning" && sev != "critical" {
				t.Errorf("alert %s: severity %q, want warning or critical", r.Alert, sev)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: needs a summary and a description", r.Alert)
			}
		}
	}
	// What issue 12 asks the alerts to cover, by the metric each needs.
	for what, metric := range map[string]string{
		"a credential in REAUTH_REQUIRED": `tokenbroker_credentials{state="REAUTH_REQUIRED"}`,
		"refresh failures backing off":    `tokenbroker_refreshes_total{outcome="transient"}`,
		"lock timeouts":                   `tokenbroker_lock_wait_seconds_count{obtained="false"}`,
		"the store unreachable":           "tokenbroker_credentials_listing_errors_total",
		"a generation regression":         "tokenbroker_store_generation_regressions_total",
		"no replica ready":                `up{job="tokenbroker"}`,
	} {
		found := false
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				found = found || strings.Contains(r.Expr, metric)
			}
		}
		if !found {
			t.Errorf("no alert on %s (%s)", what, metric)
		}
	}
}

// TestPrometheusConfig checks the compose set-up's Prometheus configuration
// against a strict subset of its schema: it loads the alert rules and
// scrapes job tokenbroker. (Which targets it scrapes is checked with the
// compose file.)
func TestPrometheusConfig(t *testing.T) {
	t.Parallel()
	cfg := readPrometheusConfig(t)
	if len(cfg.RuleFiles) != 1 || cfg.RuleFiles[0] != "/etc/prometheus/alerts.yaml" {
		t.Errorf("rule_files = %q, want the mounted alerts.yaml", cfg.RuleFiles)
	}
	if len(cfg.ScrapeConfigs) != 1 || cfg.ScrapeConfigs[0].JobName != "tokenbroker" {
		t.Fatalf("want one scrape config with job_name tokenbroker, the job the alerts select")
	}
}

type prometheusConfig struct {
	Global struct {
		ScrapeInterval     model.Duration `json:"scrape_interval"`
		EvaluationInterval model.Duration `json:"evaluation_interval"`
	} `json:"global"`
	RuleFiles     []string `json:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `json:"job_name"`
		MetricsPath   string `json:"metrics_path"`
		StaticConfigs []struct {
			Targets []string `json:"targets"`
		} `json:"static_configs"`
	} `json:"scrape_configs"`
}

func readPrometheusConfig(t *testing.T) prometheusConfig {
	t.Helper()
	b, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg prometheusConfig
	if err := decodeStrict(b, &cfg); err != nil {
		t.Fatalf("prometheus/prometheus.yml: %v", err)
	}
	return cfg
}
