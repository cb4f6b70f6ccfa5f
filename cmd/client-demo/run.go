package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/clientsdk"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// The demo's client at the test IdP, and the scope of its grant.
const (
	demoClientID = "client-demo"
	demoScope    = "api.read"
)

// cleanups runs release functions in reverse order of registration.
type cleanups []func()

func (c *cleanups) add(f func()) { *c = append(*c, f) }

func (c *cleanups) run() {
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
	*c = nil
}

// demo is one run's fixtures: the test IdP, the demo client's first token
// pair, the HTTP transport the workers share, and what must be released.
type demo struct {
	cfg    config
	stderr io.Writer
	cl     cleanups

	idp     *fakeidp.Server
	secret  string         // the demo client's secret at the IdP
	conf    *oauth2.Config // the demo client at the IdP
	base    *http.Transport
	tokenHC *http.Client  // for token requests
	login   *oauth2.Token // the first token pair

	credID string      // the credential's ID at the broker
	bc     *brokerConn // nil in naive mode
	prog   *progress   // while the load runs
}

// warn reports a failure to release something; the run's result stands.
func (d *demo) warn(what string, err error) {
	if err != nil {
		fmt.Fprintf(d.stderr, "client-demo: %s: %v\n", what, err)
	}
}

// run sets up the mode cfg asks for, runs the load until cfg.duration has
// passed or ctx ends, and returns the summary. Everything it starts is
// stopped before it returns; problems while stopping are reported on stderr.
// Progress lines go to stderr too.
func run(ctx context.Context, cfg config, stderr io.Writer) (*Summary, error) {
	d := &demo{cfg: cfg, stderr: stderr, credID: "client-demo-" + randomID(4)}
	defer d.cl.run()
	if err := d.startIdP(ctx); err != nil {
		return nil, err
	}

	sum := &Summary{Mode: cfg.mode(), Workers: cfg.workers, TokenTTLSeconds: cfg.tokenTTL.Seconds(),
		RevokePrevious: cfg.revokePrevious, Watch: cfg.watch && !cfg.naive}
	var (
		t       *tally
		workers []*worker
		err     error
	)
	if cfg.naive {
		t = newTally(0)
		workers = d.naiveWorkers(t)
	} else {
		var addrs []string
		if addrs, err = d.startBrokers(ctx); err != nil {
			return nil, err
		}
		t = newTally(len(addrs))
		if workers, err = d.brokerWorkers(addrs, t); err != nil {
			return nil, err
		}
		sum.Replicas = len(addrs)
	}
	if err := ctx.Err(); err != nil {
		return nil, errors.New("interrupted before the load started")
	}

	start := time.Now()
	stopAt := start.Add(cfg.duration)
	maxRequests := int(cfg.duration/minPause) + 1
	prog := startProgress(stderr, cfg.progressEvery, start, t, d.idp)
	var opDone chan reauthResult
	opCtx, opCancel := context.WithCancel(ctx)
	defer opCancel()
	if cfg.reauth {
		d.prog = prog
		opDone = make(chan reauthResult, 1)
		go d.operate(opCtx, start, opDone)
	}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() { w.run(ctx, stopAt, maxRequests) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	prog.stop()
	if opDone != nil {
		opCancel()
		if err := fillReauth(sum, <-opDone); err != nil {
			d.warn("re-authorization", err)
		}
	}

	st := d.idp.Stats()
	t.fill(sum)
	sum.DurationSeconds = elapsed.Round(time.Millisecond).Seconds()
	sum.Interrupted = ctx.Err() != nil
	sum.IdPRefreshes = st.RefreshRequests
	sum.Reuses = st.Reuses
	sum.Revocations = st.Revocations
	if d.bc != nil {
		sum.CredentialState = d.bc.credentialState(context.WithoutCancel(ctx), d.credID)
	}
	return sum, nil
}

// startIdP starts the strict test IdP and logs the demo client in: it gets
// the first token pair. The IdP's counters start after that.
func (d *demo) startIdP(ctx context.Context) error {
	addr := d.cfg.idpAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	d.secret = randomID(24)
	d.idp = fakeidp.New(fakeidp.Options{
		Addr:           addr,
		Clients:        map[string]string{demoClientID: d.secret},
		AccessTokenTTL: d.cfg.tokenTTL,
		// Rotation and reuse policy keep their strict defaults: Rotate,
		// RevokeFamily.
		RevokePreviousAccessToken: d.cfg.revokePrevious,
	})
	if err := d.idp.Start(); err != nil {
		return fmt.Errorf("starting the test IdP on %s: %w", addr, err)
	}
	d.cl.add(func() { d.warn("stopping the test IdP", d.idp.Close()) })

	// One connection pool to the IdP for the whole run, sized for the
	// workers, so that the demo measures tokens rather than dials.
	d.base = &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:          d.cfg.workers + 16,
		MaxIdleConnsPerHost:   d.cfg.workers + 16,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: requestTimeout,
	}
	d.cl.add(d.base.CloseIdleConnections)
	d.tokenHC = &http.Client{Transport: d.base, Timeout: requestTimeout}
	d.conf = &oauth2.Config{
		ClientID:     demoClientID,
		ClientSecret: d.secret,
		Endpoint:     oauth2.Endpoint{TokenURL: d.idp.TokenURL(), AuthStyle: oauth2.AuthStyleInHeader},
	}

	// The login: a user authorized the demo client, which got its first
	// token pair. (The IdP starts a family with Seed; one refresh turns it
	// into an access and a refresh token, as an authorization-code grant
	// would.)
	login, err := d.conf.TokenSource(context.WithValue(ctx, oauth2.HTTPClient, d.tokenHC),
		&oauth2.Token{RefreshToken: d.idp.Seed(demoClientID, demoScope)}).Token()
	if err != nil {
		return fmt.Errorf("getting the first token pair from the test IdP: %w", err)
	}
	d.login = login
	d.idp.ResetStats()
	return nil
}

