package broker

import (
	"context"
	"errors"
	"net/url"
	"time"
)

// The device authorization grant (RFC 8628). StartDeviceAuthorization asks
// the IdP for a device code and keeps it in the record (Record.Authorization,
// sealed with it), with the interval and the time of the next poll. Every
// replica that reads a record with a device flow open polls it (adopt), so
// the flow survives the replica that started it; the polls themselves are
// serialized by the credential's lease, and a poller polls only once the
// record's NextPollAt has come, writing the next one (and a longer interval
// after slow_down) before it lets the lease go. So the IdP sees one poll
// per interval whatever the number of replicas.

// Defaults of a device flow when the IdP does not say (RFC 8628 section
// 3.2: the interval defaults to 5 seconds; expires_in is required, so its
// default is only a bound).
const (
	defaultDeviceInterval = 5 * time.Second
	defaultDeviceTTL      = 10 * time.Minute
	slowDownStep          = 5 * time.Second // RFC 8628 section 3.5
	maxDeviceInterval     = time.Minute
	maxDeviceTTL          = time.Hour
	maxUserCodeLen        = 128
)

// StartDeviceAuthorization starts a device authorization flow on a
// credential with a DeviceAuthorizationURL, or returns the one open on it.
// The returned record's Authorization holds what the user needs (user code,
// verification URIs, expiry); the broker polls in the background and stores
// the grant once the user approves. scopes (empty: the credential's) are
// asked for, and become the credential's on success.
func (b *Broker) StartDeviceAuthorization(ctx context.Context, id string, scopes []string) (*Record, error) {
	if err := b.admin(ctx); err != nil {
		return nil, err
	}
	if err := ValidateID("id", id); err != nil {
		return nil, err
	}
	if err := validateScopeList("scopes", scopes); err != nil {
		return nil, err
	}
	authz, err := b.authorizer()
	if err != nil {
		return nil, err
	}
	caller, _ := CallerFrom(ctx)
	lease, err := b.acquire(ctx, id, nil)
	if err != nil {
		return nil, err
	}
	defer b.release(ctx, lease)
	cur, err := b.store.Get(ctx, id)
	if err != nil {
		return nil, storeErr(id, err)
	}
	now := time.Now()
	switch a := cur.Authorization; {
	case a != nil && a.Kind == FlowDevice && a.Open(now):
		b.adopt(cur)
		return cur, nil // the open one
	case cur.DeviceAuthorizationURL == "":
		return nil, &Error{Kind: ErrInvalidArgument, Field: "credential.device_authorization_url", CredentialID: id,
			Detail: "the credential has none: set it with UpdateCredential"}
	case cur.GrantType != GrantRefreshToken:
		return nil, &Error{Kind: ErrInvalidArgument, Field: "credential.grant_type", CredentialID: id,
			Detail: "authorization flows obtain a refresh token: use the refresh_token grant"}
	case cur.Pending != nil:
		return nil, &Error{Kind: ErrLockTimeout, CredentialID: id, RetryAfter: b.cfg.PollInterval,
			Detail: "a refresh of the credential is being stored; try again"}
	}
	if err := b.ensureLease(ctx, lease); err != nil {
		return nil, &Error{Kind: ErrLockTimeout, CredentialID: id, Err: err, RetryAfter: b.cfg.PollInterval,
			Detail: "the credential's lease could not be extended; nothing was sent"}
	}
	req := exchangeRequest(cur)
	if len(scopes) > 0 {
		req.Scopes = scopes
	}
	dctx, cancel := context.WithTimeout(ctx, b.cfg.RefreshTimeout)
	da, err := authz.DeviceAuth(dctx, req, cur.DeviceAuthorizationURL)
	cancel()
	if err != nil {
		kind := ErrIdPUnavailable
		if class, _ := classOf(err); class == Permanent {
			kind = ErrIdPRejected
		}
		return nil, &Error{Kind: kind, CredentialID: id, Err: err, Detail: "device authorization request: " + err.Error()}
	}
	if err := checkDeviceAuthorization(da); err != nil {
		return nil, &Error{Kind: ErrIdPRejected, CredentialID: id, Err: err, Detail: err.Error()}
	}
	now = time.Now()
	flow := &AuthorizationFlow{
		ID: randomID(), Kind: FlowDevice, StartedBy: caller.ID, StartedAt: now,
		ExpiresAt: da.ExpiresAt, Scopes: append([]string(nil), scopes...),
		DeviceCode: da.DeviceCode, UserCode: da.UserCode,
		VerificationURI: da.VerificationURI, VerificationURIComplete: da.VerificationURIComplete,
		Interval: da.Interval,
	}
	if flow.Interval <= 0 {
		flow.Interval = defaultDeviceInterval
	}
	flow.Interval = min(flow.Interval, maxDeviceInterval)
	if flow.ExpiresAt.IsZero() {
		flow.ExpiresAt = now.Add(defaultDeviceTTL)
	}
	if flow.ExpiresAt.After(now.Add(maxDeviceTTL)) {
		flow.ExpiresAt = now.Add(maxDeviceTTL)
	}
	flow.NextPollAt = now.Add(flow.Interval)
	next := cur.Clone()
	next.Authorization = flow
	stored, err := b.commit(ctx, lease, next)
	if err != nil {
		return nil, err
	}
	b.authObserved(AuthorizationEvent{CredentialID: id, Flow: FlowDevice, Action: AuthStarted, StartedBy: caller.ID, Generation: stored.Generation})
	b.changed(ChangeAuthorizationStarted, cur, stored, caller.ID, "device authorization flow started")
	b.adopt(stored)
	return stored, nil
}

