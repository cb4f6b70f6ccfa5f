package loadbench

import (
	"cmp"
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// Scale is the scale measurement: Credentials credentials in Redis, each
// with its own token family at the IdP.
type Scale struct {
	Credentials int `json:"credentials"`
	// SeedS is how long PutCredential of all of them took, WarmS how long
	// the first GetToken of all of them (one IdP refresh each) took, on one
	// replica with Workers concurrent calls.
	SeedS float64 `json:"seed_s"`
	WarmS float64 `json:"warm_s"`
	// ColdWarmS is how long a second, cold replica took to serve every
	// credential once through gRPC (each read from Redis once, no refresh).
	ColdWarmS float64 `json:"cold_replica_warm_s"`
	// BytesPerCredential is the live heap the cold replica gained per
	// credential it cached (after a GC, past a first slice of
	// MemoryWarmup credentials that fills its connection pools).
	BytesPerCredential float64 `json:"bytes_per_credential"`
	MemoryWarmup       int     `json:"memory_warmup_credentials"`
	// RedisCommandsPerGet is the number of commands the replica's Redis
	// client sent per cached GetToken, over CachedGets calls through gRPC.
	RedisCommandsPerGet float64 `json:"redis_commands_per_cached_get"`
	CachedGets          int64   `json:"cached_gets"`
	// ColdFirstTokenMs is how long a new replica (a new Redis client, Store,
	// Broker and gRPC server, and a new client connection) took from its
	// creation to answering its first GetToken: the median over the rounds.
	ColdFirstTokenMs float64 `json:"cold_first_token_ms"`
}

// commandCounter is a go-redis hook that counts the commands a client
// sends, alone or pipelined, but the readiness check's PINGs (one a second
// whatever the load: internal/server's store monitor).
type commandCounter struct{ n atomic.Int64 }

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "ping" {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// forEach calls fn(i) for every i in [0, n) from workers goroutines, and
// returns the first error (which stops the others).
func forEach(ctx context.Context, workers, n int, fn func(ctx context.Context, i int) error) error {
	g, ctx := errgroup.WithContext(ctx)
	var next atomic.Int64
	for range min(workers, n) {
		g.Go(func() error {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return nil
				}
				if err := fn(ctx, i); err != nil {
					return err
				}
			}
		})
	}
	return g.Wait()
}

// waitSubscribers waits, for a few seconds at most, until channel has at
// least n subscribers: the replicas' event listeners subscribe in the
// background.
func waitSubscribers(ctx context.Context, c redis.UniversalClient, channel string, n int64) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		subs, err := c.PubSubNumSub(ctx, channel).Result()
		if err == nil && subs[channel] >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("loadbench: waiting for %d subscribers of the events channel: %w", n, cmp.Or(err, ctx.Err()))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// liveHeap is the heap in use after a full GC.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// scale seeds cfg.Credentials credentials through one replica and warms
