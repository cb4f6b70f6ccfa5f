package upstream

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
)

// DefaultHTTPClientWith returns a copy of the default HTTP client (see
// Client.HTTPClient) whose transport is wrap(its transport): for instance
// one that propagates the trace context to the IdP. The copy shares the
// default's connection pool.
func DefaultHTTPClientWith(wrap func(http.RoundTripper) http.RoundTripper) *http.Client {
	c := *defaultHTTPClient()
	c.Transport = wrap(c.Transport)
	return &c
}

// refuseMetadata is the dialer's Control of the default client: it refuses
// to connect to a link-local or cloud metadata address, whatever name
// resolved to it, so that a token URL cannot send a refresh token to the
// instance metadata service (the broker refuses such URLs when they are
// put in; this also covers a name that resolves there later).
func refuseMetadata(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil
	}
	ip = ip.Unmap()
	if ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip == metadataV6 {
		return fmt.Errorf("refusing to connect to the link-local or metadata address %s", ip)
	}
	return nil
}

var metadataV6 = netip.MustParseAddr("fd00:ec2::254")
