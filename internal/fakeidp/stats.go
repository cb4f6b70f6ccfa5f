package fakeidp

import (
	"sync/atomic"
	"time"
)

// Stats counts what a Server did since it was created or its counters were
// last reset.
type Stats struct {
	// TokenRequests counts every request to the token endpoint, faulted
	// and rejected ones included.
	TokenRequests int64
	// RefreshRequests counts grant_type=refresh_token requests that reached
	// grant processing (well formed, client authenticated, no early fault).
	RefreshRequests int64
	// Refreshes counts refresh grants answered with tokens, grace replays
	// included (a lost reply still counts: the grant happened).
	Refreshes int64
	// Reuses counts spent refresh tokens presented again, whatever the
	// policy answered: every spent-token presentation. Reuses minus
	// GraceReplays were refused. FamilyStats has the same per family.
	Reuses int64
	// GraceReplays counts the Reuses accepted within a grace window.
	GraceReplays int64
	// Revocations counts families revoked (by a reuse or by Revoke).
	Revocations int64
	// ClientCredentials counts client_credentials grants answered with a
	// token.
	ClientCredentials int64
	// InvalidClient counts requests rejected with invalid_client.
	InvalidClient int64
	// Faults counts injected faults: 5xx, 429 and lost replies.
	Faults int64
	// Stalled counts token requests that a stall (Pause, StallNext) held.
	Stalled int64
	// ClientGone counts token requests processed and answered although
	// their client had gone away: the answer went to a dead connection.
	ClientGone int64
	// Abandoned counts token requests dropped unprocessed: the Server
	// closed while they waited, or their client went away with
	// DropAbandoned on.
	Abandoned int64
	// ResourceOK counts /resource requests answered 200.
	ResourceOK int64
	// Resource401 counts /resource requests answered 401.
	Resource401 int64
}

type counters struct {
	tokenRequests, refreshRequests, refreshes, reuses, graceReplays atomic.Int64
	revocations, clientCredentials, invalidClient, faults           atomic.Int64
	stalled, clientGone, abandoned, resourceOK, resource401         atomic.Int64
}

func (c *counters) all() []*atomic.Int64 {
	return []*atomic.Int64{
		&c.tokenRequests, &c.refreshRequests, &c.refreshes, &c.reuses, &c.graceReplays,
		&c.revocations, &c.clientCredentials, &c.invalidClient, &c.faults,
		&c.stalled, &c.clientGone, &c.abandoned, &c.resourceOK, &c.resource401,
	}
}

// Stats returns a snapshot of the counters. Each counter is read atomically;
// the snapshot as a whole is not, while requests are in flight.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		TokenRequests:     c.tokenRequests.Load(),
		RefreshRequests:   c.refreshRequests.Load(),
		Refreshes:         c.refreshes.Load(),
		Reuses:            c.reuses.Load(),
		GraceReplays:      c.graceReplays.Load(),
		Revocations:       c.revocations.Load(),
		ClientCredentials: c.clientCredentials.Load(),
		InvalidClient:     c.invalidClient.Load(),
		Faults:            c.faults.Load(),
		Stalled:           c.stalled.Load(),
		ClientGone:        c.clientGone.Load(),
		Abandoned:         c.abandoned.Load(),
		ResourceOK:        c.resourceOK.Load(),
		Resource401:       c.resource401.Load(),
	}
}

// ResetStats sets every counter to zero, the families' too.
func (s *Server) ResetStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.stats.all() {
		c.Store(0)
	}
	for _, f := range s.fams {
		f.refreshes, f.graceReplays, f.rejectedReuses = 0, 0, 0
	}
}

// Event describes one request to the Server, for Options.OnEvent. It holds no
// token or secret.
type Event struct {
	Time      time.Time
	Path      string // TokenPath or ResourcePath
	GrantType string // the grant_type parameter, if any
	// ClientID is the client the request identified itself as, whether or
	// not it authenticated.
	ClientID string
	// Family is the ID of the family of the presented refresh or access
	// token, or of the family a client_credentials grant created; "" when
	// none is known.
	Family string
	// Generation is the generation of the presented token (0 for a seeded
	// refresh token, n for a token issued by the family's n-th refresh), or
	// -1 when no known token was presented.
	Generation int
	// Reuse is set when the presented refresh token was already spent.
	Reuse bool
	// GraceReplay is set, with Reuse, when the spent refresh token was
	// accepted within a grace window.
	GraceReplay bool
	// Stalled is set when a stall (Pause, StallNext) held the request.
	Stalled bool
	// ClientGone is set when the client had gone away before the answer
	// was written (while the request was stalled or waited out the
	// latency, say). Unless Abandoned is set too, the request was
	// processed anyway, rotation included, and Status (or Fault) is what
	// was written to the dead connection.
	ClientGone bool
	// Abandoned is set when the request was dropped while it waited (a
	// stall, the latency): the Server closed, or the client went away
	// (ClientGone) with DropAbandoned on. Nothing was looked at and nothing
	// answered.
	Abandoned bool
	// Status is the HTTP status answered, 0 when nothing was answered.
	Status int
	// Error is the OAuth error code answered ("invalid_grant", ...), or ""
	// on success and for faults.
	Error string
	// Fault is the fault injected into this request, if any.
	Fault Fault
}

func (s *Server) emit(ev *Event) {
	if s.onEvent != nil {
		s.onEvent(*ev)
	}
}