// naiveWorkers returns the workers of naive mode: each with its own copy of
// the token pair, refreshing on its own.
func (d *demo) naiveWorkers(t *tally) []*worker {
	// Refresh ahead as the broker does by default: a quarter of the
	// token's lifetime before expiry (x/oauth2's own 10 s would mean a
	// refresh before every request with short-lived tokens).
	early := min(d.cfg.tokenTTL/4, 10*time.Second)
	workers := make([]*worker, 0, d.cfg.workers)
	for range d.cfg.workers {
		src := newNaiveSource(d.conf, d.tokenHC, *d.login, early)
		workers = append(workers, &worker{replica: -1, url: d.idp.ResourceURL(), do: naiveDo(src, d.base), tally: t})
	}
	return workers
}

// startBrokers starts the in-process broker replicas (or finds the running
// broker), connects to the first for admin calls and puts the credential in.
// It returns the replicas' addresses.
func (d *demo) startBrokers(ctx context.Context) ([]string, error) {
	var addrs []string
	plaintext := true
	switch d.cfg.mode() {
	case modeBroker:
		r, err := startMemReplica(ctx)
		if err != nil {
			return nil, fmt.Errorf("starting the broker: %w", err)
		}
		d.cl.add(func() { d.warn("stopping the broker", r.stop()) })
		addrs = append(addrs, r.addr)
	case modeRedis:
		url := d.cfg.redisURL
		if url == "" {
			rs, err := startRedisServer(ctx)
			if err != nil {
				return nil, err
			}
			d.cl.add(func() { d.warn("stopping redis-server", rs.Close()) })
			url = rs.URL()
		}
		reps, err := startRedisReplicas(ctx, url, d.cfg.replicas)
		if err != nil {
			return nil, fmt.Errorf("starting the broker replicas: %w", err)
		}
		for i, r := range reps {
			d.cl.add(func() { d.warn(fmt.Sprintf("stopping broker replica %d", i), r.stop()) })
			addrs = append(addrs, r.addr)
		}
	case modeExternal:
		addrs = append(addrs, d.cfg.brokerAddr)
		plaintext = d.cfg.insecure
	}

	bc, err := dialBroker(addrs[0], plaintext, d.cfg.apiKey)
	if err != nil {
		return nil, fmt.Errorf("connecting to the broker at %s: %w", addrs[0], err)
	}
	d.cl.add(func() { _ = bc.admin.Close() })
	var allowed []string
	if d.cfg.allowed != "" {
		allowed = []string{d.cfg.allowed}
	}
	cred := &pb.Credential{
		Id:             d.credID,
		TokenUrl:       d.idp.TokenURL(),
		ClientId:       demoClientID,
		ClientSecret:   d.secret,
		Scopes:         []string{demoScope},
		RefreshToken:   d.login.RefreshToken,
		AuthStyle:      pb.AuthStyle_AUTH_STYLE_BASIC,
		AllowedClients: allowed,

		RevokesPreviousAccessToken: d.cfg.revokePrevious,
	}
	if d.cfg.reauth {
		cred.DeviceAuthorizationUrl = d.idp.DeviceAuthorizationURL()
		d.idp.SetDeviceInterval(deviceInterval)
	}
	err = bc.putCredential(ctx, cred)
	if err != nil {
		hint := ""
		if !plaintext && status.Code(err) == codes.Unavailable {
			hint = " (for a broker without TLS, add --insecure)"
		}
		return nil, fmt.Errorf("putting the credential into the broker at %s: %w%s", addrs[0], err, hint)
	}
	d.bc = bc
	d.cl.add(func() {
		d.warn("deleting the demo credential", bc.deleteCredential(context.WithoutCancel(ctx), d.credID))
	})
	return addrs, nil
}

// brokerWorkers returns the workers of the broker modes: worker i uses
// replica i % len(addrs) through its own clientsdk.Client, as if each were
// its own process.
func (d *demo) brokerWorkers(addrs []string, t *tally) ([]*worker, error) {
	workers := make([]*worker, 0, d.cfg.workers)
	opts := d.bc.dialOpts
	if !d.cfg.watch {
		opts = append(opts[:len(opts):len(opts)], clientsdk.WithoutWatch())
	}
	for i := range d.cfg.workers {
		rep := i % len(addrs)
		c, err := clientsdk.Dial(addrs[rep], opts...)
		if err != nil {
			return nil, fmt.Errorf("dialling the broker at %s: %w", addrs[rep], err)
		}
		d.cl.add(func() { _ = c.Close() })
		workers = append(workers, &worker{replica: rep, url: d.idp.ResourceURL(), do: brokerDo(c.TokenSource(d.credID), d.base), tally: t})
	}
	return workers, nil
}
