package redisstore_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
	"github.com/tokenbroker/tokenbroker/internal/seal"
)

// wait bounds every wait for something to happen in a test.
const wait = 10 * time.Second

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// prefix is a key prefix unique to the test.
func prefix(t testing.TB) string {
	return "test-" + strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
}

func testKeyring(t testing.TB) *seal.Keyring {
	t.Helper()
	k, err := seal.NewKeyring("k1", map[string][]byte{"k1": bytes.Repeat([]byte{7}, seal.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newStore returns a sealing Store with its own client of srv.
func newStore(t testing.TB, srv *redistest.Server) (*redisstore.Store, *redis.Client) {
	t.Helper()
	c := srv.NewClient(t)
	s, err := redisstore.New(c, redisstore.Options{Prefix: prefix(t), Keyring: testKeyring(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, c
}

// The secrets of records made by newRecord, for checking they never leak.
const (
	refreshSecret = "rt-SECRET-7f3a9c"
	clientSecret  = "cs-SECRET-51be02"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newRecord(id string) *broker.Record {
	return &broker.Record{
		Credential: broker.Credential{
			ID:            id,
			TokenURL:      "https://idp.example/token",
			ClientID:      "client-" + id,
			ClientSecrets: []string{clientSecret, clientSecret + "-old"},
			Scopes:        []string{"read", "write"},
			RefreshAhead:  time.Minute,
		},
		RefreshToken: refreshSecret,
		Token: broker.Token{
			AccessToken: "at-" + id,
			TokenType:   "Bearer",
			Expiry:      t0.Add(time.Hour),
			IssuedAt:    t0,
		},
		State:     broker.StateActive,
		CreatedAt: t0,
		UpdatedAt: t0,
	}
}

// put creates or overwrites a record under a fresh lease and returns its new
// generation.
func put(t testing.TB, s *redisstore.Store, rec *broker.Record) uint64 {
	t.Helper()
	ctx := ctxT(t)
	l, err := s.TryLock(ctx, rec.ID, 5*time.Second)
	if err != nil {
		t.Fatalf("TryLock(%s): %v", rec.ID, err)
	}
	defer func() {
		if err := l.Release(ctx); err != nil {
			t.Errorf("Release(%s): %v", rec.ID, err)
		}
	}()
	gen, err := s.Commit(ctx, l, rec)
	if err != nil {
		t.Fatalf("Commit(%s): %v", rec.ID, err)
	}
	return gen
}

// events collects the events of a subscription.
type events struct {
	t  testing.TB
	ch chan broker.Event
}

func subscribe(t testing.TB, s *redisstore.Store) *events {
	e := &events{t: t, ch: make(chan broker.Event, 1000)}
	stop := s.Subscribe(func(ev broker.Event) {
		select {
		case e.ch <- ev:
		default:
			t.Error("event buffer full")
		}
	})
	t.Cleanup(stop)
	return e
}

// await returns the first event matching ok, skipping others, or fails the
// test after wait.
func (e *events) await(what string, ok func(broker.Event) bool) broker.Event {
	e.t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case ev := <-e.ch:
			if ok(ev) {
				return ev
			}
		case <-timeout:
			e.t.Fatalf("no %s event within %v", what, wait)
		}
	}
}

func (e *events) awaitReset() {
	e.t.Helper()
	e.await("Reset", func(ev broker.Event) bool { return ev.Reset })
}

// eventually polls cond until it holds, or fails the test after wait.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func redisZ(member string) redis.Z { return redis.Z{Member: member} }
