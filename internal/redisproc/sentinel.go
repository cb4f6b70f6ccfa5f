package redisproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultMasterName is the name Sentinel monitors the master under unless
// SentinelOptions.MasterName says otherwise.
const DefaultMasterName = "tbmaster"

// SentinelOptions configure StartSentinel.
type SentinelOptions struct {
	// Dir holds one subdirectory per server. Required; the caller owns it.
	Dir string
	// MasterName is the name the sentinels monitor; DefaultMasterName if
	// empty.
	MasterName string
	// DownAfter is Sentinel's down-after-milliseconds: how long the master
	// may be silent before a sentinel thinks it is down. 500ms if zero.
	DownAfter time.Duration
	// FailoverTimeout is Sentinel's failover-timeout; a failed attempt is
	// retried after twice this. 2s if zero.
	FailoverTimeout time.Duration
	// AppendOnly and Args apply to the master and the replica, as in
	// Options.
	AppendOnly bool
	Args       []string
}

// SentinelSet is a replicated Redis under Sentinel: a master, one replica
// (replicaof) and three sentinels with a quorum of two, on free 127.0.0.1
// ports. Roles change on failover; the data nodes keep their Server.
type SentinelSet struct {
	name      string
	nodes     []*Server // data nodes: [0] started as the master, [1] as its replica
	sentinels []*Server
}

// StartSentinel starts a master, its replica and three sentinels, and waits
// until the replica is in sync and every sentinel knows the replica and the
// other sentinels, so that a failover can happen. On error nothing is left
// running.
func StartSentinel(ctx context.Context, opts SentinelOptions) (_ *SentinelSet, err error) {
	if opts.Dir == "" {
		return nil, errors.New("redisproc: SentinelOptions.Dir is required")
	}
	if opts.MasterName == "" {
		opts.MasterName = DefaultMasterName
	}
	if opts.DownAfter <= 0 {
		opts.DownAfter = 500 * time.Millisecond
	}
	if opts.FailoverTimeout <= 0 {
		opts.FailoverTimeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, TopologyTimeout)
	defer cancel()

	set := &SentinelSet{name: opts.MasterName}
	defer func() {
		if err != nil {
			set.Kill()
		}
	}()
	// No delay before a full sync, so a replica is in sync at once.
	dataArgs := append([]string{"--repl-diskless-sync-delay", "0"}, opts.Args...)
	master, err := startIn(ctx, opts.Dir, "master", Options{AppendOnly: opts.AppendOnly, Args: dataArgs})
	if err != nil {
		return nil, err
	}
	set.nodes = append(set.nodes, master)
	replica, err := startIn(ctx, opts.Dir, "replica", Options{AppendOnly: opts.AppendOnly,
		Args: append(dataArgs, "--replicaof", "127.0.0.1", strconv.Itoa(master.Port()))})
	if err != nil {
		return nil, err
	}
	set.nodes = append(set.nodes, replica)
	if err := WaitReplicaOf(ctx, replica, master.Addr()); err != nil {
		return nil, err
	}

	for i := range 3 {
		dir := filepath.Join(opts.Dir, fmt.Sprintf("sentinel%d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("redisproc: %w", err)
		}
		conf := filepath.Join(dir, "sentinel.conf")
		text := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 2\n"+
			"sentinel down-after-milliseconds %[1]s %[3]d\n"+
			"sentinel failover-timeout %[1]s %[4]d\n"+
			"sentinel parallel-syncs %[1]s 1\n",
			opts.MasterName, master.Port(), opts.DownAfter.Milliseconds(), opts.FailoverTimeout.Milliseconds())
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return nil, fmt.Errorf("redisproc: %w", err)
		}
		s, err := Start(ctx, Options{Dir: dir, ConfigFile: conf, Sentinel: true})
		if err != nil {
			return nil, err
		}
		set.sentinels = append(set.sentinels, s)
	}
	if err := set.WaitReady(ctx); err != nil {
		return nil, err
	}
	return set, nil
}

// startIn starts a server in a new subdirectory name of dir.
func startIn(ctx context.Context, dir, name string, opts Options) (*Server, error) {
	opts.Dir = filepath.Join(dir, name)
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("redisproc: %w", err)
	}
	return Start(ctx, opts)
}

// Nodes are the data nodes: first the one started as the master, then the
// one started as its replica.
func (s *SentinelSet) Nodes() []*Server { return s.nodes }

// SentinelAddrs are the sentinels' host:port addresses.
func (s *SentinelSet) SentinelAddrs() []string {
	out := make([]string, len(s.sentinels))
	for i, x := range s.sentinels {
		out[i] = x.Addr()
	}
	return out
}

// URL is the redis+sentinel:// URL of the set, as redisstore.NewClient takes
// it: the sentinels and the master name.
func (s *SentinelSet) URL() string {
	return "redis+sentinel://" + strings.Join(s.SentinelAddrs(), ",") + "/" + s.name
}

// MasterAddr returns the master's address as a majority of the sentinels
// report it now.
func (s *SentinelSet) MasterAddr(ctx context.Context) (string, error) {
	votes := make(map[string]int)
	var errs []error
	for _, x := range s.sentinels {
		if !x.Running() {
			continue
		}
		addr, err := s.reportedMaster(ctx, x)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		votes[addr]++
	}
	for addr, n := range votes {
		if n > len(s.sentinels)/2 {
			return addr, nil
		}
	}
	return "", fmt.Errorf("redisproc: no master address reported by a majority of the sentinels (%v): %w", votes, errors.Join(errs...))
}

