package broker

import (
	"context"
	"errors"
	"strconv"
	"time"
)

// Changes: every change of a credential's state, made by any replica, goes
// into the Store's change log (Store.AppendChange), which numbers it and
// publishes an Event with Change set; every Broker hears of it in onEvent and
// wakes its watchers (WatchChanges), which read the log after the last
// change they sent. The log keeps the last MaxChanges; a watcher that
// resumes after a change no longer kept fails (ErrInvalidArgument, field
// resume_token) rather than miss some silently.
//
// A change is appended right after the write it describes, by the replica
// that made it, while it still holds the credential's lease when the write
// needed one (so a credential's changes are in the log in the order they
// were made); one the Store does not take at once is retried in the
// background. A replica that dies between the write and the append loses
// the change, not the write.

// ChangeKind is what a Change says happened.
type ChangeKind string

// Kinds of changes.
const (
	ChangeCreated                ChangeKind = "CREATED"
	ChangeDeleted                ChangeKind = "DELETED"
	ChangeReauthRequired         ChangeKind = "REAUTH_REQUIRED"
	ChangeBackingOff             ChangeKind = "BACKING_OFF"
	ChangeRecovered              ChangeKind = "RECOVERED"
	ChangeAuthorizationStarted   ChangeKind = "AUTHORIZATION_STARTED"
	ChangeAuthorized             ChangeKind = "AUTHORIZED"
	ChangeAuthorizationAbandoned ChangeKind = "AUTHORIZATION_ABANDONED"
	ChangeReseeded               ChangeKind = "RESEEDED"
)

// Change is one entry of the change log. It holds no secret.
type Change struct {
	// Seq is the change's number in the log, set by the Store: the resume
	// token of WatchChanges.
	Seq          uint64     `json:"-"`
	CredentialID string     `json:"credential_id"`
	Kind         ChangeKind `json:"kind"`
	State        State      `json:"state,omitempty"`      // as shown afterwards (Record.ViewState); 0 when deleted
	PrevState    State      `json:"prev_state,omitempty"` // as shown before; 0 when created
	// OutcomeUnknown, with ChangeReauthRequired: no IdP verdict, a refresh's
	// outcome is unknown (Record.OutcomeUnknown).
	OutcomeUnknown bool      `json:"outcome_unknown,omitempty"`
	Detail         string    `json:"detail,omitempty"` // what happened, in words
	Generation     uint64    `json:"generation,omitempty"`
	Time           time.Time `json:"time"`
	Actor          string    `json:"actor,omitempty"` // the caller that caused it, if one did
	Replica        string    `json:"replica,omitempty"`
}

// MaxChanges is how many changes the Store's log keeps at least.
const MaxChanges = 10000

// ErrChangesGone is the Store's answer to a read after a change its log no
// longer keeps (or never had).
var ErrChangesGone = errors.New("broker: the changes after the resume point are no longer kept")

// changeQueue is how many changes a Broker keeps waiting to be appended
// while the Store does not answer; beyond it, new changes are dropped.
const changeQueue = 4096

// changed reports a change of a credential from prev (nil: created) to next
// (nil: deleted) by actor. kind "" infers it from the records: a move to
// REAUTH_REQUIRED, the first of a row of failures (BACKING_OFF), a success
// after failures (RECOVERED); a write that is none of these is no change.
func (b *Broker) changed(kind ChangeKind, prev, next *Record, actor, detail string) {
	now := time.Now()
	c := &Change{Kind: kind, Actor: actor, Detail: detail, Time: now, Replica: b.cfg.ReplicaID}
	if prev != nil {
		c.CredentialID, c.PrevState = prev.ID, prev.ViewState(now)
	}
	if next != nil {
		c.CredentialID, c.State, c.Generation = next.ID, next.ViewState(now), next.Generation
		c.OutcomeUnknown = next.State == StateReauthRequired && next.OutcomeUnknown
	}
	if kind == "" {
		if prev == nil || next == nil {
			return
		}
		switch {
		case next.State == StateReauthRequired && prev.State != StateReauthRequired:
			c.Kind = ChangeReauthRequired
		case prev.Failures == 0 && next.Failures > 0:
			c.Kind = ChangeBackingOff
		case prev.Failures > 0 && next.Failures == 0 && next.State == StateActive:
			c.Kind = ChangeRecovered
		default:
			return
		}
		if c.Detail == "" {
			c.Detail = next.LastError
		}
	}
	b.queueChange(c)
}

