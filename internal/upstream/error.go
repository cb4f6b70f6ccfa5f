package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// ErrInvalidRequest is wrapped by the Error that Exchange returns for a
// Request it cannot send: no or a malformed token URL, no refresh token for
// a refresh, an unknown AuthStyle or GrantType. Nothing was sent.
var ErrInvalidRequest = errors.New("upstream: invalid request")

// Error is a failed exchange. Client.Exchange returns each one wrapped in a
// *broker.UpstreamError of the same Class.
//
// Its message is safe for an API response and a log line: it holds the class,
// the HTTP status, the RFC 6749 error code and description (control
// characters removed, cut to 200 characters, the request's refresh token and
// client secrets replaced by "[redacted]" wherever they occur) and a short,
// equally scrubbed account of a transport failure (which may quote a
// malformed status line or header, never the body). It never holds the
// response body, the token URL or anything else from the request.
//
// Classification, first matching row wins:
//
//	answer                                               Class
//	---------------------------------------------------  ---------
//	the Request is invalid (ErrInvalidRequest)           Transient (nothing sent)
//	no answer, and the request was not written: a        Transient (nothing
//	  refused connection, a DNS or TLS failure, a          reached the IdP)
//	  ctx that ended before sending
//	no answer after the request was written: a reset     Unanswered
//	  connection, a timeout, a ctx that ended
//	  (Err wraps the context error)
//	HTTP 504                                             Unanswered (a gateway
//	                                                       gave up waiting)
//	2xx with an unparseable body or no access_token      Unanswered (the IdP
//	                                                       acted on the grant)
//	HTTP 5xx, 429 (RetryAfter set), 408, whatever code   Transient
//	error=invalid_grant                                  Permanent
//	error=invalid_client, or HTTP 401 without another    Permanent (only after the
//	  recognised code                                      last client secret)
//	error=unauthorized_client                            Permanent
//	error=unsupported_grant_type                         Permanent
//	error=invalid_scope                                  Permanent
//	error=invalid_request to a refresh_token grant       Permanent (Dex: token
//	                                                       already claimed)
//	error=invalid_request to client_credentials          Transient
//	any other 4xx or 3xx, or an unknown error code       Transient (e.g. a wrong
//	                                                       URL, not a verdict)
//
// A 2xx that carries an error code (some IdPs answer errors with 200) is
// classified by its code like a 400.
type Error struct {
	Class broker.UpstreamClass
	// Code is the RFC 6749 error code (e.g. invalid_grant); empty if none.
	Code string
	// Description is the IdP's error_description, control characters
	// removed, secrets redacted, cut to about 200 characters.
	Description string
	// StatusCode is the HTTP status of the answer; 0 if there was none.
	StatusCode int
	// RetryAfter is the Retry-After of a 429 or 503 answer (seconds or an
	// HTTP-date, capped at 24 h); 0 if none.
	RetryAfter time.Duration
	// Err is the underlying transport or context error, if any: for a
	// cancelled or expired ctx it matches context.Canceled or
	// context.DeadlineExceeded with errors.Is. It is the error inside the
	// *url.Error, so its message has no URL; it is a cause to inspect, not
	// a text to show (it may quote bytes the server sent).
	Err error

	detail         string // scrubbed account of a failure without an RFC 6749 answer
	clientRejected bool   // invalid_client or 401: another secret may be tried
}

// Error returns a message that never holds a secret, the response body or
// the request.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("upstream: ")
	b.WriteString(e.Class.String())
	b.WriteString(" token endpoint failure")
	if e.StatusCode != 0 {
		b.WriteString(": HTTP ")
		b.WriteString(strconv.Itoa(e.StatusCode))
	}
	if e.Code != "" {
		b.WriteString(": ")
		b.WriteString(e.Code)
	}
	if e.Description != "" {
		b.WriteByte(' ')
		b.WriteString(strconv.Quote(e.Description))
	}
	switch {
	case e.detail != "":
		b.WriteString(": ")
		b.WriteString(e.detail)
	case e.Err != nil:
		// Built by hand, not by Exchange: describe Err without quoting it.
		b.WriteString(": ")
		b.WriteString(describe(e.Err))
	}
	if e.RetryAfter > 0 {
		b.WriteString(" (retry after ")
		b.WriteString(e.RetryAfter.String())
		b.WriteByte(')')
	}
	return b.String()
}

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

