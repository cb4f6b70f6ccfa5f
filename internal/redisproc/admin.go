package redisproc

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// TopologyTimeout bounds StartSentinel and StartCluster: starting the
// servers and waiting until they work together.
const TopologyTimeout = 60 * time.Second

// pollEvery is how often the topology helpers look at Redis state they
// wait for.
const pollEvery = 50 * time.Millisecond

// queryTimeout bounds one administrative command, so that a frozen server
// cannot stall a helper.
const queryTimeout = time.Second

// adminOptions are those of the short-lived clients that the helpers talk to
// servers and sentinels with: RESP2, no retries, every call bounded.
func adminOptions(addr string) *redis.Options {
	return &redis.Options{
		Addr:                  addr,
		Protocol:              2,
		DisableIdentity:       true,
		MaxRetries:            -1,
		PoolSize:              1,
		DialTimeout:           queryTimeout,
		ReadTimeout:           queryTimeout,
		WriteTimeout:          queryTimeout,
		ContextTimeoutEnabled: true,
	}
}

// query runs fn with a client of addr and closes it afterwards; fn's calls
// are bounded by queryTimeout.
func query(ctx context.Context, addr string, fn func(context.Context, *redis.Client) error) error {
	c := redis.NewClient(adminOptions(addr))
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	return fn(ctx, c)
}

// querySentinel is query for a sentinel.
func querySentinel(ctx context.Context, addr string, fn func(context.Context, *redis.SentinelClient) error) error {
	c := redis.NewSentinelClient(adminOptions(addr))
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	return fn(ctx, c)
}

// Info returns the fields of a server's INFO reply for section ("" for the
// default sections), e.g. info["role"].
func Info(ctx context.Context, addr, section string) (map[string]string, error) {
	var out map[string]string
	err := query(ctx, addr, func(ctx context.Context, c *redis.Client) error {
		var s string
		var err error
		if section == "" {
			s, err = c.Info(ctx).Result()
		} else {
			s, err = c.Info(ctx, section).Result()
		}
		out = ParseInfo(s)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redisproc: INFO %s on %s: %w", section, addr, err)
	}
	return out, nil
}

// ParseInfo turns the text of an INFO reply into its fields.
func ParseInfo(s string) map[string]string {
	out := make(map[string]string)
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = v
		}
	}
	return out
}

// poll calls cond every pollEvery until it reports true or ctx ends; the
// error then names what was awaited and cond's last complaint.
func poll(ctx context.Context, what string, cond func(context.Context) (bool, error)) error {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("redisproc: %s: %w (last: %v)", what, ctx.Err(), last)
			}
			return fmt.Errorf("redisproc: %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}

// killAll kills every running server of a topology, by PID.
func killAll(groups ...[]*Server) {
	for _, g := range groups {
		for _, s := range g {
			if s != nil {
				s.Kill()
			}
		}
	}
}
