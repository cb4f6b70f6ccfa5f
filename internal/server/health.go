package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
)

// Readiness and liveness.
//
// Liveness (/healthz, grpc.health.v1 service "liveness") says the process
// runs: it stays up while the Store is unreachable, since restarting the
// replica would only drop the tokens its cache still serves. Readiness
// (/readyz, grpc.health.v1 "" and each service) says the replica can do its
// work: NOT_SERVING from SIGTERM on, and while the Store has not answered
// for longer than --unready-after (a PING every storeCheckInterval), or has
// not answered since the start. A Redis that answers at start but disagrees
// with the configuration (credentials, database, Cluster or not, a keyring
// that opens none of the records) stops the start with a *ConfigError; one
// that only answers later and disagrees then keeps the replica NOT_SERVING
// and is logged at ERROR.

// Bounds of the Store check.
const (
	maxStoreCheckInterval = time.Second
	minStoreCheckInterval = 50 * time.Millisecond
	// unreachableLogEvery is how often a Store that stays unreachable is
	// logged again.
	unreachableLogEvery = time.Minute
	// sealCheckRecords is how many records the keyring check reads.
	sealCheckRecords = 100
)

// storeCheckInterval is the time between two PINGs for a threshold: a fifth
// of it, within bounds, so NOT_SERVING comes soon after the threshold.
func storeCheckInterval(after time.Duration) time.Duration {
	return min(max(after/5, minStoreCheckInterval), maxStoreCheckInterval)
}

// health holds what readiness is made of, and tells the gRPC health
// service and /readyz.
type health struct {
	storeUp  atomic.Bool // the Store answered its last check, or within --unready-after
	prepared atomic.Bool // the start's checks and the seeding are done
	stopping atomic.Bool // shutdown began
	notify   func(ready bool)
}

func (h *health) ready() bool {
	return h.storeUp.Load() && h.prepared.Load() && !h.stopping.Load()
}

// update tells notify the current readiness.
func (h *health) update() {
	if h.notify != nil {
		h.notify(h.ready())
	}
}

// storeMonitor pings the Store's Redis client and keeps health.storeUp.
type storeMonitor struct {
	s        *Server
	client   redis.UniversalClient
	after    time.Duration
	interval time.Duration
	// prepare runs once the Store answers, until it succeeds: the checks
	// and the seeding a start that found Redis unreachable skipped.
	prepare func(ctx context.Context) error
}

// run checks the Store until ctx ends.
func (m *storeMonitor) run(ctx context.Context) {
	h := &m.s.health
	lastOK := time.Now()
	var downSince, lastLog time.Time
	if !h.storeUp.Load() {
		downSince, lastLog = lastOK, lastOK // New logged it
	}
	tick := time.NewTicker(m.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := m.check(ctx)
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if err == nil {
			lastOK = now
			if !downSince.IsZero() {
				m.s.log.Info("redis answers; ready", "unreachable_s", seconds(now.Sub(downSince)))
				downSince = time.Time{}
			}
			if !h.storeUp.Swap(true) {
				h.update()
			}
			if !h.prepared.Load() {
				m.prepareOnce(ctx)
			}
			continue
		}
		if downSince.IsZero() {
			downSince = now
		}
		msg := redisstore.RedactURL(err.Error(), m.s.cfg.RedisURL)
		if now.Sub(lastOK) >= m.after && h.storeUp.Swap(false) {
			h.update()
			m.s.log.Warn("redis does not answer; readiness NOT_SERVING until it does",
				"unreachable_s", seconds(now.Sub(lastOK)), "error", msg)
			lastLog = now
		} else if !h.storeUp.Load() && now.Sub(lastLog) >= unreachableLogEvery {
			m.s.log.Warn("redis still does not answer", "unreachable_s", seconds(now.Sub(downSince)), "error", msg)
			lastLog = now
		}
	}
}

// check is one PING, bounded by the interval (at least 200ms).
func (m *storeMonitor) check(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, max(m.interval, 200*time.Millisecond))
	defer cancel()
	if !m.s.health.prepared.Load() {
		return redisstore.Preflight(cctx, m.client, m.s.cfg.RedisURL)
	}
	return m.client.Ping(cctx).Err()
}

// prepareOnce runs prepare; a configuration error is logged at ERROR (at
// most once a minute) and the replica stays NOT_SERVING.
func (m *storeMonitor) prepareOnce(ctx context.Context) {
	err := m.prepare(ctx)
	if err == nil {
		m.s.health.prepared.Store(true)
		m.s.health.update()
		return
	}
	var ce *ConfigError
	if errors.As(err, &ce) || errors.Is(err, redisstore.ErrMisconfigured) {
		m.s.log.Error("redis answers, but the configuration does not fit it; staying NOT_SERVING", "error", err.Error())
		m.prepare = retryAfter(m.prepare, unreachableLogEvery)
		return
	}
	m.s.log.Warn("start-up checks against redis failed; retrying", "error", redisstore.RedactURL(err.Error(), m.s.cfg.RedisURL))
}

// retryAfter returns prepare that does nothing but fail until d has passed.
func retryAfter(prepare func(context.Context) error, d time.Duration) func(context.Context) error {
	at := time.Now().Add(d)
	return func(ctx context.Context) error {
		if time.Now().Before(at) {
			return errRetryLater
		}
		return prepare(ctx)
	}
}

var errRetryLater = errors.New("waiting before the next try")

// checkKeyring stops the start when the Store holds records and the
// keyring opens none of the first ones: every credential would be
// UNREADABLE, which only the right --seal-keys fixes.
func checkKeyring(ctx context.Context, store broker.Store, cfg *Config) error {
	recs, err := store.List(ctx, "", sealCheckRecords)
	if err != nil || len(recs) == 0 {
		return err
	}
	for _, r := range recs {
		if r.State != broker.StateUnreadable {
			return nil
		}
	}
	keys := map[string]bool{}
	if rs, ok := store.(broker.Resealer); ok {
		for _, r := range recs {
			if k, err := rs.SealedWith(ctx, r.ID); err == nil {
				if k == "" {
					k = "(plaintext)"
				}
				keys[fmt.Sprintf("%q", k)] = true
			}
		}
	}
	hint := ""
	if len(keys) > 0 {
		ids := make([]string, 0, len(keys))
		for k := range keys {
			ids = append(ids, k)
		}
		slices.Sort(ids)
		hint = "; they are sealed with key " + strings.Join(ids, ", ")
	}
	what := "--seal-keys opens"
	if cfg.SealKeys == "" {
		what = "without --seal-keys the broker opens"
	}
	return badConfig("%s none of the %d credentials read from Redis (prefix %q)%s: give the keys they were sealed with", what, len(recs), cfg.RedisPrefix, hint)
}

// seconds is a duration as a number of seconds, for logs ("_s" keys).
func seconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}

// healthMux adds the HTTP health endpoints to mux: /healthz (liveness: 200
// while the process runs) and /readyz (readiness: 200 or 503).
func healthMux(mux *http.ServeMux, h *health) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		switch {
		case h.stopping.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "shutting down\n")
		case !h.storeUp.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "store unreachable\n")
		case !h.prepared.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "starting\n")
		default:
			io.WriteString(w, "ok\n")
		}
	})
}
