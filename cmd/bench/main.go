// Command bench measures tokenbroker on this machine (make bench) and prints
// a table of four measurements against the targets of issue 6: cached
// GetToken against the bare gRPC floor, a refresh storm over three
// replicas sharing Redis, the client SDK's cached path against x/oauth2,
// and the cost of 10,000 credentials. It also writes the figures as JSON
// (--json). It needs redis-server in PATH; it starts its own on a free
// 127.0.0.1 port and stops it.
//
// --smoke runs every step with tiny sizes in about 10 s, to show it works.
// --cpuprofile and --memprofile profile the cached GetToken hot path
// instead of running the benchmark.
//
// The exit status is 0 when the run completed (whatever the targets say,
// unless --strict), 1 when it failed, 2 for bad flags.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
