package fakeidp_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// tokenEvents returns an OnEvent hook that passes token-endpoint events on
// to the returned channel.
func tokenEvents() (func(fakeidp.Event), <-chan fakeidp.Event) {
	ch := make(chan fakeidp.Event, 64)
	return func(ev fakeidp.Event) {
		if ev.Path == fakeidp.TokenPath {
			ch <- ev
		}
	}, ch
}

func nextEvent(t *testing.T, ch <-chan fakeidp.Event) fakeidp.Event {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no event")
	}
	panic("unreachable")
}

// waitStall waits, bounded, until cond holds for the Server's stall state.
func waitStall(t *testing.T, s *fakeidp.Server, what string, cond func(fakeidp.StallState) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WaitStall(ctx, cond); err != nil {
		t.Fatalf("waiting for %s: %v (state %+v)", what, err, s.StallState())
	}
}

func held(n int) func(fakeidp.StallState) bool {
	return func(st fakeidp.StallState) bool { return st.Held == n }
}

func heldGone(n int) func(fakeidp.StallState) bool {
	return func(st fakeidp.StallState) bool { return st.ClientGone == n }
}

// sendAndHangUp writes a refresh request for rt on a connection of its own
// and closes it at once, without reading the answer.
func sendAndHangUp(t *testing.T, s *fakeidp.Server, rt string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := refreshForm(rt).Encode()
	auth := base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(clientID) + ":" + url.QueryEscape(secret)))
	if _, err := fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: idp\r\nAuthorization: Basic %s\r\n"+
		"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s",
		fakeidp.TokenPath, auth, len(body), body); err != nil {
		t.Fatal(err)
	}
}

// startRefresh sends a refresh of rt through x/oauth2 in the background; the
// returned cancel makes the client give up.
func startRefresh(t *testing.T, s *fakeidp.Server, rt string) (cancel func(), result <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	errc := make(chan error, 1)
	c := config(s, clientID, secret, oauth2.AuthStyleInHeader)
	go func() {
		_, err := refreshCtx(ctx, t, c, rt)
		errc <- err
	}()
	return cancel, errc
}