// describe names the kind of err without quoting its message.
func describe(err error) string {
	var ne interface{ Timeout() bool }
	switch {
	case errors.Is(err, ErrInvalidRequest):
		return "invalid request"
	case errors.Is(err, context.Canceled):
		return "request canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "request timed out"
	case errors.As(err, &ne) && ne.Timeout():
		return "request timed out"
	}
	return "transport error"
}

// The RFC 6749 section 5.2 error codes this package recognises.
const (
	codeInvalidRequest       = "invalid_request"
	codeInvalidClient        = "invalid_client"
	codeInvalidGrant         = "invalid_grant"
	codeUnauthorizedClient   = "unauthorized_client"
	codeUnsupportedGrantType = "unsupported_grant_type"
	codeInvalidScope         = "invalid_scope"
)

func recognised(code string) bool {
	switch code {
	case codeInvalidRequest, codeInvalidClient, codeInvalidGrant,
		codeUnauthorizedClient, codeUnsupportedGrantType, codeInvalidScope:
		return true
	}
	return false
}

// clientRejected reports whether an answer says the IdP rejected the client
// authentication, that is invalid_client or a 401 without another recognised
// code. The IdP then did not look at the grant, so another secret may be
// tried with the same refresh token.
func clientRejected(status int, code string) bool {
	return code == codeInvalidClient || (status == http.StatusUnauthorized && !recognised(code))
}

// classify is the table in Error's doc for an answer from the IdP.
func classify(status int, code string, grant broker.GrantType) broker.UpstreamClass {
	switch {
	case status == http.StatusGatewayTimeout:
		return broker.Unanswered
	case status >= 500, status == http.StatusTooManyRequests, status == http.StatusRequestTimeout:
		return broker.Transient
	case clientRejected(status, code):
		return broker.Permanent
	}
	switch code {
	case codeInvalidGrant, codeUnauthorizedClient, codeUnsupportedGrantType, codeInvalidScope:
		return broker.Permanent
	case codeInvalidRequest:
		if grant == broker.GrantRefreshToken {
			return broker.Permanent
		}
	}
	return broker.Transient
}

// Messages of golang.org/x/oauth2 v0.37 (internal/token.go, doTokenRoundTrip)
// for a response it could not use. They are plain errors, so the text is all
// there is to tell them apart; an unknown text is reported as unreadable.
const (
	oauth2MissingAccessToken = "oauth2: server response missing access_token"
	oauth2ReadFailed         = "oauth2: cannot fetch token: "
)

// maxRetryAfter caps a Retry-After: an IdP asking for more is treated as
// asking for this.
const maxRetryAfter = 24 * time.Hour

// maxText is the most runes of IdP or transport text an Error keeps.
const maxText = 200

// invalidRequest is the Error for a Request that Exchange does not send.
// upstream is e as the broker sees it, the one conversion at this
// package's boundary.
func (e *Error) upstream() *broker.UpstreamError {
	return &broker.UpstreamError{Class: e.Class, RetryAfter: e.RetryAfter, Code: e.Code, Err: e}
}

func invalidRequest(reason string) *Error {
	return &Error{Class: broker.Transient, Err: ErrInvalidRequest, detail: "invalid request: " + reason}
}

