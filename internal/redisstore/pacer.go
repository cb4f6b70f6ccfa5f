package redisstore

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

var (
	//go:embed pace.lua
	paceLua    string
	paceScript = redis.NewScript(paceLua)
)

// PacerOptions tune Store.Pacer.
type PacerOptions struct {
	// Rate is the most calls per second to one token host, fleet-wide; 0
	// means no limit. Calls are spaced evenly (GCRA, burst 1).
	Rate int
	// MaxConcurrent is the most calls at once to one token host,
	// fleet-wide; 0 means no limit.
	MaxConcurrent int
	// TurnTTL bounds how long one turn holds its place among the
	// concurrent calls, so that the turn of a replica that died frees
	// itself; it must outlast the longest IdP call (RefreshReplyWait).
	TurnTTL time.Duration // default 2m
}

// Pacer returns a broker.Pacer over the Store's Redis: the calls of every
// Broker sharing the prefix count towards one limit per token host. The
// rate is github.com/go-redis/redis_rate's GCRA; the hold and the
// concurrency are one Lua script (pace.lua). A call that is not urgent
// waits twice the limiter's RetryAfter when refused, so that urgent ones
// get the free turns first.
func (s *Store) Pacer(opts PacerOptions) broker.Pacer {
	if opts.TurnTTL <= 0 {
		opts.TurnTTL = 2 * time.Minute
	}
	p := &pacer{s: s, opts: opts}
	if opts.Rate > 0 {
		p.limiter = redis_rate.NewLimiter(s.client)
		p.limit = redis_rate.Limit{Rate: opts.Rate, Burst: 1, Period: time.Second}
	}
	return p
}

type pacer struct {
	s       *Store
	opts    PacerOptions
	limiter *redis_rate.Limiter // nil without a rate
	limit   redis_rate.Limit
}

func (p *pacer) holdKey(host string) string  { return p.s.prefix + ":idp:{" + host + "}:hold" }
func (p *pacer) turnsKey(host string) string { return p.s.prefix + ":idp:{" + host + "}:turns" }

// Acquire waits for the host's hold to end, a free turn, and the rate.
func (p *pacer) Acquire(ctx context.Context, host string, urgent bool) (func(), error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	for {
		res, err := paceScript.Run(ctx, p.s.client, []string{p.holdKey(host), p.turnsKey(host)},
			time.Now().UnixMilli(), p.opts.MaxConcurrent, token, p.opts.TurnTTL.Milliseconds()).Int64Slice()
		if err != nil {
			return nil, fmt.Errorf("redisstore: pace %q: %w", host, err)
		}
		if len(res) != 2 {
			return nil, errors.New("redisstore: pace: unexpected script result")
		}
		if res[0] != 1 {
			if err := wait(ctx, time.Duration(res[1])*time.Millisecond); err != nil {
				return nil, err
			}
			continue
		}
		release := func() {
			if p.opts.MaxConcurrent > 0 {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				_ = p.s.client.ZRem(rctx, p.turnsKey(host), token).Err()
				cancel()
			}
		}
		if p.limiter == nil {
			return release, nil
		}
		r, err := p.limiter.Allow(ctx, p.s.prefix+":idp:{"+host+"}:rate", p.limit)
		if err != nil {
			release()
			return nil, fmt.Errorf("redisstore: pace %q: %w", host, err)
		}
		if r.Allowed > 0 {
			return release, nil
		}
		release()
		d := r.RetryAfter
		if !urgent {
			d *= 2
		}
		if err := wait(ctx, max(d, time.Millisecond)); err != nil {
			return nil, err
		}
	}
}

// Hold keeps every call to host off until until, on every replica.
func (p *pacer) Hold(ctx context.Context, host string, until time.Time) error {
	d := time.Until(until)
	if d <= 0 {
		return nil
	}
	return p.s.client.Set(ctx, p.holdKey(host), strconv.FormatInt(until.UnixMilli(), 10), d).Err()
}

func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
