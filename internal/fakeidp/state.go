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
	// gen is the generation of the family's newest tokens: its successful
	// refreshes so far, grace replays not counted.
	gen int
	// heads are the family's live refresh tokens: one, or several while
	// GraceNewPair replays have minted siblings none of which has been
	// used yet. Empty for client_credentials.
	heads   []*refreshEntry
	revoked bool
	// accessIssued numbers the family's access tokens; those numbered
	// below accessFloor were revoked by a later refresh
	// (RevokePreviousAccessToken).
	accessIssued, accessFloor int

	// Counters, reset by ResetStats.
	refreshes      int64 // refresh grants answered with tokens, grace replays included
	graceReplays   int64 // spent refresh tokens accepted within a grace window
	rejectedReuses int64 // spent refresh tokens refused
}

// refreshEntry is one refresh token. Guarded by Server.mu.
type refreshEntry struct {
	fam   *family
	gen   int
	spent bool
	// superseded is set for a spent token that was never used: a sibling
	// minted by a GraceNewPair replay that died when another was used. It
	// is never eligible for a grace replay.
	superseded bool
	spentAt    time.Time
	// reply is the latest pair answered for this token, which the Grace
	// and DexReuseInterval policies replay.
	reply tokenResponse
}

// accessEntry is one access token. Guarded by Server.mu.
type accessEntry struct {
	fam    *family
	gen    int
	seq    int // numbered within the family, see family.accessFloor
	scope  string
	expiry time.Time
}

// superseded reports whether a later refresh revoked a. Call with s.mu held.
func (a *accessEntry) superseded() bool { return a.seq < a.fam.accessFloor }

// newToken returns a fresh unguessable token naming its kind and family.
func newToken(kind, fam string) string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	return kind + "." + fam + "." + base64.RawURLEncoding.EncodeToString(b[:])
}

// newFamily creates a family. Call with s.mu held.
func (s *Server) newFamily(clientID string, scope []string) *family {
	s.families++
	f := &family{
		id:       "f" + strconv.Itoa(s.families),
		clientID: clientID,
		scope:    append([]string(nil), scope...),
	}
	s.fams[f.id] = f
	return f
}

// Seed starts a new token family for clientID with the given scopes and
// returns its refresh token (generation 0), as if the client had just
// completed an authorization grant. The client need not be registered yet,
// but only a registered client can use the token.
func (s *Server) Seed(clientID string, scopes ...string) (refreshToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.newFamily(clientID, scopes)
	return s.newRefresh(f)
}

// newRefresh mints a refresh token of f at its current generation and makes
// it one of f's heads. Call with s.mu held.
func (s *Server) newRefresh(f *family) string {
	token := newToken("rt", f.id)
	e := &refreshEntry{fam: f, gen: f.gen}
	s.refresh[token] = e
	f.heads = append(f.heads, e)
	return token
}

// issueAccess mints an access token of f at its current generation. With
// revokeEarlier, every access token f issued before dies. Call with s.mu
// held.
func (s *Server) issueAccess(f *family, scope string, now time.Time, revokeEarlier bool) (token string, ttl time.Duration) {
	token = newToken("at", f.id)
	a := &accessEntry{fam: f, gen: f.gen, seq: f.accessIssued, scope: scope, expiry: now.Add(s.ttl)}
	f.accessIssued++
	if revokeEarlier {
		f.accessFloor = a.seq
	}
	s.access[token] = a
	return token, s.ttl
}

// TokenInfo describes a token the Server issued. It holds no secret.
type TokenInfo struct {
	Family   string // the family's ID, also embedded in each of its tokens
	ClientID string // the client the family belongs to
	Access   bool   // an access token (else a refresh token)
	// Generation is the family generation the token was issued at: 0 for
	// the seeded refresh token (and a client_credentials access token), n
	// for tokens issued by the family's n-th refresh. Tokens minted by a
	// grace replay have the generation of the pair they replace.
	Generation int
	// FamilyGeneration is the number of refreshes the family has had,
	// grace replays not counted: the generation of its newest tokens.
	FamilyGeneration int
	// Live reports whether the token would be accepted now: a refresh
	// token that is unspent, an access token that has not expired and was
	// not superseded, both in a family that is not revoked.
	Live  bool
	Spent bool // a refresh token that a rotation spent, or that was superseded
	// Superseded is set for a refresh token that died unused because a
	// sibling minted from the same spent token (GraceNewPair) was used
	// first, and for an access token revoked by a later refresh
	// (RevokePreviousAccessToken).
	Superseded bool
	Revoked    bool      // the family is revoked
	Expiry     time.Time // an access token's expiry
	Scope      string    // an access token's scope
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
			Superseded:       e.superseded,
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
			Live:             !a.fam.revoked && !a.superseded() && s.now().Before(a.expiry),
			Superseded:       a.superseded(),
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

// FamilyStats counts what happened to one token family. It holds no token.
// A spent refresh token presented again is either a grace replay (accepted
// within a grace window) or a rejected reuse; the two together are the
// family's spent-token presentations, which a client that never loses a
// rotated refresh token keeps at 0.
type FamilyStats struct {
	Family   string // the family's ID
	ClientID string // the client the family belongs to
	// Generation is the number of refreshes the family has had, grace
	// replays not counted.
	Generation int
	// Refreshes counts refresh grants answered with tokens, grace replays
	// included.
	Refreshes int64
	// GraceReplays counts spent refresh tokens presented again and
	// accepted within a grace window (Grace, DexReuseInterval,
	// GraceNewPair).
	GraceReplays int64
	// RejectedReuses counts spent refresh tokens presented again and
	// refused, whatever the answer (invalid_grant with or without a
	// revocation, Dex's invalid_request).
	RejectedReuses int64
	Revoked        bool // the family is revoked
}

// SpentPresentations is the number of times a spent refresh token of the
// family was presented: GraceReplays + RejectedReuses.
func (f FamilyStats) SpentPresentations() int64 { return f.GraceReplays + f.RejectedReuses }

// FamilyStats returns the counters of one family, named by any refresh or
// access token it issued (the seeded refresh token, say) or by its ID. ok is
// false for an unknown token or ID. ResetStats zeroes the counters.
func (s *Server) FamilyStats(tokenOrFamily string) (stats FamilyStats, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	f, ok := s.familyOf(tokenOrFamily)
	if !ok {
		return FamilyStats{}, false
	}
	return f.stats(), true
}

// Families returns the counters of every family, in the order they were
// created.
func (s *Server) Families() []FamilyStats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]FamilyStats, 0, len(s.fams))
	for i := 1; i <= s.families; i++ {
		if f, ok := s.fams["f"+strconv.Itoa(i)]; ok {
			out = append(out, f.stats())
		}
	}
	return out
}

// familyOf finds a family by token or ID. Call with s.mu held.
func (s *Server) familyOf(tokenOrFamily string) (*family, bool) {
	if e, ok := s.refresh[tokenOrFamily]; ok {
		return e.fam, true
	}
	if a, ok := s.access[tokenOrFamily]; ok {
		return a.fam, true
	}
	f, ok := s.fams[tokenOrFamily]
	return f, ok
}

// stats snapshots f's counters. Call with s.mu held.
func (f *family) stats() FamilyStats {
	return FamilyStats{
		Family:         f.id,
		ClientID:       f.clientID,
		Generation:     f.gen,
		Refreshes:      f.refreshes,
		GraceReplays:   f.graceReplays,
		RejectedReuses: f.rejectedReuses,
		Revoked:        f.revoked,
	}
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
