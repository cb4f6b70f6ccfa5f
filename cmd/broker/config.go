package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/grpcapi"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/seal"
)

// envPrefix starts the environment twin of every flag: TOKENBROKER_ and the
// flag's name upper-cased with "-" turned into "_".
const envPrefix = "TOKENBROKER_"

// Config is everything the broker is started with, parsed from flags and
// their environment twins and validated before anything starts.
type Config struct {
	GRPCAddr        string
	RedisURL        string // empty: dev mode
	RedisPrefix     string // key prefix in Redis
	SealKeys        string // keyring spec sealing records in Redis; secret
	AllowPlaintext  bool   // Redis mode without SealKeys
	MetricsAddr     string // empty: no metrics listener
	CredentialsFile string // empty: none
	LogFormat       string // text or json
	LogLevel        string // debug, info, warn or error

	ClientsFile          string // client registry; empty: no caller authentication
	AllowUnauthenticated bool   // Redis mode without ClientsFile
	TLSCert              string // PEM certificate of the gRPC port; empty: plaintext
	TLSKey               string // its private key
	TLSClientCA          string // CAs of client certificates (mTLS); empty: none asked for
	TLSRequireClientCert bool   // refuse connections without a client certificate
	ClientRate           float64
	ClientBurst          int

	MetricsPerCredential bool // credential_id labels on the refresh metrics
	MetricsStateInterval time.Duration

	DefaultMinValid time.Duration
	RefreshAhead    time.Duration
	RefreshTimeout  time.Duration
	LockTTL         time.Duration // 0: RefreshTimeout + 5s
	LockWait        time.Duration // 0: LockTTL + 5s
	ForceInterval   time.Duration

	ShutdownTimeout time.Duration
	MaxRecvMsgSize  int
}

// DevMode reports whether the broker runs without Redis: one replica,
// nothing kept across restarts.
func (c *Config) DevMode() bool { return c.RedisURL == "" }

// Authenticated reports whether callers must authenticate: a client
// registry is configured. Without one the broker runs open.
func (c *Config) Authenticated() bool { return c.ClientsFile != "" }

// TLS reports whether the gRPC port serves TLS.
func (c *Config) TLS() bool { return c.TLSCert != "" }

// Broker returns the broker's configuration.
func (c *Config) Broker() broker.Config {
	return broker.Config{
		DefaultMinValid:     c.DefaultMinValid,
		DefaultRefreshAhead: c.RefreshAhead,
		RefreshTimeout:      c.RefreshTimeout,
		LockTTL:             c.LockTTL,
		LockWait:            c.LockWait,
		ForceInterval:       c.ForceInterval,
		Open:                !c.Authenticated(),
	}
}

// logLevels are the values of --log-level.
var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

// configError is bad configuration: the broker exits with status 2.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

func badConfig(format string, args ...any) error {
	return &configError{msg: fmt.Sprintf(format, args...)}
}

// Limits of --max-recv-msg-size.
const (
	minRecvMsgSize = 4 << 10
	maxRecvMsgSize = 64 << 20
)

// Limits of --client-rate, --client-burst and --metrics-state-interval.
const (
	maxClientRate           = 1e6
	maxClientBurst          = 1_000_000
	minMetricsStateInterval = time.Second
)

