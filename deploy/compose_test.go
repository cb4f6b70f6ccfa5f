package deploy

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/distribution/reference"
)

// loadCompose loads deploy/compose.yaml with the Compose specification's
// own loader (schema validation, interpolation, merge keys, references
// between services, volumes and secrets), taking variables from
// .env.example only, so the check does not depend on the shell.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{"compose.yaml"},
		cli.WithWorkingDirectory("."),
		cli.WithEnvFiles(".env.example"),
		cli.WithDotEnv,
	)
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return p
}

// TestComposeFile checks deploy/compose.yaml: it loads; every image is
// either built from deploy/Dockerfile's targets or a fully qualified,
// pinned reference; the brokers use only broker flags (and TOKENBROKER_*
// twins of flags), are sealed and authenticated, and are all scraped by
// Prometheus; the IdP uses only client-demo flags; Redis runs
// deploy/redis.conf with AOF on; every bind-mounted file exists.
func TestComposeFile(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	f := getFacts(t)
	df := parseDockerfile(t, "Dockerfile")

	var brokers []string
	metricsTargets := map[string]bool{}
	for _, name := range sortedServices(p) {
		s := p.Services[name]
		where := "service " + name
		if s.Build != nil {
			dockerfile := s.Build.Dockerfile
			if !filepath.IsAbs(dockerfile) {
				dockerfile = filepath.Join(s.Build.Context, dockerfile)
			}
			if abs, _ := filepath.Abs("Dockerfile"); filepath.Clean(dockerfile) != abs {
				t.Errorf("%s: builds %s, want deploy/Dockerfile", where, dockerfile)
			}
			if root := repoRoot(t); filepath.Clean(s.Build.Context) != root {
				t.Errorf("%s: build context %s, want the repository root", where, s.Build.Context)
			}
			if df.stage(s.Build.Target) == nil || s.Build.Target == "build" {
				t.Errorf("%s: build target %q is no image target of deploy/Dockerfile", where, s.Build.Target)
			}
			if !strings.HasPrefix(s.Image, "tokenbroker/"+s.Build.Target+":") {
				t.Errorf("%s: a locally built image should be named tokenbroker/%s:TAG, not %q", where, s.Build.Target, s.Image)
			}
		} else if err := checkImageRef(s.Image); err != nil {
			t.Errorf("%s: %v", where, err)
		}
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s: bind mount of a missing file: %v", where, err)
				}
				if !v.ReadOnly {
					t.Errorf("%s: mount %s read-only", where, v.Source)
				}
			}
		}
		target := ""
		if s.Build != nil {
			target = s.Build.Target
		}
		switch target {
		case "broker":
			brokers = append(brokers, name)
			f.checkBrokerArgs(t, where, s.Command)
			var envNames []string
			for k := range s.Environment {
				envNames = append(envNames, k)
			}
			f.checkBrokerEnv(t, where, envNames)
			args := brokerSettings(s)
			for _, flag := range []string{"redis-url", "seal-keys", "clients-file", "metrics-addr", "grpc-addr"} {
				if args[flag] == "" {
					t.Errorf("%s: no --%s (or its TOKENBROKER_ twin)", where, flag)
				}
			}
			if args["allow-plaintext"] != "" || args["allow-unauthenticated"] != "" {
				t.Errorf("%s: the replicas must be sealed and authenticated", where)
			}
			if secretTarget(s, args["clients-file"]) == "" {
				t.Errorf("%s: --clients-file %s is not a mounted secret", where, args["clients-file"])
			}
			_, port, err := net.SplitHostPort(args["metrics-addr"])
			if err != nil {
				t.Errorf("%s: --metrics-addr %q: %v", where, args["metrics-addr"], err)
			}
			metricsTargets[name+":"+port] = true
			checkHardened(t, where, s)
		case "client-demo":
			for _, a := range s.Command {
				if !strings.HasPrefix(a, "-") {
					continue
				}
				flag, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
				if !f.demoFlags[flag] {
					t.Errorf("%s: client-demo has no flag %s (client-demo --help)", where, a)
				}
			}
			checkHardened(t, where, s)
		}
	}
	if len(brokers) != 3 {
		t.Errorf("want three broker replicas, got %v", brokers)
	}
	if _, ok := p.Services["idp"]; !ok {
		t.Error("no idp service (client-demo --idp-only)")
	} else if !containsArg(p.Services["idp"].Command, "--idp-only") {
		t.Error("the idp service does not run --idp-only")
	}

	// Prometheus scrapes every replica, and nothing else, on the port each
	// one's --metrics-addr names.
	cfg := readPrometheusConfig(t)
	scraped := map[string]bool{}
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				scraped[target] = true
			}
		}
	}
	if fmt.Sprint(sortedKeys(scraped)) != fmt.Sprint(sortedKeys(metricsTargets)) {
		t.Errorf("Prometheus scrapes %v; the replicas' metrics are at %v", sortedKeys(scraped), sortedKeys(metricsTargets))
	}

	// Redis: deploy/redis.conf, with the persistence the broker relies on.
	redis, ok := p.Services["redis"]
	if !ok {
		t.Fatal("no redis service")
	}
	conf := ""
	for _, v := range redis.Volumes {
		if filepath.Base(v.Source) == "redis.conf" {
			conf = v.Target
		}
	}
	if conf == "" || !containsArg(redis.Command, conf) {
		t.Errorf("redis does not run with deploy/redis.conf (mounted at %q, command %q)", conf, redis.Command)
	}
	rc := readFile(t, "redis.conf")
	for _, directive := range []string{"appendonly yes", "maxmemory-policy noeviction"} {
		if !regexp.MustCompile(`(?m)^` + directive + `$`).MatchString(rc) {
			t.Errorf("redis.conf lacks %q", directive)
		}
	}

	// The grafana service mounts what the provisioning files read.
	grafana := p.Services["grafana"]
	mounted := map[string]bool{}
	for _, v := range grafana.Volumes {
		mounted[v.Target] = true
	}
	for _, target := range []string{"/etc/grafana/provisioning", "/etc/grafana/dashboards/tokenbroker.json"} {
		if !mounted[target] {
			t.Errorf("grafana does not mount %s", target)
		}
	}
}

