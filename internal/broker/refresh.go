package broker

import (
	"context"
	"errors"
	"time"
)

// flight describes one refresh: which credential, why, and the test that
// says, on the freshest record, whether the IdP must still be called.
type flight struct {
	id     string
	caller string
	reason string
	forced bool // rate-limited by Config.ForceInterval
	need   func(r *Record, now time.Time) bool
}

// refresh runs f once per key at a time in this process; callers with the
// same key share the outcome. The refresh runs on its own context, so a
// caller that goes away does not cut it short; the returned record must not
// be modified.
func (b *Broker) refresh(ctx context.Context, key string, f flight) (*Record, error) {
	ch := b.flights.DoChan(key, func() (any, error) {
		if !b.enter() {
			return nil, &Error{Kind: ErrShuttingDown, CredentialID: f.id}
		}
		defer b.wg.Done()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.LockWait+b.cfg.LockTTL)
		defer cancel()
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
	}
}

// runFlight waits until the credential no longer needs a refresh or its
// lease is free, and refreshes it under the lease. Waiters are woken by the
// Store's events; PollInterval is only the fallback.
//
// A flight starts because its caller just saw a stale token, so it tries
// the lease before reading the Store: when the lease is free, that saves a
// round trip before the IdP call, and the record is read under the lease
// anyway.
func (b *Broker) runFlight(ctx context.Context, f flight) (*Record, error) {
	start := time.Now()
	var rec *Record
	lease, err := b.acquire(ctx, f.id, func() (bool, error) {
		epoch := b.epoch(f.id)
		r, err := b.store.Get(ctx, f.id)
		if err != nil {
			return true, storeErr(f.id, err)
		}
		b.fill(r, epoch)
		rec = r
		done, err := b.settled(r, f)
		if done || err != nil {
			b.obs.LockWaited(time.Since(start), false)
		}
		return done, err
	})
	var be *Error
	switch {
	case err != nil && !errors.As(err, &be): // the flight's own deadline ran out while waiting
		return nil, &Error{Kind: ErrLockTimeout, CredentialID: f.id, Err: err}
	case errors.Is(err, ErrLockTimeout):
		b.obs.LockWaited(time.Since(start), false)
		return nil, err
	case err != nil:
		return nil, err
	case lease == nil: // settled without the IdP
		return rec, nil
	}
	b.obs.LockWaited(time.Since(start), true)
	return b.refreshLocked(ctx, lease, f)
}

