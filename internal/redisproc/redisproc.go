// Package redisproc runs a private redis-server as a child process: bound to
// 127.0.0.1 on a free port, in a temporary directory of its own, controlled
// and stopped by its PID. Tests use it through internal/redistest; the demo
// and the load benchmark use it directly.
package redisproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Bounds on waiting for redis-server.
const (
	StartTimeout = 15 * time.Second // until PING answers
	StopTimeout  = 10 * time.Second // after SIGTERM, before SIGKILL
	startTries   = 5                // free ports tried when one is taken
)

// ErrNotInstalled is returned by Start when there is no redis-server in PATH.
var ErrNotInstalled = errors.New("redisproc: redis-server is not in PATH (on Debian: apt-get install redis-server)")

// Options configure Start.
type Options struct {
	// AppendOnly turns on the append-only file with appendfsync always, so
	// every acknowledged write survives a kill and comes back on Restart.
	AppendOnly bool
	// Args are extra redis-server arguments, such as "--maxmemory-policy",
	// "noeviction".
	Args []string
	// Dir, if set, is the server's working directory, which the caller
	// owns; by default Start makes a temporary one and Close removes it.
	Dir string
	// ConfigFile, if set, is a configuration file that redis-server reads
	// first (the other arguments override it) and may rewrite, as Sentinel
	// does with its state. The caller writes it, in Dir or elsewhere.
	ConfigFile string
	// Sentinel runs the server as a Redis Sentinel (redis-server --sentinel);
	// it needs a ConfigFile with the sentinel monitor lines.
	Sentinel bool
	// ClusterBus gives the server a second free port for the Redis Cluster
	// bus (--cluster-port; see BusPort), instead of the default port + 10000,
	// which may be taken or above 65535.
	ClusterBus bool
}

// Server is a redis-server child process in a temporary directory that Start
// creates and Close removes. Its methods are safe for concurrent use.
type Server struct {
	bin     string
	dir     string
	conf    string // config file, or ""
	mode    []string
	port    int
	busPort int // 0 without a cluster bus
	args    []string

	mu     sync.Mutex
	proc   *process // nil while stopped
	closed bool     // the directory is gone
	extra  []string // arguments of RestartWith, after args
	paused bool     // sent SIGSTOP, not SIGCONT since
	ownDir bool     // the directory is Start's, removed by Close
}

// process is one run of redis-server.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once Wait returned
}

// Start creates a temporary directory, runs redis-server in it on a free
// 127.0.0.1 port and waits until it answers PING. On Linux the server dies
// with the process that started it, even if that process is killed before it
// can stop it. Close the Server to stop it and remove its directory.
func Start(ctx context.Context, opts Options) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, ErrNotInstalled
	}
	dir, own := opts.Dir, false
	if dir == "" {
		if dir, err = os.MkdirTemp("", "redisproc-"); err != nil {
			return nil, fmt.Errorf("redisproc: %w", err)
		}
		own = true
	}
	s, err := launch(ctx, bin, dir, opts)
	if err != nil {
		if log, _ := os.ReadFile(filepath.Join(dir, logFile)); len(log) > 0 {
			err = fmt.Errorf("%w\nredis-server's log:\n%s", err, log)
		}
		if own {
			_ = os.RemoveAll(dir)
		}
		return nil, err
	}
	s.ownDir = own
	return s, nil
}

// launch runs redis-server in dir, retrying on another port when the one it
// picked was taken in the meantime.
func launch(ctx context.Context, bin, dir string, opts Options) (*Server, error) {
	s := &Server{bin: bin, dir: dir, conf: opts.ConfigFile}
	if opts.Sentinel {
		if opts.ConfigFile == "" {
			return nil, errors.New("redisproc: a sentinel needs Options.ConfigFile")
		}
		s.mode = []string{"--sentinel"}
	}
	s.args = []string{
		"--bind", "127.0.0.1",
		"--protected-mode", "yes",
		"--dir", s.dir,
		"--save", "",
		"--daemonize", "no",
		"--logfile", s.logPath(),
	}
	if opts.AppendOnly {
		s.args = append(s.args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		s.args = append(s.args, "--appendonly", "no")
	}
	s.args = append(s.args, opts.Args...)

	for try := 1; ; try++ {
		_ = os.Remove(s.logPath())
		var err error
		if s.port, err = freePort(); err != nil {
			return nil, err
		}
		if opts.ClusterBus {
			if s.busPort, err = freePort(); err != nil {
				return nil, err
			}
			if s.busPort == s.port {
				continue // taken again by the kernel: try other ports
			}
		}
		err = s.start(ctx)
		if err == nil {
			return s, nil
		}
		if try == startTries || ctx.Err() != nil || !strings.Contains(s.Log(), "Address already in use") {
			return nil, err
		}
	}
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port is the server's port on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// BusPort is the server's Redis Cluster bus port, or 0 without
// Options.ClusterBus.
func (s *Server) BusPort() int { return s.busPort }

// URL is the server's redis:// URL, database 0.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Dir is the server's working directory.
func (s *Server) Dir() string { return s.dir }

// PID is the process ID of the running server, or 0 while it is stopped.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// Stop shuts the server down with SIGTERM (after SIGCONT, since a paused
// server cannot shut down) and waits until it exited; after StopTimeout it
// kills it and says so. Stopping a stopped server does nothing. The
// directory stays, for Restart.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	if p == nil {
		return nil
	}
	s.proc = nil
	s.paused = false
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(StopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("redisproc: redis-server (pid %d) did not stop within %v of SIGTERM; killed it", p.cmd.Process.Pid, StopTimeout)
	}
}

