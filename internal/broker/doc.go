// Package broker is the domain of tokenbroker: upstream OAuth2 credentials, the
// lifecycle of their access tokens, and the seams (Store, Upstream) that storage
// and the identity provider plug into.
//
// The package imports neither a transport nor a database. A Broker serves
// tokens from a local cache, refreshes each credential at most once at a time
// across every replica that shares the Store (the Store's lock and fenced
// Commit make that hold), refreshes ahead of expiry in the background, and
// reports failures as the sentinel errors in errors.go, which the transport
// maps to its own codes in one table.
package broker
