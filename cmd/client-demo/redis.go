package main

import (
	"context"
	"errors"

	"github.com/tokenbroker/tokenbroker/internal/redisproc"
)

// startRedisServer runs a private redis-server from PATH for --replicas
// without --redis-url: no persistence, bound to a free 127.0.0.1 port, in a
// temporary directory of its own. Close stops it and removes the directory.
func startRedisServer(ctx context.Context) (*redisproc.Server, error) {
	s, err := redisproc.Start(ctx, redisproc.Options{})
	if errors.Is(err, redisproc.ErrNotInstalled) {
		return nil, errors.New("--replicas needs Redis: redis-server is not in PATH (install it, e.g. apt-get install redis-server, or pass --redis-url)")
	}
	return s, err
}