// queueChange appends c at once, so that the changes of a credential made
// under its lease are appended in order, before the lease goes. If the
// Store does not take it, c goes to the Broker's appender (started if need
// be), which retries in the background.
func (b *Broker) queueChange(c *Change) {
	ctx, cancel := context.WithTimeout(b.bg, 2*time.Second)
	_, err := b.store.AppendChange(ctx, c)
	cancel()
	if err == nil {
		return
	}
	f := &b.flows
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.changes == nil {
		if !b.enter() {
			return
		}
		f.changes = make(chan *Change, changeQueue)
		go b.appendChanges(f.changes)
	}
	select {
	case f.changes <- c:
	default: // the Store has not answered for thousands of changes
	}
}

// appendChanges appends the queued changes in order, each retried until
// the Store takes it or the Broker gives up (at Close, once the queue is
// empty or after Close's wait).
func (b *Broker) appendChanges(ch chan *Change) {
	defer b.wg.Done()
	for {
		var c *Change
		select {
		case c = <-ch:
		case <-b.closing:
			select {
			case c = <-ch:
			default:
				return
			}
		}
		delay := 20 * time.Millisecond
		for {
			ctx, cancel := context.WithTimeout(b.bg, 5*time.Second)
			_, err := b.store.AppendChange(ctx, c)
			cancel()
			if err == nil || !sleepCtx(b.bg, delay) {
				break
			}
			delay = min(2*delay, 2*time.Second)
		}
	}
}

// watchWake registers for a wake-up whenever a change is appended (or
// events may have been missed); call stop when done.
func (b *Broker) watchWake() (wake <-chan struct{}, stop func()) {
	ch := make(chan struct{}, 1)
	f := &b.flows
	f.mu.Lock()
	if f.watchers == nil {
		f.watchers = make(map[chan struct{}]struct{})
	}
	f.watchers[ch] = struct{}{}
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		delete(f.watchers, ch)
		f.mu.Unlock()
	}
}

// wakeWatchers wakes every WatchChanges of this Broker.
func (b *Broker) wakeWatchers() {
	f := &b.flows
	f.mu.Lock()
	for ch := range f.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	f.mu.Unlock()
}

// watchPoll is how often a watcher reads the log when no event woke it.
const watchPoll = 2 * time.Second

// ParseResumeToken checks a resume token (a Change.Seq in decimal).
func ParseResumeToken(field, token string) (uint64, error) {
	n, err := strconv.ParseUint(token, 10, 64)
	if err != nil || len(token) > 20 {
		return 0, invalidArg(field, "not a resume token of this broker")
	}
	return n, nil
}

// ResumeToken is the token that resumes a watch after c.
func (c *Change) ResumeToken() string { return strconv.FormatUint(c.Seq, 10) }

// WatchChanges calls fn with every change of any credential, made by any
// replica, after the one resume names ("": from now on), in the log's
// order, until ctx ends (it returns ctx's error) or fn fails (its error).
// A resume point the log no longer keeps is ErrInvalidArgument (field
// resume_token); a Store that does not answer ends the watch with
// ErrStoreUnavailable, to be resumed.
//
// ready, if not nil, is called once the watch's starting point is fixed:
// every change appended after that is sent.
func (b *Broker) WatchChanges(ctx context.Context, resume string, ready func(), fn func(*Change) error) error {
	if err := b.admin(ctx); err != nil {
		return err
	}
	var after uint64
	if resume != "" {
		n, err := ParseResumeToken("resume_token", resume)
		if err != nil {
			return err
		}
		after = n
	}
	wake, stop := b.watchWake() // before the first read: no wake-up is lost
	defer stop()
	if resume == "" {
		n, err := b.store.LastChange(ctx)
		if err != nil {
			return storeErr("", err)
		}
		after = n
	}
	if ready != nil {
		ready()
	}
	timer := time.NewTimer(watchPoll)
	defer timer.Stop()
	for {
		chs, err := b.store.ReadChanges(ctx, after, 100)
		if errors.Is(err, ErrChangesGone) {
			return invalidArg("resume_token", "the changes after it are no longer kept (the broker keeps the last %d): start a new watch, and list the credentials to catch up", MaxChanges)
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return storeErr("", err)
		}
		for _, c := range chs {
			if err := fn(c); err != nil {
				return err
			}
			after = c.Seq
		}
		if len(chs) == 100 {
			continue
		}
		timer.Reset(watchPoll)
		select {
		case <-wake:
		case <-timer.C:
		case <-b.closing:
			return &Error{Kind: ErrShuttingDown}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
