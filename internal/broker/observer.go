package broker

import "time"

// Refresh reasons, as reported in RefreshEvent.Reason.
const (
	ReasonExpired     = "expired"     // a caller needed a fresher token
	ReasonAhead       = "ahead"       // background refresh ahead of expiry
	ReasonInvalidated = "invalidated" // a caller reported the current token rejected
	ReasonForced      = "forced"      // an operator asked for a refresh
	ReasonJournal     = "journal"     // an outcome journaled before a restart is stored
)

// Refresh outcomes, as reported in RefreshEvent.Outcome.
const (
	OutcomeOK        = "ok"        // refreshed and stored
	OutcomeTransient = "transient" // the IdP or the network failed; retried later
	OutcomePermanent = "permanent" // the IdP said the grant is dead: REAUTH_REQUIRED
	OutcomeUnknown   = "unknown"   // the answer was lost: the IdP may have rotated the refresh token
	OutcomeLost      = "lost"      // the IdP answered, and the record moved on or the broker closed before it was stored
	OutcomeAbandoned = "abandoned" // not sent: the lease would not outlive the call
)

// Source is where a served token came from.
type Source int

// Sources.
const (
	FromCache   Source = iota // the local cache: no Store call, no wait
	FromStore                 // read from the Store, no refresh waited for
	FromRefresh               // the caller waited for a refresh
)

func (s Source) String() string {
	switch s {
	case FromCache:
		return "cache"
	case FromStore:
		return "store"
	}
	return "refresh"
}

// RefreshEvent describes one attempt to call the IdP. It never holds a
// secret.
type RefreshEvent struct {
	CredentialID string
	Caller       string // who caused it; empty for background refreshes
	Reason       string
	Outcome      string
	Generation   uint64        // the stored generation afterwards
	Duration     time.Duration // of the IdP call
	Err          error         // nil on OutcomeOK
}

// Observer is told what a Broker does, for metrics and audit. Its methods are
// called synchronously on hot paths, so they must be fast, non-blocking and
// safe for concurrent use.
type Observer interface {
	// TokenServed is called for every token handed out, with where it came
	// from.
	TokenServed(from Source)
	// LockWaited is called when a refresh got past waiting for the
	// credential's lock: obtained, or not (another holder refreshed first, or
	// the wait timed out).
	LockWaited(d time.Duration, obtained bool)
	// Refreshed is called after every IdP call (once its outcome is stored,
	// for the last one of a refresh), or a call abandoned.
	Refreshed(ev RefreshEvent)
	// Regressed is called when the Store went back to an older generation
	// of a credential than one already seen (a Redis failover to a replica
	// that missed writes), after the Broker tried to repair it.
	Regressed(ev RegressionEvent)
}

// RegressionEvent describes a credential whose stored generation went
// backwards. It never holds a secret.
type RegressionEvent struct {
	CredentialID string
	Seen         uint64 // the generation seen before
	Stored       uint64 // the older one the Store answered with
	// Repaired says that this Broker still held the newer outcome (it had
	// stored it) and wrote it back.
	Repaired bool
	Err      error // why a repair failed, if one was tried
}

type nopObserver struct{}

func (nopObserver) TokenServed(Source)             {}
func (nopObserver) LockWaited(time.Duration, bool) {}
func (nopObserver) Refreshed(RefreshEvent)         {}
func (nopObserver) Regressed(RegressionEvent)      {}
