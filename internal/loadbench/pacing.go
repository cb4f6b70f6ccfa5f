package loadbench

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/server"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// pacingMinValid is the replicas' --default-min-valid in the pacing
// measurement: a token closer to its expiry than this makes its callers
// wait for a refresh, so a refresh ahead of expiry is in time when it is
// stored before then.
const pacingMinValid = 2 * time.Second

// PacingRun is the pacing measurement at one rate: Credentials credentials
// on Replicas replicas, whose tokens all expire within WindowS seconds,
// refreshed from AheadS before expiry (--refresh-ahead) while a sweep of
// GetToken calls keeps asking for every one of them, with an IdP that
// answers 429 beyond Rate refreshes a second and replicas told the same
// (--idp-rate).
type PacingRun struct {
	Rate        int     `json:"rate_per_s"`
	Credentials int     `json:"credentials"`
	Replicas    int     `json:"replicas"`
	WindowS     float64 `json:"window_s"`
	AheadS      float64 `json:"ahead_s"`
	// NeededPerS is the rate that refreshes every credential in time if
	// the work is spread evenly from when the first refresh ahead may
	// start to when the last token stops being served.
	NeededPerS float64 `json:"needed_per_s"`
	ElapsedS   float64 `json:"elapsed_s"`

	// InTime counts the credentials whose refresh was stored before their
	// old token got too close to expiry to be served; Late those refreshed
	// after, Never those not refreshed by the end of the run.
	InTime int `json:"refreshed_in_time"`
	Late   int `json:"refreshed_late"`
	Never  int `json:"not_refreshed"`
	// Calls is the sweep's GetToken calls; Waits the tokens the replicas
	// served from a refresh their caller waited for; Failed the calls that
	// failed (the IdP's turn did not come within the caller's wait).
	Calls  int64 `json:"calls"`
	Waits  int64 `json:"waits"`
	Failed int64 `json:"failed"`
	// ExpiredCalls are the sweep's calls made on a credential whose token
	// was too close to expiry and not refreshed yet: what waiting costs
	// its callers.
	ExpiredCalls Latency `json:"expired_calls"`

	// What the IdP saw: refresh requests, those it answered with tokens
	// and with 429, and the most requests it received in one second of its
	// clock.
	IdPRequests  int64 `json:"idp_requests"`
	IdPRefreshes int64 `json:"idp_refreshes"`
	IdP429       int64 `json:"idp_429"`
	IdPMaxPerS   int   `json:"idp_max_per_s"`

	// What the replicas reported (Broker.Backlog, which the metrics
	// tokenbroker_refresh_ahead_queued and _behind_seconds export): the
	// most refreshes ahead queued on all replicas at once, and the worst
	// lag of a replica's queue.
	MaxQueued  int     `json:"max_queued"`
	MaxBehindS float64 `json:"max_behind_s"`
}

// Pacing is the pacing measurement at each rate.
type Pacing struct {
	Runs []PacingRun `json:"runs"`
}

// pacingObserver records, for the credentials of a pacing run, when each
// was first refreshed, and counts the tokens served from a refresh.
type pacingObserver struct {
	refreshed []atomic.Int64 // Unix ns of the first successful refresh, by index
	waits     atomic.Int64
}

func (o *pacingObserver) TokenServed(from broker.Source) {
	if from == broker.FromRefresh {
		o.waits.Add(1)
	}
}

func (o *pacingObserver) LockWaited(time.Duration, bool)   {}
func (o *pacingObserver) Regressed(broker.RegressionEvent) {}

func (o *pacingObserver) Refreshed(ev broker.RefreshEvent) {
	if ev.Outcome != broker.OutcomeOK {
		return
	}
	if i := credIndex(ev.CredentialID); i >= 0 && i < len(o.refreshed) {
		o.refreshed[i].CompareAndSwap(0, time.Now().UnixNano())
	}
}

// credIndex is the index in a credential id made by pacingIDs, or -1.
func credIndex(id string) int {
	s, ok := strings.CutPrefix(id, "pace-")
	if !ok {
		return -1
	}
	i, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return i
}

