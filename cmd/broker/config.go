package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/server"
)

// envPrefix starts the environment twin of every flag: TOKENBROKER_ and the
// flag's name upper-cased with "-" turned into "_".
const envPrefix = "TOKENBROKER_"

// badConfig is a *server.ConfigError: the broker exits with status 2.
func badConfig(format string, args ...any) error {
	return &server.ConfigError{Msg: fmt.Sprintf(format, args...)}
}

// newFlagSet defines the flags into c, with server.DefaultConfig's values
// as their defaults.
func newFlagSet(c *server.Config) *flag.FlagSet {
	d := server.DefaultConfig()
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, usage is printed on --help only
	fs.StringVar(&c.GRPCAddr, "grpc-addr", d.GRPCAddr,
		"gRPC listen address, host:port; port 0 picks a free port (the \"listening\" log line's addr tells which)")
	fs.StringVar(&c.RedisURL, "redis-url", d.RedisURL,
		"Redis URL (redis://, rediss://, redis+sentinel://, redis+cluster://); empty runs the single-replica dev mode")
	fs.StringVar(&c.RedisPrefix, "redis-prefix", d.RedisPrefix,
		"prefix of every Redis key; replicas sharing credentials use the same")
	fs.StringVar(&c.SealKeys, "seal-keys", d.SealKeys,
		"keys sealing records in Redis (AES-256-GCM): id1:base64key[,id2:base64key...], the first one seals new writes; secret, so prefer the env twin to the command line")
	fs.BoolVar(&c.AllowPlaintext, "allow-plaintext", d.AllowPlaintext,
		"let Redis mode run without --seal-keys, storing refresh tokens and client secrets unencrypted")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", d.MetricsAddr,
		"HTTP listen address for /healthz and /metrics (Prometheus), host:port; empty turns it off")
	fs.StringVar(&c.HTTPAddr, "http-addr", d.HTTPAddr,
		"HTTP listen address of the authorization callback GET "+broker.CallbackPath+" (StartAuthorization's redirect_url points here), host:port; empty turns it off")
	fs.Var((*urlList)(&c.WebhookURLs), "webhook-url",
		"endpoint (http or https) that receives every credential event as signed JSON; repeat the flag, or separate URLs with commas")
	fs.StringVar(&c.WebhookSecret, "webhook-secret", d.WebhookSecret,
		"HMAC-SHA256 key (16 bytes or more) signing the webhook deliveries; secret, so prefer the env twin")
	fs.BoolVar(&c.MetricsPerCredential, "metrics-per-credential", d.MetricsPerCredential,
		"add a credential_id label to the refresh metrics (about 60 series per credential: small fleets only)")
	fs.DurationVar(&c.MetricsStateInterval, "metrics-state-interval", d.MetricsStateInterval,
		"least time between two listings of every credential for the tokenbroker_credentials gauge")
	fs.StringVar(&c.CredentialsFile, "credentials-file", d.CredentialsFile,
		"JSON file {\"credentials\": [tokenbroker.v1.Credential, ...]} seeded at start; existing credentials keep their refresh token")
	fs.StringVar(&c.ClientsFile, "clients-file", d.ClientsFile,
		"JSON client registry {\"clients\": [{\"id\", \"key_sha256\", \"cert_identity\", \"admin\"}, ...]}; turns caller authentication and authorization on")
	fs.BoolVar(&c.AllowUnauthenticated, "allow-unauthenticated", d.AllowUnauthenticated,
		"let Redis mode run without --clients-file: every caller may read every credential and call the admin methods")
	fs.StringVar(&c.TLSCert, "tls-cert", d.TLSCert, "PEM certificate (chain) of the gRPC port; with --tls-key turns TLS on")
	fs.StringVar(&c.TLSKey, "tls-key", d.TLSKey, "PEM private key of --tls-cert")
	fs.StringVar(&c.TLSClientCA, "tls-client-ca", d.TLSClientCA,
		"PEM CA certificates that sign client certificates: a verified certificate's URI SAN (or CN) is matched to a client's cert_identity (mTLS)")
	fs.BoolVar(&c.TLSRequireClientCert, "tls-require-client-cert", d.TLSRequireClientCert,
		"refuse TLS connections without a client certificate signed by --tls-client-ca")
	fs.Float64Var(&c.ClientRate, "client-rate", d.ClientRate,
		"per authenticated client: InvalidateToken and RefreshCredential calls per second, on average")
	fs.IntVar(&c.ClientBurst, "client-burst", d.ClientBurst,
		"per authenticated client: InvalidateToken and RefreshCredential calls allowed at once; cover the processes sharing one client key")
	fs.StringVar(&c.LogFormat, "log-format", d.LogFormat, "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", d.LogLevel, "log level: debug, info, warn or error")
	fs.DurationVar(&c.DefaultMinValid, "default-min-valid", d.DefaultMinValid,
		"validity a returned token keeps when the caller asks for none")
	fs.DurationVar(&c.RefreshAhead, "refresh-ahead", d.RefreshAhead,
		"refresh in the background once a token has less than this left (at most half its lifetime)")
	fs.DurationVar(&c.RefreshTimeout, "refresh-timeout", d.RefreshTimeout,
		"how long callers wait for the IdP's answer before UNAVAILABLE; the answer is still read and stored for --refresh-reply-wait")
	fs.DurationVar(&c.RefreshReplyWait, "refresh-reply-wait", d.RefreshReplyWait,
		"hard bound on one call to the IdP: a later answer is lost and the refresh's outcome unknown; 0 means 60s (at least --refresh-timeout)")
	fs.StringVar(&c.RedisMinReplicaAcks, "redis-min-replica-acks", d.RedisMinReplicaAcks,
		"replicas that must acknowledge each write (Redis WAIT) before a refreshed token is handed out: auto (1 when the master has a replica, else 0) or a number")
	fs.IntVar(&c.IdPRate, "idp-rate", d.IdPRate,
		"most calls per second to one IdP token host, counted across every replica sharing the Redis; refreshes ahead of expiry give way to callers; 0 means no limit")
	fs.IntVar(&c.IdPMaxConcurrency, "idp-max-concurrency", d.IdPMaxConcurrency,
		"most calls at once to one IdP token host, across every replica; 0 means no limit")
	fs.StringVar(&c.JournalDir, "journal-dir", d.JournalDir,
		"directory where refreshed tokens are kept, sealed, until Redis stores them, so a killed or restarted replica still stores them; put it on a volume that outlives the process")
	fs.StringVar(&c.ReplicaID, "replica-id", d.ReplicaID,
		"this replica's name in the pending-refresh markers other replicas see; empty means host name and PID")
	fs.DurationVar(&c.LockTTL, "lock-ttl", d.LockTTL,
		"lifetime of a credential's refresh lock; must exceed --refresh-timeout; 0 means --refresh-timeout + 5s")
	fs.DurationVar(&c.LockWait, "lock-wait", d.LockWait,
		"how long a call waits for another holder of the refresh lock; 0 means --lock-ttl + 5s")
	fs.DurationVar(&c.ForceInterval, "force-interval", d.ForceInterval,
		"least time between forced refreshes (InvalidateToken, RefreshCredential) of one credential")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", d.ShutdownTimeout,
		"how long calls in flight may finish after SIGTERM before they are cut")
	fs.IntVar(&c.MaxRecvMsgSize, "max-recv-msg-size", d.MaxRecvMsgSize, "largest gRPC request accepted, in bytes")
	return fs
}

// urlList is a repeatable flag of URLs; a value may hold several,
// separated by commas.
type urlList []string

func (l *urlList) String() string { return strings.Join(*l, ",") }

func (l *urlList) Set(v string) error {
	for _, u := range strings.Split(v, ",") {
		if u = strings.TrimSpace(u); u != "" {
			*l = append(*l, u)
		}
	}
	return nil
}

// envName is the environment twin of a flag.
func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig reads the flags in args and, for every flag not given there,
// its environment twin from getenv; then validates the result. A
// *server.ConfigError describes bad configuration in one line; flag.ErrHelp
// is returned for -h and --help.
func parseConfig(args []string, getenv func(string) string) (*server.Config, error) {
	c := &server.Config{}
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
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// printUsage writes the --help text: every flag with its environment twin
// and default.
func printUsage(w io.Writer) {
	fs := newFlagSet(&server.Config{})
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
