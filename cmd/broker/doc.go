// Command broker serves tokenbroker's gRPC API: it holds upstream OAuth2
// credentials, spends each refresh token once however many callers ask, and
// hands out access tokens (tokenbroker.v1 TokenService and AdminService,
// grpc.health.v1 and server reflection).
//
// Configuration comes from flags and their TOKENBROKER_* environment twins
// (see broker --help) and is validated before anything starts: bad
// configuration exits with status 2 and a one-line message on stderr.
// Without --redis-url the broker runs in dev mode: one replica, an in-memory
// store. With --redis-url, every replica sharing the Redis (and
// --redis-prefix) shares the credentials and refreshes each one once; records
// are sealed with --seal-keys.
//
// With --clients-file callers authenticate with a bearer key and/or a client
// certificate (--tls-client-ca), may read only the credentials that list
// them, and need an admin identity for AdminService; InvalidateToken and
// RefreshCredential are limited per client (--client-rate, --client-burst).
// Without it every caller may do everything: dev mode allows that with a
// warning, Redis mode only with --allow-unauthenticated. --tls-cert and
// --tls-key serve TLS. --metrics-addr serves /healthz and Prometheus
// /metrics. Every admin call and every refresh is logged as an audit event
// (audit=true).
//
// The broker logs to stderr with log/slog. Once it accepts calls it logs
// "listening" with the gRPC address in the addr attribute; with
// --grpc-addr 127.0.0.1:0 that is how a script or a test learns the port
// (with --log-format json: the line {"msg":"listening","addr":"127.0.0.1:PORT",...}).
//
// Health: grpc.health.v1 "" and each service report readiness, NOT_SERVING
// while Redis has not answered for --unready-after and from SIGTERM on; the
// service "liveness" reports the process alone (and so do /readyz and
// /healthz on --metrics-addr). A Redis that refuses the URL's password or
// database, is a Cluster node or not unlike the URL, or holds records that
// --seal-keys opens none of, exits 2 at start; one that does not answer yet
// does not.
//
// SIGTERM or SIGINT turns readiness NOT_SERVING at once while the port still
// answers, refuses new calls with UNAVAILABLE (reason SHUTTING_DOWN), lets
// calls and refreshes in flight finish, gives up on the rest (callers get
// SHUTTING_DOWN, the log names the abandoned refreshes) and exits 0 within
// --shutdown-timeout. A second signal kills the process at once.
package main
