package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Limits on the flags, so that a typo cannot start a million goroutines.
const (
	maxWorkers  = 2000
	maxReplicas = 16
	maxDuration = 24 * time.Hour
	maxTokenTTL = 24 * time.Hour

	defaultIdPOnlyAddr = "127.0.0.1:9090"
	defaultBrokerAddr  = "127.0.0.1:7070" // where --idp-only's grpcurl hint points
)

// Modes, as named in the summary.
const (
	modeBroker   = "broker"          // one in-process broker, dev mode (memstore)
	modeRedis    = "broker-redis"    // in-process replicas sharing Redis
	modeExternal = "broker-external" // a broker that is already running
	modeNaive    = "naive"           // no broker: every worker refreshes on its own
)

// config is the parsed command line.
type config struct {
	workers  int
	duration time.Duration
	tokenTTL time.Duration
	naive    bool
	reauth   bool // --reauth: revoke the grant mid-run and re-authorize it

	brokerAddr string // --broker: an already running broker
	apiKey     string // --api-key, for --broker
	allowed    string // --allowed-client, for --broker
	insecure   bool   // --insecure, for --broker

	redisURL string
	replicas int

	// revokePrevious: the test IdP revokes the previous access token on
	// every refresh (as Ory Hydra does), and the credential says so.
	revokePrevious bool
	// watch: the workers' TokenSources follow the credential over
	// WatchToken (the SDK's default); false: cache and GetToken only.
	watch bool

	json    bool
	idpOnly bool
	idpAddr string // "" means 127.0.0.1:0, or defaultIdPOnlyAddr with --idp-only

	// progressEvery is the interval of progress lines when stderr is not a
	// terminal; zero means the default.
	progressEvery time.Duration
}

// mode is the mode the configuration runs in.
func (c *config) mode() string {
	switch {
	case c.naive:
		return modeNaive
	case c.brokerAddr != "":
		return modeExternal
	case c.redisURL != "" || c.replicas > 1:
		return modeRedis
	}
	return modeBroker
}

const usageText = `Usage: client-demo [flags]

client-demo shows the refresh-token reuse problem and tokenbroker solving it.
It starts a strict test IdP (refresh tokens rotate; presenting a spent one
revokes the whole token family, as Auth0, Okta and Ory Hydra do) with a
protected API at /resource, logs one client in (its first token pair), and
runs --workers workers that call the API for --duration, with access tokens
that live --token-ttl.
A progress line goes to stderr; the summary goes to stdout.

Modes:
  (default)            the broker runs in-process (dev mode, in-memory store);
                       workers get tokens from it through clientsdk and, on a
                       401, report the token and retry once.
  --naive              no broker: every worker keeps its own copy of the
                       token pair and refreshes on its own with
                       golang.org/x/oauth2, on expiry or on a 401. Expect
                       reuses, a revoked family and failed requests from
                       the first expiry on.
  --replicas N         N in-process broker replicas sharing Redis, each with
  --redis-url URL      its own Redis client and gRPC port; worker i uses
                       replica i % N. Without --redis-url a private
                       redis-server (from PATH) is started and stopped.
  --broker ADDR        use a broker that is already running: the credential
                       is put in with AdminService/PutCredential (and deleted
                       at the end). --api-key KEY authenticates the admin
                       calls and the workers: an admin key, whose client ID
                       goes in --allowed-client if the broker does not let
                       admins read tokens. Plaintext needs --insecure.
  --revoke-previous    the test IdP revokes the previous access token on every
                       refresh, as Ory Hydra does (a token handed out just
                       before a refresh dies early), and the credential is put
                       with revokes_previous_access_token. With the SDK
                       watching (--watch, the default) the workers drop the
                       old token when the broker announces the refresh and
                       expect no 401; --watch=false shows the 401s they get
                       (recovered_401) from caching it.
  --reauth             with a broker: a third into the run the IdP revokes
                       the grant; workers see REAUTH_REQUIRED; the demo, as
                       the operator, hears of it on WatchCredentials,
                       re-authorizes through the device flow
                       (StartDeviceAuthorization, the user code approved at
                       the IdP's page) and the workers recover without a
                       restart. The summary counts the outage.
  --idp-only           only run the test IdP on --idp-addr (default
                       127.0.0.1:9090), print its token URL, client and a
                       fresh refresh token, and serve until interrupted.
                       That refresh token seeds one broker once (a reuse
                       revokes its family); GET /seed on the IdP answers a
                       PutCredential request with a fresh one each time.

Durations take Go syntax (20s, 1m30s) or a number of seconds.
Interrupting (Ctrl-C) ends the run early and still prints the summary.
Exit status: 0 when the run completed, 1 when it could not run, 2 on bad flags.

Flags:
`

