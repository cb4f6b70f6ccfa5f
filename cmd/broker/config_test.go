package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/auth/authtest"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseConfig(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := server.Config{
		GRPCAddr: "127.0.0.1:7070", RedisPrefix: "tokenbroker", RedisMinReplicaAcks: "auto", IdPMaxConcurrency: 32, LogFormat: "text", LogLevel: "info",
		DefaultMinValid: 30 * time.Second, RefreshAhead: 5 * time.Minute, RefreshTimeout: 10 * time.Second,
		ForceInterval: 5 * time.Second, ShutdownTimeout: 10 * time.Second, MaxRecvMsgSize: 1 << 20,
		ClientRate: 10, ClientBurst: 20, MetricsStateInterval: 30 * time.Second, UnreadyAfter: 5 * time.Second,
	}
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("defaults = %+v; want %+v", *c, want)
	}
	if !c.DevMode() || !c.Broker().Open || c.Authenticated() || c.TLS() {
		t.Errorf("no --redis-url is not open dev mode")
	}
	key, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err = parseConfig([]string{"--redis-url", "redis+sentinel://:pw@127.0.0.1:26379/mymaster", "--clients-file", "/etc/tokenbroker/clients.json"},
		env(map[string]string{"TOKENBROKER_SEAL_KEYS": "k2:" + key + ",k1:" + key, "TOKENBROKER_REDIS_PREFIX": "tb-test"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.DevMode() || c.RedisPrefix != "tb-test" || c.SealKeys == "" || !c.Authenticated() || c.Broker().Open {
		t.Errorf("redis config = %+v", c)
	}
	if _, err := parseConfig([]string{"--redis-url", "redis://127.0.0.1:6379", "--allow-plaintext", "--allow-unauthenticated"}, env(nil)); err != nil {
		t.Errorf("--allow-plaintext: %v", err)
	}
	if _, err := parseConfig([]string{"--redis-url", "redis://127.0.0.1:6379"}, env(map[string]string{"TOKENBROKER_ALLOW_PLAINTEXT": "true", "TOKENBROKER_CLIENTS_FILE": "c.json"})); err != nil {
		t.Errorf("TOKENBROKER_ALLOW_PLAINTEXT: %v", err)
	}
}

func TestParseConfigEnvTwins(t *testing.T) {
	c, err := parseConfig([]string{"--grpc-addr", "127.0.0.1:9999", "--lock-ttl=20s"}, env(map[string]string{
		"TOKENBROKER_GRPC_ADDR":         "127.0.0.1:1111", // the flag wins
		"TOKENBROKER_LOCK_TTL":          "nonsense",       // the flag wins; not even parsed
		"TOKENBROKER_METRICS_ADDR":      "127.0.0.1:0",
		"TOKENBROKER_CREDENTIALS_FILE":  "/etc/creds.json",
		"TOKENBROKER_LOG_FORMAT":        "json",
		"TOKENBROKER_LOG_LEVEL":         "debug",
		"TOKENBROKER_DEFAULT_MIN_VALID": "1m",
		"TOKENBROKER_REFRESH_AHEAD":     "2m",
		"TOKENBROKER_REFRESH_TIMEOUT":   "15s",
		"TOKENBROKER_LOCK_WAIT":         "40s",
		"TOKENBROKER_FORCE_INTERVAL":    "1s",
		"TOKENBROKER_SHUTDOWN_TIMEOUT":  "3s",
		"TOKENBROKER_MAX_RECV_MSG_SIZE": "65536",

		"TOKENBROKER_CLIENTS_FILE":            "/etc/clients.json",
		"TOKENBROKER_TLS_CERT":                "/etc/tls/tls.crt",
		"TOKENBROKER_TLS_KEY":                 "/etc/tls/tls.key",
		"TOKENBROKER_TLS_CLIENT_CA":           "/etc/tls/ca.crt",
		"TOKENBROKER_TLS_REQUIRE_CLIENT_CERT": "true",
		"TOKENBROKER_CLIENT_RATE":             "2.5",
		"TOKENBROKER_CLIENT_BURST":            "7",
		"TOKENBROKER_METRICS_PER_CREDENTIAL":  "1",
		"TOKENBROKER_METRICS_STATE_INTERVAL":  "5s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := server.Config{
		GRPCAddr: "127.0.0.1:9999", RedisPrefix: "tokenbroker", RedisMinReplicaAcks: "auto", IdPMaxConcurrency: 32, MetricsAddr: "127.0.0.1:0", CredentialsFile: "/etc/creds.json",
		LogFormat: "json", LogLevel: "debug",
		DefaultMinValid: time.Minute, RefreshAhead: 2 * time.Minute, RefreshTimeout: 15 * time.Second,
		LockTTL: 20 * time.Second, LockWait: 40 * time.Second, ForceInterval: time.Second,
		ShutdownTimeout: 3 * time.Second, MaxRecvMsgSize: 65536,
		ClientsFile: "/etc/clients.json", TLSCert: "/etc/tls/tls.crt", TLSKey: "/etc/tls/tls.key", TLSClientCA: "/etc/tls/ca.crt",
		TLSRequireClientCert: true, ClientRate: 2.5, ClientBurst: 7, MetricsPerCredential: true, MetricsStateInterval: 5 * time.Second, UnreadyAfter: 5 * time.Second,
	}
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("config = %+v\nwant %+v", *c, want)
	}
	if c.Broker().Open {
		t.Errorf("a client registry leaves the broker open")
	}
	bc := c.Broker()
	if bc.LockTTL != 20*time.Second || bc.RefreshTimeout != 15*time.Second || bc.DefaultMinValid != time.Minute {
		t.Errorf("broker config = %+v", bc)
	}
}

// TestParseConfigErrors: every bad setting is a *server.ConfigError, one line,
// naming the flag or variable, never echoing a Redis URL.
func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown log format", []string{"--log-format", "xml"}, nil, "--log-format must be text or json"},
		{"unknown log format in env", nil, map[string]string{"TOKENBROKER_LOG_FORMAT": "yaml"}, "--log-format must be text or json"},
		{"unknown log level", []string{"--log-level", "loud"}, nil, "--log-level must be debug, info, warn or error"},
		{"malformed duration flag", []string{"--refresh-timeout", "ten"}, nil, `invalid value "ten" for flag -refresh-timeout`},
		{"malformed duration env", nil, map[string]string{"TOKENBROKER_LOCK_WAIT": "5 seconds"}, `invalid value "5 seconds" for TOKENBROKER_LOCK_WAIT`},
		{"malformed int env", nil, map[string]string{"TOKENBROKER_MAX_RECV_MSG_SIZE": "1MiB"}, "TOKENBROKER_MAX_RECV_MSG_SIZE"},
		{"negative duration", []string{"--force-interval=-1s"}, nil, "--force-interval must not be negative"},
		{"absurd duration", []string{"--refresh-ahead=100h"}, nil, "--refresh-ahead must be at most 24h0m0s"},
		{"zero refresh timeout", []string{"--refresh-timeout=0"}, nil, "--refresh-timeout must be positive"},
		{"lock ttl below refresh timeout", []string{"--lock-ttl", "5s"}, nil, "--lock-ttl (5s) must exceed --refresh-timeout (10s)"},
		{"lock ttl equal to refresh timeout", []string{"--lock-ttl", "30s", "--refresh-timeout", "30s"}, nil, "--lock-ttl (30s) must exceed --refresh-timeout (30s)"},
		{"lock ttl in env", nil, map[string]string{"TOKENBROKER_LOCK_TTL": "1s"}, "--lock-ttl (1s) must exceed"},
		{"addr without port", []string{"--grpc-addr", "localhost"}, nil, `--grpc-addr "localhost" is not host:port`},
		{"addr with bad port", []string{"--grpc-addr", "127.0.0.1:http"}, nil, "port must be a number"},
		{"addr with big port", []string{"--grpc-addr", "127.0.0.1:70000"}, nil, "port must be a number"},
		{"bad metrics addr", nil, map[string]string{"TOKENBROKER_METRICS_ADDR": "9090"}, "--metrics-addr"},
		{"redis url scheme", []string{"--redis-url", "http://user:hunter2@redis:6379", "--allow-plaintext", "--allow-unauthenticated"}, nil, `--redis-url: redisstore: invalid Redis URL: unsupported scheme "http"`},
		{"redis url host", nil, map[string]string{"TOKENBROKER_REDIS_URL": "redis://:hunter2@", "TOKENBROKER_ALLOW_PLAINTEXT": "1"}, "--redis-url: redisstore: invalid Redis URL: empty host"},
		{"redis without keys", []string{"--redis-url", "redis://:hunter2@127.0.0.1:6379"}, nil, "redis mode needs --seal-keys (or --allow-plaintext"},
		{"bad seal keys", []string{"--redis-url", "redis://127.0.0.1:6379"}, map[string]string{"TOKENBROKER_SEAL_KEYS": "k1:aHVudGVyMg"}, `--seal-keys: seal: key "k1" is 7 bytes, want 32`},
		{"malformed seal keys", []string{"--redis-url", "redis://127.0.0.1:6379", "--seal-keys", "hunter2"}, nil, "--seal-keys: seal: keyring entry 1: want id:base64key"},
		{"bad redis prefix", []string{"--redis-url", "redis://127.0.0.1:6379", "--allow-plaintext", "--redis-prefix", "a b"}, nil, "--redis-prefix must be non-empty"},

		// Security and metrics.
		{"redis without clients", []string{"--redis-url", "redis://:hunter2@127.0.0.1:6379", "--allow-plaintext"}, nil,
			"redis mode needs --clients-file (caller authentication), or --allow-unauthenticated"},
		{"redis without clients, sealed", nil, map[string]string{"TOKENBROKER_REDIS_URL": "redis://127.0.0.1:6379", "TOKENBROKER_SEAL_KEYS": "k1:" + testSealKey},
			"redis mode needs --clients-file"},
		{"redis, allow-unauthenticated false", []string{"--redis-url", "redis://127.0.0.1:6379", "--allow-plaintext", "--allow-unauthenticated=false"}, nil,
			"redis mode needs --clients-file"},
		{"clients and allow-unauthenticated", []string{"--clients-file", "c.json", "--allow-unauthenticated"}, nil, "--allow-unauthenticated contradicts --clients-file"},
		{"bad allow-unauthenticated env", nil, map[string]string{"TOKENBROKER_ALLOW_UNAUTHENTICATED": "sure"}, `invalid value "sure" for TOKENBROKER_ALLOW_UNAUTHENTICATED`},
		{"cert without key", []string{"--tls-cert", "tls.crt"}, nil, "--tls-cert and --tls-key go together"},
		{"key without cert", nil, map[string]string{"TOKENBROKER_TLS_KEY": "tls.key"}, "--tls-cert and --tls-key go together"},
		{"client CA without TLS", []string{"--tls-client-ca", "ca.crt"}, nil, "--tls-client-ca needs --tls-cert and --tls-key"},
		{"require client cert without CA", []string{"--tls-cert", "tls.crt", "--tls-key", "tls.key", "--tls-require-client-cert"}, nil,
			"--tls-require-client-cert needs --tls-client-ca"},
		{"bad require client cert env", nil, map[string]string{"TOKENBROKER_TLS_REQUIRE_CLIENT_CERT": "yes please"}, "TOKENBROKER_TLS_REQUIRE_CLIENT_CERT"},
		{"zero client rate", []string{"--client-rate", "0"}, nil, "--client-rate must be a positive number"},
		{"negative client rate", []string{"--client-rate=-1"}, nil, "--client-rate must be a positive number"},
		{"NaN client rate", nil, map[string]string{"TOKENBROKER_CLIENT_RATE": "NaN"}, "--client-rate must be a positive number"},
		{"infinite client rate", []string{"--client-rate", "+Inf"}, nil, "--client-rate must be a positive number"},
		{"malformed client rate", nil, map[string]string{"TOKENBROKER_CLIENT_RATE": "10/s"}, `invalid value "10/s" for TOKENBROKER_CLIENT_RATE`},
		{"zero client burst", []string{"--client-burst", "0"}, nil, "--client-burst must be 1 to 1000000"},
		{"huge client burst", nil, map[string]string{"TOKENBROKER_CLIENT_BURST": "99999999"}, "--client-burst must be 1 to 1000000"},
		{"malformed client burst", []string{"--client-burst", "lots"}, nil, `invalid value "lots" for flag -client-burst`},
		{"bad per-credential env", nil, map[string]string{"TOKENBROKER_METRICS_PER_CREDENTIAL": "on"}, `invalid value "on" for TOKENBROKER_METRICS_PER_CREDENTIAL`},
		{"short state interval", []string{"--metrics-state-interval", "10ms"}, nil, "--metrics-state-interval must be 1s to 24h0m0s"},
		{"long state interval", nil, map[string]string{"TOKENBROKER_METRICS_STATE_INTERVAL": "48h"}, "--metrics-state-interval must be 1s to 24h0m0s"},
		{"bad bool env", nil, map[string]string{"TOKENBROKER_ALLOW_PLAINTEXT": "maybe"}, `invalid value "maybe" for TOKENBROKER_ALLOW_PLAINTEXT`},
		{"recv size too small", []string{"--max-recv-msg-size", "10"}, nil, "--max-recv-msg-size must be"},
		{"bad http addr", []string{"--http-addr", "8080"}, nil, "--http-addr"},
		{"webhook not http", []string{"--webhook-url", "ftp://hooks.example/x?token=SECRET-hook", "--webhook-secret", "0123456789abcdef"}, nil,
			"--webhook-url #1 (ftp://hooks.example/x): must be an absolute http or https URL"},
		{"second webhook relative", nil, map[string]string{"TOKENBROKER_WEBHOOK_URL": "https://a.example/h,/relative", "TOKENBROKER_WEBHOOK_SECRET": "0123456789abcdef"},
			"--webhook-url #2 (/relative): must be an absolute http or https URL"},
		{"webhook without secret", []string{"--webhook-url", "https://hooks.example/x"}, nil, "--webhook-url needs --webhook-secret"},
		{"short webhook secret", []string{"--webhook-url", "https://hooks.example/x", "--webhook-secret", "short"}, nil, "--webhook-secret must be at least 16 bytes"},
		{"unknown flag", []string{"--grpc-address", "x"}, nil, "flag provided but not defined: -grpc-address"},
		{"positional argument", []string{"serve"}, nil, `unexpected argument "serve"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(tc.args, env(tc.env))
			var ce *server.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("parseConfig = %v; want a ConfigError", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") || strings.Contains(msg, "hunter2") || strings.Contains(msg, "aHVudGVyMg") {
				t.Errorf("message %q; want one line containing %q and no password", msg, tc.want)
			}
			if code := exitCode(err, &strings.Builder{}); code != 2 {
				t.Errorf("exit code %d; want 2", code)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var out strings.Builder
	err := realMain(context.Background(), []string{"--help"}, env(nil), &out, &strings.Builder{})
	if !errors.Is(err, flag.ErrHelp) || exitCode(err, &strings.Builder{}) != 0 {
		t.Fatalf("--help = %v; want ErrHelp, exit 0", err)
	}
	fs := newFlagSet(&server.Config{})
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == versionFlag {
			return
		}
		if !strings.Contains(out.String(), "  --"+f.Name+" ") && !strings.Contains(out.String(), "  --"+f.Name+", --"+f.Name+"=true|false\n") || !strings.Contains(out.String(), envName(f.Name)+",") {
			t.Errorf("--help does not document --%s and %s", f.Name, envName(f.Name))
		}
	})
	for _, name := range []string{"grpc-addr", "redis-url", "redis-prefix", "seal-keys", "allow-plaintext", "metrics-addr", "credentials-file", "log-format", "log-level",
		"default-min-valid", "refresh-ahead", "refresh-timeout", "lock-ttl", "lock-wait", "force-interval",
		"shutdown-timeout", "max-recv-msg-size",
		"clients-file", "allow-unauthenticated", "tls-cert", "tls-key", "tls-client-ca", "tls-require-client-cert",
		"client-rate", "client-burst", "metrics-per-credential", "metrics-state-interval"} {
		if fs.Lookup(name) == nil {
			t.Errorf("no --%s flag", name)
		}
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "credentials.json")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testSealKey is a valid seal key (32 bytes, base64).
const testSealKey = "c2VjcmV0LXNlYWwta2V5LW1hdGVyaWFsLTMyYnl0ZXM="

// TestAuthorizationModes: who may do what follows from --clients-file and
// --allow-unauthenticated.
func TestAuthorizationModes(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		open bool
	}{
		{"dev mode without clients runs open", nil, true},
		{"dev mode with clients", []string{"--clients-file", "clients.json"}, false},
		{"dev mode, allow-unauthenticated is redundant", []string{"--allow-unauthenticated"}, true},
		{"redis mode with clients", []string{"--redis-url", "redis://127.0.0.1:6379", "--seal-keys", "k1:" + testSealKey, "--clients-file", "clients.json"}, false},
		{"redis mode, explicitly open", []string{"--redis-url", "redis://127.0.0.1:6379", "--seal-keys", "k1:" + testSealKey, "--allow-unauthenticated"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig(tc.args, env(nil))
			if err != nil {
				t.Fatal(err)
			}
			if c.Broker().Open != tc.open || c.Authenticated() == tc.open {
				t.Errorf("open = %v, authenticated = %v; want open %v", c.Broker().Open, c.Authenticated(), tc.open)
			}
		})
	}
	c, err := parseConfig([]string{"--tls-cert", "a.crt", "--tls-key", "a.key", "--tls-client-ca", "ca.crt", "--tls-require-client-cert"}, env(nil))
	if err != nil || !c.TLS() {
		t.Errorf("mTLS flags = %+v, %v", c, err)
	}
}

// writeClients writes a client registry with one admin and one reader and
// returns its path and the two keys.
func writeClients(t *testing.T, dir string) (path, adminKey, readerKey string) {
	t.Helper()
	adminKey, adminHash, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	readerKey, readerHash, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "clients.json")
	data := fmt.Sprintf(`{"clients": [{"id": "ops", "key_sha256": %q, "admin": true}, {"id": "reader", "key_sha256": [%q]}]}`, adminHash, readerHash)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, adminKey, readerKey
}

// TestBadSecurityFiles: a client registry or TLS file that does not read
// or parse is bad configuration (exit 2) that quotes no key, refused by
// realMain, as the binary runs it, before anything listens.
func TestBadSecurityFiles(t *testing.T) {
	dir := t.TempDir()
	_, adminKey, _ := writeClients(t, dir)
	ca, err := authtest.NewCA("config test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := srv.Write(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyAsHash := write("key-as-hash.json", `{"clients": [{"id": "ops", "key_sha256": "`+adminKey+`"}]}`)
	malformed := write("malformed.json", `{"clients": [`)
	unknownField := write("unknown.json", `{"clients": [{"id": "ops", "key": "tbk_SECRET"}]}`)
	notPEM := write("not-pem.crt", "not a certificate")

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing clients file", []string{"--clients-file", filepath.Join(dir, "missing.json")}, "--clients-file: auth: reading the client registry"},
		{"malformed clients file", []string{"--clients-file", malformed}, "--clients-file: " + malformed + ": auth: invalid client registry: truncated JSON"},
		{"a key where its hash belongs", []string{"--clients-file", keyAsHash}, "not the key itself"},
		{"unknown field", []string{"--clients-file", unknownField}, `unknown field "key"`},
		{"missing certificate", []string{"--tls-cert", filepath.Join(dir, "missing.crt"), "--tls-key", keyFile}, "auth: invalid TLS configuration: server certificate"},
		{"key of another certificate", []string{"--tls-cert", certFile, "--tls-key", notPEM}, "auth: invalid TLS configuration: server certificate"},
		{"client CA not PEM", []string{"--tls-cert", certFile, "--tls-key", keyFile, "--tls-client-ca", notPEM}, "client CA: no PEM certificate in " + notPEM},
		{"missing client CA", []string{"--tls-cert", certFile, "--tls-key", keyFile, "--tls-client-ca", filepath.Join(dir, "nope.crt")}, "client CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var stderr strings.Builder
			err := realMain(ctx, append([]string{"--grpc-addr", "127.0.0.1:0"}, tc.args...), env(nil), &strings.Builder{}, &stderr)
			var ce *server.ConfigError
			if !errors.As(err, &ce) || exitCode(err, &strings.Builder{}) != 2 {
				t.Fatalf("realMain = %v; want a configuration error (exit 2)", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") || strings.Contains(msg, adminKey) || strings.Contains(msg, "SECRET") {
				t.Errorf("message %q; want one line containing %q and no key", msg, tc.want)
			}
			if strings.Contains(stderr.String(), "listening") {
				t.Errorf("listened before refusing:\n%s", stderr.String())
			}
		})
	}
}

func TestParseConfigWebhooks(t *testing.T) {
	c, err := parseConfig([]string{"--webhook-url", "https://a.example/h", "--webhook-url", "http://127.0.0.1:9/h,https://b.example/h", "--http-addr", "127.0.0.1:0"},
		env(map[string]string{"TOKENBROKER_WEBHOOK_SECRET": "0123456789abcdef", "TOKENBROKER_WEBHOOK_URL": "https://ignored.example/h"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.WebhookURLs, " "); got != "https://a.example/h http://127.0.0.1:9/h https://b.example/h" {
		t.Errorf("webhook URLs %q: the flags win over the env twin, commas separate", got)
	}
	if c.WebhookSecret != "0123456789abcdef" || c.HTTPAddr != "127.0.0.1:0" {
		t.Errorf("webhook secret or http addr not read: %+v", c)
	}
}
