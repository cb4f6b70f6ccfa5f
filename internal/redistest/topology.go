package redistest

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/redisproc"
)

// topologyWait bounds each wait of the topology helpers that take no
// context: a restarted node rejoining, the sentinels seeing a replica.
const topologyWait = 30 * time.Second

// RestartWith is Restart with extra redis-server arguments for this run and
// later restarts, replacing those of an earlier RestartWith.
func (s *Server) RestartWith(args ...string) {
	s.t.Helper()
	if err := s.p.RestartWith(context.Background(), args...); err != nil {
		s.t.Fatalf("redistest: restart: %v\n%s", err, s.p.Log())
	}
}

// Running reports whether the server runs and is not paused.
func (s *Server) Running() bool { return s.p.Running() }

func wrap(t testing.TB, ps []*redisproc.Server) []*Server {
	out := make([]*Server, len(ps))
	for i, p := range ps {
		out[i] = &Server{t: t, p: p}
	}
	return out
}

func bounded() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), topologyWait)
}

// Sentinel is a master, one replica and three sentinels (quorum 2, short
// down-after-milliseconds and failover-timeout, so a failover completes in a
// few seconds), owned by one test and killed when it ends. Roles move on
// failover; a data node keeps its *Server.
//
// Its methods call t.Fatal, so call them from the test's own goroutine.
type Sentinel struct {
	t     testing.TB
	set   *redisproc.SentinelSet
	nodes []*Server
	// master is the master's address as last known: at start, as killed by
	// KillMaster, as found by WaitForFailover. WaitForFailover waits for a
	// master other than this one.
	master string
}

// StartSentinel starts the set in t.TempDir() and waits until it can fail
// over. WithAppendOnly and WithArgs apply to the master and the replica.
func StartSentinel(t testing.TB, opts ...Option) *Sentinel {
	t.Helper()
	var o redisproc.Options
	for _, opt := range opts {
		opt(&o)
	}
	set, err := redisproc.StartSentinel(context.Background(), redisproc.SentinelOptions{
		Dir: t.TempDir(), AppendOnly: o.AppendOnly, Args: o.Args,
	})
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(set.Kill)
	s := &Sentinel{t: t, set: set, nodes: wrap(t, set.Nodes())}
	s.master = s.nodes[0].Addr()
	return s
}

// URL is the set's redis+sentinel:// URL, for redisstore.NewClient.
func (s *Sentinel) URL() string { return s.set.URL() }

// Nodes are the two data nodes, the first started as the master.
func (s *Sentinel) Nodes() []*Server { return s.nodes }

// Node returns the data node at addr, or fails the test.
func (s *Sentinel) Node(addr string) *Server {
	s.t.Helper()
	for _, n := range s.nodes {
		if n.Addr() == addr {
			return n
		}
	}
	s.t.Fatalf("redistest: %s is not a data node of the sentinel set", addr)
	return nil
}

// MasterAddr is the master's address as a majority of the sentinels report
// it now (a killed master stays reported until they fail over).
func (s *Sentinel) MasterAddr() string {
	s.t.Helper()
	ctx, cancel := bounded()
	defer cancel()
	addr, err := s.set.MasterAddr(ctx)
	if err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
	return addr
}

// Master is the data node the sentinels report as master.
func (s *Sentinel) Master() *Server {
	s.t.Helper()
	return s.Node(s.MasterAddr())
}

// Replica is the data node the sentinels do not report as master.
func (s *Sentinel) Replica() *Server {
	s.t.Helper()
	m := s.Master()
	if m == s.nodes[0] {
		return s.nodes[1]
	}
	return s.nodes[0]
}

// KillMaster kills the current master with SIGKILL and returns it;
// WaitForFailover then waits for the sentinels to promote the replica.
func (s *Sentinel) KillMaster() *Server {
	s.t.Helper()
	m := s.Master()
	m.Kill()
	s.master = m.Addr()
	return m
}

