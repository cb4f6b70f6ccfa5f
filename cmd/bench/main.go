// Command bench measures tokenbroker on this machine and prints a table of
// its measurements against the targets of issues 6 and 13, with every
// target MET or NOT MET; it also writes the figures as JSON (--json). It
// needs redis-server in PATH; it starts its own on a free 127.0.0.1 port
// and stops it.
//
// make bench: cached GetToken against the bare gRPC floor at 50 and 200
// concurrent calls, the client SDK's cached path against x/oauth2, a
// refresh storm over three replicas sharing Redis, and 100,000 credentials
// (about four minutes).
//
// --scale (make bench-scale): 1,000,000 credentials, the table of how
// per-call CPU, memory and Redis commands grow with credentials and
// replicas, and refresh-ahead of tokens expiring together, paced at the
// IdP's rate (under ten minutes).
//
// --smoke runs every step with tiny sizes in seconds, to show it works.
// --steps picks steps. --cpuprofile and --memprofile profile the cached
// GetToken hot path instead of running the benchmark (--profile-floor: the
// floor's, to compare with).
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