// Close stops the server as Stop does, if it still runs, and removes its
// directory with its log and data files. A closed Server cannot be
// restarted; closing it again does nothing.
func (s *Server) Close() error {
	err := s.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return err
	}
	s.closed = true
	if !s.ownDir {
		return err
	}
	return errors.Join(err, os.RemoveAll(s.dir))
}

// Kill kills the server with SIGKILL and waits until it exited.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.proc; p != nil {
		s.proc = nil
		s.paused = false
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// Signal sends sig to the running server, e.g. SIGSTOP to freeze it.
func (s *Server) Signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return fmt.Errorf("redisproc: %v: redis-server is not running", sig)
	}
	if err := s.proc.cmd.Process.Signal(sig); err != nil {
		return err
	}
	switch sig {
	case syscall.SIGSTOP:
		s.paused = true
	case syscall.SIGCONT:
		s.paused = false
	}
	return nil
}

// Running reports whether the server's process runs and was not frozen
// with SIGSTOP through Signal: whether it can answer.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && !s.paused
}

// Restart stops the server if it runs and starts it again on the same port
// and in the same directory, so data in the append-only file comes back.
func (s *Server) Restart(ctx context.Context) error {
	if err := s.Stop(); err != nil {
		return err
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errors.New("redisproc: restart of a closed server")
	}
	return s.start(ctx)
}

// RestartWith is Restart with args added after the server's own arguments,
// for this run and later restarts, replacing those of an earlier
// RestartWith: for example "--replicaof", "127.0.0.1", "6380" to bring a
// former master back as a replica.
func (s *Server) RestartWith(ctx context.Context, args ...string) error {
	if err := s.Stop(); err != nil {
		return err
	}
	s.mu.Lock()
	s.extra = slices.Clone(args)
	s.mu.Unlock()
	return s.start(ctx)
}

// Log returns the server's log file, for failure messages.
func (s *Server) Log() string {
	b, err := os.ReadFile(s.logPath())
	if err != nil {
		return ""
	}
	return string(b)
}

// logFile is the name of the server's log in its directory.
const logFile = "redis.log"

func (s *Server) logPath() string { return filepath.Join(s.dir, logFile) }

// start runs redis-server on s.port and waits until it answers PING.
func (s *Server) start(ctx context.Context) error {
	var argv []string
	if s.conf != "" {
		argv = append(argv, s.conf)
	}
	argv = append(argv, s.mode...)
	argv = append(argv, "--port", strconv.Itoa(s.port))
	if s.busPort != 0 {
		argv = append(argv, "--cluster-port", strconv.Itoa(s.busPort))
	}
	argv = append(argv, s.args...)
	s.mu.Lock()
	argv = append(argv, s.extra...)
	s.mu.Unlock()
	cmd := exec.Command(s.bin, argv...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redisproc: start redis-server: %w", err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() { // owned by p: ends when the process does
		_ = cmd.Wait()
		close(p.exited)
	}()
	s.mu.Lock()
	s.proc = p
	s.paused = false
	s.mu.Unlock()

	deadline := time.Now().Add(StartTimeout)
	for {
		err := ping(ctx, s.Addr())
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			s.mu.Lock()
			s.proc = nil
			s.mu.Unlock()
			return fmt.Errorf("redisproc: redis-server on port %d exited at start: %v", s.port, cmd.ProcessState)
		case <-ctx.Done():
			s.Kill()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redisproc: redis-server on port %d did not answer PING within %v: %v", s.port, StartTimeout, err)
		}
	}
}

// ping sends one PING over a fresh connection.
func ping(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return errors.New("unexpected reply to PING: " + strings.TrimSpace(line))
	}
	return nil
}

// freePort asks the kernel for a port that was free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("redisproc: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
