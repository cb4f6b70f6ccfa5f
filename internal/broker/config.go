package broker

import (
	"errors"
	"fmt"
	"time"
)

// Config tunes a Broker. The zero value of every field means its default.
type Config struct {
	// DefaultMinValid is how long a token must stay valid when the caller
	// does not say; at most a quarter of the token's lifetime is used.
	DefaultMinValid time.Duration // default 30s
	// DefaultRefreshAhead starts a background refresh once a token has less
	// than this left, for credentials that set no RefreshAhead; at most half
	// the token's lifetime is used.
	DefaultRefreshAhead time.Duration // default 5m
	// RefreshTimeout is how long callers wait for the IdP's answer before
	// they are told it is unavailable. A caller that goes away does not cut
	// the call short, and neither does this timeout: the answer is still
	// read, and stored, for up to RefreshReplyWait.
	RefreshTimeout time.Duration // default 10s
	// RefreshReplyWait is the hard bound on one IdP call. An answer that
	// comes later is lost; with no answer by then, the IdP may have rotated
	// the refresh token (see ErrOutcomeUnknown).
	RefreshReplyWait time.Duration // default 60s
	// LockTTL is how long a refresh lease lasts unless extended; it must
	// exceed RefreshTimeout. A holder extends its lease while its IdP call
	// and the storing of the outcome go on, and sends nothing unless the
	// lease has RefreshTimeout and half the rest of LockTTL left.
	LockTTL time.Duration // default RefreshTimeout + 5s
	// LockWait bounds how long a refresh waits for another holder of the
	// credential's lease before failing with ErrLockTimeout. It should exceed
	// LockTTL so that a crashed holder's lease expires within it.
	LockWait time.Duration // default LockTTL + 5s
	// PollInterval is how often a waiter re-reads the Store when no event
	// wakes it (a missed event, a crashed holder).
	PollInterval time.Duration // default 250ms
	// ForceInterval is the least time between forced refreshes (InvalidateToken
	// of the current token, RefreshCredential) of one credential.
	ForceInterval time.Duration // default 5s
	// BackoffMin and BackoffMax bound the wait after a transient IdP failure;
	// it doubles with each failure in a row. A longer Retry-After from the
	// IdP wins, up to BackoffMaxRetryAfter.
	BackoffMin           time.Duration // default 1s
	BackoffMax           time.Duration // default 1m
	BackoffMaxRetryAfter time.Duration // default 10m
	// DefaultLifetime is assumed for a token the IdP sent without expires_in.
	DefaultLifetime time.Duration // default 1h
	// RevokeNotice is how long a refresh of a credential whose IdP revokes
	// the previous access token (Credential.RevokesPreviousAccessToken)
	// waits between announcing itself (the pending marker, and its event)
	// and calling the IdP, while the old token still works: every replica
	// stops handing the old token out, WatchToken streams tell their clients
	// to stop using it, and requests already on their way with it reach
	// their resource servers. Callers of such a credential that arrive during
	// a refresh wait for this plus the IdP's answer. At most a quarter of
	// LockTTL - RefreshTimeout, so the lease still outlives the IdP call.
	RevokeNotice time.Duration // default 200ms, or that quarter if less
	// Open turns authorization off: every caller may read every credential
	// and call the admin methods. For dev mode only.
	Open bool
	// ReplicaID names this Broker in the pending markers it writes, so that
	// operators can tell which replica sent a refresh; a random name when
	// empty.
	ReplicaID string
	// Journal, if set, keeps each refresh's outcome on local disk until it
	// is stored, and New stores what a previous run left there.
	Journal Journal
	// Pacer, if set, paces IdP calls per token host across every Broker
	// sharing it (concurrency, rate, a host's Retry-After).
	Pacer Pacer
	// AheadWorkers is how many refreshes ahead of expiry run at once on
	// this Broker; the others wait, soonest expiry first.
	AheadWorkers int // default 16
	// MaxCached bounds how many credentials the Broker keeps in memory;
	// beyond it, one not used for the longest time of a sample is dropped
	// and read again on its next use.
	MaxCached int // default 1<<20
	// Observer is told about refreshes and cache hits; nil means none. If
	// it also implements AuthorizationObserver, it is told about
	// authorization flows.
	Observer Observer
	// FlowTTL is how long the state of an authorization code flow
	// (StartAuthorization) stays valid.
	FlowTTL time.Duration // default 10m
	// Tracer, if set, traces the steps of each refresh (trace.go).
	Tracer Tracer
	// TokenURLs says which token URLs credentials may name; the zero value
	// is https (http to loopback), never link-local or metadata addresses.
	TokenURLs TokenURLPolicy
}

