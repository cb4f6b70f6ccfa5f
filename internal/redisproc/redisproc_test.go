package redisproc_test

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/redisproc"
)

// Start makes the server's directory and Close removes it; Stop keeps it
// for Restart.
func TestOwnsItsDirectory(t *testing.T) {
	ctx := context.Background()
	s, err := redisproc.Start(ctx, redisproc.Options{})
	if errors.Is(err, redisproc.ErrNotInstalled) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer s.Kill()
	dir := s.Dir()
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("no directory %s: %v", dir, err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("Stop removed the directory: %v", err)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatalf("Restart after Stop: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s.PID() != 0 {
		t.Error("Close left the server running")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left %s: %v", dir, err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Restart(ctx); err == nil {
		t.Error("Restart after Close succeeded")
	}
}
