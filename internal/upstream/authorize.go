package upstream

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// The authorization flows (broker.Authorizer) through golang.org/x/oauth2:
// the authorization request URL with an S256 challenge, the code exchange
// with its verifier, the device authorization request, and one poll of the
// token endpoint with a device code. Client authentication is the
// credential's (basic or post, its secrets tried in order on
// invalid_client, as Exchange does), and errors are classified as
// Exchange's (see Error), with the IdP's error code in Error.Code and
// broker.UpstreamError.Code.

var _ broker.Authorizer = (*Client)(nil)

// deviceGrant is the grant_type of a device code poll (RFC 8628 section 3.4).
const deviceGrant = "urn:ietf:params:oauth:grant-type:device_code"

// AuthCodeURL returns the authorization request for r: response_type code,
// client_id, redirect_uri, scope, state, code_challenge (S256 of
// r.Verifier) and r.Extra.
func (c *Client) AuthCodeURL(r broker.AuthCodeRequest) string {
	cfg := oauth2.Config{
		ClientID:    r.ClientID,
		Endpoint:    oauth2.Endpoint{AuthURL: r.AuthURL},
		RedirectURL: r.RedirectURL,
		Scopes:      r.Scopes,
	}
	opts := []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(r.Verifier)}
	for k, v := range r.Extra {
		opts = append(opts, oauth2.SetAuthURLParam(k, v))
	}
	return cfg.AuthCodeURL(r.State, opts...)
}

// ExchangeCode exchanges an authorization code with its PKCE verifier.
func (c *Client) ExchangeCode(ctx context.Context, r broker.UpstreamRequest, code, verifier, redirectURL string) (*broker.UpstreamToken, error) {
	red := r
	red.RefreshToken = code // redacted wherever the IdP echoes it
	return c.withSecrets(ctx, &red, func(hc *http.Client, secret string) (*oauth2.Token, error) {
		cfg := oauth2.Config{
			ClientID:     r.ClientID,
			ClientSecret: secret,
			Endpoint:     oauth2.Endpoint{TokenURL: r.TokenURL, AuthStyle: authStyle(r.AuthStyle)},
			RedirectURL:  redirectURL,
		}
		return cfg.Exchange(context.WithValue(ctx, oauth2.HTTPClient, hc), code, oauth2.VerifierOption(verifier))
	})
}

// PollDevice polls the token endpoint once with a device code.
func (c *Client) PollDevice(ctx context.Context, r broker.UpstreamRequest, deviceCode string) (*broker.UpstreamToken, error) {
	red := r
	red.RefreshToken = deviceCode
	return c.withSecrets(ctx, &red, func(hc *http.Client, secret string) (*oauth2.Token, error) {
		// As for the refresh grant, clientcredentials.Config lets
		// EndpointParams set grant_type, with an explicit auth style.
		cfg := clientcredentials.Config{
			ClientID:     r.ClientID,
			ClientSecret: secret,
			TokenURL:     r.TokenURL,
			AuthStyle:    authStyle(r.AuthStyle),
			EndpointParams: url.Values{
				"grant_type":  {deviceGrant},
				"device_code": {deviceCode},
			},
		}
		return cfg.Token(context.WithValue(ctx, oauth2.HTTPClient, hc))
	})
}

