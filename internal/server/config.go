package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/grpcapi"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	"github.com/tokenbroker/tokenbroker/internal/webhook"
)

// Config is everything a replica is built from: what cmd/broker's flags
// and their TOKENBROKER_* twins set (each field names its flag), and at the
// end a few settings for callers that run a Server in their own process,
// which no flag reaches. DefaultConfig holds the flags' defaults. Validate
// checks a Config without reading a file or dialling anything; New calls it
// first.
type Config struct {
	GRPCAddr    string // --grpc-addr: host:port; port 0 picks a free one
	RedisURL    string // --redis-url; empty: dev mode
	RedisPrefix string // --redis-prefix: key prefix in Redis
	// RedisMinReplicaAcks is --redis-min-replica-acks: "auto" (one replica
	// when the master has one), or how many replicas must acknowledge each
	// write before it counts as stored.
	RedisMinReplicaAcks string
	SealKeys            string // --seal-keys: keyring spec sealing records in Redis; secret
	AllowPlaintext      bool   // --allow-plaintext: Redis mode without SealKeys
	MetricsAddr         string // --metrics-addr; empty: no metrics listener
	HTTPAddr            string // --http-addr: serves the authorization callback; empty: none

	WebhookURLs     []string // --webhook-url, repeatable: endpoints that receive the credential events
	WebhookSecret   string   // --webhook-secret: HMAC-SHA256 key signing them; secret
	CredentialsFile string   // --credentials-file; empty: none
	LogFormat       string   // --log-format: text or json (NewLogger), in any case
	LogLevel        string   // --log-level: debug, info, warn or error (NewLogger), in any case

	ClientsFile          string  // --clients-file: client registry; empty: no caller authentication
	AllowUnauthenticated bool    // --allow-unauthenticated: Redis mode without a client registry
	TLSCert              string  // --tls-cert: PEM certificate of the gRPC port; empty: plaintext
	TLSKey               string  // --tls-key: its private key
	TLSClientCA          string  // --tls-client-ca: CAs of client certificates (mTLS); empty: none asked for
	TLSRequireClientCert bool    // --tls-require-client-cert: refuse connections without a client certificate
	ClientRate           float64 // --client-rate: costly calls per second per client
	ClientBurst          int     // --client-burst

	MetricsPerCredential bool          // --metrics-per-credential: credential_id labels on the refresh metrics
	MetricsStateInterval time.Duration // --metrics-state-interval

	DefaultMinValid  time.Duration // --default-min-valid
	RefreshAhead     time.Duration // --refresh-ahead
	RefreshTimeout   time.Duration // --refresh-timeout
	RefreshReplyWait time.Duration // --refresh-reply-wait: hard bound on one IdP call; 0: 60s
	LockTTL          time.Duration // --lock-ttl; 0: RefreshTimeout + 5s
	LockWait         time.Duration // --lock-wait; 0: LockTTL + 5s
	ForceInterval    time.Duration // --force-interval

	ShutdownTimeout time.Duration // --shutdown-timeout: how long calls in flight may finish
	// UnreadyAfter is --unready-after: readiness turns NOT_SERVING once the
	// Store has not answered for this long (0: at the first failed check).
	UnreadyAfter   time.Duration
	MaxRecvMsgSize int // --max-recv-msg-size, bytes

	IdPRate           int // --idp-rate: calls per second to one token host, fleet-wide; 0: no limit
	IdPMaxConcurrency int // --idp-max-concurrency: calls at once to one token host, fleet-wide; 0: no limit

	JournalDir string // --journal-dir: refreshed tokens kept on disk until stored; empty: none
	ReplicaID  string // --replica-id: this replica's name in pending refreshes; empty: host name and PID

	AllowInsecureTokenURLs bool   // --allow-insecure-token-urls: http:// token URLs to any host
	TokenURLAllow          string // --token-url-allow: comma-separated host patterns token URLs must match; empty: any

	// Authenticator, when set, is the client registry, held in memory,
	// instead of ClientsFile's: callers authenticate and are authorized as
	// with --clients-file.
	Authenticator *auth.Authenticator
	// Observer, when set, is told about cache hits, lock waits and
	// refreshes besides the audit trail and the metrics.
	Observer broker.Observer
	// RedisHook, when set, is added to the go-redis client in Redis mode,
	// for instance to count the commands a replica sends.
	RedisHook redis.Hook
	// TracerProvider, when set, turns tracing on (tracing.go); cmd/broker
	// sets it when the OTEL_EXPORTER_OTLP_* variables ask for export.
	TracerProvider trace.TracerProvider
	// Version and Revision label tokenbroker_build_info (cmd/broker's
	// stamped main.version and main.revision); empty: "unknown".
	Version, Revision string
}

