package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// upcomingBrokerFlags are flags that other work is adding to cmd/broker
// (issue 12) and that the deployment files may use: accepted although
// `broker --help` does not list them yet. Remove a name once --help lists
// it (the check logs which ones it does). (--journal-dir,
// --redis-min-replica-acks, --refresh-reply-wait, --config and --version
// were here until they landed.)
var upcomingBrokerFlags = map[string]string{}

// declaredNotExported are metric families the broker declares but that a
// fresh dev-mode broker does not show on /metrics yet (a family that lands
// on main shortly, or one that appears only once something happened and
// that the check cannot provoke). Empty today: every family the deployment
// files use is on /metrics. The check logs an entry that has become
// visible, so that it can be removed.
var declaredNotExported = map[string]string{}

// prometheusSeries are series Prometheus itself records for every scrape
// target, which the alerts may use beside the broker's own.
var prometheusSeries = map[string]bool{"up": true}

// targetLabels are the labels Prometheus adds to every scraped series.
var targetLabels = map[string]bool{"instance": true, "job": true}

// repoRoot is the main module's directory: the parent of deploy/.
func repoRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(wd)
	if _, err := os.Stat(filepath.Join(root, "cmd", "broker")); err != nil {
		t.Fatalf("the main module is not the parent of %s: %v", wd, err)
	}
	return root
}

// facts is what the real binaries say about themselves.
type facts struct {
	brokerFlags map[string]bool // from broker --help, without the dashes
	demoFlags   map[string]bool // from client-demo --help
	families    map[string]*dto.MetricFamily
	// healthy are the grpc.health.v1 service names the running broker
	// answered SERVING for.
	healthy map[string]bool
}

var (
	factsOnce sync.Once
	factsVal  *facts
	factsErr  error
	binDir    string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tokenbroker-deploy-check-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// getFacts builds cmd/broker and cmd/client-demo once, reads their --help,
// and runs the broker once to read its health and metrics.
func getFacts(t testing.TB) *facts {
	t.Helper()
	factsOnce.Do(func() { factsVal, factsErr = loadFacts(repoRoot(t)) })
	if factsErr != nil {
		t.Fatal(factsErr)
	}
	return factsVal
}

func loadFacts(root string) (*facts, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return nil, err
	}
	// Built as the image builds them (deploy/Dockerfile), so that the
	// static build is checked too.
	build := exec.Command(goBin, "build", "-trimpath", "-ldflags", "-X main.version=deploy-check",
		"-o", binDir+string(filepath.Separator), "./cmd/broker", "./cmd/client-demo")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building the broker: %v\n%s", err, out)
	}
	f := &facts{}
	broker, demo := filepath.Join(binDir, "broker"), filepath.Join(binDir, "client-demo")
	help, err := helpText(broker)
	if err != nil {
		return nil, err
	}
	if f.brokerFlags = parseFlags(help, `(?m)^\s+--([a-z0-9][a-z0-9-]*)\b`); len(f.brokerFlags) < 10 {
		return nil, fmt.Errorf("broker --help lists %d flags; has its format changed?\n%s", len(f.brokerFlags), help)
	}
	help, err = helpText(demo)
	if err != nil {
		return nil, err
	}
	if f.demoFlags = parseFlags(help, `(?m)^\s+--?([a-z0-9][a-z0-9-]*)\b`); len(f.demoFlags) < 5 {
		return nil, fmt.Errorf("client-demo --help lists %d flags; has its format changed?\n%s", len(f.demoFlags), help)
	}
	f.families, f.healthy, err = runBroker(broker)
	return f, err
}

func helpText(bin string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--help").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --help: %v\n%s", filepath.Base(bin), err, out)
	}
	return string(out), nil
}

func parseFlags(help, pattern string) map[string]bool {
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(pattern).FindAllStringSubmatch(help, -1) {
		flags[m[1]] = true
	}
	return flags
}

// probedServices are the grpc.health.v1 service names the Kubernetes probes
// may ask for (deploy/k8s/deployment.yaml); "" is the server as a whole
// (readiness: follows Redis and draining), "liveness" the process alone.
var probedServices = []string{"", "tokenbroker.v1.TokenService", "tokenbroker.v1.AdminService", "liveness"}

