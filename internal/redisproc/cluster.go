package redisproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClusterSlots is the number of hash slots of a Redis Cluster.
const ClusterSlots = 16384

// ClusterOptions configure StartCluster.
type ClusterOptions struct {
	// Dir holds one subdirectory per node. Required; the caller owns it.
	Dir string
	// Masters is the number of masters, at least 3 (redis-cli's minimum); 3
	// if zero.
	Masters int
	// ReplicasPerMaster is the number of replicas of each master; 0 by
	// default.
	ReplicasPerMaster int
	// NodeTimeout is cluster-node-timeout: how long a node may be silent
	// before the others flag it as failing (and, with replicas, fail it
	// over). 1s if zero.
	NodeTimeout time.Duration
	// AppendOnly and Args apply to every node, as in Options.
	AppendOnly bool
	Args       []string
}

// Cluster is a Redis Cluster of redis-server processes on free 127.0.0.1
// ports, created with redis-cli --cluster create.
//
// Its nodes run with cluster-require-full-coverage no: by default, once one
// master is flagged as failed, every node refuses every command
// (CLUSTERDOWN), so one master's outage would stop the whole cluster. With
// it, the other masters keep serving their slots and only the failed
// master's slots are unavailable, which is what a store that keeps each
// credential in one slot can make use of.
type Cluster struct {
	nodes []*Server
}

// StartCluster starts the nodes, creates the cluster and waits until every
// node reports cluster_state:ok with all slots assigned and every replica is
// in sync. On error nothing is left running.
func StartCluster(ctx context.Context, opts ClusterOptions) (_ *Cluster, err error) {
	if opts.Dir == "" {
		return nil, errors.New("redisproc: ClusterOptions.Dir is required")
	}
	if opts.Masters == 0 {
		opts.Masters = 3
	}
	if opts.Masters < 3 || opts.ReplicasPerMaster < 0 {
		return nil, fmt.Errorf("redisproc: a cluster of %d masters with %d replicas each", opts.Masters, opts.ReplicasPerMaster)
	}
	if opts.NodeTimeout <= 0 {
		opts.NodeTimeout = time.Second
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, errors.New("redisproc: redis-cli is not in PATH (on Debian: apt-get install redis-tools)")
	}
	ctx, cancel := context.WithTimeout(ctx, TopologyTimeout)
	defer cancel()

	c := &Cluster{}
	defer func() {
		if err != nil {
			c.Kill()
		}
	}()
	args := append([]string{
		"--cluster-enabled", "yes",
		"--cluster-config-file", "nodes.conf", // in the node's directory
		"--cluster-node-timeout", strconv.FormatInt(opts.NodeTimeout.Milliseconds(), 10),
		"--cluster-require-full-coverage", "no", // see Cluster
		"--repl-diskless-sync-delay", "0",
	}, opts.Args...)
	n := opts.Masters * (1 + opts.ReplicasPerMaster)
	for i := range n {
		s, err := startIn(ctx, opts.Dir, fmt.Sprintf("node%d", i), Options{AppendOnly: opts.AppendOnly, Args: args, ClusterBus: true})
		if err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, s)
	}
	create := append([]string{"--cluster", "create"}, c.Addrs()...)
	create = append(create, "--cluster-replicas", strconv.Itoa(opts.ReplicasPerMaster), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, create...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("redisproc: redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := c.WaitOK(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Nodes are the cluster's nodes, masters and replicas, in the order they
// were started.
func (c *Cluster) Nodes() []*Server { return c.nodes }

// Addrs are the nodes' host:port addresses.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		out[i] = s.Addr()
	}
	return out
}

// URL is the redis+cluster:// URL of the cluster, as redisstore.NewClient
// takes it, with every node as a seed.
func (c *Cluster) URL() string { return "redis+cluster://" + strings.Join(c.Addrs(), ",") }

// Node returns the node listening on addr, or nil.
func (c *Cluster) Node(addr string) *Server {
	for _, s := range c.nodes {
		if s.Addr() == addr {
			return s
		}
	}
	return nil
}