// checkDeviceAuthorization refuses an IdP answer the user could not act on.
func checkDeviceAuthorization(da *DeviceAuthorization) error {
	switch {
	case da.DeviceCode == "" || len(da.DeviceCode) > MaxRefreshTokenLen:
		return errors.New("the IdP's device authorization answer has no usable device_code")
	case da.UserCode == "" || len(da.UserCode) > maxUserCodeLen || validateToken("", da.UserCode, maxUserCodeLen, true) != nil:
		return errors.New("the IdP's device authorization answer has no usable user_code")
	case !httpURL(da.VerificationURI):
		return errors.New("the IdP's device authorization answer has no usable verification_uri")
	case da.VerificationURIComplete != "" && !httpURL(da.VerificationURIComplete):
		return errors.New("the IdP's device authorization answer has an unusable verification_uri_complete")
	}
	return nil
}

func httpURL(s string) bool {
	if len(s) > MaxURLLen {
		return false
	}
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != ""
}

// adopt starts polling the device flow open on rec, unless this Broker
// polls it already or it is not open.
func (b *Broker) adopt(rec *Record) {
	a := rec.Authorization
	if a == nil || a.Kind != FlowDevice || !a.Open(time.Now()) {
		return
	}
	b.flows.mu.Lock()
	if b.flows.pollers[rec.ID] == a.ID {
		b.flows.mu.Unlock()
		return
	}
	if !b.enter() {
		b.flows.mu.Unlock()
		return
	}
	if b.flows.pollers == nil {
		b.flows.pollers = make(map[string]string)
	}
	b.flows.pollers[rec.ID] = a.ID
	b.flows.mu.Unlock()
	go func() {
		defer b.wg.Done()
		defer func() {
			b.flows.mu.Lock()
			if b.flows.pollers[rec.ID] == a.ID {
				delete(b.flows.pollers, rec.ID)
			}
			b.flows.mu.Unlock()
		}()
		b.poll(rec.ID, a.ID, a.NextPollAt)
	}()
}

// poll polls device flow flowID of credential id from at on, until the flow
// is over or the Broker closes.
func (b *Broker) poll(id, flowID string, at time.Time) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		t.Reset(max(time.Until(at), 0))
		select {
		case <-t.C:
		case <-b.closing:
			return
		}
		next, done := b.pollOnce(id, flowID)
		if done {
			return
		}
		at = next
	}
}

