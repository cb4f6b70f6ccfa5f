package broker

import (
	"context"
	"errors"
	"time"
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
	if s, e := b.lookup(id); e != nil {
		if !b.mayRead(caller, e.allowed) {
			return Token{}, &Error{Kind: ErrPermissionDenied, CredentialID: id}
		}
		if e.resets != b.resets.Load() && !e.revokes { // a revoking one is read in getRotating
			b.verify(id, e) // events may have been missed since it was read
		}
		if e.state == StateReauthRequired {
			return Token{}, e.reauthErr(id)
		}
		now := time.Now()
		s.touch(now)
		if m, err := b.minValid(id, minValid, &e.token); err != nil {
			return Token{}, err
		} else if e.token.Valid(now, m) {
			if e.revokes && !b.servable(s, e) {
				return b.getRotating(ctx, caller, id, e, minValid) // revoke.go
			}
			if !now.Before(e.aheadAt) && e.triggered.CompareAndSwap(false, true) {
				b.refreshAhead(id, e.token.Expiry)
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
// refreshed, unless a forced refresh ran less than Config.ForceInterval ago:
// then the current token, the rejected one, is returned as it is, and the
// caller knows that nothing newer exists. Otherwise the current token is
// returned if it stays valid for minValid.
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
	if s, e := b.lookup(id); e != nil && e.state == StateActive && !sameToken(e.token.AccessToken, rejected) && (!e.revokes || b.servable(s, e)) {
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
		cur := rec
		rec, err = b.refresh(ctx, "inv\x00"+id+"\x00"+rejected, flight{
			id:     id,
			caller: caller.Name(),
			reason: ReasonInvalidated,
			forced: true,
			need:   func(r *Record, _ time.Time) bool { return sameToken(r.Token.AccessToken, rejected) },
		})
		if errors.Is(err, ErrRateLimited) {
			// Forced refreshes of the credential came too fast: the
			// current token, still the rejected one, is the answer, and
			// the caller knows nothing newer exists.
			return b.fresh(ctx, caller, cur, minValid, false)
		}
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
	rec, err := b.read(ctx, id)
	if err != nil {
		// A missing record, and one whose allowed clients cannot be read,
		// look forbidden to all but admins: a caller cannot learn that a
		// credential exists.
		if (errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnreadable)) && !b.mayAdmin(caller) {
			return nil, &Error{Kind: ErrPermissionDenied, CredentialID: id}
		}
		return nil, storeErr(id, err)
	}
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
		if rec.RevokesPreviousAccessToken && rec.State == StateActive && b.rotatingRec(rec) {
			// Its IdP revokes the token being refreshed: wait for the
			// successor (revoke.go).
			next, err := b.afterRotation(ctx, caller, rec.ID, minValid)
			if err != nil {
				return Token{}, err
			}
			rec, refreshed = next, true
		}
		if rec.State == StateReauthRequired {
			return Token{}, reauthErr(rec)
		}
		m, err := b.minValid(rec.ID, minValid, &rec.Token)
		if err != nil {
			return Token{}, err
		}
		now := time.Now()
		if rec.Token.Valid(now, m) {
			if !now.Before(b.aheadAt(rec)) {
				b.refreshAhead(rec.ID, rec.Token.Expiry)
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
		caller: caller.Name(),
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