// newError converts what one token request produced into an *Error. It is
// the only place that looks inside x/oauth2 and net/http errors. status is
// the HTTP status of the answer as seen by the transport, 0 if none.
func newError(ctx context.Context, r *broker.UpstreamRequest, err error, seen exchangeSeen) *Error {
	status := seen.status
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		e := &Error{
			Code:        cleanCode(r, re.ErrorCode),
			Description: clean(r, re.ErrorDescription),
			StatusCode:  status,
		}
		if re.Response != nil {
			e.StatusCode = re.Response.StatusCode
			if sc := e.StatusCode; sc == http.StatusTooManyRequests || sc == http.StatusServiceUnavailable {
				e.RetryAfter = retryAfter(re.Response.Header.Get("Retry-After"), time.Now())
			}
		}
		e.Class = classify(e.StatusCode, re.ErrorCode, r.GrantType)
		// Not after a 5xx: the IdP may have looked at the grant.
		e.clientRejected = e.Class == broker.Permanent && clientRejected(e.StatusCode, re.ErrorCode)
		return e
	}

	// No RFC 6749 answer. With a status, a 2xx came whose body could not be
	// used: the IdP acted on the grant. Without one, the IdP may have acted
	// only if the request was written.
	e := &Error{Class: broker.Transient, StatusCode: status}
	if status != 0 || seen.wrote {
		e.Class = broker.Unanswered
	}
	var ue *url.Error
	switch {
	case errors.As(err, &ue):
		// From http.Client.Do (or http.NewRequest): drop the URL.
		e.Err = ue.Err
		e.detail = clean(r, ue.Err.Error())
	case status != 0 && err.Error() == oauth2MissingAccessToken:
		e.detail = "token response without access_token"
	case status != 0 && strings.HasPrefix(err.Error(), oauth2ReadFailed):
		e.detail = "reading the token response: " + clean(r, strings.TrimPrefix(err.Error(), oauth2ReadFailed))
	case status != 0:
		// "oauth2: cannot parse json: ..." and the like; the text may quote
		// the body.
		e.detail = "unreadable token response"
	default:
		e.Err = err
		e.detail = clean(r, err.Error())
	}
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(e.Err, ctxErr) {
		// The caller gave up; say so in a way errors.Is understands, even
		// where x/oauth2 flattened the cause into text (a cut-off body read).
		if e.Err == nil {
			e.Err = ctxErr
		} else {
			e.Err = errors.Join(ctxErr, e.Err)
		}
	}
	return e
}

// retryAfter parses a Retry-After value (RFC 9110 section 10.2.3): delay
// seconds or an HTTP-date. It returns 0 for none, an unparseable value or a
// date in the past.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseUint(v, 10, 64); err == nil {
		if n > uint64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	d := t.Sub(now)
	switch {
	case d <= 0:
		return 0
	case d > maxRetryAfter:
		return maxRetryAfter
	}
	return d.Round(time.Second)
}

// clean makes text from the IdP or the transport fit for a message: control
// characters and invalid UTF-8 removed, then the request's secrets redacted
// (in that order, so a secret split by control characters is still found),
// then cut to maxText runes.
func clean(r *broker.UpstreamRequest, s string) string {
	if s == "" {
		return ""
	}
	s = strings.Map(func(c rune) rune {
		if c == utf8.RuneError || unicode.IsControl(c) {
			return -1
		}
		return c
	}, s)
	s = redact(r, s)
	s = strings.TrimSpace(s)
	if utf8.RuneCountInString(s) > maxText {
		s = string([]rune(s)[:maxText]) + "…"
	}
	return s
}

// cleanCode keeps an error code to the RFC 6749 character set (printable
// ASCII without '"' and '\') and 64 characters, with secrets redacted.
func cleanCode(r *broker.UpstreamRequest, code string) string {
	if code == "" {
		return ""
	}
	code = strings.Map(func(c rune) rune {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return -1
		}
		return c
	}, code)
	code = redact(r, code)
	if len(code) > 64 {
		code = code[:64] + "…"
	}
	return code
}

const redacted = "[redacted]"

// redact replaces every occurrence of the request's refresh token and client
// secrets of at least minRedact bytes in s: as is, form-encoded, and as the
// credentials of a basic Authorization header.
func redact(r *broker.UpstreamRequest, s string) string {
	if r == nil {
		return s
	}
	s = redactValue(s, r.RefreshToken)
	for _, secret := range r.ClientSecrets {
		s = redactValue(s, secret)
		if len(secret) >= minRedact {
			// An echoed Authorization header (RFC 6749 section 2.3.1).
			basic := url.QueryEscape(r.ClientID) + ":" + url.QueryEscape(secret)
			s = strings.ReplaceAll(s, base64.StdEncoding.EncodeToString([]byte(basic)), redacted)
		}
	}
	return s
}

// minRedact is the shortest value redact looks for: a shorter one is no
// secret worth protecting, and hunting for it would mangle ordinary words.
const minRedact = 4

func redactValue(s, v string) string {
	if len(v) < minRedact {
		return s
	}
	s = strings.ReplaceAll(s, v, redacted)
	if q := url.QueryEscape(v); q != v {
		s = strings.ReplaceAll(s, q, redacted)
	}
	return s
}
