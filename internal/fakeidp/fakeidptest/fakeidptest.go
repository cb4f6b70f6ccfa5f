// Package fakeidptest starts a fakeidp.Server for a test and closes it when
// the test ends. It is the only part of the test IdP that imports "testing",
// so that binaries which embed the IdP itself (cmd/client-demo) do not link
// the testing package.
package fakeidptest

import (
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// Start returns a started fakeidp.Server configured by opts that is closed
// when tb's test ends. It fails the test if the server cannot start, and
// reports an error if it does not close cleanly.
func Start(tb testing.TB, opts fakeidp.Options) *fakeidp.Server {
	tb.Helper()
	s := fakeidp.New(opts)
	if err := s.Start(); err != nil {
		tb.Fatalf("fakeidp: start: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("fakeidp: close: %v", err)
		}
	})
	return s
}