// newFlagSet defines the flags into c, with their defaults.
func newFlagSet(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, usage is printed on --help only
	fs.StringVar(&c.GRPCAddr, "grpc-addr", "127.0.0.1:7070",
		"gRPC listen address, host:port; port 0 picks a free port (the \"listening\" log line's addr tells which)")
	fs.StringVar(&c.RedisURL, "redis-url", "",
		"Redis URL (redis://, rediss://, redis+sentinel://, redis+cluster://); empty runs the single-replica dev mode")
	fs.StringVar(&c.RedisPrefix, "redis-prefix", redisstore.DefaultPrefix,
		"prefix of every Redis key; replicas sharing credentials use the same")
	fs.StringVar(&c.SealKeys, "seal-keys", "",
		"keys sealing records in Redis (AES-256-GCM): id1:base64key[,id2:base64key...], the first one seals new writes; secret, so prefer the env twin to the command line")
	fs.BoolVar(&c.AllowPlaintext, "allow-plaintext", false,
		"let Redis mode run without --seal-keys, storing refresh tokens and client secrets unencrypted")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "",
		"HTTP listen address for /healthz and /metrics (Prometheus), host:port; empty turns it off")
	fs.BoolVar(&c.MetricsPerCredential, "metrics-per-credential", false,
		"add a credential_id label to the refresh metrics (about 60 series per credential: small fleets only)")
	fs.DurationVar(&c.MetricsStateInterval, "metrics-state-interval", 30*time.Second,
		"least time between two listings of every credential for the tokenbroker_credentials gauge")
	fs.StringVar(&c.CredentialsFile, "credentials-file", "",
		"JSON file {\"credentials\": [tokenbroker.v1.Credential, ...]} seeded at start; existing credentials keep their refresh token")
	fs.StringVar(&c.ClientsFile, "clients-file", "",
		"JSON client registry {\"clients\": [{\"id\", \"key_sha256\", \"cert_identity\", \"admin\"}, ...]}; turns caller authentication and authorization on")
	fs.BoolVar(&c.AllowUnauthenticated, "allow-unauthenticated", false,
		"let Redis mode run without --clients-file: every caller may read every credential and call the admin methods")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM certificate (chain) of the gRPC port; with --tls-key turns TLS on")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&c.TLSClientCA, "tls-client-ca", "",
		"PEM CA certificates that sign client certificates: a verified certificate's URI SAN (or CN) is matched to a client's cert_identity (mTLS)")
	fs.BoolVar(&c.TLSRequireClientCert, "tls-require-client-cert", false,
		"refuse TLS connections without a client certificate signed by --tls-client-ca")
	fs.Float64Var(&c.ClientRate, "client-rate", 10,
		"per authenticated client: InvalidateToken and RefreshCredential calls per second, on average")
	fs.IntVar(&c.ClientBurst, "client-burst", 20,
		"per authenticated client: InvalidateToken and RefreshCredential calls allowed at once; cover the processes sharing one client key")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&c.DefaultMinValid, "default-min-valid", 30*time.Second,
		"validity a returned token keeps when the caller asks for none")
	fs.DurationVar(&c.RefreshAhead, "refresh-ahead", 5*time.Minute,
		"refresh in the background once a token has less than this left (at most half its lifetime)")
	fs.DurationVar(&c.RefreshTimeout, "refresh-timeout", 10*time.Second, "bound on one call to the IdP")
	fs.DurationVar(&c.LockTTL, "lock-ttl", 0,
		"lifetime of a credential's refresh lock; must exceed --refresh-timeout; 0 means --refresh-timeout + 5s")
	fs.DurationVar(&c.LockWait, "lock-wait", 0,
		"how long a call waits for another holder of the refresh lock; 0 means --lock-ttl + 5s")
	fs.DurationVar(&c.ForceInterval, "force-interval", 5*time.Second,
		"least time between forced refreshes (InvalidateToken, RefreshCredential) of one credential")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second,
		"how long calls in flight may finish after SIGTERM before they are cut")
	fs.IntVar(&c.MaxRecvMsgSize, "max-recv-msg-size", grpcapi.DefaultMaxRecvMsgSize, "largest gRPC request accepted, in bytes")
	return fs
}

