package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// The refresh of one credential, from a stale token to its stored outcome:
//
//   - refresh: one flight per key in this process (singleflight); a caller
//     waits for it at most LockWait for the lease plus RefreshTimeout for
//     the IdP (Config.flightBound).
//   - runFlight: waits for the credential's lease (acquire), or joins this
//     Broker's attempt already under way, or finds that another replica's
//     refresh made the call unnecessary.
//   - refreshLocked: under the lease, re-reads the record, respects another
//     holder's pending refresh, makes sure the lease outlives the call,
//     writes the pending marker and starts an attempt.
//   - the attempt (startAttempt, on a goroutine of its own): keeps the lease
//     alive (keepAlive); send waits for the IdP's turn (Pacer), calls it,
//     reads a late answer for up to RefreshReplyWait and, within the
//     credential's reuse grace, resends a request whose answer was lost;
//     finish journals the outcome and settle stores it, retrying the fenced
//     write until it lands or the fence proves the record moved on.
//
// Once the IdP has answered, its answer is never dropped because the Store
// is slow, unreachable or restarting, or because the lease ran out: only the
// record moving on (an operator put a new refresh token, or deleted the
// credential, or another holder took over a marker past its bound) or the
// Broker giving up at Close does that.

// flight describes one refresh: which credential, why, and the test that
// says, on the freshest record, whether the IdP must still be called.
type flight struct {
	id     string
	caller string
	reason string
	forced bool // rate-limited by Config.ForceInterval
	need   func(r *Record, now time.Time) bool
	turn   *paceTurn       // a turn at the IdP taken before the flight, or nil
	trace  context.Context // the flight's context, whose trace its attempt continues (Config.Tracer)
}

// refresh runs f once per key at a time in this process; callers with the
// same key share the outcome. The refresh runs on its own context, so a
// caller that goes away does not cut it short; the returned record must not
// be modified. A caller waits at most LockWait for another holder of the
// lease and then RefreshTimeout for the IdP (flightBound).
func (b *Broker) refresh(ctx context.Context, key string, f flight) (*Record, error) {
	ch := b.flights.DoChan(key, func() (any, error) {
		if !b.enter() {
			return nil, &Error{Kind: ErrShuttingDown, CredentialID: f.id}
		}
		defer b.wg.Done()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.flightBound())
		defer cancel()
		defer context.AfterFunc(b.bg, cancel)() // Shutdown gave up: stop waiting for the lease too
		return b.runFlight(fctx, f)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Record), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-b.bg.Done(): // Shutdown gave up on the refreshes in flight
		return nil, &Error{Kind: ErrShuttingDown, CredentialID: f.id, RetryAfter: time.Second,
			Detail: "this replica is shutting down; retry on another"}
	}
}

// errPendingElsewhere says that another holder's refresh is pending on the
// record: the flight does not call the IdP.
var errPendingElsewhere = errors.New("broker: a refresh of another holder is pending")

// runFlight waits until the credential no longer needs a refresh or its
// lease is free, and refreshes it under the lease. Waiters are woken by the
// Store's events; PollInterval is only the fallback. ctx bounds the wait.
//
// A flight starts because its caller just saw a stale token, so it tries
// the lease before reading the Store: when the lease is free, that saves a
// round trip before the IdP call, and the record is read under the lease
// anyway.
func (b *Broker) runFlight(ctx context.Context, f flight) (*Record, error) {
	start := time.Now()
	for {
		if a := b.attemptOf(f.id); a != nil {
			return a.await(ctx, b.cfg)
		}
		var rec *Record
		lease, err := b.acquire(ctx, f.id, func() (bool, error) {
			if b.attemptOf(f.id) != nil {
				return true, errJoin
			}
			r, err := b.read(ctx, f.id)
			if err != nil {
				return true, storeErr(f.id, err)
			}
			rec = r
			done, err := b.settled(r, f)
			if done || err != nil {
				b.obs.LockWaited(time.Since(start), false)
			}
			return done, err
		})
		var be *Error
		switch {
		case errors.Is(err, errJoin):
			continue
		case err != nil && !errors.As(err, &be): // the flight's own deadline ran out while waiting
			return nil, &Error{Kind: ErrLockTimeout, CredentialID: f.id, Err: err, RetryAfter: b.cfg.PollInterval}
		case errors.Is(err, ErrLockTimeout):
			b.obs.LockWaited(time.Since(start), false)
			return nil, err
		case err != nil:
			return nil, err
		case lease == nil: // settled without the IdP
			return rec, nil
		}
		b.obs.LockWaited(time.Since(start), true)
		if rec == nil && f.turn == nil {
			// The lease came at once (nothing was read while waiting): this
			// replica calls the IdP next unless the record says otherwise,
			// so the IdP's turn is asked for while the record is read and
			// the refresh announced, not after. (A flight that waited was
			// woken by another holder, which likely refreshed already.)
			if _, e := b.lookup(f.id); e != nil {
				f.turn = b.prefetchTurn(e.host)
			}
		}
		rec, err = b.refreshLocked(ctx, lease, f)
		if errors.Is(err, errPendingElsewhere) {
			// Another holder's refresh is pending: its outcome may be
			// stored any moment, or its holder is cut off; either way the
			// refresh token must not be presented now.
			return nil, pendingErr(f.id, rec.Pending, max(b.cfg.PollInterval, time.Second))
		}
		return rec, err
	}
}

