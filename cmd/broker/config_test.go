package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/seal"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseConfig(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		GRPCAddr: "127.0.0.1:7070", RedisPrefix: "tokenbroker", LogFormat: "text", LogLevel: "info",
		DefaultMinValid: 30 * time.Second, RefreshAhead: 5 * time.Minute, RefreshTimeout: 10 * time.Second,
		ForceInterval: 5 * time.Second, ShutdownTimeout: 10 * time.Second, MaxRecvMsgSize: 1 << 20,
	}
	if *c != want {
		t.Errorf("defaults = %+v; want %+v", *c, want)
	}
	if !c.DevMode() || !c.Broker().Open {
		t.Errorf("no --redis-url is not open dev mode")
	}
	key, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err = parseConfig([]string{"--redis-url", "redis+sentinel://:pw@127.0.0.1:26379/mymaster"},
		env(map[string]string{"TOKENBROKER_SEAL_KEYS": "k2:" + key + ",k1:" + key, "TOKENBROKER_REDIS_PREFIX": "tb-test"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.DevMode() || c.RedisPrefix != "tb-test" || c.SealKeys == "" {
		t.Errorf("redis config = %+v", c)
	}
	if _, err := parseConfig([]string{"--redis-url", "redis://127.0.0.1:6379", "--allow-plaintext"}, env(nil)); err != nil {
		t.Errorf("--allow-plaintext: %v", err)
	}
	if _, err := parseConfig([]string{"--redis-url", "redis://127.0.0.1:6379"}, env(map[string]string{"TOKENBROKER_ALLOW_PLAINTEXT": "true"})); err != nil {
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
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		GRPCAddr: "127.0.0.1:9999", RedisPrefix: "tokenbroker", MetricsAddr: "127.0.0.1:0", CredentialsFile: "/etc/creds.json",
		LogFormat: "json", LogLevel: "debug",
		DefaultMinValid: time.Minute, RefreshAhead: 2 * time.Minute, RefreshTimeout: 15 * time.Second,
		LockTTL: 20 * time.Second, LockWait: 40 * time.Second, ForceInterval: time.Second,
		ShutdownTimeout: 3 * time.Second, MaxRecvMsgSize: 65536,
	}
	if *c != want {
		t.Errorf("config = %+v\nwant %+v", *c, want)
	}
	bc := c.Broker()
	if bc.LockTTL != 20*time.Second || bc.RefreshTimeout != 15*time.Second || bc.DefaultMinValid != time.Minute {
		t.Errorf("broker config = %+v", bc)
	}
}

// TestParseConfigErrors: every bad setting is a *configError, one line,
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
		{"redis url scheme", []string{"--redis-url", "http://user:hunter2@redis:6379", "--allow-plaintext"}, nil, `--redis-url: redisstore: invalid Redis URL: unsupported scheme "http"`},
		{"redis url host", nil, map[string]string{"TOKENBROKER_REDIS_URL": "redis://:hunter2@", "TOKENBROKER_ALLOW_PLAINTEXT": "1"}, "--redis-url: redisstore: invalid Redis URL: empty host"},
		{"redis without keys", []string{"--redis-url", "redis://:hunter2@127.0.0.1:6379"}, nil, "redis mode needs --seal-keys (or --allow-plaintext"},
		{"bad seal keys", []string{"--redis-url", "redis://127.0.0.1:6379"}, map[string]string{"TOKENBROKER_SEAL_KEYS": "k1:aHVudGVyMg"}, `--seal-keys: seal: key "k1" is 7 bytes, want 32`},
		{"malformed seal keys", []string{"--redis-url", "redis://127.0.0.1:6379", "--seal-keys", "hunter2"}, nil, "--seal-keys: seal: keyring entry 1: want id:base64key"},
		{"bad redis prefix", []string{"--redis-url", "redis://127.0.0.1:6379", "--allow-plaintext", "--redis-prefix", "a b"}, nil, "--redis-prefix must be non-empty"},
		{"bad bool env", nil, map[string]string{"TOKENBROKER_ALLOW_PLAINTEXT": "maybe"}, `invalid value "maybe" for TOKENBROKER_ALLOW_PLAINTEXT`},
		{"recv size too small", []string{"--max-recv-msg-size", "10"}, nil, "--max-recv-msg-size must be"},
		{"unknown flag", []string{"--grpc-address", "x"}, nil, "flag provided but not defined: -grpc-address"},
		{"positional argument", []string{"serve"}, nil, `unexpected argument "serve"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(tc.args, env(tc.env))
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("parseConfig = %v; want a configError", err)
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
	fs := newFlagSet(&Config{})
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(out.String(), "--"+f.Name+" ") || !strings.Contains(out.String(), envName(f.Name)+",") {
			t.Errorf("--help does not document --%s and %s", f.Name, envName(f.Name))
		}
	})
	for _, name := range []string{"grpc-addr", "redis-url", "redis-prefix", "seal-keys", "allow-plaintext", "metrics-addr", "credentials-file", "log-format", "log-level",
		"default-min-valid", "refresh-ahead", "refresh-timeout", "lock-ttl", "lock-wait", "force-interval",
		"shutdown-timeout", "max-recv-msg-size"} {
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

func TestLoadCredentials(t *testing.T) {
	ctx := context.Background()
	seeds, err := loadCredentials(ctx, writeFile(t, `{"credentials": [
		{"id": "a", "token_url": "https://idp.example/token", "client_id": "c", "client_secret": "s1",
		 "fallback_client_secrets": ["s0"], "refresh_token": "rt-a", "scopes": ["x"], "auth_style": "AUTH_STYLE_POST",
		 "refresh_ahead": "90s", "state": "REAUTH_REQUIRED", "generation": "7"},
		{"id": "b", "tokenUrl": "http://127.0.0.1:1/token", "clientId": "c", "grantType": "GRANT_TYPE_CLIENT_CREDENTIALS"},
		{"id": "c", "token_url": "https://idp.example/token", "client_id": "c"}
	]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(seeds) != 3 {
		t.Fatalf("%d seeds; want 3", len(seeds))
	}
	a := seeds[0]
	if a.cred.ID != "a" || a.refreshToken != "rt-a" || a.cred.AuthStyle != broker.AuthStylePost ||
		a.cred.RefreshAhead != 90*time.Second || len(a.cred.ClientSecrets) != 2 || a.cred.ClientSecrets[0] != "s1" {
		t.Errorf("seed a = %+v", a)
	}
	if seeds[1].cred.GrantType != broker.GrantClientCredentials || seeds[1].cred.TokenURL != "http://127.0.0.1:1/token" {
		t.Errorf("seed b = %+v", seeds[1])
	}
	if seeds[2].refreshToken != "" {
		t.Errorf("seed c = %+v", seeds[2])
	}

	for _, tc := range []struct {
		name, content, want string
	}{
		{"malformed JSON", `{"credentials": [`, "unexpected end of input"},
		{"not an object", `[1, 2]`, `not a JSON object {"credentials": [...]}`},
		{"unknown top-level key", `{"creds": []}`, `unknown field "creds"`},
		{"trailing data", `{"credentials": []} {}`, "data after the JSON object"},
		{"entry not an object", `{"credentials": ["SECRET-x"]}`, "credentials[0]"},
		{"unknown field", `{"credentials": [{"id": "a", "tokenurl": "x"}]}`, `credentials[0]: (line 1:13): unknown field "tokenurl"`},
		{"secret of the wrong type", `{"credentials": [{"id": "a", "client_secret": 123456789}]}`, "credentials[0]: (line 1:30): invalid value for string field clientSecret"},
		{"unknown enum", `{"credentials": [{"id": "a", "auth_style": "SECRET-x"}]}`, "invalid value for enum field authStyle"},
		{"bad duration", `{"credentials": [{"id": "a", "refresh_ahead": "soon"}]}`, "invalid google.protobuf.Duration"},
		{"bad id", `{"credentials": [{"id": "a b", "token_url": "https://idp.example/token", "client_id": "c", "refresh_token": "SECRET-x"}]}`,
			"credentials[0] (id \"a b\"): broker: invalid argument: credential.id"},
		{"bad token url", `{"credentials": [{"id": "ok", "token_url": "https://idp/token", "client_id": "c", "refresh_token": "r"}, {"id": "x", "token_url": "ftp://idp/token", "client_id": "c", "client_secret": "SECRET-x", "refresh_token": "SECRET-x"}]}`,
			`credentials[1] (id "x"): broker: invalid argument: credential.token_url`},
		{"fallback without primary", `{"credentials": [{"id": "x", "token_url": "https://idp/token", "client_id": "c", "fallback_client_secrets": ["SECRET-x"]}]}`,
			`credentials[0] (id "x"): broker: invalid argument: credential.client_secret`},
		{"overlong secret", `{"credentials": [{"id": "x", "token_url": "https://idp/token", "client_id": "c", "client_secret": "SECRET-x` + strings.Repeat("y", 2000) + `"}]}`,
			`credentials[0] (id "x"): broker: invalid argument: credential.client_secret`},
		{"duplicate id", `{"credentials": [{"id": "x", "token_url": "https://idp/token", "client_id": "c"}, {"id": "x"}]}`,
			`credentials[1] (id "x"): same id as credentials[0]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadCredentials(ctx, writeFile(t, tc.content))
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("loadCredentials = %v; want a configError", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) || strings.Contains(msg, "SECRET") || strings.Contains(msg, "123456789") || strings.Contains(msg, "\n") {
				t.Errorf("message %q; want one line with %q and no secret", msg, tc.want)
			}
		})
	}

	_, err = loadCredentials(ctx, filepath.Join(t.TempDir(), "missing.json"))
	if ce := (*configError)(nil); !errors.As(err, &ce) || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file = %v", err)
	}
}