// envName is the environment twin of a flag.
func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig reads the flags in args and, for every flag not given there,
// its environment twin from getenv; then validates the result. A
// *configError describes bad configuration in one line; flag.ErrHelp is
// returned for -h and --help.
func parseConfig(args []string, getenv func(string) string) (*Config, error) {
	c := &Config{}
	fs := newFlagSet(c)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, badConfig("%v", err)
	}
	if fs.NArg() > 0 {
		return nil, badConfig("unexpected argument %q (the broker takes flags only)", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || envErr != nil {
			return
		}
		name := envName(f.Name)
		v := getenv(name)
		if v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			if f.Name == "redis-url" {
				envErr = badConfig("invalid %s", name)
				return
			}
			envErr = badConfig("invalid value %q for %s: %v", v, name, err)
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) validate() error {
	if err := checkAddr("--grpc-addr", c.GRPCAddr); err != nil {
		return err
	}
	if c.MetricsAddr != "" {
		if err := checkAddr("--metrics-addr", c.MetricsAddr); err != nil {
			return err
		}
	}
	if c.RedisURL != "" {
		if err := c.checkRedis(); err != nil {
			return err
		}
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return badConfig("--log-format must be text or json, not %q", c.LogFormat)
	}
	if _, ok := logLevels[c.LogLevel]; !ok {
		return badConfig("--log-level must be debug, info, warn or error, not %q", c.LogLevel)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"--default-min-valid", c.DefaultMinValid}, {"--refresh-ahead", c.RefreshAhead},
		{"--refresh-timeout", c.RefreshTimeout}, {"--lock-ttl", c.LockTTL}, {"--lock-wait", c.LockWait},
		{"--force-interval", c.ForceInterval}, {"--shutdown-timeout", c.ShutdownTimeout},
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
	if c.LockTTL != 0 && c.LockTTL <= c.RefreshTimeout {
		return badConfig("--lock-ttl (%s) must exceed --refresh-timeout (%s), so a refresh gives up before its lock expires", c.LockTTL, c.RefreshTimeout)
	}
	if c.MaxRecvMsgSize < minRecvMsgSize || c.MaxRecvMsgSize > maxRecvMsgSize {
		return badConfig("--max-recv-msg-size must be %d to %d bytes (got %d)", minRecvMsgSize, maxRecvMsgSize, c.MaxRecvMsgSize)
	}
	if err := c.checkSecurity(); err != nil {
		return err
	}
	if c.MetricsStateInterval < minMetricsStateInterval || c.MetricsStateInterval > broker.MaxDuration {
		return badConfig("--metrics-state-interval must be %s to %s (got %s)", minMetricsStateInterval, broker.MaxDuration, c.MetricsStateInterval)
	}
	if err := c.Broker().Validate(); err != nil {
		return badConfig("%v", err)
	}
	return nil
}

// checkSecurity checks how callers authenticate: the files themselves are
// read at start (run), these are the rules between the settings.
func (c *Config) checkSecurity() error {
	switch {
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return badConfig("--tls-cert and --tls-key go together: give both or neither")
	case c.TLSClientCA != "" && !c.TLS():
		return badConfig("--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked in the TLS handshake")
	case c.TLSRequireClientCert && c.TLSClientCA == "":
		return badConfig("--tls-require-client-cert needs --tls-client-ca to verify the certificates against")
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

// checkRedis checks the Redis settings without dialling and without ever
// echoing the URL or a key: both hold secrets.
func (c *Config) checkRedis() error {
	client, err := redisstore.NewClient(c.RedisURL)
	if err != nil {
		return badConfig("--redis-url: %v", err) // redisstore's errors hold no password
	}
	_ = client.Close()
	if c.RedisPrefix == "" || strings.ContainsAny(c.RedisPrefix, "{} \t\r\n") {
		return badConfig("--redis-prefix must be non-empty, without braces or spaces")
	}
	if c.SealKeys == "" {
		if !c.AllowPlaintext {
			return badConfig("redis mode needs --seal-keys (or --allow-plaintext to store refresh tokens and client secrets unencrypted)")
		}
		return nil
	}
	if _, err := seal.ParseKeyring(c.SealKeys); err != nil {
		return badConfig("--seal-keys: %v", err) // seal's errors hold no key material
	}
	return nil
}

// printUsage writes the --help text: every flag with its environment twin
// and default.
func printUsage(w io.Writer) {
	fs := newFlagSet(&Config{})
	fmt.Fprintf(w, `Usage: broker [flags]

broker holds upstream OAuth2 credentials, refreshes each one once however many
callers ask, and serves access tokens over gRPC (tokenbroker.v1 TokenService
and AdminService, grpc.health.v1, server reflection).

Every flag has an environment twin, %sFLAG_NAME (listed with each flag);
a flag given on the command line wins over its twin. Without --redis-url the
broker runs in dev mode: one replica, nothing kept across restarts.

Callers authenticate when --clients-file names a client registry: a bearer
key ("authorization: Bearer <key>" metadata; the registry holds its SHA-256)
and/or a client certificate (--tls-client-ca). Each credential lists the
clients that may read it (allowed_clients); AdminService needs an admin
client. Without --clients-file every caller may read every credential and
call the admin methods: dev mode allows that with a warning, Redis mode only
with --allow-unauthenticated. Serve TLS (--tls-cert, --tls-key) wherever
keys cross a network.

Flags:
`, envPrefix)
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		if typ == "" {
			typ = "value"
		}
		fmt.Fprintf(w, "  --%s %s\n", f.Name, typ)
		fmt.Fprintf(w, "        %s\n", usage)
		def := f.DefValue
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(w, "        env %s, default %s\n", envName(f.Name), def)
	})
	fmt.Fprintf(w, `
Signals: SIGTERM or SIGINT turns health NOT_SERVING, lets calls in flight
finish for --shutdown-timeout, then stops. Exit status: 0 after a clean stop,
2 for bad configuration, 1 for any other failure.
`)
}
