// Package upstream calls an identity provider's RFC 6749 token endpoint
// through golang.org/x/oauth2. Client implements broker.Upstream: it takes a
// broker.UpstreamRequest and reports a failure as a *broker.UpstreamError
// wrapping an *Error, which says whether the grant is dead (Permanent), the
// trouble will pass (Transient), or the IdP may have acted on a request whose
// answer was lost (Unanswered).
package upstream

import "github.com/tokenbroker/tokenbroker/internal/broker"

var _ broker.Upstream = (*Client)(nil)
