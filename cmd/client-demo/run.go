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

// run sets up the mode cfg asks for, runs the load until cfg.duration has
// passed or ctx ends, and returns the summary. Everything it starts is
// stopped before it returns; problems while stopping are reported on stderr.
// Progress lines go to stderr too.
func run(ctx context.Context, cfg config, stderr io.Writer) (*Summary, error) {
	var cl cleanups
	defer cl.run()
	warn := func(what string, err error) {
		if err != nil {
			fmt.Fprintf(stderr, "client-demo: %s: %v\n", what, err)
		}
	}

	idpAddr := cfg.idpAddr
	if idpAddr == "" {
		idpAddr = "127.0.0.1:0"
	}
	secret := randomID(24)
	idp := fakeidp.New(fakeidp.Options{
		Addr:           idpAddr,
		Clients:        map[string]string{demoClientID: secret},
		AccessTokenTTL: cfg.tokenTTL,
		// Rotation and reuse policy keep their strict defaults: Rotate,
		// RevokeFamily.
	})
	if err := idp.Start(); err != nil {
		return nil, fmt.Errorf("starting the test IdP on %s: %w", idpAddr, err)
	}
	cl.add(func() { warn("stopping the test IdP", idp.Close()) })

	// One connection pool to the IdP for the whole run, sized for the
	// workers, so that the demo measures tokens rather than dials.
	base := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:          cfg.workers + 16,
		MaxIdleConnsPerHost:   cfg.workers + 16,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: requestTimeout,
	}
	cl.add(base.CloseIdleConnections)
	tokenHC := &http.Client{Transport: base, Timeout: requestTimeout}
	conf := &oauth2.Config{
		ClientID:     demoClientID,
		ClientSecret: secret,
		Endpoint:     oauth2.Endpoint{TokenURL: idp.TokenURL(), AuthStyle: oauth2.AuthStyleInHeader},
	}

	// The login: a user authorized the demo client and it got its first
	// token pair. (The IdP starts the family with Seed; one refresh turns
	// it into an access and a refresh token, as an authorization-code
	// grant would.) The counters start after it.
	login, err := conf.TokenSource(context.WithValue(ctx, oauth2.HTTPClient, tokenHC),
		&oauth2.Token{RefreshToken: idp.Seed(demoClientID, demoScope)}).Token()
	if err != nil {
		return nil, fmt.Errorf("getting the first token pair from the test IdP: %w", err)
	}
	idp.ResetStats()

	mode := cfg.mode()
	sum := &Summary{Mode: mode, Workers: cfg.workers, TokenTTLSeconds: cfg.tokenTTL.Seconds()}
	var (
		t       *tally
		workers = make([]*worker, 0, cfg.workers)
		bc      *brokerConn
		credID  = "client-demo-" + randomID(4)
	)
	if mode == modeNaive {
		t = newTally(0)
		// Refresh ahead as the broker would by default: a quarter of the
		// token's lifetime before expiry (x/oauth2's own 10 s would mean a
		// refresh before every request with short-lived tokens).
		early := min(cfg.tokenTTL/4, 10*time.Second)
		for range cfg.workers {
			// Every worker gets its own copy of the token pair.
			src := newNaiveSource(conf, tokenHC, *login, early)
			workers = append(workers, &worker{replica: -1, url: idp.ResourceURL(), do: naiveDo(src, base)})
		}
	} else {
		var addrs []string
		plaintext := true
		switch mode {
		case modeBroker:
			r, err := startMemReplica()
			if err != nil {
				return nil, fmt.Errorf("starting the broker: %w", err)
			}
			cl.add(func() { warn("stopping the broker", r.stop()) })
			addrs = append(addrs, r.addr)
		case modeRedis:
			url := cfg.redisURL
			if url == "" {
				rs, err := startRedisServer(ctx)
				if err != nil {
					return nil, err
				}
				cl.add(func() { warn("stopping redis-server", rs.stop()) })
				url = rs.URL()
			}
			reps, err := startRedisReplicas(ctx, url, cfg.replicas)
			if err != nil {
				return nil, fmt.Errorf("starting the broker replicas: %w", err)
			}
			for i, r := range reps {
				cl.add(func() { warn(fmt.Sprintf("stopping broker replica %d", i), r.stop()) })
				addrs = append(addrs, r.addr)
			}
		case modeExternal:
			addrs = append(addrs, cfg.brokerAddr)
			plaintext = cfg.insecure
		}
		bc, err = dialBroker(addrs[0], plaintext, cfg.apiKey)
		if err != nil {
			return nil, fmt.Errorf("connecting to the broker at %s: %w", addrs[0], err)
		}
		cl.add(func() { _ = bc.admin.Close() })
		err = bc.putCredential(ctx, &pb.Credential{
			Id:             credID,
			TokenUrl:       idp.TokenURL(),
			ClientId:       demoClientID,
			ClientSecret:   secret,
			Scopes:         []string{demoScope},
			RefreshToken:   login.RefreshToken,
			AuthStyle:      pb.AuthStyle_AUTH_STYLE_BASIC,
			AllowedClients: allowedClients(cfg.allowed),
		})
		if err != nil {
			hint := ""
			if !plaintext && status.Code(err) == codes.Unavailable {
				hint = " (for a broker without TLS, add --insecure)"
			}
			return nil, fmt.Errorf("putting the credential into the broker at %s: %w%s", addrs[0], err, hint)
		}
		cl.add(func() {
			warn("deleting the demo credential", bc.deleteCredential(context.WithoutCancel(ctx), credID))
		})
		t = newTally(len(addrs))
		for i := range cfg.workers {
			rep := i % len(addrs)
			// One broker client per worker, as if each were its own
			// process.
			c, err := clientsdk.Dial(addrs[rep], bc.dialOpts...)
			if err != nil {
				return nil, fmt.Errorf("dialling the broker at %s: %w", addrs[rep], err)
			}
			cl.add(func() { _ = c.Close() })
			workers = append(workers, &worker{replica: rep, url: idp.ResourceURL(), do: brokerDo(c.TokenSource(credID), base)})
		}
		sum.Replicas = len(addrs)
	}
	for _, w := range workers {
		w.tally = t
	}
	if err := ctx.Err(); err != nil {
		return nil, errors.New("interrupted before the load started")
	}

	start := time.Now()
	stopAt := start.Add(cfg.duration)
	maxRequests := int(cfg.duration/minPause) + 1
	prog := startProgress(stderr, cfg.progressEvery, start, t, idp)
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() { w.run(ctx, stopAt, maxRequests) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	prog.stop()

	st := idp.Stats()
	t.fill(sum)
	sum.DurationSeconds = elapsed.Round(time.Millisecond).Seconds()
	sum.Interrupted = ctx.Err() != nil
	sum.IdPRefreshes = st.RefreshRequests
	sum.Reuses = st.Reuses
	sum.Revocations = st.Revocations
	if bc != nil {
		sum.CredentialState = bc.credentialState(context.WithoutCancel(ctx), credID)
	}
	return sum, nil
}

// allowedClients is the credential's allowed_clients for --allowed-client.
func allowedClients(id string) []string {
	if id == "" {
		return nil
	}
	return []string{id}
}
