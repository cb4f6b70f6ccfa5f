package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

const (
	fuzzRefreshToken = "RT-fuzz-3e5a8c1f90"
	fuzzSecret       = "SECRET-fuzz-77d2b4"
)

// answer is an in-memory token endpoint that answers every request with one
// canned response.
type answer struct {
	status      int
	contentType string
	retryAfter  string
	body        []byte
}

func (a answer) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	h := http.Header{}
	if a.contentType != "" {
		h.Set("Content-Type", a.contentType)
	}
	if a.retryAfter != "" {
		h.Set("Retry-After", a.retryAfter)
	}
	return &http.Response{StatusCode: a.status, Header: h, Body: io.NopCloser(bytes.NewReader(a.body)),
		ContentLength: int64(len(a.body)), Request: r}, nil
}

// FuzzExchangeResponse feeds arbitrary IdP answers through x/oauth2 and the
// classification: it never panics, a success carries an access token, a
// failure is a classified *Error whose message holds neither the refresh
// token nor the client secret, even when the IdP echoes them.
func FuzzExchangeResponse(f *testing.F) {
	f.Add(200, "application/json", "", []byte(`{"access_token":"at","token_type":"Bearer","expires_in":60,"refresh_token":"rt2"}`))
	f.Add(200, "application/json", "", []byte(`{"access_token":"at"}`))
	f.Add(200, "application/x-www-form-urlencoded", "", []byte(`access_token=at&token_type=bearer&expires_in=10`))
	f.Add(200, "application/json", "", []byte(`{"token_type":"Bearer"}`))
	f.Add(200, "text/html", "", []byte(`<html>hi</html>`))
	f.Add(400, "application/json", "", []byte(`{"error":"invalid_grant","error_description":"token RT-fuzz-3e5a8c1f90 was revoked"}`))
	f.Add(400, "application/json", "", []byte(`{"error":"invalid_request","error_description":"already claimed"}`))
	f.Add(401, "application/json", "", []byte(`{"error":"invalid_client","error_description":"bad secret SECRET-fuzz-77d2b4"}`))
	f.Add(429, "application/json", "7", []byte(`{"error":"too_many_requests"}`))
	f.Add(503, "text/plain", "Wed, 21 Oct 2015 07:28:00 GMT", []byte(`down`))
	f.Add(302, "", "", []byte(``))
	f.Add(400, "application/json", "", []byte(`{"error":"\u0000\n`+fuzzRefreshToken+`","error_description":12}`))
	f.Fuzz(func(t *testing.T, status int, contentType, retryAfter string, body []byte) {
		if status < 100 || status > 999 {
			return
		}
		c := &Client{HTTPClient: &http.Client{Transport: answer{status, contentType, retryAfter, body}, Timeout: time.Second}}
		for _, grant := range []broker.GrantType{broker.GrantRefreshToken, broker.GrantClientCredentials} {
			tok, err := c.Exchange(context.Background(), broker.UpstreamRequest{
				TokenURL: "https://idp.example/token", ClientID: "client", ClientSecrets: []string{fuzzSecret},
				GrantType: grant, RefreshToken: fuzzRefreshToken,
			})
			if err == nil {
				if tok.AccessToken == "" || tok.TokenType == "" {
					t.Fatalf("success without an access token or type: %+v", tok)
				}
				if tok.RefreshToken == fuzzRefreshToken {
					t.Fatal("the presented refresh token came back as a new one")
				}
				continue
			}
			var ue *Error
			if !errors.As(err, &ue) {
				t.Fatalf("error %T is not *Error", err)
			}
			if ue.Class != broker.Transient && ue.Class != broker.Permanent && ue.Class != broker.Unanswered {
				t.Fatalf("unclassified error %v", err)
			}
			if ue.RetryAfter < 0 {
				t.Fatalf("negative RetryAfter %v", ue.RetryAfter)
			}
			msg := err.Error()
			if strings.Contains(msg, fuzzRefreshToken) || strings.Contains(msg, fuzzSecret) {
				t.Fatalf("the error holds a secret: %q", msg)
			}
			if status >= 500 && ue.Class == broker.Permanent {
				t.Fatalf("a %d answer is permanent", status)
			}
		}
	})
}
