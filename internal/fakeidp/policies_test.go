package fakeidp_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// refreshRaw refreshes rt with a raw POST and returns the answer.
func refreshRaw(t testing.TB, s *fakeidp.Server, rt string) response {
	t.Helper()
	return post(t, s, refreshForm(rt), basic(clientID, secret))
}

// mustPair refreshes rt and returns the new access and refresh tokens.
func mustPair(t testing.TB, s *fakeidp.Server, rt string) (at, next string) {
	t.Helper()
	r := refreshRaw(t, s, rt)
	if r.status != http.StatusOK || r.str("access_token") == "" {
		t.Fatalf("refresh: %d %s", r.status, r.raw)
	}
	return r.str("access_token"), r.str("refresh_token")
}

func wantFamily(t testing.TB, s *fakeidp.Server, token string, want fakeidp.FamilyStats) {
	t.Helper()
	got, ok := s.FamilyStats(token)
	if !ok {
		t.Fatal("FamilyStats: unknown family")
	}
	want.Family, want.ClientID = got.Family, got.ClientID
	if got != want {
		t.Fatalf("family stats %+v, want %+v", got, want)
	}
}

func wantResource(t testing.TB, s *fakeidp.Server, at string, status int) {
	t.Helper()
	if r := resource(t, s, at); r.status != status {
		t.Fatalf("resource: %d %s, want %d", r.status, r.raw, status)
	}
}

func TestGraceWindowEndsOnTheClock(t *testing.T) {
	clock := newClock()
	s := newIdP(t, fakeidp.Options{OnReuse: fakeidp.Grace, GraceWindow: 3 * time.Second, Now: clock.Now})
	rt0 := s.Seed(clientID)
	at1, rt1 := mustPair(t, s, rt0)

	clock.Advance(3 * time.Second) // the window's last instant
	if at, rt := mustPair(t, s, rt0); at != at1 || rt != rt1 {
		t.Fatal("a replay at the end of the window did not answer the same pair")
	}
	clock.Advance(time.Nanosecond)
	wantOAuthError(t, refreshRaw(t, s, rt0), http.StatusBadRequest, "invalid_grant")
	if info, _ := s.Lookup(at1); !info.Revoked {
		t.Fatal("a reuse after the window did not revoke the family")
	}
	wantFamily(t, s, rt0, fakeidp.FamilyStats{Generation: 1, Refreshes: 2, GraceReplays: 1, RejectedReuses: 1, Revoked: true})
}

func TestGraceWindowIsSetAtRunTime(t *testing.T) {
	clock := newClock()
	s := newIdP(t, fakeidp.Options{OnReuse: fakeidp.Grace, Now: clock.Now})
	rt0 := s.Seed(clientID)
	mustPair(t, s, rt0)
	clock.Advance(fakeidp.DefaultGraceWindow - time.Second)
	mustPair(t, s, rt0) // within the default window

	// Shrinking the window applies to a token spent before.
	s.SetGraceWindow(time.Second)
	wantOAuthError(t, refreshRaw(t, s, rt0), http.StatusBadRequest, "invalid_grant")
}

func TestDexReuseInterval(t *testing.T) {
	clock := newClock()
	var rec recorder
	s := newIdP(t, fakeidp.Options{OnReuse: fakeidp.DexReuseInterval, GraceWindow: 3 * time.Second, Now: clock.Now, OnEvent: rec.add})
	rt0 := s.Seed(clientID)
	at1, rt1 := mustPair(t, s, rt0)

	// Within the interval Dex answers the same successor with a new access
	// token each time; every one of them works.
	clock.Advance(time.Second)
	at2, rt := mustPair(t, s, rt0)
	if rt != rt1 || at2 == at1 {
		t.Fatal("a replay within the reuse interval: want the same refresh token and a new access token")
	}
	at3, rt := mustPair(t, s, rt0)
	if rt != rt1 || at3 == at2 || at3 == at1 {
		t.Fatal("a second replay within the reuse interval: want the same refresh token and a new access token")
	}
	for _, at := range []string{at1, at2, at3} {
		wantResource(t, s, at, http.StatusOK)
	}
	if info, _ := s.Lookup(at3); info.Generation != 1 {
		t.Fatalf("replayed access token generation %d, want 1", info.Generation)
	}

	// After the interval: Dex's invalid_request, nothing revoked.
	clock.Advance(2*time.Second + time.Nanosecond)
	r := refreshRaw(t, s, rt0)
	wantOAuthError(t, r, http.StatusBadRequest, "invalid_request")
	if !strings.Contains(r.str("error_description"), "already been claimed") {
		t.Fatalf("description %q", r.str("error_description"))
	}
	wantResource(t, s, at3, http.StatusOK)
	_, rt2 := mustPair(t, s, rt1)

	// Once the successor has been used, the old token is no longer the
	// one Dex lets through, window or not; the successor, just spent, is.
	s.SetGraceWindow(time.Hour)
	wantOAuthError(t, refreshRaw(t, s, rt0), http.StatusBadRequest, "invalid_request")
	if _, rt := mustPair(t, s, rt1); rt != rt2 {
		t.Fatal("a replay of the token just spent did not answer its successor")
	}
	mustPair(t, s, rt2)

	wantFamily(t, s, rt0, fakeidp.FamilyStats{Generation: 3, Refreshes: 6, GraceReplays: 3, RejectedReuses: 2})
	if st := s.Stats(); st.Reuses != 5 || st.GraceReplays != 3 || st.Refreshes != 6 || st.Revocations != 0 {
		t.Fatalf("stats %+v", st)
	}
	var replays, rejected int
	for _, ev := range rec.events() {
		switch {
		case ev.GraceReplay && ev.Reuse && ev.Status == http.StatusOK:
			replays++
		case ev.Reuse && !ev.GraceReplay && ev.Error == "invalid_request":
			rejected++
		case ev.Reuse || ev.GraceReplay:
			t.Fatalf("event %+v", ev)
		}
	}
	if replays != 3 || rejected != 2 {
		t.Fatalf("events: %d replays, %d rejected reuses; want 3, 2", replays, rejected)
	}
}

