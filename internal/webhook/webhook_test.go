package webhook_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
	"github.com/tokenbroker/tokenbroker/internal/webhook"
)

var secret = []byte("a-webhook-secret-of-32-bytes-abc")

// receiver is a webhook endpoint that verifies every delivery, fails the
// first failFirst ones with 503, and records the events it accepted.
type receiver struct {
	mu        sync.Mutex
	failFirst int
	refuse    map[string]bool // event IDs answered 400
	requests  int
	bad       []error
	got       []webhook.Body
	kinds     []string
	arrived   chan struct{}
}

func newReceiver(t *testing.T) (*receiver, *httptest.Server) {
	r := &receiver{arrived: make(chan struct{}, 1000), refuse: map[string]bool{}}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return r, srv
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if err := webhook.Verify(secret, req.Header, body, time.Now(), 0); err != nil {
		r.bad = append(r.bad, err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if r.failFirst > 0 {
		r.failFirst--
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	var b webhook.Body
	if err := json.Unmarshal(body, &b); err != nil || b.ID != req.Header.Get(webhook.HeaderEventID) {
		r.bad = append(r.bad, fmt.Errorf("body %s: %v", body, err))
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if r.refuse[b.ID] {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	var ev struct {
		Kind         string `json:"kind"`
		CredentialID string `json:"credential_id"`
	}
	_ = json.Unmarshal(b.Event, &ev)
	r.got = append(r.got, b)
	r.kinds = append(r.kinds, ev.CredentialID+":"+ev.Kind)
	r.arrived <- struct{}{}
}

func (r *receiver) wait(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-r.arrived:
		case <-time.After(20 * time.Second):
			t.Fatalf("fewer than %d deliveries", n)
		}
	}
}

func (r *receiver) snapshot() (kinds []string, ids []string, bad []error, requests int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.got {
		ids = append(ids, b.ID)
	}
	return append([]string(nil), r.kinds...), ids, append([]error(nil), r.bad...), r.requests
}

func newBroker(t *testing.T, s broker.Store) *broker.Broker {
	t.Helper()
	b, err := broker.New(s, &upstream.Client{}, broker.Config{Open: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func put(t *testing.T, b *broker.Broker, id string) {
	t.Helper()
	if _, err := b.PutCredential(context.Background(), broker.Credential{ID: id, TokenURL: "https://idp.example/token", ClientID: "c"}, "rt-"+id); err != nil {
		t.Fatal(err)
	}
}

func dispatcher(t *testing.T, b *broker.Broker, s broker.Store, urls ...string) *webhook.Dispatcher {
	t.Helper()
	d, err := webhook.New(b, s, webhook.Options{URLs: urls, Secret: secret, BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
		LeaseTTL: 300 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	t.Cleanup(d.Stop)
	return d
}

// TestDeliveredOnceAcrossReplicas: two replicas each run a dispatcher for
// the same endpoint; every change, made on either, arrives once, in order,
// signed, after the endpoint's failures are retried.
func TestDeliveredOnceAcrossReplicas(t *testing.T) {
	s := memstore.New()
	a, b := newBroker(t, s), newBroker(t, s)
	rcv, srv := newReceiver(t)
	rcv.failFirst = 3
	// The endpoint's cursor starts at the last change when it is first
	// led: one change before, so the test knows when that happened.
	put(t, a, "before")
	da := dispatcher(t, a, s, srv.URL+"/hook?token=receiver-own")
	dispatcher(t, b, s, srv.URL+"/hook?token=receiver-own")
	waitFor(t, func() bool {
		pos, ok, _ := s.LoadCursor(context.Background(), webhook.Name(srv.URL+"/hook?token=receiver-own"))
		return ok && pos == 1
	})
	const n = 10
	for i := range n {
		put(t, []*broker.Broker{a, b}[i%2], "c"+strconv.Itoa(i))
	}
	rcv.wait(t, n)
	// The replica delivering stops: the other takes over for the next.
	da.Stop()
	put(t, a, "after")
	rcv.wait(t, 1)
	kinds, ids, bad, requests := rcv.snapshot()
	if len(bad) != 0 {
		t.Fatalf("deliveries that did not verify: %v", bad)
	}
	if len(kinds) != n+1 {
		t.Fatalf("%d events delivered %v, want %d", len(kinds), kinds, n+1)
	}
	for i, id := range ids {
		if id != strconv.Itoa(i+2) {
			t.Fatalf("event IDs %v: want 2, 3, ... once each, in order", ids)
		}
	}
	if kinds[0] != "c0:CREATED" || kinds[n] != "after:CREATED" {
		t.Fatalf("events %v", kinds)
	}
	if requests != n+1+3 {
		t.Fatalf("%d requests, want %d (3 failures retried)", requests, n+4)
	}
}

// TestRefusedEventIsSkipped: a 4xx is the endpoint's verdict: that event is
// skipped, the next delivered.
func TestRefusedEventIsSkipped(t *testing.T) {
	s := memstore.New()
	b := newBroker(t, s)
	rcv, srv := newReceiver(t)
	put(t, b, "first") // change 1, before the endpoint is led
	rcv.refuse["2"] = true
	dispatcher(t, b, s, srv.URL)
	waitFor(t, func() bool { _, ok, _ := s.LoadCursor(context.Background(), webhook.Name(srv.URL)); return ok })
	put(t, b, "refused")
	put(t, b, "accepted")
	rcv.wait(t, 1)
	if kinds, _, _, _ := rcv.snapshot(); len(kinds) != 1 || kinds[0] != "accepted:CREATED" {
		t.Fatalf("events %v, want only the accepted one", kinds)
	}
}

func TestVerify(t *testing.T) {
	body := []byte(`{"id":"7"}`)
	now := time.Unix(1_800_000_000, 0)
	h := http.Header{}
	h.Set(webhook.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	h.Set(webhook.HeaderSignature, "v0=old, v1="+webhook.Sign(secret, now.Unix(), body))
	if err := webhook.Verify(secret, h, body, now.Add(time.Minute), 0); err != nil {
		t.Fatalf("a valid delivery: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(h http.Header) ([]byte, time.Time)
		want error
	}{
		{"replayed later", func(http.Header) ([]byte, time.Time) { return body, now.Add(6 * time.Minute) }, webhook.ErrStale},
		{"from the future", func(http.Header) ([]byte, time.Time) { return body, now.Add(-6 * time.Minute) }, webhook.ErrStale},
		{"body changed", func(http.Header) ([]byte, time.Time) { return []byte(`{"id":"8"}`), now }, webhook.ErrBadSignature},
		{"timestamp changed", func(h http.Header) ([]byte, time.Time) {
			h.Set(webhook.HeaderTimestamp, strconv.FormatInt(now.Unix()+1, 10))
			return body, now
		}, webhook.ErrBadSignature},
		{"no signature", func(h http.Header) ([]byte, time.Time) { h.Del(webhook.HeaderSignature); return body, now }, webhook.ErrNoSignature},
	} {
		hh := h.Clone()
		b, at := tc.mod(hh)
		if err := webhook.Verify(secret, hh, b, at, 0); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if err := webhook.Verify([]byte("another-secret-of-enough-length"), h, body, now, 0); !errors.Is(err, webhook.ErrBadSignature) {
		t.Errorf("another secret: %v", err)
	}
}

func TestOptionsChecked(t *testing.T) {
	s := memstore.New()
	b := newBroker(t, s)
	for _, tc := range []webhook.Options{
		{URLs: []string{"https://ok.example/hook"}, Secret: []byte("short")},
		{URLs: []string{"ftp://files.example/hook"}, Secret: secret},
		{URLs: []string{"/relative"}, Secret: secret},
		{URLs: []string{"https://user:pw@x.example/"}, Secret: secret},
	} {
		if _, err := webhook.New(b, s, tc); err == nil {
			t.Errorf("New(%v) accepted", tc.URLs)
		}
	}
	if got := webhook.Redact("https://u:p@x.example/hook?token=abc#f"); got != "https://x.example/hook" {
		t.Errorf("Redact = %q", got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
