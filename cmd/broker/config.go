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
		"HTTP listen address for /healthz (liveness), /readyz (readiness) and /metrics (Prometheus), host:port; empty turns it off")
	fs.StringVar(&c.HTTPAddr, "http-addr", d.HTTPAddr,
		"HTTP listen address of the authorization callback GET "+broker.CallbackPath+" (StartAuthorization's redirect_url points here), host:port; empty turns it off")
	fs.Var((*urlList)(&c.WebhookURLs), "webhook-url",
		"endpoint (http or https) that receives every credential event as signed JSON; repeat the flag, or separate URLs with commas")
	fs.StringVar(&c.WebhookSecret, "webhook-secret", d.WebhookSecret,
		"HMAC-SHA256 key (16 bytes or more) signing the webhook deliveries; secret, so prefer the env twin")
	fs.BoolVar(&c.MetricsPerCredential, "metrics-per-credential", d.MetricsPerCredential,
		"add a credential_id label to the refresh metrics (about 60 series per credential: small fleets only)")
	durationVar(fs, &c.MetricsStateInterval, "metrics-state-interval", d.MetricsStateInterval,
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
	durationVar(fs, &c.DefaultMinValid, "default-min-valid", d.DefaultMinValid,
		"validity a returned token keeps when the caller asks for none")
	durationVar(fs, &c.RefreshAhead, "refresh-ahead", d.RefreshAhead,
		"refresh in the background once a token has less than this left (at most half its lifetime)")
	durationVar(fs, &c.RefreshTimeout, "refresh-timeout", d.RefreshTimeout,
		"how long callers wait for the IdP's answer before UNAVAILABLE; the answer is still read and stored for --refresh-reply-wait")
	durationVar(fs, &c.RefreshReplyWait, "refresh-reply-wait", d.RefreshReplyWait,
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
	durationVar(fs, &c.LockTTL, "lock-ttl", d.LockTTL,
		"lifetime of a credential's refresh lock; must exceed --refresh-timeout; 0 means --refresh-timeout + 5s")
	durationVar(fs, &c.LockWait, "lock-wait", d.LockWait,
		"how long a call waits for another holder of the refresh lock; 0 means --lock-ttl + 5s")
	durationVar(fs, &c.ForceInterval, "force-interval", d.ForceInterval,
		"least time between forced refreshes (InvalidateToken, RefreshCredential) of one credential")
	durationVar(fs, &c.ShutdownTimeout, "shutdown-timeout", d.ShutdownTimeout,
		"after SIGTERM, how long calls and refreshes in flight may finish; the process exits within it")
	durationVar(fs, &c.UnreadyAfter, "unready-after", d.UnreadyAfter,
		"readiness (grpc.health.v1 \"\" and each service, /readyz) turns NOT_SERVING once Redis has not answered for this long, and SERVING as soon as it answers; liveness (service \"liveness\", /healthz) stays up")
	fs.BoolVar(&c.AllowInsecureTokenURLs, "allow-insecure-token-urls", d.AllowInsecureTokenURLs,
		"let credentials name http:// token URLs on any host (without it: https, or http to a loopback host); link-local and cloud metadata addresses are refused either way")
	fs.StringVar(&c.TokenURLAllow, "token-url-allow", d.TokenURLAllow,
		"comma-separated host patterns (idp.example.com, *.example.com) that credentials' token URLs must match; empty allows any host")
	fs.IntVar(&c.MaxRecvMsgSize, "max-recv-msg-size", d.MaxRecvMsgSize, "largest gRPC request accepted, in bytes")
	fs.String(configFlag, "",
		"YAML or JSON file of settings by flag name (grpc-addr: 127.0.0.1:7070); a flag or its environment twin wins over the file")
	fs.Bool(versionFlag, false, "print the version and exit")
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

// parseConfig reads the configuration, each setting from the first of: the
// flags in args, its environment twin from getenv, the --config file (or
// TOKENBROKER_CONFIG), the default; then validates the result. A
// *server.ConfigError describes bad configuration in one line; flag.ErrHelp
// is returned for -h and --help, errVersion for --version.
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
		if i := len(args) - fs.NArg(); i > 0 && strings.HasPrefix(args[i-1], "-") && !strings.Contains(args[i-1], "=") {
			if f := fs.Lookup(strings.TrimLeft(args[i-1], "-")); f != nil && isBool(f) {
				return nil, badConfig("unexpected argument %q: %s is a boolean, write %s=%s", fs.Arg(0), args[i-1], args[i-1], fs.Arg(0))
			}
		}
		return nil, badConfig("unexpected argument %q (the broker takes flags only)", fs.Arg(0))
	}
	if v, ok := fs.Lookup(versionFlag).Value.(flag.Getter).Get().(bool); ok && v {
		return nil, errVersion
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || envErr != nil || f.Name == versionFlag {
			return
		}
		name := envName(f.Name)
		v := getenv(name)
		if v == "" {
			return
		}
		given[f.Name] = true
		if err := fs.Set(f.Name, v); err != nil {
			envErr = setValueErr(f.Name, name, v, err)
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	if path := fs.Lookup(configFlag).Value.String(); path != "" {
		if err := loadConfigFile(fs, path, given); err != nil {
			return nil, err
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// setValueErr is the error of a value that does not parse for a flag, given as
// source (the flag, an environment variable, a config file's key). The
// values of secret settings are not echoed.
func setValueErr(flagName, source, value string, err error) error {
	if secretFlags[flagName] {
		return badConfig("invalid %s", source)
	}
	return badConfig("invalid value %q for %s: %v", value, source, err)
}

// secretFlags are the settings whose values must never be echoed.
var secretFlags = map[string]bool{"redis-url": true, "seal-keys": true}

// printUsage writes the --help text: every flag with its environment twin
// and default.
func printUsage(w io.Writer) {
	fs := newFlagSet(&server.Config{})
	fmt.Fprintf(w, `Usage: broker [flags]

broker holds upstream OAuth2 credentials, refreshes each one once however many
callers ask, and serves access tokens over gRPC (tokenbroker.v1 TokenService
and AdminService, grpc.health.v1, server reflection).

Every flag has an environment twin, %sFLAG_NAME (listed with each flag),
and a key in the --config file (YAML or JSON, keys are flag names). A flag
given on the command line wins over its twin, which wins over the file.
Durations take Go's form (1m30s) or a number of seconds (90); booleans are
--name or --name=true|false; --log-level is case-insensitive. Without
--redis-url the broker runs in dev mode: one replica, nothing kept across
restarts.

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
		switch f.Value.(type) {
		case *secondsValue:
			typ = "duration"
		}
		switch {
		case isBool(f):
			fmt.Fprintf(w, "  --%s, --%s=true|false\n", f.Name, f.Name)
		case typ == "":
			fmt.Fprintf(w, "  --%s value\n", f.Name)
		default:
			fmt.Fprintf(w, "  --%s %s\n", f.Name, typ)
		}
		fmt.Fprintf(w, "        %s\n", usage)
		def := f.DefValue
		if def == "" {
			def = `""`
		}
		if f.Name == versionFlag {
			fmt.Fprintf(w, "        (no environment twin)\n")
			return
		}
		fmt.Fprintf(w, "        env %s, default %s\n", envName(f.Name), def)
	})
	fmt.Fprintf(w, `
Health: grpc.health.v1 "" and each service report readiness (NOT_SERVING
while Redis has not answered for --unready-after, and from SIGTERM on);
"liveness" reports the process alone. --metrics-addr serves the same as
/readyz and /healthz.

Signals: SIGTERM or SIGINT turns readiness NOT_SERVING at once while the port
still answers, refuses new calls with UNAVAILABLE (reason SHUTTING_DOWN), lets
calls and refreshes in flight finish, and exits within --shutdown-timeout,
logging what it abandoned. Exit status: 0 after a stop, 2 for bad
configuration (also a Redis that refuses the URL's password or database, or
is a Cluster node or not unlike the URL, and a --seal-keys that opens none of
the stored records), 1 for any other failure. A Redis that does not answer
at start is not fatal.
`)
}