func TestGraceNewPair(t *testing.T) {
	clock := newClock()
	s := newIdP(t, fakeidp.Options{OnReuse: fakeidp.GraceNewPair, GraceWindow: 30 * time.Second, Now: clock.Now})
	rt0 := s.Seed(clientID)
	at1, rt1 := mustPair(t, s, rt0)

	// Each replay within the window mints a new pair; the earlier
	// successors stay valid.
	clock.Advance(10 * time.Second)
	at2, rt2 := mustPair(t, s, rt0)
	at3, rt3 := mustPair(t, s, rt0)
	if len(map[string]bool{rt1: true, rt2: true, rt3: true}) != 3 || len(map[string]bool{at1: true, at2: true, at3: true}) != 3 {
		t.Fatal("grace replays did not mint new pairs")
	}
	for _, rt := range []string{rt1, rt2, rt3} {
		info, _ := s.Lookup(rt)
		if !info.Live || info.Generation != 1 {
			t.Fatalf("successor before any was used: %+v", info)
		}
	}
	for _, at := range []string{at1, at2, at3} {
		wantResource(t, s, at, http.StatusOK)
	}

	// Using one settles the family: the siblings die unused, and
	// presenting one of them is a reuse that revokes the family.
	at4, _ := mustPair(t, s, rt2)
	for _, rt := range []string{rt1, rt3} {
		if info, _ := s.Lookup(rt); info.Live || !info.Spent || !info.Superseded {
			t.Fatalf("sibling after another was used: %+v", info)
		}
	}
	if info, _ := s.Lookup(rt2); info.Superseded || !info.Spent {
		t.Fatalf("the used successor: %+v", info)
	}
	wantFamily(t, s, rt0, fakeidp.FamilyStats{Generation: 2, Refreshes: 4, GraceReplays: 2})
	wantOAuthError(t, refreshRaw(t, s, rt1), http.StatusBadRequest, "invalid_grant")
	wantResource(t, s, at4, http.StatusUnauthorized)
	wantFamily(t, s, rt0, fakeidp.FamilyStats{Generation: 2, Refreshes: 4, GraceReplays: 2, RejectedReuses: 1, Revoked: true})
	if st := s.Stats(); st.Reuses != 3 || st.GraceReplays != 2 || st.Revocations != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGraceNewPairFallsBackToRevocation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after func(t *testing.T, s *fakeidp.Server, clock *fakeClock, rt1 string)
	}{
		{"window passed", func(t *testing.T, s *fakeidp.Server, clock *fakeClock, rt1 string) {
			clock.Advance(30*time.Second + time.Nanosecond)
		}},
		{"successor used", func(t *testing.T, s *fakeidp.Server, clock *fakeClock, rt1 string) {
			mustPair(t, s, rt1)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newClock()
			s := newIdP(t, fakeidp.Options{OnReuse: fakeidp.GraceNewPair, GraceWindow: 30 * time.Second, Now: clock.Now})
			rt0 := s.Seed(clientID)
			_, rt1 := mustPair(t, s, rt0)
			tc.after(t, s, clock, rt1)
			wantOAuthError(t, refreshRaw(t, s, rt0), http.StatusBadRequest, "invalid_grant")
			if fs, _ := s.FamilyStats(rt0); !fs.Revoked || fs.GraceReplays != 0 || fs.RejectedReuses != 1 {
				t.Fatalf("family %+v", fs)
			}
		})
	}
}

