package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/server"
)

func writeConfig(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigFilePrecedence: a setting comes from the flag, else its
// environment twin, else the --config file (YAML or JSON), else the
// default.
func TestConfigFilePrecedence(t *testing.T) {
	yaml := writeConfig(t, "broker.yaml", `# settings by flag name
grpc-addr: 127.0.0.1:1111
log-level: warn
log_format: json          # underscores work too
refresh-timeout: 15       # seconds
lock-ttl: 40s
metrics-per-credential: true
client-rate: 2.5
`)
	json := writeConfig(t, "broker.json", `{"grpc-addr": "127.0.0.1:1111", "log-level": "warn", "log-format": "json",
		"refresh-timeout": 15, "lock-ttl": "40s", "metrics-per-credential": true, "client-rate": 2.5}`)
	for _, file := range []string{yaml, json} {
		t.Run(filepath.Ext(file), func(t *testing.T) {
			c, err := parseConfig([]string{"--config", file, "--grpc-addr", "127.0.0.1:3333"}, env(map[string]string{
				"TOKENBROKER_GRPC_ADDR": "127.0.0.1:2222", // the flag wins
				"TOKENBROKER_LOG_LEVEL": "DEBUG",          // the environment wins over the file
			}))
			if err != nil {
				t.Fatal(err)
			}
			if c.GRPCAddr != "127.0.0.1:3333" || c.LogLevel != "DEBUG" || c.LogFormat != "json" {
				t.Errorf("flag > env > file: grpc-addr %q, log-level %q, log-format %q", c.GRPCAddr, c.LogLevel, c.LogFormat)
			}
			if c.RefreshTimeout != 15*time.Second || c.LockTTL != 40*time.Second || !c.MetricsPerCredential || c.ClientRate != 2.5 {
				t.Errorf("file settings not applied: %+v", c)
			}
			if c.ShutdownTimeout != 10*time.Second || c.RedisPrefix != "tokenbroker" {
				t.Errorf("defaults lost: %+v", c)
			}
		})
	}
	// The file through the environment twin of --config.
	c, err := parseConfig(nil, env(map[string]string{"TOKENBROKER_CONFIG": yaml}))
	if err != nil || c.GRPCAddr != "127.0.0.1:1111" {
		t.Errorf("TOKENBROKER_CONFIG: %+v, %v", c, err)
	}
}

// TestConfigValues: durations as seconds, booleans as booleans, log levels
// in any case; refusals that name the setting and never echo a secret.
func TestConfigValues(t *testing.T) {
	c, err := parseConfig([]string{"--refresh-timeout", "12", "--lock-ttl=30.5", "--log-level", "Warn", "--allow-plaintext=true", "--allow-unauthenticated",
		"--redis-url", "redis://127.0.0.1:6379"}, env(map[string]string{"TOKENBROKER_FORCE_INTERVAL": "2", "TOKENBROKER_METRICS_PER_CREDENTIAL": "TRUE"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.RefreshTimeout != 12*time.Second || c.LockTTL != 30500*time.Millisecond || c.ForceInterval != 2*time.Second ||
		!c.AllowPlaintext || !c.AllowUnauthenticated || !c.MetricsPerCredential || c.LogLevel != "Warn" {
		t.Errorf("config = %+v", c)
	}
	hexKey := strings.Repeat("0123456789abcdef", 4)
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"hex seal key", []string{"--redis-url", "redis://127.0.0.1:6379", "--allow-unauthenticated", "--seal-keys", "k1:" + hexKey}, nil,
			`--seal-keys: seal: key "k1" looks hex-encoded (64 hex digits); give the 32 bytes in base64 instead`},
		{"bool with a separate value", []string{"--allow-plaintext", "true"}, nil, `unexpected argument "true": --allow-plaintext is a boolean, write --allow-plaintext=true`},
		{"unknown key in the file", []string{"--config", writeConfig(t, "c.yaml", "grpc-address: x\n")}, nil, `unknown setting "grpc-address"`},
		{"bad value in the file", []string{"--config", writeConfig(t, "c.json", `{"lock-wait": "forever"}`)}, nil, `invalid value "forever" for lock-wait in --config`},
		{"secret in the file", []string{"--config", writeConfig(t, "c.yaml", "redis-url: \"redis://:hunter2@[::1\"\nallow-plaintext: true\n")}, nil, "--redis-url"},
		{"broken YAML", []string{"--config", writeConfig(t, "c.yaml", "a: [hunter2\n")}, nil, "not valid YAML"},
		{"broken JSON", []string{"--config", writeConfig(t, "c.json", `{"seal-keys": "hunter2`)}, nil, "not valid JSON"},
		{"missing file", []string{"--config", "/nonexistent/broker.yaml"}, nil, "--config: open /nonexistent/broker.yaml"},
		{"bad seconds", nil, map[string]string{"TOKENBROKER_LOCK_WAIT": "1e400"}, `invalid value "1e400" for TOKENBROKER_LOCK_WAIT`},
		{"bad host pattern", []string{"--token-url-allow", "idp.example.com,https://x"}, nil, `--token-url-allow: host pattern "https://x"`},
		{"config in the file", []string{"--config", writeConfig(t, "c.yaml", "config: other.yaml\n")}, nil, `unknown setting "config"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(tc.args, env(tc.env))
			var ce *server.ConfigError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseConfig = %v; want a ConfigError containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), hexKey) || strings.Contains(err.Error(), "\n") {
				t.Errorf("message %q echoes a secret or has several lines", err)
			}
		})
	}
}

// TestVersion: --version prints the stamped version and exits 0.
func TestVersion(t *testing.T) {
	version, revision = "v9.8.7", "abc123"
	defer func() { version, revision = "", "" }()
	var out strings.Builder
	err := realMain(context.Background(), []string{"--version"}, env(nil), &out, &strings.Builder{})
	if err != nil || exitCode(err, &strings.Builder{}) != 0 {
		t.Fatalf("--version = %v", err)
	}
	if got := out.String(); !strings.HasPrefix(got, "broker v9.8.7 (revision abc123, go") {
		t.Errorf("--version printed %q", got)
	}
}

// TestBinaryConfigFile: the binary honours --config, with its flags and
// environment winning.
func TestBinaryConfigFile(t *testing.T) {
	t.Parallel()
	file := writeConfig(t, "broker.yaml", "grpc-addr: 127.0.0.1:1\nmetrics-addr: 127.0.0.1:0\nshutdown-timeout: 3\n")
	p := startBroker(t, []string{"--config", file, "--grpc-addr", "127.0.0.1:0"}, []string{"TOKENBROKER_LOG_LEVEL=DEBUG"})
	p.waitLog(t, "metrics listening", "addr") // from the file
	if addr := p.waitLog(t, "listening", "addr"); strings.HasSuffix(addr, ":1") {
		t.Errorf("listening on %s: the file won over the flag", addr)
	}
	_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, p.output())
	}
	if !strings.Contains(p.output(), `"timeout_s":3`) {
		t.Errorf("shutdown-timeout from the file not used:\n%s", p.output())
	}
}
