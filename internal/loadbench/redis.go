package loadbench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Bounds on the private redis-server.
const (
	redisStartTimeout = 10 * time.Second // until it answers PING
	redisStopTimeout  = 5 * time.Second  // after SIGTERM, before SIGKILL
	redisStartTries   = 5                // free ports tried when one is taken
)

// redisServer is a private redis-server child process: bound to 127.0.0.1,
// no persistence, noeviction (as the broker requires), in a temporary
// directory.
type redisServer struct {
	cmd    *exec.Cmd
	dir    string
	addr   string
	exited chan struct{} // closed once the process was waited for
}

// startRedis runs redis-server from PATH on a free 127.0.0.1 port and waits
// until it answers PING.
func startRedis(ctx context.Context) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("loadbench: redis-server is not in PATH (on Debian: apt-get install redis-server)")
	}
	dir, err := os.MkdirTemp("", "tokenbroker-bench-redis-")
	if err != nil {
		return nil, err
	}
	for try := 1; ; try++ {
		s, err := startRedisOnce(ctx, bin, dir)
		if err == nil {
			return s, nil
		}
		log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
		if try == redisStartTries || ctx.Err() != nil || !strings.Contains(string(log), "Address already in use") {
			_ = os.RemoveAll(dir)
			return nil, err
		}
	}
}

func startRedisOnce(ctx context.Context, bin, dir string) (*redisServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin,
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--protected-mode", "yes",
		"--save", "",
		"--appendonly", "no",
		"--maxmemory-policy", "noeviction",
		"--daemonize", "no",
		"--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"),
	)
	cmd.Dir = dir
	cmd.SysProcAttr = childSysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("loadbench: starting redis-server: %w", err)
	}
	s := &redisServer{cmd: cmd, dir: dir, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	deadline := time.Now().Add(redisStartTimeout)
	for {
		if ping(s.addr) == nil {
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("loadbench: redis-server exited at start (see its log in %s)", dir)
		case <-ctx.Done():
			s.kill()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			return nil, fmt.Errorf("loadbench: redis-server did not answer PING within %s", redisStartTimeout)
		}
	}
}

// URL is the server's redis:// URL.
func (s *redisServer) URL() string { return "redis://" + s.addr + "/0" }

// stop ends the server by its PID: SIGTERM, then SIGKILL after
// redisStopTimeout. It removes the temporary directory.
func (s *redisServer) stop() error {
	defer os.RemoveAll(s.dir)
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(redisStopTimeout)
	defer t.Stop()
	select {
	case <-s.exited:
		return nil
	case <-t.C:
		s.kill()
		return fmt.Errorf("loadbench: redis-server (pid %d) did not stop within %s of SIGTERM; killed it", s.cmd.Process.Pid, redisStopTimeout)
	}
}

func (s *redisServer) kill() {
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// ping sends one PING in RESP and expects +PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("unexpected answer to PING: %q", strings.TrimSpace(line))
	}
	return nil
}
