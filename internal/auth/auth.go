// Package auth establishes who is calling the broker: per-client bearer keys
// (the broker's configuration holds only their SHA-256 hashes) and mutual TLS
// (the identity is the client certificate's URI SAN or Subject CN), mapped to
// the clients of a registry. It also builds the server's TLS configuration and
// limits, per client, how often the costly methods may be called.
//
// An Authenticator implements the transport's Authenticator interface:
//
//	clients, err := auth.LoadClients("clients.json")
//	a, err := auth.NewAuthenticator(clients)
//	caller, err := a.Authenticate(ctx) // broker.Caller{ID, Admin}
//
// New keys come from GenerateKey: the key goes to the client, the hash into
// the registry.
package auth

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Authenticator maps a call's credentials to a registered client. Its
// registry is fixed when it is made; it is safe for concurrent use.
type Authenticator struct {
	reg *registry

	// verified remembers the keys that were presented and matched a
	// registered hash, so that a key's next call costs a keyed lookup and a
	// constant-time comparison instead of a SHA-256 (see bearer). It holds
	// at most one key per registered hash, so it is bounded by the
	// registry, and it is replaced, never modified: readers take no lock.
	verified atomic.Pointer[map[uint64]*verifiedKey]
	seed     maphash.Seed
	vmu      sync.Mutex // serializes the replacements of verified
}

// verifiedKey is a key that matched a registered hash, and its client.
type verifiedKey struct {
	key    string
	client *client
}

// NewAuthenticator returns an Authenticator for clients, validated as
// ParseClients does.
func NewAuthenticator(clients []Client) (*Authenticator, error) {
	reg, err := index(clients)
	if err != nil {
		return nil, err
	}
	a := &Authenticator{reg: reg, seed: maphash.MakeSeed()}
	a.verified.Store(&map[uint64]*verifiedKey{})
	return a, nil
}

// Authenticate returns the registered client that made the call ctx belongs
// to. A call proves its identity by
//
//   - gRPC metadata "authorization: Bearer <key>" (the scheme in any case),
//     where the key's SHA-256 is registered, and/or
//   - a client certificate the TLS handshake verified (credentials.TLSInfo
//     with verified chains), whose identity is registered as a
//     cert_identity. The identity is the leaf's URI SAN (SPIFFE ID) when it
//     has exactly one, its Subject CN when it has none; a certificate with
//     several URI SANs names no one.
//
// The rules are strict: a bearer key that is malformed or unknown fails the
// call even when the certificate is fine, and a key and a certificate that
// name two different clients fail it too. A verified certificate whose
// identity is not registered is only transport security: the key decides.
//
// Every failure is a *broker.Error of kind broker.ErrUnauthenticated whose
// text never quotes the key or the certificate.
func (a *Authenticator) Authenticate(ctx context.Context) (broker.Caller, error) {
	byKey, err := a.bearer(ctx)
	if err != nil {
		return broker.Caller{}, err
	}
	byCert, hasCert := a.certificate(ctx)
	c := byKey
	switch {
	case byKey != nil && byCert != nil && byKey != byCert:
		return broker.Caller{}, unauthenticated("the bearer key and the client certificate name different clients")
	case byKey == nil && byCert != nil:
		c = byCert
	case c == nil && hasCert:
		return broker.Caller{}, unauthenticated("the client certificate names no registered client and no bearer key was sent")
	case c == nil:
		return broker.Caller{}, unauthenticated("no credentials: send \"authorization: Bearer <key>\" metadata or a client certificate")
	}
	return broker.Caller{ID: c.id, Admin: c.admin}, nil
}

// bearer returns the client whose key the call's authorization metadata
// carries: nil without one, an error for a malformed or unknown one.
//
// The lookup is a map keyed by the SHA-256 of the presented key, not a
// constant-time comparison against each registered hash, and that is safe:
// its timing can only depend on the hash of the key the caller sent, and
// learning how the SHA-256 of one's own guesses relates to a stored hash
// gives no way to find a key with that hash (SHA-256 is preimage
// resistant).
//
// A key that matched is remembered (in memory only, as it passes through
// the process anyway), so that its next calls skip the SHA-256: they find it
// by a hash keyed with a secret random seed, and compare it with the
// presented key in constant time. Timing can then tell a guess only whether
// its seeded hash collides with that of a key in use (a 64-bit value
// unknown to the caller) and its length, never how much of it matches.
// Unknown keys always take the SHA-256 path and are never remembered.
func (a *Authenticator) bearer(ctx context.Context) (*client, error) {
	vals := metadata.ValueFromIncomingContext(ctx, "authorization")
	switch len(vals) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, unauthenticated("more than one authorization value")
	}
	scheme, key, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return nil, unauthenticated("authorization must be \"Bearer <key>\"")
	}
	key = strings.TrimLeft(key, " ")
	if key == "" || len(key) > maxKeyLen {
		return nil, unauthenticated("authorization must be \"Bearer <key>\"")
	}
	h := maphash.String(a.seed, key)
	if v := (*a.verified.Load())[h]; v != nil && equalConstantTime(v.key, key) {
		return v.client, nil
	}
	sum, _ := hashKey(key)
	c := a.reg.byHash[sum]
	if c == nil {
		return nil, unauthenticated("unknown client key")
	}
	a.remember(h, key, c)
	return c, nil
}

// remember adds key, which matched a registered hash and whose seeded hash
// is h, to the verified keys. A seeded-hash collision with another verified
// key (a 2^-64 chance) keeps the first: the second just is not cached.
func (a *Authenticator) remember(h uint64, key string, c *client) {
	a.vmu.Lock()
	defer a.vmu.Unlock()
	old := *a.verified.Load()
	if _, ok := old[h]; ok || len(old) >= len(a.reg.byHash) {
		return
	}
	next := make(map[uint64]*verifiedKey, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[h] = &verifiedKey{key: strings.Clone(key), client: c}
	a.verified.Store(&next)
}

// equalConstantTime reports whether a and b are equal, in a time that
// depends only on their lengths.
func equalConstantTime(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	var v byte
	for i := 0; i < len(a); i++ {
		v |= a[i] ^ b[i]
	}
	return subtle.ConstantTimeByteEq(v, 0) == 1
}

// certificate returns the client the call's verified client certificate
// names, and whether there is a verified client certificate at all.
func (a *Authenticator) certificate(ctx context.Context) (*client, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return nil, false
	}
	var info credentials.TLSInfo
	switch ai := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		info = ai
	case *credentials.TLSInfo:
		info = *ai
	default:
		return nil, false
	}
	chains := info.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return nil, false
	}
	id, ok := CertIdentity(chains[0][0])
	if !ok {
		return nil, true
	}
	return a.reg.byCert[id], true
}

// CertIdentity returns the identity a client certificate states, as matched
// against a registry's cert_identity: its URI SAN when it has exactly one
// (e.g. a SPIFFE ID), otherwise, when it has none, its Subject CN. A
// certificate with several URI SANs, or with neither, states none.
func CertIdentity(cert *x509.Certificate) (string, bool) {
	switch len(cert.URIs) {
	case 0:
		cn := cert.Subject.CommonName
		return cn, cn != ""
	case 1:
		return cert.URIs[0].String(), true
	}
	return "", false
}

func unauthenticated(detail string) error {
	return &broker.Error{Kind: broker.ErrUnauthenticated, Detail: detail}
}