// checkImageRef accepts a fully qualified image reference with a pinned
// tag (or digest). Whether a registry serves it cannot be checked here: no
// registry can be reached.
func checkImageRef(image string) error {
	ref, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return fmt.Errorf("image %q: %v", image, err)
	}
	if ref.String() != image {
		return fmt.Errorf("image %q: write it fully qualified, %s", image, ref.String())
	}
	tagged, ok := ref.(reference.Tagged)
	if _, digested := ref.(reference.Digested); !digested && (!ok || tagged.Tag() == "latest") {
		return fmt.Errorf("image %q: pin a version tag (or a digest)", image)
	}
	return nil
}

// brokerSettings are a broker service's settings by flag name, from its
// command line and its TOKENBROKER_* environment.
func brokerSettings(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		if flag, ok := envFlag(k); ok && v != nil {
			out[flag] = *v
		}
	}
	for _, a := range s.Command {
		if name, ok := strings.CutPrefix(a, "--"); ok {
			name, value, _ := strings.Cut(name, "=")
			out[name] = value
		}
	}
	return out
}

// secretTarget returns the secret mounted at path, or "".
func secretTarget(s types.ServiceConfig, path string) string {
	for _, sec := range s.Secrets {
		target := sec.Target
		if !strings.HasPrefix(target, "/") {
			target = "/run/secrets/" + target
		}
		if target == path {
			return sec.Source
		}
	}
	return ""
}

func checkHardened(t *testing.T, where string, s types.ServiceConfig) {
	t.Helper()
	if !s.ReadOnly {
		t.Errorf("%s: read_only is not true", where)
	}
	if !containsArg(s.CapDrop, "ALL") {
		t.Errorf("%s: does not drop ALL capabilities", where)
	}
	if uid, _, _ := strings.Cut(s.User, ":"); uid == "" || uid == "0" || uid == "root" {
		t.Errorf("%s: user %q, want the image's non-root 65532", where, s.User)
	}
}

// TestComposeEnvExample checks that .env.example defines every variable
// compose.yaml uses without a default, holds no real-looking secret, and
// that the real .env is ignored by git.
func TestComposeEnvExample(t *testing.T) {
	t.Parallel()
	env, err := dotenv.Read(".env.example")
	if err != nil {
		t.Fatal(err)
	}
	compose := readFile(t, "compose.yaml")
	for _, m := range regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?`).FindAllStringSubmatch(compose, -1) {
		name, op := m[1], m[2]
		if _, ok := env[name]; !ok && !strings.Contains(op, "-") {
			t.Errorf("compose.yaml uses ${%s}, which .env.example does not define", name)
		}
	}
	f := getFacts(t)
	var names []string
	for k := range env {
		names = append(names, k)
	}
	// A TOKENBROKER_* name is a broker flag's twin: only those belong here.
	f.checkBrokerEnv(t, ".env.example", names)
	for k, v := range env {
		if strings.Contains(k, "PASSWORD") || strings.Contains(k, "SEAL_KEYS") {
			if !strings.Contains(v, "REPLACE-ME") {
				t.Errorf(".env.example: %s should be a REPLACE-ME placeholder, not a usable secret", k)
			}
		}
	}
	ignore := readFile(t, ".gitignore")
	for _, f := range []string{"/.env", "/clients.json"} {
		if !strings.Contains(ignore, f+"\n") {
			t.Errorf("deploy/.gitignore does not ignore %s", f)
		}
	}
}

// TestComposePrometheusVersion checks that the Prometheus image compose.yaml
// runs is the release whose rule parser checked the alerts (the Go module
// v0.3MM.P is Prometheus v3.MM.P, as go.mod requires it).
func TestComposePrometheusVersion(t *testing.T) {
	t.Parallel()
	dep := regexp.MustCompile(`(?m)^\s*github\.com/prometheus/prometheus (v\S+)`).FindStringSubmatch(readFile(t, "go.mod"))
	if dep == nil {
		t.Fatal("go.mod does not require github.com/prometheus/prometheus")
	}
	mod := dep[1]
	m := regexp.MustCompile(`^v0\.3(\d\d)\.(\d+)$`).FindStringSubmatch(mod)
	if m == nil {
		t.Fatalf("github.com/prometheus/prometheus %q is not a v0.3MM.P version", mod)
	}
	want := fmt.Sprintf("v3.%d.%s", atoi(t, m[1]), m[2])
	image := loadCompose(t).Services["prometheus"].Image
	if !strings.HasSuffix(image, ":"+want) {
		t.Errorf("compose runs %s; the alerts are checked with Prometheus %s (go.mod): keep them in step", image, want)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

func containsArg(args []string, want string) bool {
	for _, a := range args {
		if a == want {
			return true
		}
	}
	return false
}

func sortedServices(p *types.Project) []string {
	var names []string
	for n := range p.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func sortedKeys(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
