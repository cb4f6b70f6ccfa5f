package broker

import (
	"context"
	"errors"
	"time"
)

// Credentials whose IdP revokes the previous access token when it answers a
// refresh (Credential.RevokesPreviousAccessToken; Ory Hydra does): the old
// token dies the moment the IdP answers, seconds or minutes before its
// expiry. So from the moment a refresh of such a credential is announced
// until its outcome is stored, no replica hands the old token out:
//
//   - The holder writes the pending marker (Store.MarkPending), whose event
//     (Event.PendingFrom) tells every replica, and then waits
//     Config.RevokeNotice before it calls the IdP (noticeRevocation), so
//     that the other replicas, and WatchToken's clients, learn of it while
//     the old token still works, and requests already under way with it
//     reach their resource servers.
//   - A replica knows a refresh is under way from its own attempt
//     (attempt.gen), from the event (slot.pendingFrom), or from a record read
//     with its marker (entry.pending, Record.Pending). A caller whose token is
//     that one then waits for the outcome (afterRotation): it joins this
//     replica's attempt, or waits on the record, woken by the events, until
//     the marker is gone. Before the announcement the old token is handed
//     out as usual, min_valid permitting: the refresh has not been sent.
//   - After a Reset (events may have been missed) a cached entry of such a
//     credential is read again, once for all its callers, before its token
//     is handed out.
//
// Refresh-ahead still runs ahead of expiry, so callers wait only while a
// refresh is under way: Config.RevokeNotice plus one IdP round trip per
// refresh. Those waits are served as FromRefresh and reported to an Observer
// that is a RotationObserver.

// RotationObserver may be implemented by an Observer that wants to know how
// long callers of credentials that revoke the previous access token waited
// for a refresh whose old token they could not be given.
type RotationObserver interface {
	// RotationWaited is called once per such wait, successful or not.
	RotationWaited(d time.Duration)
}

// maxRotationRounds bounds how many refreshes in a row one caller waits for.
const maxRotationRounds = 3

// announced records that a refresh of a credential's record at generation
// gen was announced (Event.PendingFrom).
func (b *Broker) announced(id string, gen uint64) {
	b.mu.RLock()
	s := b.slots[id]
	b.mu.RUnlock()
	if s == nil {
		// A read of the credential under way may return the record as it
		// was before the marker: its entry is read again before use.
		b.announces.Add(1)
		return
	}
	for {
		cur := s.pendingFrom.Load()
		if gen <= cur || s.pendingFrom.CompareAndSwap(cur, gen) {
			return
		}
	}
}

// rotating reports whether a refresh of the record at generation gen was
// announced, by this Broker (its attempt) or by another (the event).
func (b *Broker) rotating(s *slot, gen uint64) bool {
	if p := s.pendingFrom.Load(); p != 0 && p >= gen {
		return true
	}
	a := s.attempt.Load()
	return a != nil && a.gen >= gen
}

// servable reports whether the cached entry e of a credential that revokes
// the previous access token may be handed out as it is: verified (read
// since the last Reset, and not unsure), and no refresh of its token
// announced.
func (b *Broker) servable(s *slot, e *entry) bool {
	return b.verified(e) && !e.pending && !b.rotating(s, e.gen)
}

// verified reports whether e was read since the last Reset and may not have
// missed the announcement of a refresh.
func (b *Broker) verified(e *entry) bool {
	return e.resets == b.resets.Load() && !e.unsure
}

// rotatingRec reports whether a refresh of rec's token is announced.
func (b *Broker) rotatingRec(rec *Record) bool {
	if rec.Pending != nil {
		return true
	}
	b.mu.RLock()
	s := b.slots[rec.ID]
	b.mu.RUnlock()
	return s != nil && b.rotating(s, rec.Generation)
}

