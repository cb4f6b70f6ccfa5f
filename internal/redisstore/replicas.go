package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"
)

// AutoReplicaAcks as Options.MinReplicaAcks waits for one replica whenever
// the credential's master reports a replica in sync, and for none otherwise.
const AutoReplicaAcks = -1

// DefaultReplicaAckTimeout is the wait for replica acknowledgements when
// Options.ReplicaAckTimeout is zero.
const DefaultReplicaAckTimeout = time.Second

// ErrNotReplicated says that a Commit was applied on the master but not
// acknowledged by as many replicas as Options.MinReplicaAcks asks for (or,
// on Redis 7.2 and later with appendonly, not fsynced to the master's
// append-only file) within the timeout. A failover now could lose it. The
// record is not lost yet: repeat the Commit with the same lease and record,
// which does not write again but waits for the acknowledgements again (see
// commit.lua), until it succeeds or reports broker.ErrLockLost or
// broker.ErrConflict. It matches none of the broker's sentinel errors: to
// the broker it is a store failure.
var ErrNotReplicated = errors.New("redisstore: commit not acknowledged by enough replicas")

// replInfoTTL is how long what INFO said about a master is used.
const replInfoTTL = 2 * time.Second

// replInfo is what a master's INFO says about replication and persistence.
type replInfo struct {
	at       time.Time
	replicas int  // replicas in state online
	aof      bool // aof_enabled:1
	waitAOF  bool // the server has WAITAOF (Redis 7.2 and later)
}

// replCache keeps replInfo per master address ("" when the client talks to
// one master, as single-node and Sentinel clients do).
type replCache struct {
	ttl   time.Duration
	group singleflight.Group

	mu     sync.Mutex
	byAddr map[string]replInfo
}

// parseReplInfo reads replInfo from the text of INFO.
func parseReplInfo(text string, now time.Time) replInfo {
	ri := replInfo{at: now}
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch {
		case k == "aof_enabled":
			ri.aof = v == "1"
		case k == "redis_version":
			ri.waitAOF = versionAtLeast(v, 7, 2)
		case strings.HasPrefix(k, "slave") && strings.Contains(","+v+",", ",state=online,"):
			if _, err := strconv.Atoi(k[len("slave"):]); err == nil {
				ri.replicas++
			}
		}
	}
	return ri
}

