package redisstore

import (
	"context"
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrMisconfigured marks a Preflight failure that waiting will not fix: the
// Redis URL and the server disagree (credentials, database number, Cluster
// or not). Its message is one line naming the cause, without a password.
var ErrMisconfigured = errors.New("redisstore: misconfigured")

// misconfigured is an ErrMisconfigured with its own message.
type misconfigured struct{ msg string }

func (e *misconfigured) Error() string        { return e.msg }
func (e *misconfigured) Is(target error) bool { return target == ErrMisconfigured }

// Preflight checks that client can work with its server: it answers PING
// (after the connection's AUTH and SELECT), and it is a Cluster node exactly
// when client is a Cluster client. It returns nil, an error matching
// ErrMisconfigured for what only a change of configuration fixes, or
// another error (the server is unreachable, loading, failing over) that may
// pass by waiting. rawURL is only used to redact the errors.
func Preflight(ctx context.Context, client redis.UniversalClient, rawURL string) error {
	if err := client.Ping(ctx).Err(); err != nil {
		return classify(err, rawURL)
	}
	_, isCluster := client.(*redis.ClusterClient)
	if isCluster {
		return nil // a Cluster client's PING needed CLUSTER SLOTS to answer
	}
	info, err := client.Info(ctx, "cluster").Result()
	if err != nil {
		return classify(err, rawURL)
	}
	if strings.Contains(info, "cluster_enabled:1") {
		return &misconfigured{"--redis-url: the server is a Redis Cluster node; use redis+cluster:// (or rediss+cluster://)"}
	}
	return nil
}

// classify turns a go-redis error into an ErrMisconfigured when the
// server's answer says the configuration is wrong.
func classify(err error, rawURL string) error {
	msg := RedactURL(err.Error(), rawURL)
	switch {
	case strings.Contains(msg, "WRONGPASS"):
		return &misconfigured{"--redis-url: Redis refused the user name or password (WRONGPASS)"}
	case strings.Contains(msg, "NOAUTH"):
		return &misconfigured{"--redis-url: Redis requires a password, and the URL gives none (NOAUTH)"}
	case strings.Contains(msg, "DB index is out of range"):
		return &misconfigured{"--redis-url: the database number is out of range for this Redis server (ERR DB index is out of range)"}
	case strings.Contains(msg, "cluster support disabled"):
		return &misconfigured{"--redis-url: redis+cluster:// names a server that is not a Cluster node; use redis:// (or redis+sentinel://)"}
	case strings.HasPrefix(msg, "MOVED ") || strings.HasPrefix(msg, "CROSSSLOT"):
		return &misconfigured{"--redis-url: the server is a Redis Cluster node; use redis+cluster:// (or rediss+cluster://)"}
	}
	return errors.New(msg)
}