// runBroker starts the broker in dev mode on loopback ports it picks, asks
// its health service (which is also the one gRPC call that makes the
// tokenbroker_grpc_* families appear), reads /metrics and stops it by PID.
func runBroker(bin string) (map[string]*dto.MetricFamily, map[string]bool, error) {
	cmd := exec.Command(bin, "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--log-format", "json")
	cmd.Env = brokerEnv()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	defer stopProcess(cmd)

	addrs := make(chan [2]string, 1)
	exited := make(chan struct{}) // closed when its stderr ends
	var logTail bytes.Buffer
	var logMu sync.Mutex
	go func() {
		defer close(exited)
		var grpcAddr, metricsAddr string
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			logTail.Write(sc.Bytes())
			logTail.WriteByte('\n')
			logMu.Unlock()
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			switch line.Msg {
			case "listening":
				grpcAddr = line.Addr
			case "metrics listening":
				metricsAddr = line.Addr
			}
			if grpcAddr != "" && metricsAddr != "" {
				addrs <- [2]string{grpcAddr, metricsAddr}
				grpcAddr = "" // report once
			}
		}
	}()
	var grpcAddr, metricsAddr string
	select {
	case a := <-addrs:
		grpcAddr, metricsAddr = a[0], a[1]
	case <-exited:
		logMu.Lock()
		defer logMu.Unlock()
		return nil, nil, fmt.Errorf("the broker ended before it logged its listening addresses:\n%s", logTail.String())
	case <-time.After(20 * time.Second):
		logMu.Lock()
		defer logMu.Unlock()
		return nil, nil, fmt.Errorf("the broker logged no listening addresses within 20s:\n%s", logTail.String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	healthy := map[string]bool{}
	for _, svc := range probedServices {
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			return nil, nil, fmt.Errorf("health check of %q: %w", svc, err)
		}
		healthy[svc] = resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/metrics", nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing /metrics: %w", err)
	}
	return families, healthy, nil
}

// brokerEnv is the test's environment without TOKENBROKER_* variables, so
// that the broker runs in dev mode whatever the shell has set.
func brokerEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TOKENBROKER_") {
			env = append(env, kv)
		}
	}
	return env
}

// stopProcess ends the process it started, by its PID: SIGTERM, then
// SIGKILL if it has not exited within 10 s.
func stopProcess(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// brokerFlag reports whether name (without dashes) is a flag of the broker,
// or one of the upcoming ones.
func (f *facts) brokerFlag(name string) bool {
	if f.brokerFlags[name] {
		return true
	}
	_, ok := upcomingBrokerFlags[name]
	return ok
}

// envFlag maps a TOKENBROKER_* variable to its flag name; ok is false for
// other names.
func envFlag(env string) (flag string, ok bool) {
	rest, ok := strings.CutPrefix(env, "TOKENBROKER_")
	if !ok {
		return "", false
	}
	return strings.ReplaceAll(strings.ToLower(rest), "_", "-"), true
}

// checkBrokerArgs reports every --flag in args that the broker does not
// have. Only the "--name" and "--name=value" forms are accepted.
func (f *facts) checkBrokerArgs(t *testing.T, where string, args []string) {
	t.Helper()
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, ok := strings.CutPrefix(a, "--")
		if !ok {
			t.Errorf("%s: %q: write broker flags as --name or --name=value", where, a)
			continue
		}
		name, _, _ = strings.Cut(name, "=")
		if !f.brokerFlag(name) {
			t.Errorf("%s: broker has no flag --%s (broker --help)", where, name)
		}
	}
}

// checkBrokerEnv reports every TOKENBROKER_* name that is no flag's twin.
func (f *facts) checkBrokerEnv(t *testing.T, where string, names []string) {
	t.Helper()
	for _, n := range names {
		flag, ok := envFlag(n)
		if !ok {
			continue
		}
		if !f.brokerFlag(flag) {
			t.Errorf("%s: %s is the twin of no broker flag (--%s is not in broker --help)", where, n, flag)
		}
	}
}

