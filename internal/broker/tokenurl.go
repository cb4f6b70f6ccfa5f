package broker

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
)

// TokenURLPolicy says which IdP endpoints a credential may name, checked
// whenever a credential is put in (PutCredential, EnsureCredential, the
// credentials file). The zero value is the default: https, except to a
// loopback host (localhost, 127.0.0.0/8, ::1); never a link-local or cloud
// metadata address (169.254.0.0/16, fe80::/10, fd00:ec2::254), where a
// refresh token sent by mistake would land on the instance metadata
// service.
type TokenURLPolicy struct {
	// AllowInsecure lets http:// name any host (--allow-insecure-token-urls).
	AllowInsecure bool
	// Allow, when not empty, lists the host patterns a token URL's host must
	// match (--token-url-allow): "idp.example.com" exactly, or
	// "*.example.com" for any name below example.com. Case does not matter.
	Allow []string
}

// metadataAddrs are cloud instance metadata endpoints outside the
// link-local ranges.
var metadataAddrs = []netip.Addr{netip.MustParseAddr("fd00:ec2::254")}

// metadataHosts are host names of metadata services.
var metadataHosts = map[string]bool{"metadata.google.internal": true, "metadata": true}

// Check reports whether the URL u (already a valid absolute http(s) URL)
// may be used, as an ErrInvalidArgument naming field.
func (p TokenURLPolicy) Check(field, u string) error {
	parsed, err := url.Parse(u)
	if err != nil {
		return invalidArg(field, "not a URL")
	}
	host := strings.ToLower(strings.TrimSuffix(parsed.Hostname(), "."))
	ip, ipErr := netip.ParseAddr(host)
	isIP := ipErr == nil
	if isIP {
		ip = ip.Unmap()
		if ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || slices.Contains(metadataAddrs, ip) {
			return invalidArg(field, "must not name a link-local or cloud metadata address (%s)", ip)
		}
		if ip.IsUnspecified() {
			return invalidArg(field, "must not name an unspecified address (%s)", ip)
		}
	} else if metadataHosts[host] {
		return invalidArg(field, "must not name a cloud metadata service (%s)", host)
	}
	if len(p.Allow) > 0 && !matchAny(p.Allow, host) {
		return invalidArg(field, "host %q is not in --token-url-allow", host)
	}
	if parsed.Scheme != "https" && !p.AllowInsecure && !(host == "localhost" || isIP && ip.IsLoopback()) {
		return invalidArg(field, "must be https (http only to a loopback host, or with --allow-insecure-token-urls)")
	}
	return nil
}

// matchAny reports whether host matches one of the patterns.
func matchAny(patterns []string, host string) bool {
	for _, p := range patterns {
		p = strings.ToLower(strings.TrimSpace(p))
		if rest, ok := strings.CutPrefix(p, "*."); ok {
			if strings.HasSuffix(host, "."+rest) {
				return true
			}
		} else if host == p {
			return true
		}
	}
	return false
}

// ParseHostPatterns parses a comma-separated --token-url-allow list: each
// entry a host name, an IP address or "*." and a host name; no scheme, port
// or path.
func ParseHostPatterns(list string) ([]string, error) {
	var out []string
	for _, raw := range strings.Split(list, ",") {
		p := strings.ToLower(strings.TrimSpace(raw))
		if p == "" {
			continue
		}
		name := strings.TrimPrefix(p, "*.")
		if strings.ContainsAny(name, "*/:@ ") && net.ParseIP(name) == nil || name == "" {
			return nil, fmt.Errorf("host pattern %q: want a host name, an IP address or *.domain", raw)
		}
		out = append(out, p)
	}
	return out, nil
}