// errJoin says that an attempt of this Broker started while a flight waited
// for the lease: the flight joins it.
var errJoin = errors.New("broker: join the attempt under way")

// pendingErr is the error of a caller whose refresh waits for the outcome of
// another holder's pending refresh.
func pendingErr(id string, p *Pending, retry time.Duration) error {
	detail := "a refresh is being stored"
	if p != nil {
		detail = fmt.Sprintf("the refresh that replica %s sent at %s is not stored yet", p.Holder, p.SentAt.UTC().Format(time.RFC3339))
	}
	return &Error{Kind: ErrStoreUnavailable, CredentialID: id, RetryAfter: retry, Detail: detail}
}

// settled says whether f is over on rec without calling the IdP: the record
// no longer needs it, or the IdP must not be called now.
func (b *Broker) settled(rec *Record, f flight) (bool, error) {
	if rec.State == StateReauthRequired {
		return true, reauthErr(rec)
	}
	now := time.Now()
	if !f.need(rec, now) {
		return true, nil
	}
	if now.Before(rec.NextAttemptAt) {
		return true, &Error{Kind: ErrIdPUnavailable, CredentialID: rec.ID,
			RetryAfter: rec.NextAttemptAt.Sub(now), Detail: "backing off after: " + rec.LastError}
	}
	if f.forced && !rec.LastForcedAt.IsZero() {
		if wait := rec.LastForcedAt.Add(b.cfg.ForceInterval).Sub(now); wait > 0 {
			return true, &Error{Kind: ErrRateLimited, CredentialID: rec.ID, RetryAfter: wait,
				Detail: "a forced refresh ran less than " + b.cfg.ForceInterval.String() + " ago"}
		}
	}
	return false, nil
}

// reauthErr is the error for a credential in REAUTH_REQUIRED.
func reauthErr(rec *Record) error {
	kind := ErrReauthRequired
	if rec.OutcomeUnknown {
		kind = ErrOutcomeUnknown
	}
	return &Error{Kind: kind, CredentialID: rec.ID, Detail: rec.LastError}
}

// refreshLocked decides under lease whether to call the IdP, and if so
// announces the refresh and starts an attempt, which takes the lease over,
// and the flight's turn at the IdP if it has one; otherwise it gives the
// turn back.
func (b *Broker) refreshLocked(ctx context.Context, lease Lease, f flight) (*Record, error) {
	started := false
	defer func() {
		if !started {
			f.turn.done()
		}
	}()
	m := b.mark(f.id)
	rec, err := b.store.Get(ctx, f.id) // the freshest record, read under the lease
	if err != nil {
		b.release(ctx, lease)
		return nil, storeErr(f.id, err)
	}
	if rec.Generation < m.gen && m.s != nil {
		// The Store went back to a generation older than one this replica
		// saw stored (a failover to a replica that missed writes): its
		// refresh token was spent by the refresh that made the newer one.
		// It is never presented; the replica that stored the newer one
		// writes it back, or, past the bound, the credential says so.
		b.fill(rec, m) // reports the regression, and repairs it if the outcome is here
		return nil, b.superseded(ctx, lease, rec, m)
	}
	if done, err := b.settled(rec, f); done || err != nil {
		b.release(ctx, lease)
		return rec, err
	}
	var orphan *Pending
	if p := rec.Pending; p != nil {
		if !b.mayTakeOver(rec, p, time.Now()) {
			b.release(ctx, lease)
			return rec, errPendingElsewhere
		}
		orphan = p
	}

	// Send only if the lease outlives the call: a holder that may lose its
	// lease must not present the refresh token.
	if err := b.ensureLease(ctx, lease); err != nil {
		b.release(ctx, lease)
		b.obs.Refreshed(RefreshEvent{CredentialID: f.id, Caller: f.caller, Reason: f.reason,
			Outcome: OutcomeAbandoned, Generation: rec.Generation, Err: err})
		return nil, &Error{Kind: ErrLockTimeout, CredentialID: f.id, Err: err, RetryAfter: b.cfg.PollInterval,
			Detail: "the refresh lease could not be extended; nothing was sent"}
	}
	p := &Pending{ID: randomID(), Holder: b.cfg.ReplicaID, SentAt: time.Now(), Journaled: b.cfg.Journal != nil}
	mctx, span := b.span(ctx, "store.mark_pending", f.id, rec.Generation)
	err = b.store.MarkPending(mctx, lease, rec, p)
	span.End(writeOutcome(err), rec.Generation, err)
	if err != nil {
		b.release(ctx, lease)
		if errors.Is(err, ErrLockLost) || errors.Is(err, ErrConflict) {
			return nil, &Error{Kind: ErrLockTimeout, CredentialID: f.id, Err: err, RetryAfter: b.cfg.PollInterval,
				Detail: "the credential changed while the refresh was being announced; nothing was sent"}
		}
		return nil, storeErr(f.id, err)
	}
	rec.Pending = p
	started = true
	f.trace = ctx
	a := b.startAttempt(lease, rec, p, f, orphan)
	return a.await(ctx, b.cfg)
}

