package loadbench

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// SeedMethod says how the scale measurement puts its credentials in Redis.
const SeedMethod = "redisstore.Store.Import: sealed records with valid one-hour tokens, written in pipelines, no IdP refresh"

// Scale is the scale measurement: Credentials credentials in Redis.
type Scale struct {
	Credentials int    `json:"credentials"`
	SeedMethod  string `json:"seed_method"`
	// SeedS is how long loading them took, SeedPerS the rate.
	SeedS    float64 `json:"seed_s"`
	SeedPerS float64 `json:"seed_per_s"`
	// RedisBytesPerCredential is Redis's used_memory (INFO memory) grown
	// per credential loaded: record, hash overhead and index entry.
	RedisBytesPerCredential float64 `json:"redis_bytes_per_credential"`
	RedisUsedMB             float64 `json:"redis_used_mb"`

	// ColdFirstTokenMs is how long a new replica (a new Redis client, Store,
	// Broker and gRPC server, and a new client connection) took from its
	// creation to answering its first GetToken: the median over the rounds.
	ColdFirstTokenMs float64 `json:"cold_first_token_ms"`
	// ColdGets are a new replica's first GetToken calls of ColdSamples
	// random credentials, one at a time through gRPC: each is read from
	// Redis, opened and cached.
	ColdGets Latency `json:"cold_gets"`

	// CacheS is how long a replica took to cache every credential
	// (Workers concurrent GetToken calls on its Broker), CachePerS the
	// rate; BytesPerCredential the live heap it grew per credential it
	// cached (after a GC), HeapMB its total.
	CacheS             float64 `json:"cache_s"`
	CachePerS          float64 `json:"cache_per_s"`
	BytesPerCredential float64 `json:"bytes_per_credential"`
	HeapMB             float64 `json:"heap_mb"`

	// The full ListCredentials pass through gRPC, ListPage records a page.
	ListPage    int     `json:"list_page"`
	ListPages   int     `json:"list_pages"`
	ListRecords int     `json:"list_records"`
	ListS       float64 `json:"list_s"`
	ListPerS    float64 `json:"list_per_s"`

	// WorkingSetThroughput compares cached GetToken calls spread at
	// random over WorkingSet distinct credentials with the gRPC floor, at
	// each concurrency; RedisCommandsPerGet is the highest number of Redis
	// commands per call among them.
	WorkingSet           int          `json:"working_set"`
	WorkingSetThroughput []Throughput `json:"working_set_throughput"`
	RedisCommandsPerGet  float64      `json:"redis_commands_per_cached_get"`
}

