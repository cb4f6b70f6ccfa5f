package upstream

import "net/http"

// DefaultHTTPClientWith returns a copy of the default HTTP client (see
// Client.HTTPClient) whose transport is wrap(its transport): for instance
// one that propagates the trace context to the IdP. The copy shares the
// default's connection pool.
func DefaultHTTPClientWith(wrap func(http.RoundTripper) http.RoundTripper) *http.Client {
	c := *defaultHTTPClient()
	c.Transport = wrap(c.Transport)
	return &c
}