// Kill kills every node, by PID.
func (c *Cluster) Kill() { killAll(c.nodes) }

// ask runs fn on the first running node that answers.
func (c *Cluster) ask(ctx context.Context, fn func(context.Context, *redis.Client) error) error {
	var errs []error
	for _, s := range c.nodes {
		if !s.Running() {
			continue
		}
		err := query(ctx, s.Addr(), fn)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", s.Addr(), err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return errors.New("redisproc: no cluster node is running")
	}
	return fmt.Errorf("redisproc: %w", errors.Join(errs...))
}

// Slot returns the hash slot of key (CLUSTER KEYSLOT).
func (c *Cluster) Slot(ctx context.Context, key string) (int, error) {
	var slot int64
	err := c.ask(ctx, func(ctx context.Context, cl *redis.Client) error {
		var err error
		slot, err = cl.ClusterKeySlot(ctx, key).Result()
		return err
	})
	return int(slot), err
}

// MasterOfSlot returns the master that serves slot, as the first running
// node that answers sees it (CLUSTER SHARDS).
func (c *Cluster) MasterOfSlot(ctx context.Context, slot int) (*Server, error) {
	var addr string
	err := c.ask(ctx, func(ctx context.Context, cl *redis.Client) error {
		shards, err := cl.ClusterShards(ctx).Result()
		if err != nil {
			return err
		}
		for _, sh := range shards {
			for _, r := range sh.Slots {
				if r.Start > int64(slot) || int64(slot) > r.End {
					continue
				}
				for _, n := range sh.Nodes {
					if n.Role == "master" {
						addr = net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10))
						return nil
					}
				}
			}
		}
		return fmt.Errorf("slot %d is not served", slot)
	})
	if err != nil {
		return nil, err
	}
	if s := c.Node(addr); s != nil {
		return s, nil
	}
	return nil, fmt.Errorf("redisproc: slot %d is served by %s, not a node of the cluster", slot, addr)
}

// MasterOf returns the master that serves key's slot.
func (c *Cluster) MasterOf(ctx context.Context, key string) (*Server, error) {
	slot, err := c.Slot(ctx, key)
	if err != nil {
		return nil, err
	}
	return c.MasterOfSlot(ctx, slot)
}

// ClusterNode is one line of CLUSTER NODES.
type ClusterNode struct {
	ID       string
	Addr     string // host:port, without the bus port
	Flags    []string
	MasterID string // "" for a master
}

// Has reports whether the node carries flag, e.g. "master", "fail" or
// "fail?".
func (n ClusterNode) Has(flag string) bool {
	return slices.Contains(n.Flags, flag)
}

// ClusterNodes returns what the node at addr says about the cluster's nodes.
func ClusterNodes(ctx context.Context, addr string) ([]ClusterNode, error) {
	var text string
	err := query(ctx, addr, func(ctx context.Context, cl *redis.Client) error {
		var err error
		text, err = cl.ClusterNodes(ctx).Result()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redisproc: CLUSTER NODES on %s: %w", addr, err)
	}
	var out []ClusterNode
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		n := ClusterNode{ID: f[0], Flags: strings.Split(f[2], ",")}
		n.Addr, _, _ = strings.Cut(f[1], "@")
		n.Addr, _, _ = strings.Cut(n.Addr, ",") // a hostname may follow
		if f[3] != "-" {
			n.MasterID = f[3]
		}
		out = append(out, n)
	}
	return out, nil
}

// Masters returns the nodes that are masters, as the first running node
// that answers sees them.
func (c *Cluster) Masters(ctx context.Context) ([]*Server, error) {
	var out []*Server
	err := c.ask(ctx, func(ctx context.Context, cl *redis.Client) error {
		nodes, err := ClusterNodes(ctx, cl.Options().Addr)
		if err != nil {
			return err
		}
		out = out[:0]
		for _, n := range nodes {
			if n.Has("master") {
				if s := c.Node(n.Addr); s != nil {
					out = append(out, s)
				}
			}
		}
		return nil
	})
	return out, err
}