// superseded answers a flight that found the stored generation older than
// one seen: STORE_UNAVAILABLE while a repair may still come, and once the
// regression is older than the pending bound, REAUTH_REQUIRED with
// ErrOutcomeUnknown, written under lease, without presenting the spent
// refresh token. It releases lease.
func (b *Broker) superseded(ctx context.Context, lease Lease, rec *Record, m readMark) error {
	defer b.release(ctx, lease)
	s := m.s
	s.regressedAt.CompareAndSwap(0, time.Now().UnixNano()) // fill's regressed set it, unless a fill since cleared it
	since := time.Since(time.Unix(0, s.regressedAt.Load()))
	if since < b.cfg.regressionBound() {
		return &Error{Kind: ErrStoreUnavailable, CredentialID: rec.ID, RetryAfter: max(b.cfg.PollInterval, time.Second),
			Detail: fmt.Sprintf("the store went back to generation %d after generation %d was stored; waiting for the replica that stored it to write it again", rec.Generation, m.gen)}
	}
	next := rec.Clone()
	next.Pending = nil
	b.unknown(next, fmt.Sprintf("the store went back to generation %d after generation %d was stored (a failover that lost writes); the refresh token of generation %d is spent and its successor was not written back", rec.Generation, m.gen, rec.Generation), time.Now())
	gen, err := b.store.Commit(ctx, lease, next)
	if err != nil {
		return storeErr(rec.ID, err)
	}
	next.Generation = gen
	s.mu.Lock()
	s.gen = 0 // the credential's history restarts from what is stored now
	s.mu.Unlock()
	b.fill(next, b.mark(rec.ID))
	s.regressedAt.Store(0)
	b.obs.Refreshed(RefreshEvent{CredentialID: rec.ID, Reason: ReasonExpired, Outcome: OutcomeUnknown, Generation: gen,
		Err: errors.New(next.LastError)})
	return reauthErr(next)
}

// mayTakeOver says whether a holder may present the refresh token of a
// record on which another holder's refresh p is pending (its lease is gone,
// or this holder could not have the lease): always for client_credentials;
// when the replay reaches the IdP within its reuse grace; or when p's holder
// has had all the time it could need to store its outcome, so it is dead or
// cut off for good.
func (b *Broker) mayTakeOver(rec *Record, p *Pending, now time.Time) bool {
	if rec.GrantType == GrantClientCredentials {
		return true // nothing single-use is at stake
	}
	if withinGrace(rec, p, now) {
		return true
	}
	return !now.Before(p.SentAt.Add(b.cfg.pendingBound()))
}

// graceMargin is the part of a reuse grace window kept for a replay to
// reach the IdP.
func graceMargin(grace time.Duration) time.Duration {
	return min(time.Second, grace/2)
}

// ensureLease extends the lease if it has less than the send margin left.
func (b *Broker) ensureLease(ctx context.Context, lease Lease) error {
	if time.Until(lease.Deadline()) >= b.cfg.sendMargin() {
		return nil
	}
	if err := lease.Extend(ctx, b.cfg.LockTTL); err != nil {
		return err
	}
	if time.Until(lease.Deadline()) < b.cfg.sendMargin() {
		return ErrLockLost
	}
	return nil
}

