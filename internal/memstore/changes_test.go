package memstore_test

import (
	"context"
	"errors"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
)

func TestChangeLogKeepsTheLast(t *testing.T) {
	s := memstore.New()
	ctx := context.Background()
	for range broker.MaxChanges + 5 {
		if _, err := s.AppendChange(ctx, &broker.Change{CredentialID: "a", Kind: broker.ChangeBackingOff}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.ReadChanges(ctx, 4, 10); !errors.Is(err, broker.ErrChangesGone) {
		t.Fatalf("read after a trimmed change: %v, want ErrChangesGone", err)
	}
	chs, err := s.ReadChanges(ctx, 5, 10)
	if err != nil || len(chs) != 10 || chs[0].Seq != 6 {
		t.Fatalf("read after the last trimmed change: %d changes, %v", len(chs), err)
	}
}
