package upstream

import (
	"context"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Client sends token requests. The zero value is ready to use, and a Client
// is safe for concurrent use.
type Client struct {
	// HTTPClient sends the requests. Nil means a shared default: at most
	// 30 s per request, 10 s to connect and for a TLS handshake, 64 KiB of
	// response headers, proxies from the environment, and no redirects (a
	// redirected POST could carry the refresh token to another URL; a 3xx is
	// reported as a Transient Error). Whatever the client, x/oauth2 reads at
	// most 1 MiB of a token response body: v0.37 internal/token.go reads it
	// through io.LimitReader(r.Body, 1<<20), so a longer 2xx body fails to
	// parse and is a Transient Error.
	HTTPClient *http.Client
}

const (
	defaultTimeout        = 30 * time.Second
	defaultConnectTimeout = 10 * time.Second
)

var defaultHTTPClient = sync.OnceValue(func() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                  http.ProxyFromEnvironment,
			DialContext:            (&net.Dialer{Timeout: defaultConnectTimeout, KeepAlive: 30 * time.Second, Control: refuseMetadata}).DialContext,
			ForceAttemptHTTP2:      true,
			MaxIdleConns:           100,
			MaxIdleConnsPerHost:    16,
			IdleConnTimeout:        90 * time.Second,
			TLSHandshakeTimeout:    defaultConnectTimeout,
			ExpectContinueTimeout:  time.Second,
			ResponseHeaderTimeout:  defaultTimeout,
			MaxResponseHeaderBytes: 64 << 10,
		},
		Timeout: defaultTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
})

// noSecret is the one attempt of a public client.
var noSecret = []string{""}

// Exchange asks r.TokenURL for a token with r's grant and returns the IdP's
// answer. ctx bounds the whole call, all secrets included; when it ends,
// Exchange returns at once with a Transient Error whose Err matches ctx.Err().
//
// The client authenticates with r.ClientSecrets[0] first and moves to the next
// secret only when the IdP answers invalid_client (or 401); any other outcome
// ends the call, so each secret costs at most one request and a refresh token
// is never presented after the IdP looked at it. Without secrets the client
// is public: with AuthPost only client_id is sent, with AuthBasic the
// Authorization header carries client_id and an empty password.
//
// Every error is an *Error; see its doc for the classification.
func (c *Client) Exchange(ctx context.Context, r broker.UpstreamRequest) (*broker.UpstreamToken, error) {
	if e := validate(&r); e != nil {
		return nil, e.upstream()
	}
	hc := c.httpClient()
	tok, e := trySecrets(ctx, &r, func(secret string) (*broker.UpstreamToken, *Error) {
		return exchangeOnce(ctx, hc, &r, secret)
	})
	if e != nil {
		return nil, e.upstream()
	}
	return tok, nil
}

// trySecrets calls try with each of r's client secrets in order (one empty
// secret for a public client), moving on only when the IdP rejected the
// client, so that each secret costs at most one request. It stops before a
// try once ctx has ended.
func trySecrets[T any](ctx context.Context, r *broker.UpstreamRequest, try func(secret string) (T, *Error)) (T, *Error) {
	secrets := r.ClientSecrets
	if len(secrets) == 0 {
		secrets = noSecret
	}
	for i, secret := range secrets {
		if err := ctx.Err(); err != nil {
			var zero T
			return zero, newError(ctx, r, err, exchangeSeen{})
		}
		v, e := try(secret)
		if e == nil || !e.clientRejected || i == len(secrets)-1 {
			return v, e
		}
	}
	panic("unreachable")
}

func validate(r *broker.UpstreamRequest) *Error {
	if e := validateTokenEndpoint(r); e != nil {
		return e
	}
	switch r.GrantType {
	case broker.GrantRefreshToken:
		if r.RefreshToken == "" {
			return invalidRequest("refresh_token grant without a refresh token")
		}
	case broker.GrantClientCredentials:
	default:
		return invalidRequest("unknown grant type")
	}
	return nil
}

// exchangeOnce sends one token request authenticated with secret.
//
// Both grants go through clientcredentials.Config: its EndpointParams may
// override grant_type (x/oauth2 allows that on purpose), and unlike the
// refresh of oauth2.Config.TokenSource it sends Scopes. The auth style is
// always explicit, never AuthStyleAutoDetect, whose retry in the other style
// would present a refresh token twice.
func exchangeOnce(ctx context.Context, hc *http.Client, r *broker.UpstreamRequest, secret string) (*broker.UpstreamToken, *Error) {
	rec := &exchangeRecorder{next: transportOf(hc)}
	withRec := *hc
	withRec.Transport = rec

	cfg := clientcredentials.Config{
		ClientID:     r.ClientID,
		ClientSecret: secret,
		TokenURL:     r.TokenURL,
		Scopes:       r.Scopes,
		AuthStyle:    oauth2.AuthStyleInHeader,
	}
	if r.AuthStyle == broker.AuthStylePost {
		cfg.AuthStyle = oauth2.AuthStyleInParams
	}
	sent := ""
	if r.GrantType == broker.GrantRefreshToken {
		sent = r.RefreshToken
		cfg.EndpointParams = url.Values{
			"grant_type":    {"refresh_token"},
			"refresh_token": {sent},
		}
	}

	tk, err := cfg.Token(context.WithValue(ctx, oauth2.HTTPClient, &withRec))
	if err != nil {
		return nil, newError(ctx, r, err, rec.exchangeSeen)
	}
	t := &broker.UpstreamToken{
		AccessToken: tk.AccessToken,
		TokenType:   tk.TokenType,
		Expiry:      tk.Expiry,
	}
	if t.TokenType == "" {
		t.TokenType = "Bearer"
	}
	// x/oauth2 puts the presented refresh token into the result when the
	// answer has none; report the IdP's silence as "".
	if tk.RefreshToken != sent {
		t.RefreshToken = tk.RefreshToken
	}
	return t, nil
}

// exchangeSeen is what the transport saw of one token request.
type exchangeSeen struct {
	status int  // of the last response; 0 if none came
	wrote  bool // the request was written to the connection in full
}

// exchangeRecorder records what x/oauth2 drops: the status of a 2xx whose
// body it cannot use, and whether a request that got no answer was sent at
// all. http.Client calls RoundTrip on the goroutine of Do, and the trace
// fires before RoundTrip returns, so the fields need no lock.
type exchangeRecorder struct {
	next http.RoundTripper
	exchangeSeen
}

func (s *exchangeRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	trace := &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				s.wrote = true
			}
		},
	}
	resp, err := s.next.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	if resp != nil {
		s.status = resp.StatusCode
	}
	return resp, err
}