// attempt is one refresh this Broker announced and sent: it runs on a
// goroutine of its own (owned by the Broker), and outlives the callers that
// started it.
type attempt struct {
	id       string
	gen      uint64 // the generation of the record it refreshes
	p        *Pending
	done     chan struct{} // closed when the attempt is over
	answered chan struct{} // closed when the outcome is known (the IdP answered, or did not in time)
	stalled  chan struct{} // closed when an outcome is known and its first write failed
	once     sync.Once     // closes stalled

	mu       sync.Mutex // guards stallErr
	stallErr error

	rec *Record // after done: the record as stored, or nil
	err error   // after done

	prev   *Record // the record the refresh was sent from; nil when resumed from the journal
	caller string  // who caused it
	keep   *keeper // keeps its lease; nil when resumed from the journal
}

func newAttempt(id string, p *Pending) *attempt {
	return &attempt{id: id, p: p, done: make(chan struct{}), answered: make(chan struct{}), stalled: make(chan struct{})}
}

// attemptOf returns this Broker's attempt under way on a credential, or nil.
func (b *Broker) attemptOf(id string) *attempt {
	b.mu.RLock()
	s := b.slots[id]
	b.mu.RUnlock()
	if s == nil {
		return nil
	}
	return s.attempt.Load()
}

// await waits for the attempt's outcome: its stored record, or, while it is
// not over, an error saying what it waits for once its caller has waited
// RefreshTimeout for the IdP, or the outcome could not be stored at once.
func (a *attempt) await(ctx context.Context, cfg Config) (*Record, error) {
	timer := time.NewTimer(time.Until(a.p.SentAt.Add(cfg.RefreshTimeout)))
	defer timer.Stop()
	select {
	case <-a.done:
	case <-a.answered:
	case <-a.stalled:
	case <-timer.C:
	case <-ctx.Done():
	}
	// Whatever woke it, an outcome already known wins over the timer: a
	// caller that joins an attempt past RefreshTimeout finds both ready.
	select {
	case <-a.done:
		return a.rec, a.err
	case <-a.answered:
		// The outcome is known: wait for it to be stored, unless the
		// Store fails.
		select {
		case <-a.done:
			return a.rec, a.err
		case <-a.stalled:
		case <-ctx.Done():
		}
	default:
	}
	return nil, a.progressErr(cfg.PollInterval)
}

// progressErr says what an attempt that is not over waits for.
func (a *attempt) progressErr(retry time.Duration) error {
	select {
	case <-a.done:
		if a.err != nil {
			return a.err
		}
		return &Error{Kind: ErrLockTimeout, CredentialID: a.id, RetryAfter: retry}
	case <-a.stalled:
		a.mu.Lock()
		cause := a.stallErr
		a.mu.Unlock()
		return &Error{Kind: ErrStoreUnavailable, CredentialID: a.id, Err: cause, RetryAfter: max(retry, time.Second),
			Detail: "the refreshed token is kept and will be stored once the store answers"}
	case <-a.answered:
		return &Error{Kind: ErrStoreUnavailable, CredentialID: a.id, RetryAfter: max(retry, time.Second),
			Detail: "the refreshed token is being stored"}
	default:
		return &Error{Kind: ErrIdPUnavailable, CredentialID: a.id, RetryAfter: max(retry, time.Second),
			Detail: "the IdP has not answered yet; its answer will still be stored"}
	}
}

func (a *attempt) stall(err error) {
	a.mu.Lock()
	a.stallErr = err
	a.mu.Unlock()
	a.once.Do(func() { close(a.stalled) })
}

// startAttempt starts the attempt that sends the refresh p announced on rec.
// It owns lease from now on. The calling flight holds a count of b.wg, so the
// Add cannot race Close's Wait.
func (b *Broker) startAttempt(lease Lease, rec *Record, p *Pending, f flight, orphan *Pending) *attempt {
	a := newAttempt(rec.ID, p)
	a.gen = rec.Generation
	a.prev, a.caller = rec, f.caller
	s := b.slotFor(rec.ID)
	s.attempt.Store(a)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		keep := b.keepAlive(lease)
		a.keep = keep
		ctx, span := b.span(b.carry(f.trace), "refresh", rec.ID, rec.Generation)
		b.noticeRevocation(rec) // revoke.go: the old token's holders stop using it first
		next, ev := b.send(ctx, rec, p, f, orphan)
		close(a.answered)
		a.rec, a.err = b.finish(ctx, a, next, &ev)
		span.End(ev.Outcome, ev.Generation, a.err)
		keep.stop()
		s.attempt.CompareAndSwap(a, nil)
		close(a.done)
	}()
	return a
}