// pollOnce takes the credential's lease and, if the flow is still open and
// its time has come, polls the IdP once and stores the outcome. It returns
// when to try next, or done.
func (b *Broker) pollOnce(id, flowID string) (next time.Time, done bool) {
	ctx, cancel := b.untilClosing(b.cfg.LockWait + b.cfg.RefreshTimeout + b.cfg.LockTTL)
	defer cancel()
	retry := time.Now().Add(max(b.cfg.PollInterval, time.Second))
	lease, err := b.acquire(ctx, id, nil)
	if err != nil {
		return retry, false
	}
	defer b.release(ctx, lease)
	cur, err := b.store.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return time.Time{}, true
	}
	if err != nil {
		return retry, false
	}
	a := cur.Authorization
	if a == nil || a.ID != flowID || a.Kind != FlowDevice {
		return time.Time{}, true // completed, abandoned or replaced
	}
	now := time.Now()
	if !a.Open(now) {
		b.abandon(ctx, lease, cur, flowID, FlowDevice, a.StartedBy, "expired: the user code was not approved in time")
		return time.Time{}, true
	}
	if now.Before(a.NextPollAt) {
		return a.NextPollAt, false // another replica polled meanwhile
	}
	if b.ensureLease(ctx, lease) != nil {
		return retry, false
	}
	authz, err := b.authorizer()
	if err != nil {
		return time.Time{}, true
	}
	// Once sent, the poll's answer is stored even if the Broker is
	// closing: it may be the grant.
	pctx, pcancel := context.WithTimeout(b.bg, b.cfg.RefreshTimeout)
	tok, perr := authz.PollDevice(pctx, exchangeRequest(cur), a.DeviceCode)
	pcancel()
	sctx, scancel := context.WithTimeout(b.bg, b.cfg.LockTTL)
	defer scancel()
	if perr == nil {
		if tok.RefreshToken == "" {
			b.abandon(sctx, lease, cur, flowID, FlowDevice, a.StartedBy, "the IdP issued no refresh token: ask for offline access (for instance scope offline_access)")
			return time.Time{}, true
		}
		stored, err := b.storeGrant(sctx, lease, cur, tok, a.Scopes)
		if err != nil {
			return retry, false // the flow is gone at the IdP; the next poll says so
		}
		b.authObserved(AuthorizationEvent{CredentialID: id, Flow: FlowDevice, Action: AuthCompleted, StartedBy: a.StartedBy, Generation: stored.Generation})
		b.changed(ChangeAuthorized, cur, stored, a.StartedBy, "authorized through the device flow")
		return time.Time{}, true
	}
	var ue *UpstreamError
	errors.As(perr, &ue)
	code := ""
	if ue != nil {
		code = ue.Code
	}
	class, retryAfter := classOf(perr)
	upd := cur.Clone()
	ua := upd.Authorization
	switch {
	case code == "authorization_pending":
	case code == "slow_down":
		ua.Interval = min(ua.Interval+slowDownStep, maxDeviceInterval)
	case code == "access_denied":
		b.abandon(sctx, lease, cur, flowID, FlowDevice, a.StartedBy, "the user denied the authorization (access_denied)")
		return time.Time{}, true
	case code == "expired_token":
		b.abandon(sctx, lease, cur, flowID, FlowDevice, a.StartedBy, "expired: the user code was not approved in time (expired_token)")
		return time.Time{}, true
	case class == Permanent:
		b.abandon(sctx, lease, cur, flowID, FlowDevice, a.StartedBy, "the IdP refused the device code: "+perr.Error())
		return time.Time{}, true
	}
	// Pending, slowed down, or the IdP did not answer (then the next poll
	// waits at least as long as it asked, RFC 8628 section 3.5).
	wait := ua.Interval
	if class != Permanent && code == "" {
		wait = max(wait, retryAfter, 2*ua.Interval)
	}
	ua.NextPollAt = now.Add(wait)
	if _, err := b.commit(sctx, lease, upd); err != nil {
		// The record moved on, or the Store failed: read it again then,
		// and never poll before the interval.
		return ua.NextPollAt, false
	}
	return ua.NextPollAt, false
}

// untilClosing returns a context that ends after d, when the Broker begins
// to close, or when its background context ends.
func (b *Broker) untilClosing(d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(b.bg, d)
	go func() {
		select {
		case <-b.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
