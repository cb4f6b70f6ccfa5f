package loadbench

import (
	"context"

	"github.com/tokenbroker/tokenbroker/internal/redisproc"
)

// redisServer is a private redis-server child process: bound to 127.0.0.1,
// no persistence, noeviction (as the broker requires), in a temporary
// directory removed when it stops.
type redisServer struct {
	*redisproc.Server
}

// startRedis runs redis-server from PATH on a free 127.0.0.1 port and waits
// until it answers PING.
func startRedis(ctx context.Context) (*redisServer, error) {
	s, err := redisproc.Start(ctx, redisproc.Options{Args: []string{"--maxmemory-policy", "noeviction"}})
	if err != nil {
		return nil, err
	}
	return &redisServer{s}, nil
}

// stop ends the server by its PID (SIGTERM, then SIGKILL) and removes its
// directory.
func (s *redisServer) stop() error { return s.Close() }