// resume stores the outcome a previous run of this replica journaled.
func (b *Broker) resume(e JournalEntry) {
	a := newAttempt(e.Record.ID, e.Pending)
	a.gen = e.Record.Generation
	close(a.answered)
	s := b.slotFor(a.id)
	s.attempt.Store(a)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		ev := RefreshEvent{CredentialID: a.id, Reason: ReasonJournal, Outcome: OutcomeOK}
		a.rec, a.err = b.finish(b.bg, a, e.Record, &ev)
		s.attempt.CompareAndSwap(a, nil)
		close(a.done)
	}()
}

// send calls the IdP with rec's grant and returns the record to store:
// refreshed, backing off, or REAUTH_REQUIRED, and the event that reports it.
// A request whose answer was lost is sent again at once while the replay
// reaches the IdP within the credential's reuse grace. orphan is the
// pending refresh of a holder that died, when this one takes it over. bg is
// the Broker's own context (carrying the refresh's trace).
func (b *Broker) send(bg context.Context, rec *Record, p *Pending, f flight, orphan *Pending) (*Record, RefreshEvent) {
	req := exchangeRequest(rec)
	ev := RefreshEvent{CredentialID: rec.ID, Caller: f.caller, Reason: f.reason}
	var lost time.Time // when the answer to a request sent was first lost
	for replays := 0; ; replays++ {
		release, err := b.pace(bg, rec, f)
		f.turn = nil // used up by the first call
		if err != nil {
			return nil, ev // the Broker gave up at Close while waiting for the IdP's turn
		}
		ctx, cancel := context.WithTimeout(bg, b.cfg.RefreshReplyWait)
		ctx, span := b.span(ctx, "idp.token", rec.ID, rec.Generation)
		t0 := time.Now()
		tok, err := b.up.Exchange(ctx, req)
		span.End(exchangeOutcome(err), rec.Generation, err)
		cancel()
		release()
		ev.Duration = time.Since(t0)
		now := time.Now()
		next := rec.Clone()
		next.Pending = nil
		if f.forced {
			next.LastForcedAt = now
		}
		if err == nil {
			b.succeeded(next, tok, now)
			return next, ev
		}
		if b.bg.Err() != nil {
			return nil, ev // the Broker gave up at Close: nothing is known, nothing stored
		}
		class, retryAfter := classOf(err)
		if class == Unanswered && rec.GrantType == GrantClientCredentials {
			class = Transient // no refresh token at stake: a new request mints a new token
		}
		if class == Unanswered && lost.IsZero() {
			lost = t0
		}
		replay := !lost.IsZero() || orphan != nil
		if class != Permanent && !lost.IsZero() && replays < maxReplays && withinGrace(rec, p, now.Add(replayPause)) {
			// Within the grace the IdP answers a replay of the refresh
			// token with the successor (Dex) or a new pair (Okta).
			b.obs.Refreshed(RefreshEvent{CredentialID: rec.ID, Caller: f.caller, Reason: f.reason,
				Outcome: OutcomeUnknown, Generation: rec.Generation, Duration: ev.Duration, Err: err})
			if !sleepCtx(b.bg, replayPause) {
				return nil, ev
			}
			continue
		}
		ev.Err = err
		switch {
		case class == Permanent && replay:
			why := fmt.Sprintf("the answer to the refresh sent at %s was lost", lost.UTC().Format(time.RFC3339))
			if orphan != nil {
				why = fmt.Sprintf("replica %s died mid-refresh at %s", orphan.Holder, orphan.SentAt.UTC().Format(time.RFC3339))
			}
			b.unknown(next, why+"; presenting the refresh token again was refused: "+err.Error(), now)
			ev.Outcome = OutcomeUnknown
		case class == Permanent:
			b.dead(next, err, now)
			ev.Outcome = OutcomePermanent
		case !lost.IsZero():
			b.unknown(next, fmt.Sprintf("the IdP may have rotated the refresh token; the answer to the refresh sent at %s was lost: %v",
				lost.UTC().Format(time.RFC3339), err), now)
			ev.Outcome = OutcomeUnknown
		default:
			b.backOff(next, err, retryAfter, now)
			b.holdHost(rec, retryAfter) // the host asked every credential to wait
			ev.Outcome = OutcomeTransient
		}
		return next, ev
	}
}

