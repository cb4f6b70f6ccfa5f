package fakeidp

import (
	"crypto/rand"
	"encoding/base64"
	"strconv"
	"strings"
	"time"
)

// family is one chain of tokens descending from a seeded refresh token or a
// client_credentials grant. Guarded by Server.mu.
type family struct {
	id       string
	clientID string
	scope    []string // as granted; a refresh may narrow it for one access token
	gen      int      // successful refreshes so far
	current  string   // the live refresh token; "" for client_credentials
	revoked  bool
}

// refreshEntry is one refresh token. Guarded by Server.mu.
type refreshEntry struct {
	fam     *family
	gen     int
	spent   bool
	spentAt time.Time
	// reply is the pair a rotation that spent this token answered, replayed
	// by the Grace policy.
	reply tokenResponse
}

// accessEntry is one access token. Guarded by Server.mu.
type accessEntry struct {
	fam    *family
	gen    int
	scope  string
	expiry time.Time
}

// newToken returns a fresh unguessable token naming its kind and family.
func newToken(kind, fam string) string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	return kind + "." + fam + "." + base64.RawURLEncoding.EncodeToString(b[:])
}

// newFamily creates a family. Call with s.mu held.
func (s *Server) newFamily(clientID string, scope []string) *family {
	s.families++
	return &family{
		id:       "f" + strconv.Itoa(s.families),
		clientID: clientID,
		scope:    append([]string(nil), scope...),
	}
}

// Seed starts a new token family for clientID with the given scopes and
// returns its refresh token (generation 0), as if the client had just
// completed an authorization grant. The client need not be registered yet,
// but only a registered client can use the token.
func (s *Server) Seed(clientID string, scopes ...string) (refreshToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.newFamily(clientID, scopes)
	f.current = newToken("rt", f.id)
	s.refresh[f.current] = &refreshEntry{fam: f}
	return f.current
}

// issueAccess mints an access token of f. Call with s.mu held.
func (s *Server) issueAccess(f *family, scope string, now time.Time) (token string, ttl time.Duration) {
	token = newToken("at", f.id)
	s.access[token] = &accessEntry{fam: f, gen: f.gen, scope: scope, expiry: now.Add(s.ttl)}
	return token, s.ttl
}

// TokenInfo describes a token the Server issued. It holds no secret.
type TokenInfo struct {
	Family   string // the family's ID, also embedded in each of its tokens
	ClientID string // the client the family belongs to
	Access   bool   // an access token (else a refresh token)
	// Generation is the family generation the token was issued at: 0 for
	// the seeded refresh token (and a client_credentials access token), n
	// for tokens issued by the family's n-th refresh.
	Generation int
	// FamilyGeneration is the number of refreshes the family has had.
	FamilyGeneration int
	// Live reports whether the token would be accepted now: a refresh
	// token that is unspent, an access token that has not expired, both in
	// a family that is not revoked.
	Live    bool
	Spent   bool      // a refresh token that a rotation spent
	Revoked bool      // the family is revoked
	Expiry  time.Time // an access token's expiry
	Scope   string    // an access token's scope
}

// Lookup tells which family and generation token (a refresh or access token
// the Server issued) belongs to and whether it is live. ok is false for a
// token the Server never issued.
func (s *Server) Lookup(token string) (info TokenInfo, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if e, found := s.refresh[token]; found {
		return TokenInfo{
			Family:           e.fam.id,
			ClientID:         e.fam.clientID,
			Generation:       e.gen,
			FamilyGeneration: e.fam.gen,
			Live:             !e.spent && !e.fam.revoked,
			Spent:            e.spent,
			Revoked:          e.fam.revoked,
		}, true
	}
	if a, found := s.access[token]; found {
		return TokenInfo{
			Family:           a.fam.id,
			ClientID:         a.fam.clientID,
			Access:           true,
			Generation:       a.gen,
			FamilyGeneration: a.fam.gen,
			Live:             !a.fam.revoked && s.now().Before(a.expiry),
			Revoked:          a.fam.revoked,
			Expiry:           a.expiry,
			Scope:            a.scope,
		}, true
	}
	return TokenInfo{}, false
}

// Revoke revokes the family of token (any refresh or access token of it),
// as an IdP administrator would: its refresh token and access tokens stop
// working. It reports whether the token was known.
func (s *Server) Revoke(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	var f *family
	if e, ok := s.refresh[token]; ok {
		f = e.fam
	} else if a, ok := s.access[token]; ok {
		f = a.fam
	} else {
		return false
	}
	s.revoke(f)
	return true
}

// revoke revokes f. Call with s.mu held.
func (s *Server) revoke(f *family) {
	if !f.revoked {
		f.revoked = true
		s.stats.revocations.Add(1)
	}
}

// parseScope splits a scope parameter (RFC 6749 section 3.3: scope-tokens
// separated by single spaces). ok is false when it is malformed.
func parseScope(v string) (scope []string, ok bool) {
	if v == "" {
		return nil, true
	}
	scope = strings.Split(v, " ")
	for _, tok := range scope {
		if tok == "" {
			return nil, false
		}
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if c < 0x21 || c == 0x22 || c == 0x5c || c > 0x7e {
				return nil, false
			}
		}
	}
	return scope, true
}

// subset reports whether every element of a is in b.
func subset(a, b []string) bool {
	for _, x := range a {
		found := false
		for _, y := range b {
			if x == y {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