// them (the IdP mints a family each), then measures on a cold second
// replica how much memory caching them costs and how many Redis commands a
// cached GetToken sends, and times new replicas to their first token.
func (e *env) scale(ctx context.Context, cfg *Config) (Scale, error) {
	n := cfg.Credentials
	res := Scale{Credentials: n, MemoryWarmup: max(1, min(n/10, 500))}
	idp, err := startIdP(0, time.Hour, nil)
	if err != nil {
		return res, err
	}
	defer idp.Close()
	prefix := e.runID + "-scale"
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("cred-%06d", i)
	}

	seeder, err := e.startReplica(ctx, replicaOptions{prefix: prefix})
	if err != nil {
		return res, err
	}
	defer seeder.close()
	progress(cfg, "scale: seeding %d credentials", n)
	t0 := time.Now()
	if err := forEach(ctx, cfg.Workers, n, func(ctx context.Context, i int) error {
		_, err := seeder.Broker().PutCredential(adminContext(ctx), credential(idp, ids[i]), idp.Seed(idpClientID))
		return err
	}); err != nil {
		return res, fmt.Errorf("loadbench: scale: seeding: %w", err)
	}
	res.SeedS = round3(time.Since(t0).Seconds())
	progress(cfg, "scale: first refresh of %d credentials", n)
	t0 = time.Now()
	if err := forEach(ctx, cfg.Workers, n, func(ctx context.Context, i int) error {
		_, err := seeder.Broker().GetToken(readerContext(ctx), ids[i], 0)
		return err
	}); err != nil {
		return res, fmt.Errorf("loadbench: scale: warming: %w", err)
	}
	res.WarmS = round3(time.Since(t0).Seconds())

	// A cold replica caches every credential through gRPC; its heap is
	// measured after a first slice has filled its pools.
	progress(cfg, "scale: a cold replica caches %d credentials", n)
	counter := &commandCounter{}
	cold, err := e.startReplica(ctx, replicaOptions{prefix: prefix, hook: counter})
	if err != nil {
		return res, err
	}
	defer cold.close()
	conns, err := dialPool(cold.addr, cfg.Conns)
	if err != nil {
		return res, err
	}
	defer closePool(conns)
	callCtx := e.callerContext(ctx)
	getAll := func(from, to int) error {
		return forEach(callCtx, cfg.Workers, to-from, func(ctx context.Context, i int) error {
			return conns[i%len(conns)].Invoke(ctx, pb.TokenService_GetToken_FullMethodName,
				&pb.GetTokenRequest{CredentialId: ids[from+i]}, new(pb.GetTokenResponse))
		})
	}
	if err := waitSubscribers(ctx, e.rdb, prefix+":events", 2); err != nil {
		return res, err
	}
	t0 = time.Now()
	if err := getAll(0, res.MemoryWarmup); err != nil {
		return res, fmt.Errorf("loadbench: scale: cold replica: %w", err)
	}
	elapsed := time.Since(t0)
	// Loads made before the replica's event subscription was confirmed
	// are forgotten when it is (the Store's first Reset event): cache them
	// again before the baseline.
	if err := getAll(0, res.MemoryWarmup); err != nil {
		return res, fmt.Errorf("loadbench: scale: cold replica: %w", err)
	}
	base := liveHeap()
	t0 = time.Now()
	if err := getAll(res.MemoryWarmup, n); err != nil {
		return res, fmt.Errorf("loadbench: scale: cold replica: %w", err)
	}
	elapsed += time.Since(t0)
	grown := int64(liveHeap()) - int64(base)
	res.ColdWarmS = round3(elapsed.Seconds())
	res.BytesPerCredential = round1(float64(grown) / float64(n-res.MemoryWarmup))

	progress(cfg, "scale: Redis commands of %d cached GetToken calls", n)
	counter.n.Store(0)
	if err := getAll(0, n); err != nil {
		return res, fmt.Errorf("loadbench: scale: cached calls: %w", err)
	}
	res.CachedGets = int64(n)
	res.RedisCommandsPerGet = round3(float64(counter.n.Load()) / float64(n))

	var cold1 []time.Duration
	for round := range cfg.Rounds {
		progress(cfg, "scale: cold replica to first token, round %d/%d", round+1, cfg.Rounds)
		d, err := e.coldFirstToken(callCtx, prefix, ids[round%n])
		if err != nil {
			return res, err
		}
		cold1 = append(cold1, d)
	}
	res.ColdFirstTokenMs = ms(median(cold1))
	return res, nil
}

// coldFirstToken times a new replica from its creation to its answer to a
// first GetToken of id from a new client connection; it then stops it.
func (e *env) coldFirstToken(ctx context.Context, prefix, id string) (time.Duration, error) {
	t0 := time.Now()
	r, err := e.startReplica(ctx, replicaOptions{prefix: prefix})
	if err != nil {
		return 0, err
	}
	defer r.close()
	cc, err := grpc.NewClient(r.addr, grpcInsecure())
	if err != nil {
		return 0, err
	}
	defer cc.Close()
	if err := cc.Invoke(ctx, pb.TokenService_GetToken_FullMethodName,
		&pb.GetTokenRequest{CredentialId: id}, new(pb.GetTokenResponse)); err != nil {
		return 0, fmt.Errorf("loadbench: cold replica: %w", err)
	}
	return time.Since(t0), nil
}