// A lost answer is replayed at most maxReplays times, replayPause apart.
const (
	maxReplays  = 5
	replayPause = 100 * time.Millisecond
)

// withinGrace says whether the refresh token of rec, whose refresh p
// announced, may be presented again at now: while the replay reaches the IdP
// within the credential's reuse grace counted from when p was sent.
func withinGrace(rec *Record, p *Pending, now time.Time) bool {
	g := rec.ReuseGrace
	return g > 0 && now.Add(graceMargin(g)).Before(p.SentAt.Add(g))
}

// succeeded makes next the record of a refresh the IdP answered with tok.
func (b *Broker) succeeded(next *Record, tok *UpstreamToken, now time.Time) {
	next.Token = Token{AccessToken: tok.AccessToken, TokenType: tok.TokenType, Expiry: tok.Expiry, IssuedAt: now}
	if next.Token.Expiry.IsZero() {
		next.Token.Expiry = now.Add(b.cfg.DefaultLifetime)
	}
	if tok.RefreshToken != "" { // RFC 6749 section 6: none sent means keep the old one
		next.RefreshToken = tok.RefreshToken
	}
	next.LastRefreshAt = now
	next.LastError, next.LastErrorAt = "", time.Time{}
	next.Failures, next.NextAttemptAt = 0, time.Time{}
	next.OutcomeUnknown = false
}

// dead moves next to REAUTH_REQUIRED on the IdP's verdict cause.
func (b *Broker) dead(next *Record, cause error, now time.Time) {
	next.State = StateReauthRequired
	next.Token = Token{}
	next.LastError, next.LastErrorAt = cause.Error(), now
	next.Failures, next.NextAttemptAt = 0, time.Time{}
}

// unknown moves next to REAUTH_REQUIRED because a refresh's outcome is
// unknown: the IdP may have rotated the refresh token.
func (b *Broker) unknown(next *Record, why string, now time.Time) {
	next.State = StateReauthRequired
	next.OutcomeUnknown = true
	next.Token = Token{}
	next.LastError, next.LastErrorAt = "refresh outcome unknown: "+why, now
	next.Failures, next.NextAttemptAt = 0, time.Time{}
}

// backOff keeps next's refresh token and holds further IdP calls off.
func (b *Broker) backOff(next *Record, cause error, retryAfter time.Duration, now time.Time) {
	next.LastError, next.LastErrorAt = cause.Error(), now
	next.Failures++
	next.NextAttemptAt = now.Add(b.cfg.backoff(next.Failures, retryAfter))
}

// finish journals next and settles it, then reports ev (updated with the
// outcome). It returns the record as stored, or the caller's error for the
// outcome: a failure is reported as such even when its record was stored.
// bg is the Broker's own context (carrying the refresh's trace).
func (b *Broker) finish(bg context.Context, a *attempt, next *Record, ev *RefreshEvent) (*Record, error) {
	if next == nil { // the Broker gave up while replaying
		ev.Outcome, ev.Err = OutcomeLost, errGaveUp
		b.obs.Refreshed(*ev)
		return nil, &Error{Kind: ErrShuttingDown, CredentialID: a.id}
	}
	journaled := false
	if j := b.cfg.Journal; j != nil {
		if err := j.Save(b.bg, a.p, next); err != nil {
			// Stored all the same, without the protection of the journal.
			ev.Err = errors.Join(ev.Err, fmt.Errorf("journal: %w", err))
		} else {
			journaled = true
		}
	}
	stored, err := b.settle(bg, a, next, journaled)
	if journaled && !errors.Is(err, errGaveUp) {
		_ = b.cfg.Journal.Remove(b.bg, a.p)
	}
	ev.Generation = next.Generation
	if err != nil {
		if ev.Outcome == OutcomeOK || ev.Outcome == "" {
			ev.Outcome = OutcomeLost
		}
		ev.Err = errors.Join(ev.Err, err)
		b.obs.Refreshed(*ev)
		if errors.Is(err, errSuperseded) {
			return nil, &Error{Kind: ErrLockTimeout, CredentialID: a.id, Err: err, RetryAfter: b.cfg.PollInterval,
				Detail: "the credential changed while refreshing; the refresh was discarded"}
		}
		return nil, &Error{Kind: ErrStoreUnavailable, CredentialID: a.id, Err: err}
	}
	ev.Generation = stored.Generation
	if ev.Outcome == "" {
		ev.Outcome = OutcomeOK
	}
	b.obs.Refreshed(*ev)
	switch {
	case stored.State == StateReauthRequired:
		return nil, reauthErr(stored)
	case ev.Outcome == OutcomeTransient:
		return nil, &Error{Kind: ErrIdPUnavailable, CredentialID: a.id, Err: ev.Err, Detail: stored.LastError,
			RetryAfter: time.Until(stored.NextAttemptAt)}
	}
	return stored, nil
}