// The issue-15 case: the IdP is frozen for longer than the client waits; the
// client gives up and keeps its old refresh token; the IdP, waking, processes
// the abandoned request and rotates, so the client's retry is a reuse.
func TestStalledRequestIsProcessedAfterTheClientLeft(t *testing.T) {
	hook, events := tokenEvents()
	s := newIdP(t, fakeidp.Options{OnEvent: hook})
	rt0 := s.Seed(clientID)
	s.Pause()

	cancel, result := startRefresh(t, s, rt0)
	waitStall(t, s, "the request to be held", held(1))
	if st := s.StallState(); !st.Paused || st.ClientGone != 0 {
		t.Fatalf("stall state %+v", st)
	}
	wantLive(t, s, rt0, true) // held before it was looked at
	cancel()
	if err := <-result; !errors.Is(err, context.Canceled) {
		t.Fatalf("client: %v, want context.Canceled", err)
	}
	waitStall(t, s, "the server to see the client leave", heldGone(1))

	s.Resume()
	ev := nextEvent(t, events)
	if !ev.Stalled || !ev.ClientGone || ev.Abandoned || ev.Status != http.StatusOK || ev.Generation != 0 || ev.Reuse {
		t.Fatalf("event %+v", ev)
	}
	waitStall(t, s, "the stall to empty", held(0))
	if info, _ := s.Lookup(rt0); !info.Spent || info.FamilyGeneration != 1 {
		t.Fatalf("the abandoned request did not rotate: %+v", info)
	}
	if st := s.StallState(); st.Paused || st.Held != 0 || st.ClientGone != 0 {
		t.Fatalf("stall state after Resume %+v", st)
	}

	// The client retries with the token it still has.
	wantOAuthError(t, refreshRaw(t, s, rt0), http.StatusBadRequest, "invalid_grant")
	if ev := nextEvent(t, events); !ev.Reuse || ev.Stalled || ev.ClientGone {
		t.Fatalf("retry event %+v", ev)
	}
	if st := s.Stats(); st.Stalled != 1 || st.ClientGone != 1 || st.Abandoned != 0 || st.Refreshes != 1 || st.Reuses != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRequestIsProcessedAfterTheClientLeftDuringLatency(t *testing.T) {
	hook, events := tokenEvents()
	// The latency only has to outlast the server's noticing the hang-up,
	// which happens as soon as the body has been read.
	s := newIdP(t, fakeidp.Options{OnEvent: hook, Latency: 100 * time.Millisecond})
	rt0 := s.Seed(clientID)
	sendAndHangUp(t, s, rt0)
	ev := nextEvent(t, events)
	if !ev.ClientGone || ev.Abandoned || ev.Stalled || ev.Status != http.StatusOK {
		t.Fatalf("event %+v", ev)
	}
	if info, _ := s.Lookup(rt0); !info.Spent {
		t.Fatal("the request whose client left was not processed")
	}
	if st := s.Stats(); st.ClientGone != 1 || st.Refreshes != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDropAbandonedDuringStall(t *testing.T) {
	hook, events := tokenEvents()
	s := newIdP(t, fakeidp.Options{OnEvent: hook, DropAbandoned: true})
	rt0 := s.Seed(clientID)
	s.Pause()
	cancel, result := startRefresh(t, s, rt0)
	waitStall(t, s, "the request to be held", held(1))
	cancel()
	<-result
	// Dropped at once, while the Server is still paused.
	ev := nextEvent(t, events)
	if !ev.Abandoned || !ev.ClientGone || !ev.Stalled || ev.Status != 0 {
		t.Fatalf("event %+v", ev)
	}
	waitStall(t, s, "the stall to empty", held(0))
	wantLive(t, s, rt0, true)
	s.Resume()
	mustRefresh(t, config(s, clientID, secret, oauth2.AuthStyleInHeader), rt0)
	if st := s.Stats(); st.Abandoned != 1 || st.ClientGone != 0 || st.Refreshes != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDropAbandonedAppliesToRequestsAlreadyWaiting(t *testing.T) {
	hook, events := tokenEvents()
	s := newIdP(t, fakeidp.Options{OnEvent: hook})
	rt0 := s.Seed(clientID)
	s.Pause()
	cancel, result := startRefresh(t, s, rt0)
	waitStall(t, s, "the request to be held", held(1))
	cancel()
	<-result
	waitStall(t, s, "the server to see the client leave", heldGone(1))
	s.SetDropAbandoned(true)
	s.Resume()
	if ev := nextEvent(t, events); !ev.Abandoned || !ev.ClientGone {
		t.Fatalf("event %+v", ev)
	}
	wantLive(t, s, rt0, true)

	// And back: a held request whose client left is processed again.
	s.SetDropAbandoned(false)
	s.StallNext(1)
	cancel, result = startRefresh(t, s, rt0)
	waitStall(t, s, "the request to be held", held(1))
	cancel()
	<-result
	waitStall(t, s, "the server to see the client leave", heldGone(1))
	s.Resume()
	if ev := nextEvent(t, events); ev.Abandoned || !ev.ClientGone || ev.Status != http.StatusOK {
		t.Fatalf("event %+v", ev)
	}
	if info, _ := s.Lookup(rt0); !info.Spent {
		t.Fatal("not processed")
	}
}

func TestStallNextHoldsOnlyTheNextRequests(t *testing.T) {
	hook, events := tokenEvents()
	s := newIdP(t, fakeidp.Options{OnEvent: hook})
	first, second := s.Seed(clientID), s.Seed(clientID)
	s.StallNext(1)
	if st := s.StallState(); st.Pending != 1 || st.Paused {
		t.Fatalf("stall state %+v", st)
	}
	_, result := startRefresh(t, s, first)
	waitStall(t, s, "the first request to be held", held(1))
	if st := s.StallState(); st.Pending != 0 {
		t.Fatalf("stall state %+v", st)
	}
	// Later requests pass while the first one is held.
	mustRefresh(t, config(s, clientID, secret, oauth2.AuthStyleInHeader), second)
	if ev := nextEvent(t, events); ev.Stalled || ev.Status != http.StatusOK {
		t.Fatalf("second request's event %+v", ev)
	}
	wantLive(t, s, first, true)
	s.Resume()
	if err := <-result; err != nil {
		t.Fatalf("the held request, released: %v", err)
	}
	if ev := nextEvent(t, events); !ev.Stalled || ev.ClientGone || ev.Status != http.StatusOK {
		t.Fatalf("first request's event %+v", ev)
	}
	// StallNext(0) cancels, and so does Resume.
	s.StallNext(3)
	s.StallNext(0)
	mustRefresh(t, config(s, clientID, secret, oauth2.AuthStyleInHeader), s.Seed(clientID))
	s.StallNext(3)
	s.Resume()
	if st := s.StallState(); st.Pending != 0 {
		t.Fatalf("stall state after Resume %+v", st)
	}
	mustRefresh(t, config(s, clientID, secret, oauth2.AuthStyleInHeader), s.Seed(clientID))
}

func TestPauseHoldsManyAndResumeReleasesAll(t *testing.T) {
	const n = 8
	s := newIdP(t, fakeidp.Options{})
	s.Pause()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		rt := s.Seed(clientID)
		wg.Go(func() {
			_, err := refresh(t, config(s, clientID, secret, oauth2.AuthStyleInHeader), rt)
			errs <- err
		})
	}
	waitStall(t, s, "every request to be held", held(n))
	if st := s.Stats(); st.Refreshes != 0 || st.Stalled != n {
		t.Fatalf("stats while paused %+v", st)
	}
	s.Resume()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Refreshes != n || st.ClientGone != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCloseEndsStall(t *testing.T) {
	hook, events := tokenEvents()
	s := fakeidp.New(fakeidp.Options{Clients: map[string]string{clientID: secret}, OnEvent: hook})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	rt0 := s.Seed(clientID)
	s.Pause()
	_, result := startRefresh(t, s, rt0)
	waitStall(t, s, "the request to be held", held(1))
	waitErr := make(chan error, 1)
	go func() { waitErr <- s.WaitStall(context.Background(), func(fakeidp.StallState) bool { return false }) }()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-result; err == nil {
		t.Fatal("a held request was answered by a closing server")
	}
	if ev := nextEvent(t, events); !ev.Abandoned || !ev.Stalled || ev.Status != 0 {
		t.Fatalf("event %+v", ev)
	}
	wantLive(t, s, rt0, true)
	if err := <-waitErr; !errors.Is(err, fakeidp.ErrClosed) {
		t.Fatalf("WaitStall on a closed server: %v", err)
	}
}

func TestWaitStallHonoursContext(t *testing.T) {
	s := newIdP(t, fakeidp.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.WaitStall(ctx, held(1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if err := s.WaitStall(ctx, held(0)); err != nil {
		t.Fatalf("a condition that holds: %v", err)
	}
}
