// Package redistest runs a private redis-server for tests.
//
// Start launches the machine's redis-server binary on a free 127.0.0.1 port in
// a temporary directory of its own (internal/redisproc's) and stops it and
// removes the directory when the test ends. The returned Server
// lets a test stop, kill, pause, resume and restart that process, so tests can
// show how code behaves while Redis is gone, frozen or back with its data.
// CountCommands counts the commands a go-redis client sends.
//
// StartSentinel runs a master, a replica and three sentinels, and
// StartCluster a 3-master Redis Cluster (redis-cli --cluster create), with
// helpers to kill, freeze and restart the nodes that matter (the master, the
// replica, the master of a key's slot) and to wait for a failover or a
// healthy cluster; see Sentinel and Cluster. Every process is killed by PID
// when the test ends.
//
// Server methods that can fail call t.Fatal, so call them from the test's own
// goroutine.
package redistest

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/redisproc"
)

// Option configures Start.
type Option func(*redisproc.Options)

// WithAppendOnly turns on the append-only file with appendfsync always, so
// every acknowledged write survives Kill and comes back after Restart.
func WithAppendOnly() Option {
	return func(o *redisproc.Options) { o.AppendOnly = true }
}

// WithArgs passes extra command-line arguments to redis-server, such as
// "--maxmemory-policy", "noeviction".
func WithArgs(args ...string) Option {
	return func(o *redisproc.Options) { o.Args = append(o.Args, args...) }
}

// Server is a redis-server process owned by one test.
type Server struct {
	t testing.TB
	p *redisproc.Server
}

// Start runs redis-server on a free 127.0.0.1 port in a temporary directory,
// without persistence unless WithAppendOnly is given, waits until it answers
// PING, and kills it and removes the directory when the test ends. It fails
// the test if redis-server is missing or does not start.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var o redisproc.Options
	for _, opt := range opts {
		opt(&o)
	}
	p, err := redisproc.Start(context.Background(), o)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(func() {
		p.Kill()
		if err := p.Close(); err != nil {
			t.Errorf("redistest: %v", err)
		}
	})
	return &Server{t: t, p: p}
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.p.Addr() }

// URL is the server's redis:// URL, database 0.
func (s *Server) URL() string { return s.p.URL() }

// Dir is the server's working directory, where its log and data files are.
func (s *Server) Dir() string { return s.p.Dir() }

// PID is the process ID of the running redis-server, or 0 while it is stopped.
func (s *Server) PID() int { return s.p.PID() }

// NewClient returns a client of the server that honours context deadlines;
// it is closed when the test ends.
func (s *Server) NewClient(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:                  s.Addr(),
		ContextTimeoutEnabled: true,
		DialTimeout:           2 * time.Second,
		ReadTimeout:           5 * time.Second,
		WriteTimeout:          5 * time.Second,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Stop shuts the server down with SIGTERM and waits until it exited; a
// server that does not stop in time is killed and the test marked failed.
// Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.t.Helper()
	if err := s.p.Stop(); err != nil {
		s.t.Error(err)
	}
}

// Kill kills the server with SIGKILL and waits until it exited.
func (s *Server) Kill() { s.p.Kill() }

// Pause freezes the server with SIGSTOP: connections stay open, nothing is
// answered.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume lets a paused server run again with SIGCONT.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

// Restart stops the server if it runs and starts it again on the same port
// and in the same directory, so data in the append-only file comes back.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.p.Restart(context.Background()); err != nil {
		s.t.Fatalf("redistest: restart: %v\n%s", err, s.p.Log())
	}
}

func (s *Server) signal(sig syscall.Signal) {
	s.t.Helper()
	if err := s.p.Signal(sig); err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
}