var (
	// errSuperseded: the record moved on before an outcome could be stored.
	errSuperseded = errors.New("broker: the record moved on; the outcome was not stored")
	// errGaveUp: Close gave up on an outcome it could not store in time.
	errGaveUp = errors.New("broker: closed before the outcome could be stored")
)

// settle stores next, the outcome of a's refresh, fenced on its generation
// and marker. It retries a Store that fails until the write lands or the
// fence proves that the record moved on; a write that landed but whose
// reply was lost is recognised. It gives up only when the Broker closes: at
// once if the outcome is journaled, else after Close's wait. bg is the
// Broker's own context (carrying the refresh's trace).
func (b *Broker) settle(bg context.Context, a *attempt, next *Record, journaled bool) (*Record, error) {
	delay := 20 * time.Millisecond
	for {
		m := b.mark(next.ID)
		sctx, span := b.span(bg, "store.settle", next.ID, next.Generation)
		gen, err := b.store.Settle(sctx, a.p, next)
		span.End(writeOutcome(err), gen, err)
		if err == nil {
			b.slotFor(next.ID).settled.Store(&settled{p: a.p, rec: next, at: time.Now()})
			stored := next.Clone()
			stored.Generation = gen
			b.fill(stored, m)
			if a.prev != nil {
				b.changed("", a.prev, stored, a.caller, "") // events.go
			}
			return stored, nil
		}
		if errors.Is(err, ErrConflict) {
			cur, gerr := b.store.Get(bg, next.ID)
			switch {
			case gerr == nil && landed(cur, next):
				b.fill(cur, m)
				return cur, nil
			case gerr == nil && cur.State == next.State && (cur.Generation < next.Generation ||
				cur.Generation == next.Generation && cur.Pending == nil):
				// The Store went back below the generation this refresh
				// read, or lost its marker (a failover lost writes, perhaps
				// this one's own, written but not acknowledged): nobody
				// moved on (a Commit would have made a newer generation, a
				// takeover left its own marker), the outcome in hand is the
				// newest, and it is written back.
				if stored, werr := b.writeBack(bg, a.keep.lease(), next); werr == nil {
					b.slotFor(next.ID).settled.Store(&settled{p: a.p, rec: next, at: time.Now()})
					return stored, nil
				} else {
					err = werr
				}
			case gerr == nil, errors.Is(gerr, ErrNotFound):
				return nil, errSuperseded
			default:
				err = gerr
			}
		}
		a.stall(err)
		if !b.pause(delay, journaled) {
			return nil, errGaveUp
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// writeBack stores next over an older generation the Store went back to,
// under the credential's lease (the marker that fenced next's Settle is
// gone with the lost writes): held, the one the attempt's keeper holds,
// else one taken for it.
func (b *Broker) writeBack(ctx context.Context, held Lease, next *Record) (*Record, error) {
	lctx, cancel := context.WithTimeout(ctx, b.cfg.LockWait)
	defer cancel()
	lease := held
	if lease == nil {
		var err error
		if lease, err = b.acquire(lctx, next.ID, nil); err != nil {
			return nil, err
		}
		defer b.release(lctx, lease)
	}
	fresh, err := b.store.Get(lctx, next.ID)
	if err != nil {
		return nil, err
	}
	if fresh.Generation > next.Generation || fresh.Generation == next.Generation && fresh.Pending != nil ||
		fresh.State != next.State {
		return nil, ErrConflict // moved on meanwhile: settle looks again
	}
	w := next.Clone()
	w.Generation = fresh.Generation
	m := b.mark(next.ID)
	gen, err := b.store.Commit(lctx, lease, w)
	if err != nil {
		return nil, err
	}
	w.Generation = gen
	b.fill(w, m)
	return w, nil
}

// landed says whether cur is next as stored by a Settle whose reply was lost.
func landed(cur, next *Record) bool {
	return cur.Generation == next.Generation+1 && cur.Pending == nil &&
		cur.RefreshToken == next.RefreshToken && cur.Token == next.Token && cur.State == next.State
}

// pause waits d between two tries of a write, or returns false when the
// Broker gives up: at Close if the outcome is journaled, else at the end of
// Close's wait.
func (b *Broker) pause(d time.Duration, journaled bool) bool {
	closing := b.closing
	if !journaled {
		closing = nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-closing:
		return false
	case <-b.bg.Done():
		return false
	}
}

// sleepCtx waits d, or returns false when ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// keeper keeps a lease alive for an attempt, and takes it again if it was
// lost (a Store outage longer than the TTL), so that other holders keep
// waiting rather than reading the pending marker.
type keeper struct {
	quit chan struct{}
	done chan struct{}

	mu  sync.Mutex // guards cur
	cur Lease
}

// lease returns the lease the keeper holds, or nil if it may be lost.
func (k *keeper) lease() Lease {
	if k == nil {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if time.Until(k.cur.Deadline()) <= 0 {
		return nil
	}
	return k.cur
}

func (b *Broker) keepAlive(lease Lease) *keeper {
	k := &keeper{quit: make(chan struct{}), done: make(chan struct{}), cur: lease}
	go func() {
		defer close(k.done)
		cur := lease
		defer func() { b.release(b.bg, cur) }()
		tick := time.NewTicker(max(b.cfg.LockTTL/3, time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-k.quit:
				return
			case <-b.bg.Done():
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(b.bg, b.cfg.LockTTL/3)
			err := cur.Extend(ctx, b.cfg.LockTTL)
			if errors.Is(err, ErrLockLost) {
				if l, err := b.store.TryLock(ctx, cur.ID(), b.cfg.LockTTL); err == nil {
					cur = l
					k.mu.Lock()
					k.cur = l
					k.mu.Unlock()
				}
			}
			cancel()
		}
	}()
	return k
}

// stop ends the keeping and releases the lease.
func (k *keeper) stop() {
	close(k.quit)
	<-k.done
}

func exchangeRequest(rec *Record) UpstreamRequest {
	r := UpstreamRequest{
		TokenURL:      rec.TokenURL,
		ClientID:      rec.ClientID,
		ClientSecrets: rec.ClientSecrets,
		AuthStyle:     rec.AuthStyle,
		GrantType:     rec.GrantType,
		Scopes:        rec.Scopes,
		RefreshToken:  rec.RefreshToken,
	}
	if rec.GrantType == GrantClientCredentials {
		r.RefreshToken = ""
	}
	return r
}

// storeErr turns a Store failure into the caller's error.
func storeErr(id string, err error) error {
	var be *Error
	switch {
	case errors.As(err, &be):
		return err
	case errors.Is(err, ErrNotFound):
		return &Error{Kind: ErrNotFound, CredentialID: id}
	case errors.Is(err, ErrUnreadable):
		return &Error{Kind: ErrUnreadable, CredentialID: id, Err: err, Detail: err.Error()}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &Error{Kind: ErrStoreUnavailable, CredentialID: id, Err: err, Detail: "store did not answer in time", RetryAfter: time.Second}
	}
	return &Error{Kind: ErrStoreUnavailable, CredentialID: id, Err: err, RetryAfter: time.Second}
}

// acquire waits for a credential's lease, up to Config.LockWait, woken by
// the Store's events (PollInterval is only the fallback). While another
// holder has it, settle (if not nil) is asked between attempts whether
// waiting is still needed; when it says done, acquire returns its error and
// no lease. An ended ctx returns ctx's error.
func (b *Broker) acquire(ctx context.Context, id string, settle func() (done bool, err error)) (Lease, error) {
	wake, stop := b.watch(id) // before settle's first read: no wake-up is lost
	defer stop()
	deadline := time.Now().Add(b.cfg.LockWait)
	timer := time.NewTimer(b.cfg.PollInterval)
	defer timer.Stop()
	for {
		lease, err := b.store.TryLock(ctx, id, b.cfg.LockTTL)
		if err == nil {
			return lease, nil
		}
		if !errors.Is(err, ErrLockHeld) {
			return nil, storeErr(id, err)
		}
		if settle != nil {
			if done, err := settle(); done || err != nil {
				return nil, err
			}
		}
		wait := min(b.cfg.PollInterval, time.Until(deadline))
		if wait <= 0 {
			return nil, &Error{Kind: ErrLockTimeout, CredentialID: id, RetryAfter: b.cfg.PollInterval}
		}
		timer.Reset(wait)
		select {
		case <-wake:
		case <-timer.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// release gives a lease up, even when ctx has ended, within a second.
func (b *Broker) release(ctx context.Context, lease Lease) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	_ = lease.Release(rctx)
	cancel()
}