// getRotating answers a GetToken whose cached entry e, of a credential that
// revokes the previous access token, may not be handed out as it is.
func (b *Broker) getRotating(ctx context.Context, caller Caller, id string, e *entry, minValid time.Duration) (Token, error) {
	if !b.verified(e) {
		// A caller that looked e up just before another's read replaced
		// it serves the fresh entry, without a read of its own.
		if s, cur := b.lookup(id); cur != nil && cur != e && b.servable(s, cur) && b.mayRead(caller, cur.allowed) {
			if m, err := b.minValid(id, minValid, &cur.token); err == nil && cur.token.Valid(time.Now(), m) {
				b.obs.TokenServed(FromCache)
				return cur.token, nil
			}
		}
		// Events may have been missed since e was read: read the record
		// again, once for every caller, before handing its token out.
		rec, err := b.readShared(ctx, id)
		if err != nil {
			return Token{}, b.readErr(caller, id, err)
		}
		if !b.mayRead(caller, rec.AllowedClients) {
			return Token{}, &Error{Kind: ErrPermissionDenied, CredentialID: id}
		}
		return b.fresh(ctx, caller, rec, minValid, false)
	}
	rec, err := b.afterRotation(ctx, caller, id, minValid)
	if err != nil {
		return Token{}, err
	}
	return b.fresh(ctx, caller, rec, minValid, true)
}

// afterRotation waits until the refresh announced of a credential's token is
// over, and returns the record then stored (or, if the refresh failed
// without reaching the IdP's verdict, the record as it stands), which caller
// may read and whose token is not being refreshed.
func (b *Broker) afterRotation(ctx context.Context, caller Caller, id string, minValid time.Duration) (*Record, error) {
	start := time.Now()
	defer func() {
		if o, ok := b.obs.(RotationObserver); ok {
			o.RotationWaited(time.Since(start))
		}
	}()
	for round := 1; ; round++ {
		rec, err := b.rotation(ctx, caller, id, minValid)
		if err != nil {
			return nil, err
		}
		if !b.mayRead(caller, rec.AllowedClients) {
			return nil, &Error{Kind: ErrPermissionDenied, CredentialID: id}
		}
		if rec.State == StateReauthRequired || !rec.RevokesPreviousAccessToken || !b.rotatingRec(rec) {
			return rec, nil
		}
		if round == maxRotationRounds {
			return nil, &Error{Kind: ErrLockTimeout, CredentialID: id, RetryAfter: b.cfg.PollInterval,
				Detail: "the credential's token keeps being refreshed"}
		}
	}
}

// rotation waits for one refresh under way: this Broker's attempt, or
// another holder's, on the record.
func (b *Broker) rotation(ctx context.Context, caller Caller, id string, minValid time.Duration) (*Record, error) {
	if a := b.attemptOf(id); a != nil {
		rec, err := a.await(ctx, b.cfg)
		if err == nil {
			return rec, nil
		}
		if ctx.Err() != nil || b.attemptOf(id) == a {
			return nil, err // still under way: err says what it waits for
		}
		// It is over and failed: what is stored says whether the old
		// token stands (an IdP that failed did not revoke it).
	}
	// Another holder's refresh: wait, woken by the Store's events, until the
	// record no longer carries its marker; refresh only a token that no
	// longer satisfies minValid (or take over a marker past its bound, as
	// any flight does).
	return b.refresh(ctx, "rot\x00"+id, flight{
		id:     id,
		caller: caller.ID,
		reason: ReasonExpired,
		need: func(r *Record, now time.Time) bool {
			if r.Pending != nil {
				return true
			}
			m, err := b.minValid(r.ID, minValid, &r.Token)
			return err == nil && !r.Token.Valid(now, m)
		},
	})
}

// noticeRevocation waits Config.RevokeNotice before a refresh of rec is
// sent, if its IdP revokes the previous access token and that token still
// works.
func (b *Broker) noticeRevocation(rec *Record) {
	if rec.RevokesPreviousAccessToken && rec.Token.Valid(time.Now(), 0) {
		sleepCtx(b.bg, b.cfg.RevokeNotice)
	}
}

// readShared reads a credential's record and caches it, one read at a time
// per credential in this process: callers arriving while one is under way
// share its answer. The record must not be modified. Its errors are the
// Store's.
func (b *Broker) readShared(ctx context.Context, id string) (*Record, error) {
	ch := b.flights.DoChan("read\x00"+id, func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.LockWait)
		defer cancel()
		return b.read(rctx, id)
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

// readErr is the caller's error for a failed read of a credential, as load
// reports it: a missing or unreadable record looks forbidden to all but
// admins.
func (b *Broker) readErr(caller Caller, id string, err error) error {
	if (errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnreadable)) && !b.mayAdmin(caller) {
		return &Error{Kind: ErrPermissionDenied, CredentialID: id}
	}
	return storeErr(id, err)
}