// idpRate counts what the IdP saw, by second of its clock.
type idpRate struct {
	mu       sync.Mutex
	perSec   map[int64]int
	requests atomic.Int64
	ok       atomic.Int64
	limited  atomic.Int64
}

func (r *idpRate) onEvent(ev fakeidp.Event) {
	if ev.Path != fakeidp.TokenPath {
		return
	}
	r.requests.Add(1)
	switch ev.Status {
	case http.StatusOK:
		r.ok.Add(1)
	case http.StatusTooManyRequests:
		r.limited.Add(1)
	}
	r.mu.Lock()
	r.perSec[ev.Time.Unix()]++
	r.mu.Unlock()
}

func (r *idpRate) max() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := 0
	for _, n := range r.perSec {
		m = max(m, n)
	}
	return m
}

// pacing runs the pacing measurement at each rate of cfg.
func (e *env) pacing(ctx context.Context, cfg *Config) (Pacing, error) {
	var p Pacing
	for i, rate := range cfg.PacingRates {
		progress(cfg, "pacing: %d credentials expiring within %s, IdP at %d refreshes/s (%d/%d)",
			cfg.PacingCredentials, cfg.PacingWindow, rate, i+1, len(cfg.PacingRates))
		run, err := e.pacingRun(ctx, cfg, rate, fmt.Sprintf("%s-pacing%d", e.runID, e.seq.Add(1)))
		if err != nil {
			return p, err
		}
		p.Runs = append(p.Runs, run)
	}
	return p, nil
}

