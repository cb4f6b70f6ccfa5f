package clientsdk

import "time"

// SetClock replaces the clock s uses to judge its cache, for tests.
func SetClock(s *TokenSource, now func() time.Time) { s.now = now }
