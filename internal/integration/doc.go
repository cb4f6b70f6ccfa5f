// Package integration holds the tests that prove the broker's invariants
// across replicas: several broker.Brokers, each with its own Store handle and
// Redis client, against one real redis-server (started by the test on a free
// port, so it can be stopped, paused and restarted) and the strict test IdP.
// The same tests run against the dev-mode memstore, shared in one process.
package integration