// DefaultConfig returns the defaults of cmd/broker's flags: dev mode on
// 127.0.0.1:7070, no metrics listener, text logs at info.
func DefaultConfig() Config {
	return Config{
		GRPCAddr:             "127.0.0.1:7070",
		RedisPrefix:          redisstore.DefaultPrefix,
		RedisMinReplicaAcks:  "auto",
		IdPMaxConcurrency:    32,
		LogFormat:            "text",
		LogLevel:             "info",
		ClientRate:           10,
		ClientBurst:          20,
		MetricsStateInterval: 30 * time.Second,
		DefaultMinValid:      30 * time.Second,
		RefreshAhead:         5 * time.Minute,
		RefreshTimeout:       10 * time.Second,
		ForceInterval:        5 * time.Second,
		ShutdownTimeout:      10 * time.Second,
		UnreadyAfter:         5 * time.Second,
		MaxRecvMsgSize:       grpcapi.DefaultMaxRecvMsgSize,
	}
}

// DevMode reports whether the server runs without Redis: one replica,
// nothing kept across restarts.
func (c *Config) DevMode() bool { return c.RedisURL == "" }

// Authenticated reports whether callers must authenticate: a client
// registry is configured. Without one the server runs open.
func (c *Config) Authenticated() bool { return c.ClientsFile != "" || c.Authenticator != nil }

// TLS reports whether the gRPC port serves TLS.
func (c *Config) TLS() bool { return c.TLSCert != "" }

// Broker returns the broker's configuration (New adds the observers).
func (c *Config) Broker() broker.Config {
	return broker.Config{
		DefaultMinValid:     c.DefaultMinValid,
		DefaultRefreshAhead: c.RefreshAhead,
		RefreshTimeout:      c.RefreshTimeout,
		RefreshReplyWait:    c.RefreshReplyWait,
		LockTTL:             c.LockTTL,
		LockWait:            c.LockWait,
		ForceInterval:       c.ForceInterval,
		Open:                !c.Authenticated(),
		ReplicaID:           c.ReplicaID,
		TokenURLs:           c.tokenURLPolicy(),
	}
}

// tokenURLPolicy is the broker's TokenURLPolicy of AllowInsecureTokenURLs
// and TokenURLAllow (whose patterns Validate checks).
func (c *Config) tokenURLPolicy() broker.TokenURLPolicy {
	allow, _ := broker.ParseHostPatterns(c.TokenURLAllow)
	return broker.TokenURLPolicy{AllowInsecure: c.AllowInsecureTokenURLs, Allow: allow}
}

// logLevels are the values of LogLevel.
var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

// NewLogger returns the logger LogFormat and LogLevel of a valid Config ask
// for, writing to w. It is for the process's edge (cmd/broker logs to
// stderr); New logs to whichever logger it is given.
func (c *Config) NewLogger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: logLevels[strings.ToLower(c.LogLevel)]}
	if strings.EqualFold(c.LogFormat, "json") {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// ConfigError is bad configuration: a setting out of range or at odds with
// another, a file that does not read or parse, a credential the broker
// refuses. Its message is one line that names the flag and holds no secret.
// cmd/broker exits with status 2 on one.
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return e.Msg }

func badConfig(format string, args ...any) error {
	return &ConfigError{Msg: fmt.Sprintf(format, args...)}
}

// Limits of MaxRecvMsgSize.
const (
	minRecvMsgSize = 4 << 10
	maxRecvMsgSize = 64 << 20
)

// Limits of IdPRate and IdPMaxConcurrency.
const (
	maxIdPRate        = 100000
	maxIdPConcurrency = 10000
)

// Limits of ClientRate, ClientBurst and MetricsStateInterval.
const (
	maxClientRate           = 1e6
	maxClientBurst          = 1_000_000
	minMetricsStateInterval = time.Second
)

