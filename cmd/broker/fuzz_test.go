package main

import (
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/server"
)

const fuzzSealKey = "k1:c2VjcmV0LXNlYWwta2V5LW1hdGVyaWFsLTMyYnl0ZXM="

// FuzzParseConfig feeds arbitrary flags and environment values to the
// configuration parser: it never panics, every refusal is a configuration
// error (exit 2) that does not echo the seal keys or a Redis password, and an
// accepted configuration is consistent.
func FuzzParseConfig(f *testing.F) {
	f.Add("--grpc-addr\x00127.0.0.1:0", "TOKENBROKER_LOG_LEVEL", "debug")
	f.Add("--refresh-timeout\x0010s\x00--lock-ttl\x005s", "TOKENBROKER_LOCK_WAIT", "1m")
	f.Add("--redis-url\x00redis://:hunter2pass@127.0.0.1:6379/0", "TOKENBROKER_SEAL_KEYS", fuzzSealKey)
	f.Add("--log-format\x00yaml", "TOKENBROKER_DEFAULT_MIN_VALID", "-3s")
	f.Add("extra", "TOKENBROKER_GRPC_ADDR", "not an address")
	f.Add("--max-recv-msg-size\x00-1", "TOKENBROKER_ALLOW_PLAINTEXT", "maybe")
	f.Fuzz(func(t *testing.T, args, envName, envValue string) {
		var argv []string
		if args != "" {
			argv = strings.Split(args, "\x00")
		}
		env := map[string]string{
			envName:                 envValue,
			"TOKENBROKER_SEAL_KEYS": fuzzSealKey,
		}
		c, err := parseConfig(argv, func(k string) string { return env[k] })
		if err != nil {
			var ce *server.ConfigError
			if !errors.As(err, &ce) && !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("refusal %v is not a configuration error", err)
			}
			for _, secret := range []string{fuzzSealKey[3:], "hunter2pass"} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("the error echoes a secret: %v", err)
				}
			}
			return
		}
		b := c.Broker()
		if err := b.Validate(); err != nil {
			t.Fatalf("accepted a configuration the broker refuses: %v", err)
		}
		if c.RedisURL == "" && !c.DevMode() {
			t.Fatal("no Redis URL but not dev mode")
		}
	})
}