// StopReplica freezes the replica with SIGSTOP and returns it: it keeps its
// connection to the master but acknowledges nothing, so WAIT gets no
// acknowledgement from it. (On loopback the master's writes still reach its
// socket buffer and are applied on ContReplica; see LagReplica for a
// replica that really falls behind.)
func (s *Sentinel) StopReplica() *Server {
	s.t.Helper()
	r := s.Replica()
	r.Pause()
	return r
}

// ContReplica lets a replica frozen by StopReplica or LagReplica run again.
func (s *Sentinel) ContReplica() {
	s.t.Helper()
	for _, n := range s.nodes {
		if n.PID() != 0 && !n.Running() {
			n.Resume()
		}
	}
}

// LagReplica makes replication really lag: it freezes the replica and has
// the master drop its connection (CLIENT KILL TYPE replica), so writes from
// now on exist only on the master. A frozen replica cannot reconnect; after
// ContReplica it resynchronises from the master if the master is still
// there, and if the master was killed meanwhile, a failover promotes a
// replica without those writes.
func (s *Sentinel) LagReplica() *Server {
	s.t.Helper()
	r := s.StopReplica()
	m := s.Master()
	ctx, cancel := bounded()
	defer cancel()
	c := m.NewClient(s.t)
	if err := c.Do(ctx, "client", "kill", "type", "replica").Err(); err != nil {
		s.t.Fatalf("redistest: CLIENT KILL TYPE replica on %s: %v", m.Addr(), err)
	}
	// The master no longer lists it once the connection is gone.
	s.waitFor(ctx, "the master to drop its replica", func() bool {
		n, err := c.Info(ctx, "replication").Result()
		return err == nil && redisproc.ParseInfo(n)["connected_slaves"] == "0"
	})
	return r
}

// WaitForFailover waits until every running sentinel reports a master other
// than the one last known (see KillMaster), and that node says it is master;
// it returns the new master's address. It fails the test when ctx ends
// first.
func (s *Sentinel) WaitForFailover(ctx context.Context) string {
	s.t.Helper()
	addr, err := s.set.WaitForFailover(ctx, s.master)
	if err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
	s.master = addr
	return addr
}

// RestartAsReplica restarts n (a killed former master, say) as a replica of
// the current master and waits until it is in sync and the sentinels see
// it, so that the set can fail over again. Without the append-only file it
// comes back empty and copies the master.
func (s *Sentinel) RestartAsReplica(n *Server) {
	s.t.Helper()
	master := s.MasterAddr()
	host, port, _ := net.SplitHostPort(master)
	n.RestartWith("--replicaof", host, port)
	s.WaitReady()
}

// WaitReady waits until the set could fail over: the sentinels agree on a
// master, every running data node is its replica in sync, and every
// sentinel sees them.
func (s *Sentinel) WaitReady() {
	s.t.Helper()
	ctx, cancel := bounded()
	defer cancel()
	if err := s.set.WaitReady(ctx); err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
}

func (s *Sentinel) waitFor(ctx context.Context, what string, cond func() bool) {
	s.t.Helper()
	if err := pollUntil(ctx, cond); err != nil {
		s.t.Fatalf("redistest: waiting for %s: %v", what, err)
	}
}