// Validate reports the first bad setting as a *ConfigError. It reads no
// file (New does, and reports what does not read or parse the same way)
// and dials nothing.
func (c *Config) Validate() error {
	for _, check := range []func() error{c.checkListeners, c.checkRedis, c.checkLogging, c.checkTimings, c.checkSecurity, c.checkMetrics, c.checkWebhooks} {
		if err := check(); err != nil {
			return err
		}
	}
	if _, err := broker.ParseHostPatterns(c.TokenURLAllow); err != nil {
		return badConfig("--token-url-allow: %v", err)
	}
	if err := c.Broker().Validate(); err != nil {
		return badConfig("%v", err)
	}
	return nil
}

func (c *Config) checkListeners() error {
	if err := checkAddr("--grpc-addr", c.GRPCAddr); err != nil {
		return err
	}
	if c.MetricsAddr != "" {
		if err := checkAddr("--metrics-addr", c.MetricsAddr); err != nil {
			return err
		}
	}
	if c.HTTPAddr != "" {
		return checkAddr("--http-addr", c.HTTPAddr)
	}
	return nil
}

func (c *Config) checkLogging() error {
	switch strings.ToLower(c.LogFormat) {
	case "text", "json":
	default:
		return badConfig("--log-format must be text or json, not %q", c.LogFormat)
	}
	if _, ok := logLevels[strings.ToLower(c.LogLevel)]; !ok {
		return badConfig("--log-level must be debug, info, warn or error (in any case), not %q", c.LogLevel)
	}
	return nil
}

func (c *Config) checkTimings() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"--default-min-valid", c.DefaultMinValid}, {"--refresh-ahead", c.RefreshAhead},
		{"--refresh-timeout", c.RefreshTimeout}, {"--refresh-reply-wait", c.RefreshReplyWait},
		{"--lock-ttl", c.LockTTL}, {"--lock-wait", c.LockWait},
		{"--force-interval", c.ForceInterval}, {"--shutdown-timeout", c.ShutdownTimeout},
		{"--unready-after", c.UnreadyAfter},
	} {
		if d.v < 0 {
			return badConfig("%s must not be negative (got %s)", d.name, d.v)
		}
		if d.v > broker.MaxDuration {
			return badConfig("%s must be at most %s (got %s)", d.name, broker.MaxDuration, d.v)
		}
	}
	if c.RefreshTimeout == 0 {
		return badConfig("--refresh-timeout must be positive")
	}
	if c.RefreshReplyWait != 0 && c.RefreshReplyWait < c.RefreshTimeout {
		return badConfig("--refresh-reply-wait (%s) must not be below --refresh-timeout (%s): an answer is read at least as long as callers wait for it", c.RefreshReplyWait, c.RefreshTimeout)
	}
	if c.LockTTL != 0 && c.LockTTL <= c.RefreshTimeout {
		return badConfig("--lock-ttl (%s) must exceed --refresh-timeout (%s), so a refresh gives up before its lock expires", c.LockTTL, c.RefreshTimeout)
	}
	if c.IdPRate < 0 || c.IdPRate > maxIdPRate {
		return badConfig("--idp-rate must be 0 (no limit) to %d calls per second (got %d)", maxIdPRate, c.IdPRate)
	}
	if c.IdPMaxConcurrency < 0 || c.IdPMaxConcurrency > maxIdPConcurrency {
		return badConfig("--idp-max-concurrency must be 0 (no limit) to %d (got %d)", maxIdPConcurrency, c.IdPMaxConcurrency)
	}
	if c.MaxRecvMsgSize < minRecvMsgSize || c.MaxRecvMsgSize > maxRecvMsgSize {
		return badConfig("--max-recv-msg-size must be %d to %d bytes (got %d)", minRecvMsgSize, maxRecvMsgSize, c.MaxRecvMsgSize)
	}
	return nil
}

func (c *Config) checkMetrics() error {
	if c.MetricsStateInterval < minMetricsStateInterval || c.MetricsStateInterval > broker.MaxDuration {
		return badConfig("--metrics-state-interval must be %s to %s (got %s)", minMetricsStateInterval, broker.MaxDuration, c.MetricsStateInterval)
	}
	return nil
}

// Limits of the webhook settings.
const maxWebhooks = 16

// checkWebhooks checks the webhook endpoints and their secret, never
// echoing either (a URL may carry the receiver's token).
func (c *Config) checkWebhooks() error {
	if len(c.WebhookURLs) > maxWebhooks {
		return badConfig("--webhook-url: at most %d endpoints", maxWebhooks)
	}
	for i, u := range c.WebhookURLs {
		if err := webhook.CheckURL(u); err != nil {
			return badConfig("--webhook-url #%d (%s): %v", i+1, webhook.Redact(u), err)
		}
	}
	switch {
	case len(c.WebhookURLs) > 0 && c.WebhookSecret == "":
		return badConfig("--webhook-url needs --webhook-secret to sign the deliveries")
	case c.WebhookSecret != "" && len(c.WebhookSecret) < webhook.MinSecretLen:
		return badConfig("--webhook-secret must be at least %d bytes", webhook.MinSecretLen)
	}
	return nil
}