func TestReusePolicyIsSetAtRunTime(t *testing.T) {
	s := newIdP(t, fakeidp.Options{GraceWindow: time.Hour})
	rt0 := s.Seed(clientID)
	_, rt1 := mustPair(t, s, rt0)
	s.SetReusePolicy(fakeidp.GraceNewPair)
	if _, rt := mustPair(t, s, rt0); rt == rt1 {
		t.Fatal("GraceNewPair answered the same refresh token")
	}
	s.SetReusePolicy(fakeidp.DexInvalidRequest)
	wantOAuthError(t, refreshRaw(t, s, rt0), http.StatusBadRequest, "invalid_request")
	s.SetReusePolicy(fakeidp.RevokeFamily)
	wantOAuthError(t, refreshRaw(t, s, rt0), http.StatusBadRequest, "invalid_grant")
	for p, want := range map[fakeidp.ReusePolicy]string{
		fakeidp.RevokeFamily: "revoke-family", fakeidp.Grace: "grace", fakeidp.DexInvalidRequest: "dex-invalid-request",
		fakeidp.DexReuseInterval: "dex-reuse-interval", fakeidp.GraceNewPair: "grace-new-pair",
	} {
		if p.String() != want {
			t.Errorf("%d.String() = %q, want %q", p, p.String(), want)
		}
	}
}

func TestRevokePreviousAccessToken(t *testing.T) {
	s := newIdP(t, fakeidp.Options{RevokePreviousAccessToken: true})
	rt := s.Seed(clientID)
	at1, rt := mustPair(t, s, rt)
	at2, rt := mustPair(t, s, rt)

	// The previous access token dies at once, long before its expiry.
	wantResource(t, s, at1, http.StatusUnauthorized)
	if r := resource(t, s, at1); !strings.Contains(r.str("error_description"), "later refresh") {
		t.Fatalf("description %q", r.str("error_description"))
	}
	if info, _ := s.Lookup(at1); info.Live || !info.Superseded || info.Revoked {
		t.Fatalf("previous access token: %+v", info)
	}
	wantResource(t, s, at2, http.StatusOK)

	// Off at run time: the next refresh leaves the earlier tokens alone.
	s.SetRevokePreviousAccessToken(false)
	at3, rt := mustPair(t, s, rt)
	wantResource(t, s, at2, http.StatusOK)
	wantResource(t, s, at3, http.StatusOK)
	s.SetRevokePreviousAccessToken(true)
	at4, _ := mustPair(t, s, rt)
	for _, at := range []string{at2, at3} {
		wantResource(t, s, at, http.StatusUnauthorized)
	}
	wantResource(t, s, at4, http.StatusOK)
	if st := s.Stats(); st.Resource401 != 4 || st.Revocations != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRevokePreviousAccessTokenOnGraceReplay(t *testing.T) {
	s := newIdP(t, fakeidp.Options{OnReuse: fakeidp.GraceNewPair, GraceWindow: time.Hour, RevokePreviousAccessToken: true})
	rt0 := s.Seed(clientID)
	at1, _ := mustPair(t, s, rt0)
	at2, _ := mustPair(t, s, rt0) // the replay of a client whose reply was lost
	wantResource(t, s, at1, http.StatusUnauthorized)
	wantResource(t, s, at2, http.StatusOK)
}

func TestFamilyStats(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	quiet := s.Seed(clientID)
	busy := s.Seed(clientID)
	at, rt := mustPair(t, s, busy)
	mustPair(t, s, rt)
	wantOAuthError(t, refreshRaw(t, s, busy), http.StatusBadRequest, "invalid_grant")
	wantOAuthError(t, refreshRaw(t, s, busy), http.StatusBadRequest, "invalid_grant") // revoked already

	wantFamily(t, s, quiet, fakeidp.FamilyStats{})
	want := fakeidp.FamilyStats{Generation: 2, Refreshes: 2, RejectedReuses: 2, Revoked: true}
	for _, key := range []string{busy, rt, at} {
		wantFamily(t, s, key, want)
	}
	fs, _ := s.FamilyStats(busy)
	if fs.SpentPresentations() != 2 || fs.ClientID != clientID {
		t.Fatalf("family %+v", fs)
	}
	if byID, ok := s.FamilyStats(fs.Family); !ok || byID != fs {
		t.Fatalf("by ID: %+v %v", byID, ok)
	}
	if _, ok := s.FamilyStats("rt.f1.forged"); ok {
		t.Fatal("FamilyStats of a forged token")
	}

	all := s.Families()
	if len(all) != 2 || all[1] != fs || all[0].Refreshes != 0 {
		t.Fatalf("families %+v", all)
	}
	var refreshes, spent int64
	for _, f := range all {
		refreshes += f.Refreshes
		spent += f.SpentPresentations()
	}
	if st := s.Stats(); st.Refreshes != refreshes || st.Reuses != spent {
		t.Fatalf("stats %+v; families: %d refreshes, %d spent presentations", st, refreshes, spent)
	}

	s.ResetStats()
	wantFamily(t, s, busy, fakeidp.FamilyStats{Generation: 2, Revoked: true})
}