// pollUntil calls cond every 20ms until it holds or ctx ends.
func pollUntil(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Cluster is a Redis Cluster of three masters, each with replicasPerMaster
// replicas, owned by one test and killed when it ends. It runs with
// cluster-require-full-coverage no, so that while one master is down the
// others keep serving their slots (by default every node would refuse every
// command once one master is flagged as failed), and cluster-node-timeout
// 1s.
//
// Its methods call t.Fatal, so call them from the test's own goroutine.
type Cluster struct {
	t     testing.TB
	c     *redisproc.Cluster
	nodes []*Server
}

// StartCluster starts the nodes in t.TempDir(), creates the cluster with
// redis-cli --cluster create and waits until every node reports
// cluster_state:ok. WithAppendOnly and WithArgs apply to every node.
func StartCluster(t testing.TB, replicasPerMaster int, opts ...Option) *Cluster {
	t.Helper()
	var o redisproc.Options
	for _, opt := range opts {
		opt(&o)
	}
	c, err := redisproc.StartCluster(context.Background(), redisproc.ClusterOptions{
		Dir: t.TempDir(), ReplicasPerMaster: replicasPerMaster, AppendOnly: o.AppendOnly, Args: o.Args,
	})
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(c.Kill)
	return &Cluster{t: t, c: c, nodes: wrap(t, c.Nodes())}
}

// URL is the cluster's redis+cluster:// URL, for redisstore.NewClient.
func (c *Cluster) URL() string { return c.c.URL() }

// Addrs are the nodes' addresses.
func (c *Cluster) Addrs() []string { return c.c.Addrs() }

// Nodes are all nodes, masters and replicas.
func (c *Cluster) Nodes() []*Server { return c.nodes }

func (c *Cluster) node(p *redisproc.Server) *Server {
	for _, n := range c.nodes {
		if n.p == p {
			return n
		}
	}
	c.t.Fatalf("redistest: %s is not a node of the cluster", p.Addr())
	return nil
}

func (c *Cluster) nodesOf(ps []*redisproc.Server) []*Server {
	out := make([]*Server, len(ps))
	for i, p := range ps {
		out[i] = c.node(p)
	}
	return out
}

// MasterOf is the master that serves key's slot.
func (c *Cluster) MasterOf(key string) *Server {
	c.t.Helper()
	ctx, cancel := bounded()
	defer cancel()
	p, err := c.c.MasterOf(ctx, key)
	if err != nil {
		c.t.Fatalf("redistest: %v", err)
	}
	return c.node(p)
}

// Masters are the nodes that are masters now.
func (c *Cluster) Masters() []*Server {
	c.t.Helper()
	ctx, cancel := bounded()
	defer cancel()
	ps, err := c.c.Masters(ctx)
	if err != nil {
		c.t.Fatalf("redistest: %v", err)
	}
	return c.nodesOf(ps)
}

// ReplicasOf are the replicas of master.
func (c *Cluster) ReplicasOf(master *Server) []*Server {
	c.t.Helper()
	ctx, cancel := bounded()
	defer cancel()
	ps, err := c.c.ReplicasOf(ctx, master.p)
	if err != nil {
		c.t.Fatalf("redistest: %v", err)
	}
	return c.nodesOf(ps)
}

// StopMasterOf freezes the master of key's slot with SIGSTOP and returns
// it; Resume it, or Restart it with the cluster's Restart.
func (c *Cluster) StopMasterOf(key string) *Server {
	c.t.Helper()
	m := c.MasterOf(key)
	m.Pause()
	return m
}

// KillMasterOf kills the master of key's slot with SIGKILL and returns it.
func (c *Cluster) KillMasterOf(key string) *Server {
	c.t.Helper()
	m := c.MasterOf(key)
	m.Kill()
	return m
}

// Restart restarts n on its port and in its directory (its nodes.conf keeps
// its identity and slots) and waits until the cluster is ok again. Without
// the append-only file a master comes back empty.
func (c *Cluster) Restart(n *Server) {
	c.t.Helper()
	n.Restart()
	c.WaitOK()
}

// WaitOK waits until every running node reports cluster_state:ok and flags
// no running node as failing, all slots are served when every node runs,
// and replicas are in sync.
func (c *Cluster) WaitOK() {
	c.t.Helper()
	ctx, cancel := bounded()
	defer cancel()
	if err := c.c.WaitOK(ctx); err != nil {
		c.t.Fatalf("redistest: %v", err)
	}
}

// WaitFailed waits until the other running nodes flag n as failed, which
// they do cluster-node-timeout after it stopped answering.
func (c *Cluster) WaitFailed(n *Server) {
	c.t.Helper()
	ctx, cancel := bounded()
	defer cancel()
	if err := c.c.WaitFailed(ctx, n.p); err != nil {
		c.t.Fatalf("redistest: %v", err)
	}
}