// DeviceAuth sends a device authorization request (RFC 8628 section 3.1):
// client_id and scope, authenticated as the token requests are.
func (c *Client) DeviceAuth(ctx context.Context, r broker.UpstreamRequest, deviceAuthURL string) (*broker.DeviceAuthorization, error) {
	if e := validateDeviceAuth(deviceAuthURL); e != nil {
		return nil, e.upstream()
	}
	hc := c.httpClient()
	out, e := trySecrets(ctx, &r, func(secret string) (*broker.DeviceAuthorization, *Error) {
		rec := &exchangeRecorder{next: transportOf(hc)}
		withRec := *hc
		withRec.Transport = &clientAuth{next: rec, style: r.AuthStyle, id: r.ClientID, secret: secret}
		cfg := oauth2.Config{
			ClientID: r.ClientID,
			Endpoint: oauth2.Endpoint{DeviceAuthURL: deviceAuthURL},
			Scopes:   r.Scopes,
		}
		var opts []oauth2.AuthCodeOption
		if r.AuthStyle == broker.AuthStylePost && secret != "" {
			opts = append(opts, oauth2.SetAuthURLParam("client_secret", secret))
		}
		da, err := cfg.DeviceAuth(context.WithValue(ctx, oauth2.HTTPClient, &withRec), opts...)
		if err != nil {
			return nil, newError(ctx, &r, err, rec.exchangeSeen)
		}
		return &broker.DeviceAuthorization{
			DeviceCode:              da.DeviceCode,
			UserCode:                da.UserCode,
			VerificationURI:         da.VerificationURI,
			VerificationURIComplete: da.VerificationURIComplete,
			ExpiresAt:               da.Expiry,
			Interval:                time.Duration(da.Interval) * time.Second,
		}, nil
	})
	if e != nil {
		return nil, e.upstream()
	}
	return out, nil
}

func validateDeviceAuth(u string) *Error {
	p, err := url.Parse(u)
	if err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
		return invalidRequest("device authorization URL is not an absolute http(s) URL")
	}
	return nil
}

// withSecrets runs one token request per client secret of r, in order,
// moving on only when the IdP rejected the client, and converts the
// outcome as Exchange does.
func (c *Client) withSecrets(ctx context.Context, r *broker.UpstreamRequest, do func(hc *http.Client, secret string) (*oauth2.Token, error)) (*broker.UpstreamToken, error) {
	if e := validateTokenEndpoint(r); e != nil {
		return nil, e.upstream()
	}
	hc := c.httpClient()
	tok, e := trySecrets(ctx, r, func(secret string) (*broker.UpstreamToken, *Error) {
		rec := &exchangeRecorder{next: transportOf(hc)}
		withRec := *hc
		withRec.Transport = rec
		tk, err := do(&withRec, secret)
		if err != nil {
			return nil, newError(ctx, r, err, rec.exchangeSeen)
		}
		t := &broker.UpstreamToken{
			AccessToken:  tk.AccessToken,
			TokenType:    tk.TokenType,
			RefreshToken: tk.RefreshToken,
			Expiry:       tk.Expiry,
		}
		if t.TokenType == "" {
			t.TokenType = "Bearer"
		}
		return t, nil
	})
	if e != nil {
		return nil, e.upstream()
	}
	return tok, nil
}

func validateTokenEndpoint(r *broker.UpstreamRequest) *Error {
	u, err := url.Parse(r.TokenURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return invalidRequest("token URL is not an absolute http(s) URL")
	}
	switch r.AuthStyle {
	case broker.AuthStyleBasic, broker.AuthStylePost:
	default:
		return invalidRequest("unknown auth style")
	}
	return nil
}

func (c *Client) httpClient() *http.Client {
	if c.HTTPClient != nil {
		return c.HTTPClient
	}
	return defaultHTTPClient()
}

func transportOf(hc *http.Client) http.RoundTripper {
	if hc.Transport != nil {
		return hc.Transport
	}
	return http.DefaultTransport
}

func authStyle(s broker.AuthStyle) oauth2.AuthStyle {
	if s == broker.AuthStylePost {
		return oauth2.AuthStyleInParams
	}
	return oauth2.AuthStyleInHeader
}

// clientAuth adds HTTP basic client authentication (RFC 6749 section
// 2.3.1) to the device authorization request, which x/oauth2 sends with
// client_id alone.
type clientAuth struct {
	next   http.RoundTripper
	style  broker.AuthStyle
	id     string
	secret string
}

func (a *clientAuth) RoundTrip(req *http.Request) (*http.Response, error) {
	if a.style == broker.AuthStylePost || a.secret == "" {
		return a.next.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	r.SetBasicAuth(url.QueryEscape(a.id), url.QueryEscape(a.secret))
	return a.next.RoundTrip(r)
}