// settled says whether f is over on rec without calling the IdP: the record
// no longer needs it, or the IdP must not be called now.
func (b *Broker) settled(rec *Record, f flight) (bool, error) {
	if rec.State == StateReauthRequired {
		return true, &Error{Kind: ErrReauthRequired, CredentialID: rec.ID, Detail: rec.LastError}
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

// refreshLocked calls the IdP under lease and stores the outcome, fenced.
func (b *Broker) refreshLocked(ctx context.Context, lease Lease, f flight) (*Record, error) {
	defer b.release(ctx, lease)
	rec, err := b.store.Get(ctx, f.id) // the freshest record, read under the lease
	if err != nil {
		return nil, storeErr(f.id, err)
	}
	if done, err := b.settled(rec, f); done || err != nil {
		return rec, err
	}

	// Send only if the lease outlives the call: a holder that may have lost
	// its lease must not present the refresh token.
	callDeadline := time.Now().Add(b.cfg.RefreshTimeout)
	if ld := lease.Deadline(); ld.Before(callDeadline) {
		callDeadline = ld
	}
	if time.Until(callDeadline) < b.cfg.RefreshTimeout/4 {
		b.obs.Refreshed(RefreshEvent{CredentialID: f.id, Caller: f.caller, Reason: f.reason,
			Outcome: OutcomeAbandoned, Generation: rec.Generation, Err: ErrLockLost})
		return nil, &Error{Kind: ErrLockTimeout, CredentialID: f.id, Detail: "refresh lease too close to expiry; not sent"}
	}
	cctx, cancel := context.WithDeadline(ctx, callDeadline)
	t0 := time.Now()
	tok, err := b.up.Exchange(cctx, exchangeRequest(rec))
	cancel()
	took := time.Since(t0)
	now := time.Now()

	next := rec.Clone()
	if f.forced {
		next.LastForcedAt = now
	}
	ev := RefreshEvent{CredentialID: f.id, Caller: f.caller, Reason: f.reason, Duration: took}
	if err != nil {
		return nil, b.recordFailure(ctx, lease, next, ev, err, now)
	}
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

	epoch := b.epoch(f.id)
	gen, err := b.commit(ctx, lease, next)
	if err != nil {
		ev.Outcome, ev.Generation, ev.Err = OutcomeLost, rec.Generation, err
		b.obs.Refreshed(ev)
		return nil, err
	}
	next.Generation = gen
	b.fill(next, epoch)
	ev.Outcome, ev.Generation = OutcomeOK, gen
	b.obs.Refreshed(ev)
	return next, nil
}

// commit stores next under lease, fenced on next.Generation. The IdP has
// already rotated the refresh token, so losing next would strand the
// credential: a Store that is briefly unreachable is retried until the lease
// runs out, and a lease lost while the IdP answered is taken again if nobody
// else holds it (the generation fence still refuses a record that moved on).
func (b *Broker) commit(ctx context.Context, lease Lease, next *Record) (uint64, error) {
	delay := 20 * time.Millisecond
	for {
		gen, err := b.store.Commit(ctx, lease, next)
		switch {
		case err == nil:
			return gen, nil
		case errors.Is(err, ErrConflict):
			return 0, &Error{Kind: ErrLockTimeout, CredentialID: next.ID, Err: err,
				Detail: "the credential changed while refreshing; the refresh was discarded"}
		case errors.Is(err, ErrLockLost):
			l2, lerr := b.store.TryLock(ctx, next.ID, b.cfg.LockTTL)
			if lerr != nil {
				return 0, &Error{Kind: ErrLockTimeout, CredentialID: next.ID, Err: err,
					Detail: "refresh lease lost before the result was stored"}
			}
			gen, err = b.store.Commit(ctx, l2, next)
			b.release(ctx, l2)
			if err != nil {
				return 0, &Error{Kind: ErrLockTimeout, CredentialID: next.ID, Err: err,
					Detail: "refresh lease lost before the result was stored"}
			}
			return gen, nil
		}
		if time.Now().Add(delay).After(lease.Deadline()) || ctx.Err() != nil {
			return 0, storeErr(next.ID, err)
		}
		time.Sleep(delay)
		delay = min(2*delay, time.Second)
	}
}

// recordFailure stores what went wrong and returns the caller's error. A
// permanent verdict moves the credential to REAUTH_REQUIRED; anything else
// backs off and keeps the refresh token.
func (b *Broker) recordFailure(ctx context.Context, lease Lease, next *Record, ev RefreshEvent, cause error, now time.Time) error {
	class, retryAfter := classOf(cause)
	permanent := class == Permanent
	next.LastError, next.LastErrorAt = cause.Error(), now
	e := &Error{CredentialID: next.ID, Detail: next.LastError, Err: cause}
	if permanent {
		next.State = StateReauthRequired
		next.Token = Token{}
		next.Failures, next.NextAttemptAt = 0, time.Time{}
		e.Kind, ev.Outcome = ErrReauthRequired, OutcomePermanent
	} else {
		next.Failures++
		wait := b.cfg.backoff(next.Failures, retryAfter)
		next.NextAttemptAt = now.Add(wait)
		e.Kind, e.RetryAfter, ev.Outcome = ErrIdPUnavailable, wait, OutcomeTransient
	}
	ev.Err = cause
	ev.Generation = next.Generation
	epoch := b.epoch(next.ID)
	if gen, err := b.store.Commit(ctx, lease, next); err == nil {
		next.Generation = gen
		ev.Generation = gen
		b.fill(next, epoch)
	}
	b.obs.Refreshed(ev)
	return e
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
		return &Error{Kind: ErrStoreUnavailable, CredentialID: id, Err: err, Detail: "store did not answer in time"}
	}
	return &Error{Kind: ErrStoreUnavailable, CredentialID: id, Err: err}
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
