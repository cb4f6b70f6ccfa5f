// Command client-demo runs the story of tokenbroker on one machine: a strict
// test IdP that rotates refresh tokens and revokes the whole token family
// when a spent one is presented again, a protected API, a broker (in-process
// by default), and many workers calling the API with short-lived access
// tokens. It prints a live progress line and, at the end, a summary table or
// (with --json) one JSON object.
//
// With the broker, the workers get their tokens through clientsdk and the
// IdP sees one refresh per expiry and no reuse. With --naive, every worker
// refreshes on its own, as a browser would, and the IdP sees refresh tokens
// reused, revokes the family, and requests fail.
//
// Run client-demo --help for the modes and flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := realMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// realMain runs client-demo with args (without the program name) and returns
// the exit status: 0 after a run (interrupted or not), 1 when it could not
// run, 2 on a bad command line. Ending ctx ends the run early.
func realMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "client-demo: %v\nRun 'client-demo --help' for usage.\n", err)
		return 2
	}
	if cfg.idpOnly {
		if err := serveIdP(ctx, cfg, stdout); err != nil {
			fmt.Fprintf(stderr, "client-demo: %v\n", err)
			return 1
		}
		return 0
	}
	sum, err := run(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "client-demo: %v\n", err)
		return 1
	}
	write := writeTable
	if cfg.json {
		write = writeJSON
	}
	if err := write(stdout, sum); err != nil {
		fmt.Fprintf(stderr, "client-demo: writing the summary: %v\n", err)
		return 1
	}
	return 0
}