// parseFlags parses args. It returns flag.ErrHelp after printing the usage
// to stdout when help was asked for; other errors describe a bad command
// line and have printed nothing.
func parseFlags(args []string, stdout io.Writer) (config, error) {
	cfg := config{
		workers:  50,
		duration: 20 * time.Second,
		tokenTTL: 3 * time.Second,
		replicas: 1,
		watch:    true,
	}
	fs := flag.NewFlagSet("client-demo", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.IntVar(&cfg.workers, "workers", cfg.workers, "`N` workers calling the API concurrently")
	fs.Var((*seconds)(&cfg.duration), "duration", "`how long` the load runs")
	fs.Var((*seconds)(&cfg.tokenTTL), "token-ttl", "`lifetime` of the IdP's access tokens: whole seconds, at least 1s")
	fs.BoolVar(&cfg.naive, "naive", false, "no broker: every worker refreshes on its own")
	fs.BoolVar(&cfg.reauth, "reauth", false, "revoke the grant mid-run and re-authorize it through the device flow")
	fs.StringVar(&cfg.brokerAddr, "broker", "", "`address` of a running broker to use instead of an in-process one")
	fs.StringVar(&cfg.apiKey, "api-key", "", "with --broker: API `key` (admin) for AdminService and the workers")
	fs.BoolVar(&cfg.insecure, "insecure", false, "with --broker: connect without TLS")
	fs.StringVar(&cfg.allowed, "allowed-client", "", "with --broker: client `ID` (of the --api-key) allowed to read the demo credential's tokens")
	fs.StringVar(&cfg.redisURL, "redis-url", "", "Redis `URL` shared by the broker replicas (none: a private redis-server when --replicas > 1)")
	fs.IntVar(&cfg.replicas, "replicas", cfg.replicas, "`N` in-process broker replicas; more than 1 needs Redis")
	fs.BoolVar(&cfg.revokePrevious, "revoke-previous", false, "the test IdP revokes the previous access token on refresh (as Ory Hydra does); the credential says so")
	fs.BoolVar(&cfg.watch, "watch", cfg.watch, "the workers' SDK follows the credential over WatchToken (--watch=false: cache and GetToken only)")
	fs.BoolVar(&cfg.json, "json", false, "print the summary as one JSON object")
	fs.BoolVar(&cfg.idpOnly, "idp-only", false, "only run the test IdP and print how to use it")
	fs.StringVar(&cfg.idpAddr, "idp-addr", "", "`address` the test IdP listens on (default 127.0.0.1:0; 127.0.0.1:9090 with --idp-only)")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprint(stdout, usageText)
			fs.PrintDefaults()
		}
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q (client-demo takes flags only)", fs.Arg(0))
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return cfg, cfg.validate(set)
}

// validate checks the values and their combinations; set holds the names of
// the flags given on the command line.
func (c *config) validate(set map[string]bool) error {
	switch {
	case c.workers < 1 || c.workers > maxWorkers:
		return fmt.Errorf("--workers must be between 1 and %d, not %d", maxWorkers, c.workers)
	case c.duration <= 0 || c.duration > maxDuration:
		return fmt.Errorf("--duration must be positive and at most %s, not %s", maxDuration, c.duration)
	case c.tokenTTL < time.Second || c.tokenTTL > maxTokenTTL:
		return fmt.Errorf("--token-ttl must be between 1s and %s, not %s (the IdP's expires_in is whole seconds)", maxTokenTTL, c.tokenTTL)
	case c.tokenTTL%time.Second != 0:
		return fmt.Errorf("--token-ttl must be whole seconds, not %s (the IdP's expires_in is whole seconds)", c.tokenTTL)
	case c.replicas < 1 || c.replicas > maxReplicas:
		return fmt.Errorf("--replicas must be between 1 and %d, not %d", maxReplicas, c.replicas)
	}
	if c.idpAddr != "" {
		if _, port, err := net.SplitHostPort(c.idpAddr); err != nil || port == "" {
			return fmt.Errorf("--idp-addr must be host:port, not %q", c.idpAddr)
		}
	}
	if c.idpOnly {
		for _, name := range []string{"naive", "reauth", "broker", "api-key", "insecure", "allowed-client", "redis-url", "replicas", "workers", "duration", "json", "watch"} {
			if set[name] {
				return fmt.Errorf("--%s does not apply to --idp-only", name)
			}
		}
		return nil
	}
	if c.naive {
		for _, name := range []string{"broker", "api-key", "insecure", "allowed-client", "redis-url", "watch", "reauth"} {
			if set[name] {
				return fmt.Errorf("--naive runs without a broker: --%s does not apply", name)
			}
		}
		if c.replicas > 1 {
			return errors.New("--naive runs without a broker: --replicas must be 1")
		}
	}
	if c.brokerAddr != "" {
		if _, port, err := net.SplitHostPort(c.brokerAddr); err != nil || port == "" {
			return fmt.Errorf("--broker must be host:port, not %q", c.brokerAddr)
		}
		if c.redisURL != "" || c.replicas > 1 {
			return errors.New("--broker uses a running broker: --redis-url and --replicas do not apply")
		}
	} else {
		for _, name := range []string{"api-key", "insecure", "allowed-client"} {
			if set[name] {
				return fmt.Errorf("--%s only applies with --broker", name)
			}
		}
	}
	if set["api-key"] && c.apiKey == "" {
		return errors.New("--api-key must not be empty")
	}
	return nil
}

// seconds is a duration flag that takes Go syntax or a number of seconds.
type seconds time.Duration

func (s *seconds) String() string { return time.Duration(*s).String() }

func (s *seconds) Set(v string) error {
	if d, err := time.ParseDuration(v); err == nil {
		*s = seconds(d)
		return nil
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || f != f || f > maxDuration.Seconds()*2 || f < -maxDuration.Seconds()*2 {
		return errors.New("not a duration (e.g. 20s, 1m30s, or a number of seconds)")
	}
	*s = seconds(time.Duration(f * float64(time.Second)))
	return nil
}
