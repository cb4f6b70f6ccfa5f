package fakeidptest_test

import (
	"errors"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
)

func TestStartClosesWhenTheTestEnds(t *testing.T) {
	var s *fakeidp.Server
	t.Run("inner", func(t *testing.T) {
		s = fakeidptest.Start(t, fakeidp.Options{})
		if s.TokenURL() == "" {
			t.Fatal("not started")
		}
	})
	if err := s.Start(); !errors.Is(err, fakeidp.ErrClosed) {
		t.Fatalf("Start after the test ended: %v, want ErrClosed", err)
	}
}
