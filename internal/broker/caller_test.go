package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

type otherKey struct{}

// The caller's context keeps the parent's values, deadline and
// cancellation, and the innermost caller wins.
func TestCallerContext(t *testing.T) {
	if _, ok := broker.CallerFrom(context.Background()); ok {
		t.Fatal("a caller in an empty context")
	}
	parent, cancel := context.WithTimeout(context.WithValue(context.Background(), otherKey{}, "v"), time.Hour)
	ctx := broker.NewContext(parent, broker.Caller{ID: "a", Admin: true})
	if c, ok := broker.CallerFrom(ctx); !ok || c != (broker.Caller{ID: "a", Admin: true}) {
		t.Fatalf("CallerFrom = %+v, %v", c, ok)
	}
	if ctx.Value(otherKey{}) != "v" {
		t.Error("the parent's value is lost")
	}
	if _, ok := ctx.Deadline(); !ok {
		t.Error("the parent's deadline is lost")
	}
	inner := broker.NewContext(ctx, broker.Caller{ID: "b"})
	if c, _ := broker.CallerFrom(inner); c.ID != "b" || c.Admin {
		t.Errorf("inner CallerFrom = %+v", c)
	}
	child, stop := context.WithCancel(inner)
	defer stop()
	cancel()
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("cancelling the parent did not reach a child of the caller's context")
	}
	if c, _ := broker.CallerFrom(child); c.ID != "b" {
		t.Errorf("child CallerFrom = %+v", c)
	}
}

func TestCallerContextAllocs(t *testing.T) {
	ctx := context.Background()
	c := broker.Caller{ID: "worker"}
	if n := testing.AllocsPerRun(100, func() {
		if got, _ := broker.CallerFrom(broker.NewContext(ctx, c)); got.ID != c.ID {
			t.Fatal("lost")
		}
	}); n > 1 {
		t.Errorf("NewContext and CallerFrom: %v allocations, want at most 1", n)
	}
}
