package redistest

import (
	"context"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Counter counts the commands a client sends, by name. It is safe for
// concurrent use.
type Counter struct {
	mu     sync.Mutex
	total  int64
	byName map[string]int64
}

// CountCommands installs a hook on c that counts every command c sends, alone
// or in a pipeline or transaction (MULTI and EXEC included), and returns the
// counts. The handshake of each new connection (HELLO, CLIENT SETINFO) counts
// too. Commands that a PubSub connection sends (SUBSCRIBE, its PING) bypass
// client hooks and are not counted.
func CountCommands(c redis.UniversalClient) *Counter {
	n := &Counter{byName: make(map[string]int64)}
	c.AddHook(counterHook{n})
	return n
}

// Total is the number of commands counted since the last Reset.
func (n *Counter) Total() int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.total
}

// Get is the number of commands named name (case-insensitive, e.g. "hmget"
// or "evalsha") counted since the last Reset.
func (n *Counter) Get(name string) int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.byName[strings.ToLower(name)]
}

// Reset sets every count to zero.
func (n *Counter) Reset() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.total = 0
	clear(n.byName)
}

func (n *Counter) add(cmds ...redis.Cmder) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range cmds {
		n.total++
		n.byName[strings.ToLower(c.Name())]++
	}
}

// counterHook is the redis.Hook that feeds a Counter.
type counterHook struct{ n *Counter }

func (h counterHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h counterHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.add(cmd)
		return next(ctx, cmd)
	}
}

func (h counterHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.add(cmds...)
		return next(ctx, cmds)
	}
}
