package redisstore

import "time"

// SetEventTiming shortens the event listener's health check and backoff so
// tests see failures and recoveries sooner. Call it before Subscribe.
func SetEventTiming(s *Store, pingEvery, backoffMin, backoffMax time.Duration) {
	s.pingEvery, s.backoffMin, s.backoffMax = pingEvery, backoffMin, backoffMax
}

// ParseEvent exposes parseEvent.
var ParseEvent = parseEvent

// SetIndexTiming shortens the index write timeout and retry backoff.
func SetIndexTiming(s *Store, timeout, retryMin, retryMax time.Duration) {
	s.ix.timeout, s.ix.retryMin, s.ix.retryMax = timeout, retryMin, retryMax
}