// TestFacts reports what the checks learnt from the binaries, and which
// allow-list entries have become real.
func TestFacts(t *testing.T) {
	t.Parallel()
	f := getFacts(t)
	for name := range upcomingBrokerFlags {
		if f.brokerFlags[name] {
			t.Logf("broker --help now lists --%s: remove it from upcomingBrokerFlags", name)
		}
	}
	for name := range declaredNotExported {
		if f.families[name] != nil {
			t.Logf("/metrics now shows %s: remove it from declaredNotExported", name)
		}
	}
	var names []string
	for n := range f.families {
		if strings.HasPrefix(n, "tokenbroker_") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	t.Logf("broker: %d flags; /metrics: %d families, tokenbroker_*: %s", len(f.brokerFlags), len(f.families), strings.Join(names, " "))
	for _, svc := range probedServices {
		if !f.healthy[svc] {
			t.Errorf("grpc.health.v1 Check(%q) on a fresh dev-mode broker is not SERVING", svc)
		}
	}
}

// metricRef is a metric name in a query and the label matchers on it.
type metricRef struct {
	name     string
	matchers []*labels.Matcher
}

// checkMetric reports an error unless ref names a series the broker exports
// (or Prometheus records) with labels it has: every label a matcher names
// exists on the family, every = matcher's value is one the broker exports,
// and every =~ matcher matches one.
func (f *facts) checkMetric(ref metricRef) error {
	if prometheusSeries[ref.name] {
		return nil
	}
	if _, ok := declaredNotExported[ref.name]; ok {
		return nil
	}
	fam, suffix := f.family(ref.name)
	if fam == nil {
		return fmt.Errorf("no metric %s on the broker's /metrics", ref.name)
	}
	known := map[string]map[string]bool{}
	add := func(name, value string) {
		if known[name] == nil {
			known[name] = map[string]bool{}
		}
		known[name][value] = true
	}
	for _, m := range fam.GetMetric() {
		for _, lp := range m.GetLabel() {
			add(lp.GetName(), lp.GetValue())
		}
		if suffix == "_bucket" {
			for _, b := range m.GetHistogram().GetBucket() {
				// As exposed ("10"), and as Prometheus 3 stores classic
				// histograms' le after normalising it ("10.0").
				v := strconv.FormatFloat(b.GetUpperBound(), 'f', -1, 64)
				add("le", v)
				if !strings.ContainsAny(v, ".eE") {
					add("le", v+".0")
				}
			}
			add("le", "+Inf")
		}
	}
	for _, m := range ref.matchers {
		if targetLabels[m.Name] || m.Name == model.MetricNameLabel {
			continue
		}
		vals, ok := known[m.Name]
		lazy := labelsOnlyAfterUse[fam.GetName()][m.Name]
		switch {
		case !ok && lazy:
			continue
		case !ok:
			return fmt.Errorf("%s has no label %q", ref.name, m.Name)
		case lazy:
			continue
		}
		switch m.Type {
		case labels.MatchEqual:
			if !vals[m.Value] {
				return fmt.Errorf("%s{%s}: the broker exports no such value (it has %s)", ref.name, m, keys(vals))
			}
		case labels.MatchRegexp:
			matched := false
			for v := range vals {
				matched = matched || m.Matches(v)
			}
			if !matched {
				return fmt.Errorf("%s{%s} matches none of the values the broker exports (%s)", ref.name, m, keys(vals))
			}
		}
	}
	return nil
}

// labelsOnlyAfterUse are labels whose values appear only as calls are
// served (a method and code pair after its first call), so a fresh broker
// cannot show them all; their names are still checked against the family
// once it has series.
var labelsOnlyAfterUse = map[string]map[string]bool{
	"tokenbroker_grpc_requests_total":           {"method": true, "code": true},
	"tokenbroker_grpc_request_duration_seconds": {"method": true},
}

// family finds the family a PromQL series name belongs to: the name itself
// for counters and gauges, or a histogram's or summary's name plus
// _bucket, _sum or _count.
func (f *facts) family(name string) (*dto.MetricFamily, string) {
	if fam := f.families[name]; fam != nil {
		switch fam.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			return nil, "" // only its _bucket, _sum and _count are series
		}
		return fam, ""
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		fam := f.families[base]
		if fam == nil {
			continue
		}
		switch t := fam.GetType(); {
		case t == dto.MetricType_HISTOGRAM:
			return fam, suffix
		case t == dto.MetricType_SUMMARY && suffix != "_bucket":
			return fam, suffix
		}
	}
	return nil, ""
}

func keys(m map[string]bool) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}
