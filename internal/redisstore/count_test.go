package redisstore_test

import (
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

// TestCommandCounts pins the round trips of the hot paths.
func TestCommandCounts(t *testing.T) {
	srv := redistest.Start(t)
	s, c := newStore(t, srv)
	n := redistest.CountCommands(c)
	ctx := ctxT(t)
	put(t, s, newRecord("a")) // warms up connections and script cache
	if _, err := s.Get(ctx, "a"); err != nil {
		t.Fatal(err)
	}

	n.Reset()
	if _, err := s.Get(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if n.Total() != 1 || n.Get("hmget") != 1 {
		t.Fatalf("Get sent %d commands, want 1 HMGET", n.Total())
	}

	n.Reset()
	put(t, s, newRecord("b"))
	// EVALSHA obtain, EVALSHA commit, ZADD, EVALSHA release (and publish).
	if n.Total() != 4 || n.Get("evalsha") != 3 || n.Get("zadd") != 1 {
		t.Fatalf("TryLock+Commit+Release sent %d commands (%d evalsha), want 4", n.Total(), n.Get("evalsha"))
	}

	// A quiet subscription sends nothing through the client.
	ev := subscribe(t, s)
	ev.awaitReset()
	n.Reset()
	time.Sleep(50 * time.Millisecond)
	if n.Total() != 0 {
		t.Fatalf("an idle subscription sent %d commands", n.Total())
	}
}