func (e *env) pacingRun(ctx context.Context, cfg *Config, rate int, prefix string) (run PacingRun, err error) {
	k, ahead, window := cfg.PacingCredentials, cfg.PacingAhead, cfg.PacingWindow
	run = PacingRun{Rate: rate, Credentials: k, Replicas: cfg.PacingReplicas, WindowS: window.Seconds(), AheadS: ahead.Seconds()}
	// A refresh ahead starts from ahead before expiry, delayed by up to a
	// quarter of it (the broker's jitter), and is in time until
	// pacingMinValid before expiry.
	run.NeededPerS = round1(float64(k) / (window + ahead*3/4 - pacingMinValid).Seconds())

	counts := &idpRate{perSec: make(map[int64]int)}
	idp, err := startIdP(0, time.Hour, counts.onEvent)
	if err != nil {
		return run, err
	}
	defer idp.Close()
	idp.SetMaxRate(rate)

	// The tokens were issued long ago (so the ahead window is not cut to
	// half their lifetime) and expire evenly over the window from lead +
	// ahead on.
	lead := min(2*time.Second, ahead/4) // to load them and start the replicas
	now := time.Now().UTC().Truncate(time.Millisecond)
	t0 := now.Add(lead)
	expiry := make([]time.Time, k)
	recs := make([]*broker.Record, k)
	base := credential(idp, "")
	for i := range k {
		expiry[i] = t0.Add(ahead + time.Duration(float64(window)*float64(i)/float64(k)))
		recs[i] = &broker.Record{
			Credential:   base,
			RefreshToken: idp.Seed(idpClientID),
			Token:        broker.Token{AccessToken: randomToken("at"), TokenType: "Bearer", Expiry: expiry[i], IssuedAt: now.Add(-2 * time.Hour)},
			State:        broker.StateActive, CreatedAt: now, UpdatedAt: now,
		}
		recs[i].ID = fmt.Sprintf("pace-%06d", i)
	}
	store, err := e.newStore(prefix)
	if err != nil {
		return run, err
	}
	created, err := store.Import(ctx, recs)
	_ = store.Close()
	if err != nil || created != k {
		return run, errors.Join(err, fmt.Errorf("loadbench: pacing: %d of %d credentials loaded", created, k))
	}

	obs := &pacingObserver{refreshed: make([]atomic.Int64, k)}
	var reps []*replica
	var pools [][]*grpc.ClientConn
	defer func() {
		for _, p := range pools {
			closePool(p)
		}
		for _, r := range reps {
			err = errors.Join(err, r.close())
		}
	}()
	for range cfg.PacingReplicas {
		r, err := e.startReplica(ctx, replicaOptions{prefix: prefix, observer: obs, tune: func(c *server.Config) {
			c.RefreshAhead, c.DefaultMinValid, c.IdPRate = ahead, pacingMinValid, rate
		}})
		if err != nil {
			return run, err
		}
		reps = append(reps, r)
		conns, err := dialPool(r.addr, cfg.Conns)
		if err != nil {
			return run, err
		}
		pools = append(pools, conns)
	}
	if err := waitSubscribers(ctx, e.rdb, prefix+":events", int64(len(reps))); err != nil {
		return run, err
	}

	// The sweep: every credential asked for about once a second, each call
	// to a random replica, until every credential is refreshed or the last
	// expiry is well past.
	end := expiry[k-1].Add(max(10*time.Second, time.Duration(float64(k)/float64(rate)*float64(time.Second))-ahead-window))
	sctx, cancel := context.WithDeadline(e.callerContext(ctx), end.Add(stormCallTimeout))
	defer cancel()
	stop := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	var calls, failed atomic.Int64
	sweepers := min(64, k)
	var emu sync.Mutex
	var expiredLat []time.Duration
	interval := time.Duration(float64(time.Second) * float64(sweepers) / float64(k)) // per sweeper, for a one-second sweep
	for g := range sweepers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := new(pb.GetTokenRequest), new(pb.GetTokenResponse)
			rnd := mrand.New(mrand.NewPCG(uint64(g), mrand.Uint64()))
			tick := time.NewTicker(max(interval, 100*time.Microsecond))
			defer tick.Stop()
			var mine []time.Duration
			defer func() {
				emu.Lock()
				expiredLat = append(expiredLat, mine...)
				emu.Unlock()
			}()
			for i := g; ; i += sweepers {
				if i >= k {
					i = g
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if calls.Add(1) > cfg.MaxCalls {
					return
				}
				req.CredentialId = recs[i].ID
				conns := pools[rnd.IntN(len(pools))]
				t0 := time.Now()
				stale := obs.refreshed[i].Load() == 0 && !t0.Before(expiry[i].Add(-pacingMinValid))
				cctx, ccancel := context.WithTimeout(sctx, stormCallTimeout)
				err := conns[rnd.IntN(len(conns))].Invoke(cctx, pb.TokenService_GetToken_FullMethodName, req, resp)
				ccancel()
				if stale {
					mine = append(mine, time.Since(t0))
				}
				if err != nil {
					if sctx.Err() != nil {
						return
					}
					failed.Add(1)
				}
			}
		}()
	}

	// Watch the backlog and the end.
	start := time.Now()
	watch := time.NewTicker(50 * time.Millisecond)
	defer watch.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			stopOnce.Do(func() { close(stop) })
			wg.Wait()
			return run, ctx.Err()
		case now := <-watch.C:
			queued := 0
			for _, r := range reps {
				q, behind := r.Broker().Backlog()
				queued += q
				run.MaxBehindS = max(run.MaxBehindS, round3(behind.Seconds()))
			}
			run.MaxQueued = max(run.MaxQueued, queued)
			all := true
			for i := range obs.refreshed {
				if obs.refreshed[i].Load() == 0 {
					all = false
					break
				}
			}
			done = all || now.After(end)
		}
	}
	stopOnce.Do(func() { close(stop) })
	wg.Wait()
	run.ElapsedS = round1(time.Since(start).Seconds())

	for i := range k {
		at := obs.refreshed[i].Load()
		switch {
		case at == 0:
			run.Never++
		case time.Unix(0, at).Before(expiry[i].Add(-pacingMinValid)):
			run.InTime++
		default:
			run.Late++
		}
	}
	run.Calls, run.Failed, run.Waits = calls.Load(), failed.Load(), obs.waits.Load()
	run.ExpiredCalls = latencyOf(expiredLat)
	run.IdPRequests, run.IdPRefreshes, run.IdP429 = counts.requests.Load(), counts.ok.Load(), counts.limited.Load()
	run.IdPMaxPerS = counts.max()
	return run, nil
}
