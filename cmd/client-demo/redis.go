package main

import (
	"context"
	"errors"
	"os"

	"github.com/tokenbroker/tokenbroker/internal/redisproc"
)

// redisServer is a private redis-server child process for --replicas
// without --redis-url: no persistence, bound to 127.0.0.1, in a temporary
// directory removed when it stops.
type redisServer struct {
	*redisproc.Server
}

// startRedisServer runs redis-server from PATH on a free 127.0.0.1 port and
// waits until it answers PING.
func startRedisServer(ctx context.Context) (*redisServer, error) {
	dir, err := os.MkdirTemp("", "client-demo-redis-")
	if err != nil {
		return nil, err
	}
	s, err := redisproc.Start(ctx, redisproc.Options{Dir: dir})
	if err != nil {
		os.RemoveAll(dir)
		if errors.Is(err, redisproc.ErrNotInstalled) {
			return nil, errors.New("--replicas needs Redis: redis-server is not in PATH (install it, e.g. apt-get install redis-server, or pass --redis-url)")
		}
		return nil, err
	}
	return &redisServer{s}, nil
}

// stop ends the server by its PID (SIGTERM, then SIGKILL) and removes its
// directory.
func (s *redisServer) stop() error {
	defer os.RemoveAll(s.Dir())
	return s.Stop()
}
