package clientsdk

import (
	"errors"
	"io"
	"net/http"

	"golang.org/x/oauth2"
)

// maxDrain bounds how much of a rejected response's body is read so that its
// connection can be reused; a longer body is just closed.
const maxDrain = 64 << 10

// Transport is an http.RoundTripper that authorizes each request with a token
// from Source ("Authorization: <type> <token>") and recovers from a rejected
// token once.
//
// When the response is 401 Unauthorized, Transport reports exactly the token
// it sent to the broker (TokenSource.Invalidate) and, if the broker returned
// a different token and the request can be sent again (it has no body, or
// GetBody is set, as http.NewRequest does for in-memory bodies), sends it
// once more with the new token, after draining and closing the first
// response. It never retries more than once: a second 401 is returned as is.
// A request whose body cannot be replayed gets its 401 back; the rejected
// token is still reported, so the next request uses a new one.
//
// If the broker has no other token (it returned the rejected one, or
// refused the invalidation as rate-limited; see TokenSource.Invalidate),
// the caller gets the original 401 response, unread, never an error. If the
// broker call fails otherwise (for example ErrReauthRequired or
// ErrUnavailable), RoundTrip returns that error (an *Error) instead of a 401
// it could have retried, and the 401 when it could not have.
//
// The caller's request is never modified. Transport is safe for concurrent
// use.
type Transport struct {
	// Source supplies the tokens; required.
	Source *TokenSource
	// Base sends the requests; nil means http.DefaultTransport.
	Base http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	bodyClosed := false
	if req.Body != nil {
		defer func() {
			if !bodyClosed {
				req.Body.Close()
			}
		}()
	}
	if t.Source == nil {
		return nil, errors.New("clientsdk: Transport's Source is nil")
	}
	ctx := req.Context()
	tok, err := t.Source.TokenContext(ctx)
	if err != nil {
		return nil, err
	}
	bodyClosed = true // the base RoundTripper closes it from here on
	resp, err := t.base().RoundTrip(authorized(req, tok))
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}

	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	next, err := t.Source.Invalidate(ctx, tok.AccessToken)
	if !replayable || nothingNewer(next, err, tok.AccessToken) {
		return resp, nil
	}
	if err != nil {
		discard(resp)
		return nil, err
	}
	retry := authorized(req, next)
	if req.Body != nil && req.Body != http.NoBody {
		body, err := req.GetBody()
		if err != nil {
			discard(resp)
			return nil, err
		}
		retry.Body = body
	}
	discard(resp)
	return t.base().RoundTrip(retry)
}

func (t *Transport) base() http.RoundTripper {
	if t.Base != nil {
		return t.Base
	}
	return http.DefaultTransport
}

// authorized returns a copy of req (sharing its body) whose own header
// carries tok.
func authorized(req *http.Request, tok *oauth2.Token) *http.Request {
	r := req.Clone(req.Context())
	tok.SetAuthHeader(r)
	return r
}

// discard drains (up to maxDrain) and closes resp's body.
func discard(resp *http.Response) {
	io.CopyN(io.Discard, resp.Body, maxDrain)
	resp.Body.Close()
}
