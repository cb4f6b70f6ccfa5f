package memstore_test

import (
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/storetest"
)

func TestContract(t *testing.T) {
	storetest.Contract(t, func(*testing.T) broker.Store { return memstore.New() })
}
