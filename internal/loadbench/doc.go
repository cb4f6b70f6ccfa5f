// Package loadbench measures tokenbroker on one machine, for make bench:
//
//  1. cached GetToken through the gRPC server, with authentication and
//     metrics on, against a no-op method on a bare grpc-go server with the
//     same transport, both driven by the same closed-loop load client;
//  2. a refresh storm: many concurrent GetToken calls on an expired token,
//     spread over broker replicas that share a private redis-server, with
//     a slow IdP (internal/fakeidp): how many IdP calls, and how long the
//     waiters take beyond the IdP;
//  3. the client SDK's cached TokenSource.Token against x/oauth2's
//     ReuseTokenSource;
//  4. scale: many credentials in Redis: the broker's memory per cached
//     credential, Redis commands per cached GetToken, and how soon a cold
//     replica serves its first token.
//
// Run does it all and returns a Report, which prints as a table and
// marshals to JSON. Every figure that is a timing is the median of
// Config.Rounds runs. Everything Run starts (servers, the redis-server
// child process, goroutines) is stopped before it returns.
package loadbench