// Latency summarizes a set of timed calls.
type Latency struct {
	Calls int     `json:"calls"`
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

func latencyOf(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	l := Latency{Calls: len(ds), P50Ms: ms(quantileOf(ds, 0.5)), P99Ms: ms(quantileOf(ds, 0.99))}
	l.MaxMs = ms(ds[len(ds)-1]) // sorted by quantileOf
	return l
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
// least n subscribers, and then a moment more: the replicas' event
// listeners subscribe in the background, and each forgets (verifies again)
// what it cached before its subscription was confirmed.
func waitSubscribers(ctx context.Context, c redis.UniversalClient, channel string, n int64) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		subs, err := c.PubSubNumSub(ctx, channel).Result()
		if err == nil && subs[channel] >= n {
			return sleepCtx(ctx, 20*time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("loadbench: waiting for %d subscribers of the events channel: %w", n, cmp.Or(err, ctx.Err()))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
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

// redisUsedMemory is used_memory from INFO memory.
func redisUsedMemory(ctx context.Context, c redis.UniversalClient) (int64, error) {
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, errors.New("loadbench: INFO memory has no used_memory")
}

// refreshable is how many credentials of a credentialSet, its first ones,
// have a refresh token the IdP knows; the others' are made up, and are
// never refreshed (their tokens outlive the benchmark).
const refreshable = 8

// credentialSet is a set of credentials loaded into Redis under a prefix
// of their own.
type credentialSet struct {
	prefix      string
	ids         []string
	seedTime    time.Duration
	redisGrowth int64 // bytes
}

// scaleRig is what the scale measurement leaves for the growth table: the
// IdP, the full credential set and a replica that has all of it cached.
type scaleRig struct {
	idp    *fakeidp.Server
	full   *credentialSet
	cached *replica
	counts *commandCounter // of cached
}

func (r *scaleRig) close() error {
	var errs []error
	if r.cached != nil {
		errs = append(errs, r.cached.close())
	}
	if r.idp != nil {
		errs = append(errs, r.idp.Close())
	}
	return errors.Join(errs...)
}

// newStore returns a Store of the rig's own on prefix, sealing as the
// replicas do.
func (e *env) newStore(prefix string) (*redisstore.Store, error) {
	keyring, err := seal.ParseKeyring(e.sealKeys)
	if err != nil {
		return nil, err
	}
	return redisstore.New(e.rdb, redisstore.Options{Prefix: prefix, Keyring: keyring})
}

// seedChunk is how many records seed builds and imports at a time.
const seedChunk = 10 * redisstore.ImportBatch

// seed loads n credentials under prefix through redisstore's Import, from
// a few goroutines, each credential with a valid token of its own; the
// first refreshable with a refresh token the IdP knows.
func (e *env) seed(ctx context.Context, cfg *Config, idp *fakeidp.Server, prefix string, n int) (*credentialSet, error) {
	store, err := e.newStore(prefix)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	set := &credentialSet{prefix: prefix, ids: make([]string, n)}
	width := len(strconv.Itoa(n - 1))
	for i := range set.ids {
		set.ids[i] = fmt.Sprintf("cred-%0*d", width, i)
	}
	before, err := redisUsedMemory(ctx, e.rdb)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	base := credential(idp, "")
	chunks := (n + seedChunk - 1) / seedChunk
	t0 := time.Now()
	var done atomic.Int64
	err = forEach(ctx, 4, chunks, func(ctx context.Context, c int) error {
		lo, hi := c*seedChunk, min((c+1)*seedChunk, n)
		recs := make([]*broker.Record, 0, hi-lo)
		for i := lo; i < hi; i++ {
			rec := &broker.Record{
				Credential:   base,
				RefreshToken: randomToken("rt"),
				Token: broker.Token{AccessToken: randomToken("at"), TokenType: "Bearer",
					Expiry: now.Add(time.Hour), IssuedAt: now},
				State: broker.StateActive, CreatedAt: now, UpdatedAt: now,
			}
			rec.ID = set.ids[i]
			if i < refreshable {
				rec.RefreshToken = idp.Seed(idpClientID)
			}
			recs = append(recs, rec)
		}
		created, err := store.Import(ctx, recs)
		if err == nil && created != len(recs) {
			err = fmt.Errorf("loadbench: seeding: %d of %d records created (the prefix was not empty)", created, len(recs))
		}
		const every = 100_000
		if d := done.Add(int64(created)); d/every != (d-int64(created))/every {
			progress(cfg, "scale: %d of %d credentials loaded", d/every*every, n)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("loadbench: seeding %d credentials: %w", n, err)
	}
	set.seedTime = time.Since(t0)
	after, err := redisUsedMemory(ctx, e.rdb)
	if err != nil {
		return nil, err
	}
	set.redisGrowth = after - before
	return set, nil
}

// randomToken is a token the shape of the test IdP's: kind, a family,
// 256 random bits.
func randomToken(kind string) string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return kind + ".s" + strconv.Itoa(mrand.IntN(1_000_000)) + "." + base64.RawURLEncoding.EncodeToString(b[:])
}

// cacheAll makes r's Broker read and cache every credential of ids, from
// workers goroutines.
func cacheAll(ctx context.Context, r *replica, ids []string, workers int) error {
	return forEach(ctx, workers, len(ids), func(ctx context.Context, i int) error {
		_, err := r.Broker().GetToken(readerContext(ctx), ids[i], 0)
		return err
	})
}

// scale loads cfg.Credentials credentials and measures, on new replicas,
// what they cost. It returns the rig for the growth table; close it.
func (e *env) scale(ctx context.Context, cfg *Config) (res Scale, rig *scaleRig, err error) {
	n := cfg.Credentials
	res = Scale{Credentials: n, SeedMethod: SeedMethod, ListPage: min(cfg.ListPage, broker.MaxPageSize)}
	rig = &scaleRig{counts: &commandCounter{}}
	defer func() {
		if err != nil {
			_ = rig.close()
			rig = nil
		}
	}()
	if rig.idp, err = startIdP(0, time.Hour, nil); err != nil {
		return res, rig, err
	}
	progress(cfg, "scale: loading %d credentials into Redis", n)
	set, err := e.seed(ctx, cfg, rig.idp, e.runID+"-scale", n)
	if err != nil {
		return res, rig, err
	}
	rig.full = set
	res.SeedS = round3(set.seedTime.Seconds())
	res.SeedPerS = round1(float64(n) / set.seedTime.Seconds())
	res.RedisBytesPerCredential = round1(float64(set.redisGrowth) / float64(n))
	if used, err := redisUsedMemory(ctx, e.rdb); err == nil {
		res.RedisUsedMB = round1(float64(used) / (1 << 20))
	}

	var firsts []time.Duration
	for round := range cfg.Rounds {
		progress(cfg, "scale: cold replica to first token, round %d/%d", round+1, cfg.Rounds)
		d, err := e.coldFirstToken(e.callerContext(ctx), set.prefix, set.ids[mrand.IntN(n)])
		if err != nil {
			return res, rig, err
		}
		firsts = append(firsts, d)
	}
	res.ColdFirstTokenMs = ms(median(firsts))

	progress(cfg, "scale: a cold replica's first GetToken of %d random credentials", cfg.ColdSamples)
	if rig.cached, err = e.startReplica(ctx, replicaOptions{prefix: set.prefix, hook: rig.counts}); err != nil {
		return res, rig, err
	}
	if err := waitSubscribers(ctx, e.rdb, set.prefix+":events", 1); err != nil {
		return res, rig, err
	}
	sample := mrand.Perm(n)[:min(cfg.ColdSamples, n-1)+1]
	if res.ColdGets, err = e.coldGets(ctx, rig.cached, set.ids, sample); err != nil {
		return res, rig, err
	}

	progress(cfg, "scale: the replica caches all %d credentials", n)
	base := liveHeap()
	t0 := time.Now()
	if err := cacheAll(ctx, rig.cached, set.ids, cfg.Workers); err != nil {
		return res, rig, fmt.Errorf("loadbench: scale: caching: %w", err)
	}
	elapsed := time.Since(t0)
	grown := int64(liveHeap()) - int64(base)
	res.CacheS, res.CachePerS = round3(elapsed.Seconds()), round1(float64(n)/elapsed.Seconds())
	res.BytesPerCredential = round1(float64(grown) / float64(n-len(sample)))
	res.HeapMB = round1(float64(liveHeap()) / (1 << 20))

	progress(cfg, "scale: ListCredentials of all %d, %d a page", n, res.ListPage)
	if err := e.listAll(ctx, rig.cached, &res); err != nil {
		return res, rig, err
	}
	if res.ListRecords != n {
		return res, rig, fmt.Errorf("loadbench: scale: ListCredentials listed %d credentials, want %d", res.ListRecords, n)
	}

	res.WorkingSet = min(cfg.WorkingSet, n)
	ws := set.ids
	if res.WorkingSet < n {
		ws = make([]string, res.WorkingSet)
		for i, j := range mrand.Perm(n)[:res.WorkingSet] {
			ws[i] = set.ids[j]
		}
	}
	if res.WorkingSetThroughput, err = e.workingSet(ctx, cfg, rig, ws); err != nil {
		return res, rig, err
	}
	for _, t := range res.WorkingSetThroughput {
		res.RedisCommandsPerGet = max(res.RedisCommandsPerGet, t.RedisCommandsPerCall)
	}
	return res, rig, nil
}

// coldGets times r's first GetToken of each credential ids[i] for i in
// sample but the first, one at a time over one connection, which the first
// warms up.
func (e *env) coldGets(ctx context.Context, r *replica, ids []string, sample []int) (Latency, error) {
	cc, err := grpc.NewClient(r.addr, grpcInsecure())
	if err != nil {
		return Latency{}, err
	}
	defer cc.Close()
	callCtx, cancel := context.WithTimeout(e.callerContext(ctx), time.Minute)
	defer cancel()
	ds := make([]time.Duration, 0, len(sample)-1)
	req, resp := new(pb.GetTokenRequest), new(pb.GetTokenResponse)
	for k, i := range sample {
		req.CredentialId = ids[i]
		t0 := time.Now()
		if err := cc.Invoke(callCtx, pb.TokenService_GetToken_FullMethodName, req, resp); err != nil {
			return Latency{}, fmt.Errorf("loadbench: cold replica: %w", err)
		}
		if k > 0 {
			ds = append(ds, time.Since(t0))
		}
	}
	return latencyOf(ds), nil
}

// listAll lists every credential through r's gRPC AdminService.
func (e *env) listAll(ctx context.Context, r *replica, res *Scale) error {
	cc, err := grpc.NewClient(r.addr, grpcInsecure())
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(e.adminCallerContext(ctx), 5*time.Minute)
	defer cancel()
	admin := pb.NewAdminServiceClient(cc)
	t0 := time.Now()
	token := ""
	for {
		page, err := admin.ListCredentials(ctx, &pb.ListCredentialsRequest{PageSize: int32(res.ListPage), PageToken: token})
		if err != nil {
			return fmt.Errorf("loadbench: ListCredentials: %w", err)
		}
		res.ListPages++
		res.ListRecords += len(page.GetCredentials())
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	d := time.Since(t0)
	res.ListS, res.ListPerS = round3(d.Seconds()), round1(float64(res.ListRecords)/d.Seconds())
	return nil
}

// workingSet compares cached GetToken calls spread at random over ids (all
// cached by rig.cached) with the gRPC floor, at each concurrency of cfg, in
// at most three rounds.
func (e *env) workingSet(ctx context.Context, cfg *Config, rig *scaleRig, ids []string) ([]Throughput, error) {
	cc, err := grpc.NewClient(rig.cached.addr, grpcInsecure())
	if err != nil {
		return nil, err
	}
	tok := new(pb.GetTokenResponse)
	err = cc.Invoke(e.callerContext(ctx), pb.TokenService_GetToken_FullMethodName, &pb.GetTokenRequest{CredentialId: ids[0]}, tok)
	_ = cc.Close()
	if err != nil {
		return nil, err
	}
	floor, err := startFloor(floorResponse(tok), nil)
	if err != nil {
		return nil, err
	}
	defer floor.close()
	brokerConns, err := dialPool(rig.cached.addr, cfg.Conns)
	if err != nil {
		return nil, err
	}
	defer closePool(brokerConns)
	floorConns, err := dialPool(floor.addr, cfg.Conns)
	if err != nil {
		return nil, err
	}
	defer closePool(floorConns)
	c := comparison{
		brokerConns: brokerConns, floorConns: floorConns,
		brokerCall: spreadCall(pb.TokenService_GetToken_FullMethodName, ids),
		floorCall:  spreadCall(floorMethod, ids),
		commands:   rig.counts,
	}
	var out []Throughput
	for _, n := range cfg.Concurrency {
		t, err := e.compare(ctx, cfg, fmt.Sprintf("scale: %d distinct credentials", len(ids)), n, min(cfg.Rounds, 3), c)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// spreadCall returns a loadSpec.newCall whose calls ask for a credential of
// ids picked at random, each goroutine with its own request and response.
func spreadCall(method string, ids []string) func(cc *grpc.ClientConn) func(ctx context.Context) error {
	return func(cc *grpc.ClientConn) func(ctx context.Context) error {
		req, resp := new(pb.GetTokenRequest), proto.Message(new(pb.GetTokenResponse))
		rnd := mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64()))
		return func(ctx context.Context) error {
			req.CredentialId = ids[rnd.IntN(len(ids))]
			return cc.Invoke(ctx, method, req, resp)
		}
	}
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