// checkSecurity checks how callers authenticate: the files themselves are
// read by New, these are the rules between the settings.
func (c *Config) checkSecurity() error {
	switch {
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return badConfig("--tls-cert and --tls-key go together: give both or neither")
	case c.TLSClientCA != "" && !c.TLS():
		return badConfig("--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked in the TLS handshake")
	case c.TLSRequireClientCert && c.TLSClientCA == "":
		return badConfig("--tls-require-client-cert needs --tls-client-ca to verify the certificates against")
	case c.ClientsFile != "" && c.Authenticator != nil:
		return badConfig("--clients-file and Config.Authenticator both give a client registry: give one")
	case c.Authenticated() && c.AllowUnauthenticated:
		return badConfig("--allow-unauthenticated contradicts --clients-file: give one or the other")
	case !c.DevMode() && !c.Authenticated() && !c.AllowUnauthenticated:
		return badConfig("redis mode needs --clients-file (caller authentication), or --allow-unauthenticated to let every caller read every credential and call the admin methods")
	}
	if math.IsNaN(c.ClientRate) || c.ClientRate <= 0 || c.ClientRate > maxClientRate {
		return badConfig("--client-rate must be a positive number of calls per second, at most %g (got %g)", maxClientRate, c.ClientRate)
	}
	if c.ClientBurst < 1 || c.ClientBurst > maxClientBurst {
		return badConfig("--client-burst must be 1 to %d (got %d)", maxClientBurst, c.ClientBurst)
	}
	return nil
}

// checkRedis checks the Redis settings without dialling and without ever
// echoing the URL or a key: both hold secrets.
func (c *Config) checkRedis() error {
	if c.DevMode() {
		if c.JournalDir != "" {
			return badConfig("--journal-dir needs --redis-url: dev mode keeps nothing across restarts anyway")
		}
		return nil
	}
	client, err := redisstore.NewClient(c.RedisURL)
	if err != nil {
		return badConfig("--redis-url: %v", err) // redisstore's errors hold no password
	}
	_ = client.Close()
	if c.RedisPrefix == "" || strings.ContainsAny(c.RedisPrefix, "{} \t\r\n") {
		return badConfig("--redis-prefix must be non-empty, without braces or spaces")
	}
	if _, err := c.minReplicaAcks(); err != nil {
		return err
	}
	if c.SealKeys == "" {
		if !c.AllowPlaintext {
			if c.JournalDir != "" {
				return badConfig("--journal-dir needs --seal-keys to seal what it keeps (or --allow-plaintext)")
			}
			return badConfig("redis mode needs --seal-keys (or --allow-plaintext to store refresh tokens and client secrets unencrypted)")
		}
		return nil
	}
	if _, err := seal.ParseKeyring(c.SealKeys); err != nil {
		return badConfig("--seal-keys: %v", err) // seal's errors hold no key material
	}
	return nil
}

// maxReplicaAcks bounds --redis-min-replica-acks.
const maxReplicaAcks = 16

// minReplicaAcks returns redisstore's MinReplicaAcks for
// RedisMinReplicaAcks.
func (c *Config) minReplicaAcks() (int, error) {
	switch v := strings.TrimSpace(c.RedisMinReplicaAcks); v {
	case "", "auto":
		return redisstore.AutoReplicaAcks, nil
	default:
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxReplicaAcks {
			return 0, badConfig("--redis-min-replica-acks must be auto or 0 to %d (got %q)", maxReplicaAcks, v)
		}
		return n, nil
	}
}

// checkAddr checks a listen address: host:port with a numeric port (0 picks
// a free one). Any host is allowed.
func checkAddr(flagName, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			err = errors.New(ae.Err)
		}
		return badConfig("%s %q is not host:port: %v", flagName, addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return badConfig("%s %q: port must be a number from 0 to 65535", flagName, addr)
	}
	return nil
}

// loopback reports whether a listen address only accepts connections from
// this machine: a loopback IP or localhost. An empty host listens on every
// interface.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
