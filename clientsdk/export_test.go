package clientsdk

import "time"

// SetClock replaces the clock s uses to judge its cache, for tests.
func SetClock(s *TokenSource, now func() time.Time) { s.now = now }

// ReasonKinds returns the sentinels a reason maps to, and whether the
// mapping has an entry for it.
func ReasonKinds(reason string) ([]error, bool) {
	kinds, ok := reasonKinds[reason]
	return kinds, ok
}
