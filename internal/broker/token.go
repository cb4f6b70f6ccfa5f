package broker

import (
	"context"
	"errors"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// GetToken returns an access token of the credential that stays valid for
// at least minValid (0: the default). A cached token is returned when it is
// fresh enough; otherwise the credential is refreshed, once however many
// callers ask at the same time on however many Brokers.
func (b *Broker) GetToken(ctx context.Context, id string, minValid time.Duration) (Token, error) {
	if err := ValidateID("credential_id", id); err != nil {
		return Token{}, err
	}
	if err := validateDuration("min_valid", minValid); err != nil {
		return Token{}, err
	}
	caller, _ := CallerFrom(ctx)
	if e := b.lookup(id); e != nil {
		if !b.mayRead(caller, e.allowed) {
			return Token{}, &Error{Kind: ErrPermissionDenied, CredentialID: id}
		}
		if e.state == StateReauthRequired {
			return Token{}, &Error{Kind: ErrReauthRequired, CredentialID: id, Detail: e.lastError}
		}
		now := time.Now()
		if m, err := b.minValid(id, minValid, &e.token); err != nil {
			return Token{}, err
		} else if e.token.Valid(now, m) {
			if !now.Before(e.aheadAt) && e.triggered.CompareAndSwap(false, true) {
				b.refreshAhead(id)
			}
			b.obs.TokenServed(FromCache)
			return e.token, nil
		}
		// The cached token is stale: join the refresh at once. The flight
		// reads the Store itself, so a storm of callers costs one read, not
		// one each.
		rec, err := b.refresh(ctx, id, b.expired(id, caller, minValid))
		if err != nil {
			return Token{}, err
		}
		if !b.mayRead(caller, rec.AllowedClients) {
			return Token{}, &Error{Kind: ErrPermissionDenied, CredentialID: id}
		}
		return b.fresh(ctx, caller, rec, minValid, true)
	}
	rec, err := b.load(ctx, caller, id)
	if err != nil {
		return Token{}, err
	}
	return b.fresh(ctx, caller, rec, minValid, false)
}

// InvalidateToken reports that rejected was refused by a resource server.
// If it is still the credential's current token, the credential is
// refreshed (rate-limited by Config.ForceInterval); in any case the current
// token is returned if it is not the rejected one and stays valid for
// minValid.
func (b *Broker) InvalidateToken(ctx context.Context, id, rejected string, minValid time.Duration) (Token, error) {
	if err := ValidateID("credential_id", id); err != nil {
		return Token{}, err
	}
	if err := validateToken("rejected_access_token", rejected, MaxAccessTokenLen, true); err != nil {
		return Token{}, err
	}
	if err := validateDuration("min_valid", minValid); err != nil {
		return Token{}, err
	}
	caller, _ := CallerFrom(ctx)
	if e := b.lookup(id); e != nil && e.state == StateActive && !sameToken(e.token.AccessToken, rejected) {
		// The rejected token is already replaced: no refresh, no Store call.
		if !b.mayRead(caller, e.allowed) {
			return Token{}, &Error{Kind: ErrPermissionDenied, CredentialID: id}
		}
		if m, err := b.minValid(id, minValid, &e.token); err == nil && e.token.Valid(time.Now(), m) {
			b.obs.TokenServed(FromCache)
			return e.token, nil
		}
	}
	rec, err := b.load(ctx, caller, id)
	if err != nil {
		return Token{}, err
	}
	refreshed := false
	if sameToken(rec.Token.AccessToken, rejected) {
		refreshed = true
		rec, err = b.refresh(ctx, "inv\x00"+id+"\x00"+rejected, flight{
			id:     id,
			caller: caller.ID,
			reason: ReasonInvalidated,
			forced: true,
			need:   func(r *Record, _ time.Time) bool { return sameToken(r.Token.AccessToken, rejected) },
		})
		if err != nil {
			return Token{}, err
		}
	}
	return b.fresh(ctx, caller, rec, minValid, refreshed)
}

// load reads a credential's record from the Store, caches it and checks
// that the caller may read it. A caller that may not read a credential
// cannot tell whether it exists.
func (b *Broker) load(ctx context.Context, caller Caller, id string) (*Record, error) {
	epoch := b.epoch(id)
	rec, err := b.store.Get(ctx, id)
	if err != nil {
		if errors.Is(err, ErrNotFound) && !b.mayAdmin(caller) {
			return nil, &Error{Kind: ErrPermissionDenied, CredentialID: id}
		}
		return nil, storeErr(id, err)
	}
	b.fill(rec, epoch)
	if !b.mayRead(caller, rec.AllowedClients) {
		return nil, &Error{Kind: ErrPermissionDenied, CredentialID: id}
	}
	return rec, nil
}

// fresh returns rec's token if it is valid for minValid, refreshing the
// credential until it is (at most twice: a token fresh from the IdP that
// still does not satisfy minValid means minValid is too long).
func (b *Broker) fresh(ctx context.Context, caller Caller, rec *Record, minValid time.Duration, refreshed bool) (Token, error) {
	for i := 0; ; i++ {
		if rec.State == StateReauthRequired {
			return Token{}, &Error{Kind: ErrReauthRequired, CredentialID: rec.ID, Detail: rec.LastError}
		}
		m, err := b.minValid(rec.ID, minValid, &rec.Token)
		if err != nil {
			return Token{}, err
		}
		now := time.Now()
		if rec.Token.Valid(now, m) {
			if !now.Before(b.aheadAt(rec)) {
				b.refreshAhead(rec.ID)
			}
			if i == 0 && !refreshed {
				b.obs.TokenServed(FromStore)
			} else {
				b.obs.TokenServed(FromRefresh)
			}
			return rec.Token, nil
		}
		if i == 2 {
			return Token{}, &Error{Kind: ErrMinValidTooLong, CredentialID: rec.ID,
				Detail: "the IdP's tokens do not stay valid that long"}
		}
		rec, err = b.refresh(ctx, rec.ID, b.expired(rec.ID, caller, minValid))
		if err != nil {
			return Token{}, err
		}
	}
}

// expired is the refresh of a credential whose token does not stay valid
// for the caller's minValid (nor, then, for the refresh-ahead window).
func (b *Broker) expired(id string, caller Caller, minValid time.Duration) flight {
	return flight{
		id:     id,
		caller: caller.ID,
		reason: ReasonExpired,
		// Judged on the record at hand: a token another replica just
		// fetched has its own lifetime, hence its own windows.
		need: func(r *Record, now time.Time) bool {
			m, err := b.minValid(r.ID, minValid, &r.Token)
			return err == nil && !r.Token.Valid(now, max(m, b.aheadWindow(r)))
		},
	}
}

// minValid is the validity a token must have for a caller that asked for
// requested (0: the default). The default is capped at a quarter of the
// token's lifetime; a request over half the lifetime fails, since it would
// cause a refresh on nearly every call.
func (b *Broker) minValid(id string, requested time.Duration, t *Token) (time.Duration, error) {
	lt := t.Lifetime()
	if requested == 0 {
		if lt > 0 && b.cfg.DefaultMinValid > lt/4 {
			return lt / 4, nil
		}
		return b.cfg.DefaultMinValid, nil
	}
	if lt > 0 && requested > lt/2 {
		return 0, &Error{Kind: ErrMinValidTooLong, CredentialID: id,
			Detail: "min_valid " + requested.String() + " is over half the token lifetime " + lt.Round(time.Millisecond).String()}
	}
	return requested, nil
}

// refreshAhead refreshes a credential in the background.
func (b *Broker) refreshAhead(id string) {
	if !b.enter() {
		return
	}
	go func() {
		defer b.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), b.cfg.LockWait+b.cfg.LockTTL)
		defer cancel()
		_, _ = b.refresh(ctx, id, flight{
			id:     id,
			reason: ReasonAhead,
			need: func(r *Record, now time.Time) bool {
				return !r.Token.Valid(now, b.aheadWindow(r))
			},
		})
	}()
}

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
	var ue *upstream.Error
	permanent := errors.As(cause, &ue) && ue.Class == upstream.Permanent
	var retryAfter time.Duration
	if ue != nil {
		retryAfter = ue.RetryAfter
	}
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

func exchangeRequest(rec *Record) upstream.Request {
	r := upstream.Request{
		TokenURL:      rec.TokenURL,
		ClientID:      rec.ClientID,
		ClientSecrets: rec.ClientSecrets,
		Scopes:        rec.Scopes,
		RefreshToken:  rec.RefreshToken,
	}
	if rec.AuthStyle == AuthStylePost {
		r.AuthStyle = upstream.AuthPost
	}
	if rec.GrantType == GrantClientCredentials {
		r.GrantType = upstream.GrantClientCredentials
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