// versionAtLeast reports whether version ("7.0.15") is major.minor or later.
func versionAtLeast(version string, major, minor int) bool {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// replicaInfo returns what the master node says about replication, from
// the cache unless it is older than its TTL or fresh is set.
func (s *Store) replicaInfo(ctx context.Context, node redis.Cmdable, addr string, fresh bool) (replInfo, error) {
	c := s.repl
	c.mu.Lock()
	ri, ok := c.byAddr[addr]
	c.mu.Unlock()
	if ok && !fresh && time.Since(ri.at) < c.ttl {
		return ri, nil
	}
	v, err, _ := c.group.Do(addr, func() (any, error) {
		text, err := node.Info(ctx).Result()
		if err != nil {
			return replInfo{}, err
		}
		ri := parseReplInfo(text, time.Now())
		c.mu.Lock()
		c.byAddr[addr] = ri
		c.mu.Unlock()
		return ri, nil
	})
	if err != nil {
		return replInfo{}, fmt.Errorf("INFO: %w", err)
	}
	return v.(replInfo), nil
}

// forgetWaitAOF records that a master turned out not to have WAITAOF.
func (s *Store) forgetWaitAOF(addr string) {
	c := s.repl
	c.mu.Lock()
	if ri, ok := c.byAddr[addr]; ok {
		ri.waitAOF = false
		c.byAddr[addr] = ri
	}
	c.mu.Unlock()
}

// masterFor returns a client of the master that serves key, and its
// address: with a Cluster, the node that owns key's slot, so that the
// script and WAIT go over one of its connections; with any other client,
// the client itself.
func (s *Store) masterFor(ctx context.Context, key string) (redis.Cmdable, string, error) {
	cc, ok := s.client.(*redis.ClusterClient)
	if !ok {
		return s.client, "", nil
	}
	node, err := cc.MasterForKey(ctx, key)
	if err != nil {
		return nil, "", err
	}
	return node, node.Options().Addr, nil
}

// ackTimeout is the WAIT timeout for a Commit under ctx: ReplicaAckTimeout,
// cut to what is left of ctx and to below node's read timeout, so that the
// reply arrives before either ends; at least a millisecond (WAIT 0 would
// block for ever).
func (s *Store) ackTimeout(ctx context.Context, node redis.Cmdable) time.Duration {
	t := s.ackWait
	if dl, ok := ctx.Deadline(); ok {
		t = min(t, time.Until(dl)-50*time.Millisecond)
	}
	if o, ok := node.(interface{ Options() *redis.Options }); ok {
		if rt := o.Options().ReadTimeout; rt > 0 {
			t = min(t, rt-100*time.Millisecond)
		}
	}
	return max(t, time.Millisecond)
}

// commitAcked runs the commit script on the credential's master and, on the
// same connection, WAIT (and WAITAOF where the master has it and appendonly
// is on) for the acknowledgements Options.MinReplicaAcks asks for. It
// returns the script's result, an error wrapping ErrNotReplicated when the
// script applied the write but the acknowledgements fell short, and err for
// anything else.
func (s *Store) runAcked(ctx context.Context, script *redis.Script, id string, keys []string, args []any) (res int64, ackErr, err error) {
	node, addr, err := s.masterFor(ctx, keys[0])
	if err != nil {
		return 0, nil, err
	}
	want := s.minAcks
	auto := want < 0
	ri, err := s.replicaInfo(ctx, node, addr, false)
	if err != nil {
		if auto {
			return 0, nil, err // nothing written yet
		}
		ri = replInfo{} // only WAITAOF needs it: go without
	}
	if auto {
		want = min(1, ri.replicas)
	}
	useAOF := ri.aof && ri.waitAOF
	if want == 0 && !useAOF {
		// Nothing to wait for: through the client, which follows a Cluster's
		// redirections.
		res, err := script.Run(ctx, s.client, keys, args...).Int64()
		return res, nil, err
	}

	timeout := s.ackTimeout(ctx, node)
	ms := max(timeout.Milliseconds(), 1)
	var ev *redis.Cmd
	var wait, waitAOF *redis.Cmd
	run := func(eval func(p redis.Pipeliner) *redis.Cmd) error {
		_, err := node.Pipelined(ctx, func(p redis.Pipeliner) error {
			ev = eval(p)
			wait, waitAOF = nil, nil
			if want > 0 {
				wait = p.Do(ctx, "wait", want, ms)
			}
			if useAOF {
				waitAOF = p.Do(ctx, "waitaof", 1, 0, ms)
			}
			return nil
		})
		return err
	}
	err = run(func(p redis.Pipeliner) *redis.Cmd { return script.EvalSha(ctx, p, keys, args...) })
	if ev != nil && isNoScript(ev.Err()) {
		err = run(func(p redis.Pipeliner) *redis.Cmd { return script.Eval(ctx, p, keys, args...) })
	}
	if ev == nil {
		return 0, nil, err
	}
	if res, err = ev.Int64(); err != nil {
		if _, ok := s.client.(*redis.ClusterClient); ok && (redis.HasErrorPrefix(err, "MOVED") || redis.HasErrorPrefix(err, "ASK")) {
			s.client.(*redis.ClusterClient).ReloadState(ctx)
		}
		return 0, nil, err
	}
	if res != 1 {
		return res, nil, nil
	}

	if wait != nil {
		acks, err := wait.Int64()
		if err != nil {
			return res, fmt.Errorf("redisstore: commit %q: waiting for %d replicas: %w: %w", id, want, ErrNotReplicated, err), nil
		}
		if int(acks) < want && auto {
			// The master may have lost its replica since INFO was cached.
			if ri, err := s.replicaInfo(ctx, node, addr, true); err == nil {
				want = min(1, ri.replicas)
			}
		}
		if int(acks) < want {
			return res, fmt.Errorf("redisstore: commit %q: %d of %d replicas acknowledged it within %v: %w", id, acks, want, timeout, ErrNotReplicated), nil
		}
	}
	if waitAOF != nil {
		counts, err := waitAOF.Int64Slice()
		switch {
		case err != nil && strings.Contains(strings.ToLower(err.Error()), "unknown command"):
			s.forgetWaitAOF(addr)
		case err != nil:
			return res, fmt.Errorf("redisstore: commit %q: waiting for the append-only file: %w: %w", id, ErrNotReplicated, err), nil
		case len(counts) < 1 || counts[0] < 1:
			return res, fmt.Errorf("redisstore: commit %q: not fsynced to the master's append-only file within %v: %w", id, timeout, ErrNotReplicated), nil
		}
	}
	return res, nil, nil
}

func isNoScript(err error) bool {
	return err != nil && (errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT"))
}