// DefaultRevokeNotice is Config.RevokeNotice's default.
const DefaultRevokeNotice = 200 * time.Millisecond

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.DefaultMinValid, 30*time.Second)
	def(&c.DefaultRefreshAhead, 5*time.Minute)
	def(&c.RefreshTimeout, 10*time.Second)
	def(&c.RefreshReplyWait, max(60*time.Second, c.RefreshTimeout))
	def(&c.LockTTL, c.RefreshTimeout+5*time.Second)
	def(&c.LockWait, c.LockTTL+5*time.Second)
	def(&c.PollInterval, 250*time.Millisecond)
	def(&c.ForceInterval, 5*time.Second)
	def(&c.BackoffMin, time.Second)
	def(&c.BackoffMax, time.Minute)
	def(&c.BackoffMaxRetryAfter, 10*time.Minute)
	def(&c.DefaultLifetime, time.Hour)
	def(&c.RevokeNotice, min(DefaultRevokeNotice, (c.LockTTL-c.RefreshTimeout)/4))
	def(&c.FlowTTL, 10*time.Minute)
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	if c.AheadWorkers <= 0 {
		c.AheadWorkers = 16
	}
	if c.MaxCached <= 0 {
		c.MaxCached = 1 << 20
	}
	if c.ReplicaID == "" {
		c.ReplicaID = "replica-" + randomID()
	}
}

// flightBound bounds one flight, hence a caller's wait for a refresh: the
// wait for another holder's lease, the IdP's answer, and a second for the
// Store's round trips around them.
func (c *Config) flightBound() time.Duration {
	return c.LockWait + c.RefreshTimeout + time.Second
}

// sendMargin is how much of its lease a holder must have left to send a
// refresh: the whole RefreshTimeout, and half the rest of the TTL for
// storing the outcome.
func (c *Config) sendMargin() time.Duration {
	return c.RefreshTimeout + (c.LockTTL-c.RefreshTimeout)/2
}

// pendingBound is how long after a pending marker's refresh was sent another
// holder waits for its outcome before it presents the refresh token again:
// the holder reads a late answer for RefreshReplyWait, then needs time to
// store it.
func (c *Config) pendingBound() time.Duration {
	return c.RefreshReplyWait + c.LockTTL
}

// closeWait is how long Close lets refreshes in flight finish and store
// their outcome before it gives up on them.
func (c *Config) closeWait() time.Duration {
	return c.RefreshReplyWait + c.LockTTL
}

// Validate reports the first inconsistent setting, after defaults apply.
func (c Config) Validate() error {
	c.setDefaults()
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"DefaultMinValid", c.DefaultMinValid}, {"DefaultRefreshAhead", c.DefaultRefreshAhead},
		{"RefreshTimeout", c.RefreshTimeout}, {"RefreshReplyWait", c.RefreshReplyWait},
		{"LockTTL", c.LockTTL}, {"LockWait", c.LockWait},
		{"PollInterval", c.PollInterval}, {"ForceInterval", c.ForceInterval},
		{"BackoffMin", c.BackoffMin}, {"BackoffMax", c.BackoffMax},
		{"BackoffMaxRetryAfter", c.BackoffMaxRetryAfter}, {"DefaultLifetime", c.DefaultLifetime},
		{"RevokeNotice", c.RevokeNotice},
		{"FlowTTL", c.FlowTTL},
	} {
		if d.v < 0 {
			return fmt.Errorf("broker: %s must not be negative", d.name)
		}
	}
	if c.LockTTL <= c.RefreshTimeout {
		return fmt.Errorf("broker: LockTTL (%s) must exceed RefreshTimeout (%s), so a refresh gives up before its lock expires", c.LockTTL, c.RefreshTimeout)
	}
	if c.RefreshReplyWait < c.RefreshTimeout {
		return fmt.Errorf("broker: RefreshReplyWait (%s) must not be below RefreshTimeout (%s)", c.RefreshReplyWait, c.RefreshTimeout)
	}
	if most := (c.LockTTL - c.RefreshTimeout) / 4; c.RevokeNotice > most {
		return fmt.Errorf("broker: RevokeNotice (%s) must be at most a quarter of LockTTL - RefreshTimeout (%s), so the lease outlives the IdP call", c.RevokeNotice, most)
	}
	if c.BackoffMax < c.BackoffMin {
		return errors.New("broker: BackoffMax must not be below BackoffMin")
	}
	return nil
}

// backoff is the wait after the n-th transient failure in a row.
func (c *Config) backoff(n int, retryAfter time.Duration) time.Duration {
	d := c.BackoffMin
	for i := 1; i < n && d < c.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, c.BackoffMax)
	if retryAfter > d {
		d = min(retryAfter, c.BackoffMaxRetryAfter)
	}
	return d
}