// ReplicasOf returns the replicas of master, as the first running node that
// answers sees them.
func (c *Cluster) ReplicasOf(ctx context.Context, master *Server) ([]*Server, error) {
	var out []*Server
	err := c.ask(ctx, func(ctx context.Context, cl *redis.Client) error {
		nodes, err := ClusterNodes(ctx, cl.Options().Addr)
		if err != nil {
			return err
		}
		id := ""
		for _, n := range nodes {
			if n.Addr == master.Addr() {
				id = n.ID
			}
		}
		if id == "" {
			return fmt.Errorf("%s is not a node of the cluster", master.Addr())
		}
		out = out[:0]
		for _, n := range nodes {
			if n.MasterID == id {
				if s := c.Node(n.Addr); s != nil {
					out = append(out, s)
				}
			}
		}
		return nil
	})
	return out, err
}

// WaitOK waits until every running node reports cluster_state:ok, knows
// every node and flags no running node as failing; when all nodes run,
// until all slots are served, too; and until every running replica is in
// sync with its master.
func (c *Cluster) WaitOK(ctx context.Context) error {
	return poll(ctx, "cluster state ok", func(ctx context.Context) (bool, error) {
		all := true
		for _, s := range c.nodes {
			all = all && s.Running()
		}
		for _, s := range c.nodes {
			if !s.Running() {
				continue
			}
			if err := c.nodeOK(ctx, s, all); err != nil {
				return false, err
			}
		}
		return true, nil
	})
}

func (c *Cluster) nodeOK(ctx context.Context, s *Server, all bool) error {
	var text string
	if err := query(ctx, s.Addr(), func(ctx context.Context, cl *redis.Client) error {
		var err error
		text, err = cl.ClusterInfo(ctx).Result()
		return err
	}); err != nil {
		return fmt.Errorf("CLUSTER INFO on %s: %w", s.Addr(), err)
	}
	info := ParseInfo(text)
	if info["cluster_state"] != "ok" {
		return fmt.Errorf("%s: cluster_state %q", s.Addr(), info["cluster_state"])
	}
	if want := strconv.Itoa(len(c.nodes)); info["cluster_known_nodes"] != want {
		return fmt.Errorf("%s knows %s nodes, want %s", s.Addr(), info["cluster_known_nodes"], want)
	}
	if want := strconv.Itoa(ClusterSlots); all && info["cluster_slots_ok"] != want {
		return fmt.Errorf("%s: %s slots ok, want %s", s.Addr(), info["cluster_slots_ok"], want)
	}
	nodes, err := ClusterNodes(ctx, s.Addr())
	if err != nil {
		return err
	}
	for _, n := range nodes {
		peer := c.Node(n.Addr)
		if peer == nil || !peer.Running() {
			continue
		}
		if n.Has("fail") || n.Has("fail?") || n.Has("handshake") || n.Has("noaddr") {
			return fmt.Errorf("%s flags %s as %v", s.Addr(), n.Addr, n.Flags)
		}
		if n.Has("myself") && n.Has("slave") {
			for _, m := range nodes {
				if m.ID == n.MasterID {
					if err := replicaOf(ctx, s, m.Addr); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// WaitFailed waits until every other running node flags s as failed
// ("fail", not only the suspicion "fail?"), as happens cluster-node-timeout
// after s stopped answering.
func (c *Cluster) WaitFailed(ctx context.Context, s *Server) error {
	return poll(ctx, s.Addr()+" flagged as failed", func(ctx context.Context) (bool, error) {
		for _, o := range c.nodes {
			if o == s || !o.Running() {
				continue
			}
			nodes, err := ClusterNodes(ctx, o.Addr())
			if err != nil {
				return false, err
			}
			for _, n := range nodes {
				if n.Addr == s.Addr() && !n.Has("fail") {
					return false, fmt.Errorf("%s flags %s as %v", o.Addr(), n.Addr, n.Flags)
				}
			}
		}
		return true, nil
	})
}