// reportedMaster asks one sentinel for the master's address.
func (s *SentinelSet) reportedMaster(ctx context.Context, x *Server) (string, error) {
	var addr string
	err := querySentinel(ctx, x.Addr(), func(ctx context.Context, c *redis.SentinelClient) error {
		hp, err := c.GetMasterAddrByName(ctx, s.name).Result()
		if err != nil {
			return err
		}
		if len(hp) != 2 {
			return fmt.Errorf("GET-MASTER-ADDR-BY-NAME: %q", hp)
		}
		addr = net.JoinHostPort(hp[0], hp[1])
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("sentinel %s: %w", x.Addr(), err)
	}
	return addr, nil
}

// WaitForFailover waits until every running sentinel reports a master other
// than from, the same one, and that node says it is a master; it returns
// the new master's address.
func (s *SentinelSet) WaitForFailover(ctx context.Context, from string) (string, error) {
	var to string
	err := poll(ctx, "failover away from "+from, func(ctx context.Context) (bool, error) {
		addr, err := s.agreedMaster(ctx)
		if err != nil {
			return false, err
		}
		if addr == from {
			return false, errors.New("the sentinels still report the old master")
		}
		if err := isMaster(ctx, addr); err != nil {
			return false, err
		}
		to = addr
		return true, nil
	})
	return to, err
}

// agreedMaster returns the master address that every running sentinel
// reports, or an error when they do not agree.
func (s *SentinelSet) agreedMaster(ctx context.Context) (string, error) {
	agreed := ""
	for _, x := range s.sentinels {
		if !x.Running() {
			continue
		}
		addr, err := s.reportedMaster(ctx, x)
		if err != nil {
			return "", err
		}
		if agreed != "" && addr != agreed {
			return "", fmt.Errorf("sentinels disagree: %s and %s", agreed, addr)
		}
		agreed = addr
	}
	if agreed == "" {
		return "", errors.New("no sentinel is running")
	}
	return agreed, nil
}

// WaitReady waits until the set can fail over: every running sentinel
// reports the same master, which says it is one and is not flagged down;
// every other running data node is its replica with the link up; and every
// sentinel sees those replicas as healthy and knows the other sentinels.
func (s *SentinelSet) WaitReady(ctx context.Context) error {
	return poll(ctx, "sentinel set ready", func(ctx context.Context) (bool, error) {
		master, err := s.agreedMaster(ctx)
		if err != nil {
			return false, err
		}
		if err := isMaster(ctx, master); err != nil {
			return false, err
		}
		var replicas []string
		for _, n := range s.nodes {
			if n.Addr() == master || !n.Running() {
				continue
			}
			if err := replicaOf(ctx, n, master); err != nil {
				return false, err
			}
			replicas = append(replicas, n.Addr())
		}
		for _, x := range s.sentinels {
			if !x.Running() {
				continue
			}
			if err := s.sentinelReady(ctx, x, replicas); err != nil {
				return false, err
			}
		}
		return true, nil
	})
}

// sentinelReady checks one sentinel's view: the master healthy, the given
// replicas known and healthy, the other sentinels known.
func (s *SentinelSet) sentinelReady(ctx context.Context, x *Server, replicas []string) error {
	return querySentinel(ctx, x.Addr(), func(ctx context.Context, c *redis.SentinelClient) error {
		m, err := c.Master(ctx, s.name).Result()
		if err != nil {
			return err
		}
		if m["flags"] != "master" {
			return fmt.Errorf("sentinel %s: master flags %q", x.Addr(), m["flags"])
		}
		if want := strconv.Itoa(len(s.sentinels) - 1); m["num-other-sentinels"] != want {
			return fmt.Errorf("sentinel %s knows %s other sentinels, want %s", x.Addr(), m["num-other-sentinels"], want)
		}
		rs, err := c.Replicas(ctx, s.name).Result()
		if err != nil {
			return err
		}
		healthy := make(map[string]bool)
		for _, r := range rs {
			if r["flags"] == "slave" && r["master-link-status"] == "ok" {
				healthy[net.JoinHostPort(r["ip"], r["port"])] = true
			}
		}
		for _, r := range replicas {
			if !healthy[r] {
				return fmt.Errorf("sentinel %s does not see replica %s as healthy", x.Addr(), r)
			}
		}
		return nil
	})
}

// Kill kills every server of the set, by PID.
func (s *SentinelSet) Kill() { killAll(s.sentinels, s.nodes) }

// isMaster checks that the server at addr says it is a master.
func isMaster(ctx context.Context, addr string) error {
	info, err := Info(ctx, addr, "replication")
	if err != nil {
		return err
	}
	if info["role"] != "master" {
		return fmt.Errorf("%s has role %q, not master", addr, info["role"])
	}
	return nil
}

// replicaOf checks that n replicates master with the link up.
func replicaOf(ctx context.Context, n *Server, master string) error {
	info, err := Info(ctx, n.Addr(), "replication")
	if err != nil {
		return err
	}
	at := net.JoinHostPort(info["master_host"], info["master_port"])
	if info["role"] != "slave" || at != master || info["master_link_status"] != "up" {
		return fmt.Errorf("%s: role %q of %s, link %q; want a replica of %s with the link up",
			n.Addr(), info["role"], at, info["master_link_status"], master)
	}
	return nil
}

// WaitReplicaOf waits until n is a replica of the server at master with its
// replication link up.
func WaitReplicaOf(ctx context.Context, n *Server, master string) error {
	return poll(ctx, n.Addr()+" in sync with "+master, func(ctx context.Context) (bool, error) {
		err := replicaOf(ctx, n, master)
		return err == nil, err
	})
}
