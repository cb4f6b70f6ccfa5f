package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// The --reauth mode: the loop from a dead grant back to service. A third
// of the way into the run the IdP revokes the grant (an administrator
// there, or a user who withdrew consent): every token of the family dies,
// the broker's next refresh gets invalid_grant and the credential goes to
// REAUTH_REQUIRED; workers fail with reauth_required. The demo, as the
// operator, hears of it on WatchCredentials, starts a device authorization
// (StartDeviceAuthorization), and approves the user code at the IdP's
// verification page as the user would; the broker polls, stores the new
// grant, and the workers recover without a restart. The summary counts the
// outage, from the REAUTH_REQUIRED event to the AUTHORIZED one.

// deviceInterval is the test IdP's polling interval in --reauth mode.
const deviceInterval = time.Second

// reauthResult is what the operator saw.
type reauthResult struct {
	revokedAt    time.Time
	reauthAt     time.Time // the REAUTH_REQUIRED event
	authorizedAt time.Time // the AUTHORIZED event
	userCode     string
	err          error
}

// operate plays the IdP administrator and then the operator, from start
// until the credential is authorized again or ctx ends. It reports on
// stderr as it goes.
func (d *demo) operate(ctx context.Context, start time.Time, done chan<- reauthResult) {
	var res reauthResult
	defer func() { done <- res }()
	admin := pb.NewAdminServiceClient(d.bc.admin)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := admin.WatchCredentials(wctx, &pb.WatchCredentialsRequest{})
	if err == nil {
		_, err = w.Header() // the watch is established
	}
	if err != nil {
		res.err = fmt.Errorf("watching the credentials: %w", err)
		return
	}
	if !sleepUntil(ctx, start.Add(d.cfg.duration), time.Until(start.Add(d.cfg.duration/3))) {
		res.err = errors.New("the run ended before the revocation")
		return
	}
	d.idp.Revoke(d.login.RefreshToken) // the whole family: refresh and access tokens
	res.revokedAt = time.Now()
	d.say("the IdP revoked the grant (%.1fs into the run)", res.revokedAt.Sub(start).Seconds())
	for {
		m, err := w.Recv()
		if err != nil {
			res.err = fmt.Errorf("watching the credentials: %w", err)
			return
		}
		ev := m.GetEvent()
		if ev.GetCredentialId() != d.credID {
			continue
		}
		switch ev.GetKind() {
		case pb.CredentialEvent_REAUTH_REQUIRED:
			res.reauthAt = time.Now()
			d.say("WatchCredentials: %s is REAUTH_REQUIRED (%s); starting a device authorization", d.credID, ev.GetReason())
			if res.userCode, err = d.deviceAuthorize(ctx, admin); err != nil {
				res.err = err
				return
			}
		case pb.CredentialEvent_AUTHORIZED:
			res.authorizedAt = time.Now()
			d.say("WatchCredentials: %s AUTHORIZED again; workers recover", d.credID)
			return
		case pb.CredentialEvent_AUTHORIZATION_ABANDONED:
			res.err = fmt.Errorf("the device authorization was abandoned: %s", ev.GetDetail())
			return
		}
	}
}

// deviceAuthorize starts the device flow and approves it at the IdP's
// verification page as the user would.
func (d *demo) deviceAuthorize(ctx context.Context, admin pb.AdminServiceClient) (string, error) {
	actx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	start, err := admin.StartDeviceAuthorization(actx, &pb.StartDeviceAuthorizationRequest{Id: d.credID})
	if err != nil {
		return "", fmt.Errorf("StartDeviceAuthorization: %w", err)
	}
	d.say("open %s and enter %s (the demo does it for you)", start.GetVerificationUri(), start.GetUserCode())
	form := url.Values{"user_code": {start.GetUserCode()}, "decision": {"approve"}}
	req, err := http.NewRequestWithContext(actx, http.MethodPost, start.GetVerificationUri(), strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := d.tokenHC.Do(req)
	if err != nil {
		return "", fmt.Errorf("approving the user code: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("approving the user code: the verification page answered %d", resp.StatusCode)
	}
	return start.GetUserCode(), nil
}

// say writes one line of the operator's story to stderr, between the
// progress lines.
func (d *demo) say(format string, args ...any) {
	d.prog.note(fmt.Sprintf("client-demo: "+format, args...))
}

// fillReauth puts the operator's outcome into the summary.
func fillReauth(s *Summary, res reauthResult) error {
	if !res.revokedAt.IsZero() {
		s.Revoked = true
	}
	if !res.authorizedAt.IsZero() {
		s.Reauthorized = true
		s.OutageSeconds = res.authorizedAt.Sub(res.revokedAt).Round(time.Millisecond).Seconds()
		s.ReauthSeconds = res.authorizedAt.Sub(res.reauthAt).Round(time.Millisecond).Seconds()
	}
	return res.err
}
