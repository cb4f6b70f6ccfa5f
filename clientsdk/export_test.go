package clientsdk

import (
	"time"

	"golang.org/x/oauth2"
)

// SetClock replaces the clock s uses to judge its cache, for tests.
func SetClock(s *TokenSource, now func() time.Time) { s.now = now }

// ReasonKinds returns the sentinels a reason maps to, and whether the
// mapping has an entry for it.
func ReasonKinds(reason string) ([]error, bool) {
	kinds, ok := reasonKinds[reason]
	return kinds, ok
}

// Cached returns the token s's cache holds, or nil.
func Cached(s *TokenSource) *oauth2.Token {
	if e := s.cur.Load(); e != nil {
		return e.tok
	}
	return nil
}
