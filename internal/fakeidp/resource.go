package fakeidp

import (
	"net/http"
	"strings"
)

// resourceBody is what /resource answers to a valid access token.
type resourceBody struct {
	OK       bool   `json:"ok"`
	ClientID string `json:"client_id"`
	Family   string `json:"family"`
	Scope    string `json:"scope,omitempty"`
}

// handleResource serves the protected resource: 200 for a live access token
// in an Authorization: Bearer header (RFC 6750 section 2.1, the only form
// accepted), 401 otherwise: for an unknown, expired or revoked token, and
// for one that a later refresh superseded (RevokePreviousAccessToken).
func (s *Server) handleResource(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	ev := Event{Time: now, Path: ResourcePath, Generation: -1}
	h := w.Header()
	noStore(h)

	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimLeft(token, " ")
	if !strings.EqualFold(scheme, "Bearer") || token == "" {
		// No credentials, or credentials of another kind: a bare challenge
		// without an error code (RFC 6750 section 3.1).
		h.Set("WWW-Authenticate", "Bearer")
		s.resource401(w, &ev, "")
		return
	}

	s.mu.RLock()
	a, ok := s.access[token]
	var body resourceBody
	desc := ""
	switch {
	case !ok:
		desc = "The access token is unknown"
	case a.fam.revoked:
		desc = "The access token was revoked"
	case a.superseded():
		desc = "The access token was revoked by a later refresh"
	case !now.Before(a.expiry):
		desc = "The access token expired"
	default:
		body = resourceBody{OK: true, ClientID: a.fam.clientID, Family: a.fam.id, Scope: a.scope}
	}
	if ok {
		ev.ClientID, ev.Family, ev.Generation = a.fam.clientID, a.fam.id, a.gen
	}
	s.mu.RUnlock()

	if desc != "" {
		h.Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="`+desc+`"`)
		ev.Error = "invalid_token"
		s.resource401(w, &ev, desc)
		return
	}
	s.stats.resourceOK.Add(1)
	ev.Status = http.StatusOK
	s.emit(&ev)
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) resource401(w http.ResponseWriter, ev *Event, desc string) {
	s.stats.resource401.Add(1)
	ev.Status = http.StatusUnauthorized
	s.emit(ev)
	if desc == "" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	writeJSON(w, http.StatusUnauthorized, errorBody{Error: "invalid_token", Description: desc})
}
