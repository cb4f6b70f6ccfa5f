package redisstore_test

import (
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
	"github.com/tokenbroker/tokenbroker/internal/storetest"
)

func TestContract(t *testing.T) {
	srv := redistest.Start(t)
	storetest.Contract(t, func(t *testing.T) broker.Store {
		s, _ := newStore(t, srv) // a prefix of its own per subtest
		return s
	})
}
