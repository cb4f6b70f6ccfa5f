// Package loadbench measures tokenbroker on one machine, for make bench
// and make bench-scale. Its replicas are built by internal/server as
// cmd/broker builds them in Redis mode: records sealed, bearer-key callers,
// the per-client limit, the audit trail and metrics on. The steps:
//
//  1. throughput: cached GetToken through the gRPC server against a no-op
//     method on a bare grpc-go server with the same transport (the floor),
//     both driven by the same closed-loop load client, in alternating
//     slices;
//  2. sdk: the client SDK's cached TokenSource.Token against x/oauth2's
//     ReuseTokenSource;
//  3. storm: many concurrent GetToken calls on an expired token, spread
//     over replicas that share a private redis-server, with a slow IdP
//     (internal/fakeidp): how many IdP calls, and how long the waiters take
//     beyond the IdP, against a fan-out floor;
//  4. scale: many credentials loaded into Redis with redisstore's Import
//     (sealed, with valid tokens; not refreshed one by one): the seeding
//     rate, Redis's and the broker's memory per credential, a cold
//     replica's first tokens, a full ListCredentials pass, and cached
//     GetToken over a working set of many credentials against the floor;
//  5. growth: how per-call CPU, memory and Redis commands grow with the
//     credentials and with the replicas;
//  6. pacing: tokens expiring together, refreshed ahead of expiry at an
//     IdP that answers 429 beyond a rate, with --idp-rate set to it.
//
// Run makes the steps of a Config and returns a Report, which prints as a
// table with each target MET or NOT MET and marshals to JSON. Every timed
// figure is the median of Config.Rounds runs. Everything Run starts
// (servers, the redis-server child process, goroutines) is stopped before
// it returns; every load loop is bounded in calls and in time.
package loadbench
