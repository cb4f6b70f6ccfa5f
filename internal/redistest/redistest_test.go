package redistest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

func TestStartAndCount(t *testing.T) {
	s := redistest.Start(t)
	if s.PID() == 0 {
		t.Fatal("PID is 0 for a running server")
	}
	c := s.NewClient(t)
	n := redistest.CountCommands(c)
	ctx := context.Background()
	run := func() {
		t.Helper()
		if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Get(ctx, "k")
			p.Get(ctx, "k")
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Incr(ctx, "n")
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	run() // opens the connections: their handshakes (HELLO, CLIENT) count too
	if n.Get("hello") == 0 {
		t.Error("connection handshake not counted")
	}
	n.Reset()
	run()
	if got := n.Get("SET"); got != 1 {
		t.Errorf("set = %d, want 1", got)
	}
	if got := n.Get("get"); got != 2 {
		t.Errorf("get = %d, want 2", got)
	}
	if got := n.Get("incr"); got != 1 {
		t.Errorf("incr = %d, want 1", got)
	}
	if got, want := n.Total(), int64(1+2+3); got != want { // MULTI INCR EXEC
		t.Errorf("total = %d, want %d", got, want)
	}
	n.Reset()
	if n.Total() != 0 || n.Get("get") != 0 {
		t.Errorf("after Reset: total %d, get %d", n.Total(), n.Get("get"))
	}
}

func TestPauseResume(t *testing.T) {
	s := redistest.Start(t)
	c := s.NewClient(t)
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	s.Pause()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err := c.Ping(ctx).Err()
	cancel()
	if err == nil {
		t.Fatal("PING answered by a paused server")
	}
	s.Resume()
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Resume: %v", err)
	}
}

func TestKillRestartAppendOnly(t *testing.T) {
	s := redistest.Start(t, redistest.WithAppendOnly())
	c := s.NewClient(t)
	ctx := context.Background()
	if err := c.Set(ctx, "kept", "yes", 0).Err(); err != nil {
		t.Fatal(err)
	}
	pid := s.PID()
	s.Kill()
	if s.PID() != 0 {
		t.Fatal("PID after Kill is not 0")
	}
	if err := c.Get(ctx, "kept").Err(); err == nil {
		t.Fatal("GET answered by a killed server")
	}
	s.Restart()
	if s.PID() == pid {
		t.Fatal("Restart kept the old PID")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := c.Get(ctx, "kept").Result()
	if err != nil || v != "yes" {
		t.Fatalf("after restart: %q, %v", v, err)
	}
}

func TestStopWithoutPersistenceLosesData(t *testing.T) {
	s := redistest.Start(t)
	c := s.NewClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Set(ctx, "gone", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	s.Stop() // stopping a stopped server does nothing
	s.Restart()
	if err := c.Get(ctx, "gone").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET after restart without persistence: %v, want redis.Nil", err)
	}
}
