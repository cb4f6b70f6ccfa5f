package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// dashboard is the part of Grafana's dashboard model the check reads.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	Targets    []struct {
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// grafanaDurations are Grafana's interval variables; any duration stands in
// for them when the query is parsed.
var grafanaDurations = regexp.MustCompile(`\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}`)

// grafanaVariables are the dashboard's own variables ($instance,
// ${instance}), which stand in label matchers' values.
var grafanaVariables = regexp.MustCompile(`\$\{?[A-Za-z_][A-Za-z0-9_]*\}?`)

// TestDashboard parses deploy/grafana/tokenbroker.json, checks that every
// query parses as PromQL (with Grafana's variables put in) and names only
// metrics the broker exports, and that the panels cover what issue 12 asks
// the dashboard to show.
func TestDashboard(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("grafana/tokenbroker.json")
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatal("grafana/tokenbroker.json is not valid JSON")
	}
	var d dashboard
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&d); err != nil {
		t.Fatalf("grafana/tokenbroker.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("the dashboard needs a uid and a title (provisioning keys on the uid)")
	}
	f := getFacts(t)

	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Type != "query" {
			continue
		}
		var q struct{ Query string }
		if err := json.Unmarshal(v.Query, &q); err != nil {
			if err := json.Unmarshal(v.Query, &q.Query); err != nil {
				t.Errorf("variable %s: query: %v", v.Name, err)
			}
		}
		m := regexp.MustCompile(`^label_values\((\w+), *(\w+)\)$`).FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(metric, label)", v.Name, q.Query)
			continue
		}
		if err := f.checkQuery(m[1]); err != nil {
			t.Errorf("variable %s: %v", v.Name, err)
		}
	}

	var all []string
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, ds := range []*datasourceRef{p.Datasource} {
				if ds == nil || ds.Type != "prometheus" || ds.UID != "${datasource}" {
					t.Errorf("panel %q: datasource %+v, want the $datasource variable", p.Title, ds)
				}
			}
			for _, tg := range p.Targets {
				for _, v := range grafanaVariables.FindAllString(grafanaDurations.ReplaceAllString(tg.Expr, ""), -1) {
					if name := strings.Trim(v, "${}"); !vars[name] {
						t.Errorf("panel %q: query uses %s, which the dashboard does not define", p.Title, v)
					}
				}
				expr := grafanaDurations.ReplaceAllString(tg.Expr, "5m")
				expr = grafanaVariables.ReplaceAllString(expr, ".*")
				if err := f.checkQuery(expr); err != nil {
					t.Errorf("panel %q, query %s: %v", p.Title, tg.RefID, err)
				}
				all = append(all, tg.Expr)
			}
		}
	}
	walk(d.Panels)

	joined := strings.Join(all, "\n")
	for what, needle := range map[string]string{
		"requests by method and code": "sum by (method, code) (rate(tokenbroker_grpc_requests_total",
		"latency by method":           "tokenbroker_grpc_request_duration_seconds_bucket",
		"refreshes by outcome":        "sum by (outcome) (increase(tokenbroker_refreshes_total",
		"IdP latency":                 "tokenbroker_idp_request_duration_seconds_bucket",
		"store errors":                "tokenbroker_credentials_listing_errors_total",
		"credentials by state":        "max by (state) (tokenbroker_credentials{",
	} {
		if !strings.Contains(joined, needle) {
			t.Errorf("no panel shows %s (%s)", what, needle)
		}
	}
}

// TestGrafanaProvisioning checks that the provisioned data source is the
// dashboard's default and that the dashboards provider reads the directory
// compose.yaml mounts the dashboard in.
func TestGrafanaProvisioning(t *testing.T) {
	t.Parallel()
	var ds struct {
		APIVersion  int `json:"apiVersion"`
		Datasources []struct {
			Name      string `json:"name"`
			UID       string `json:"uid"`
			Type      string `json:"type"`
			Access    string `json:"access"`
			URL       string `json:"url"`
			IsDefault bool   `json:"isDefault"`
			Editable  bool   `json:"editable"`
		} `json:"datasources"`
	}
	readStrictYAML(t, "grafana/provisioning/datasources/prometheus.yaml", &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].UID != "prometheus" || ds.Datasources[0].URL != "http://prometheus:9090" {
		t.Errorf("want one data source, uid prometheus, at http://prometheus:9090 (the compose service): %+v", ds.Datasources)
	}
	var dashboards struct {
		APIVersion int `json:"apiVersion"`
		Providers  []struct {
			Name            string `json:"name"`
			Folder          string `json:"folder"`
			Type            string `json:"type"`
			DisableDeletion bool   `json:"disableDeletion"`
			AllowUIUpdates  bool   `json:"allowUiUpdates"`
			Options         struct {
				Path string `json:"path"`
			} `json:"options"`
		} `json:"providers"`
	}
	readStrictYAML(t, "grafana/provisioning/dashboards/tokenbroker.yaml", &dashboards)
	if len(dashboards.Providers) != 1 || dashboards.Providers[0].Options.Path != "/etc/grafana/dashboards" {
		t.Errorf("want one provider reading /etc/grafana/dashboards: %+v", dashboards.Providers)
	}

	var d dashboard
	b, err := os.ReadFile("grafana/tokenbroker.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	for _, v := range d.Templating.List {
		if v.Name == "datasource" {
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil || q != "prometheus" {
				t.Errorf("the datasource variable should list prometheus data sources: %s", v.Query)
			}
			return
		}
	}
	t.Error("the dashboard has no datasource variable")
}

func readStrictYAML(t *testing.T, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := decodeStrict(b, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}
