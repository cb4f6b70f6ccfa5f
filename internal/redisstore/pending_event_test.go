package redisstore_test

import (
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
)

// MarkPending's announcement, "p <generation> <id>", is an Event with
// PendingFrom; a generation of 0 is malformed.
func TestParsePendingEvent(t *testing.T) {
	for _, tc := range []struct {
		payload string
		want    broker.Event
		ok      bool
	}{
		{"p 3 cred", broker.Event{ID: "cred", PendingFrom: 3}, true},
		{"p 1 a b", broker.Event{ID: "a b", PendingFrom: 1}, true},
		{"p 0 cred", broker.Event{}, false},
		{"p x cred", broker.Event{}, false},
		{"p 3", broker.Event{}, false},
	} {
		got, ok := redisstore.ParseEvent(tc.payload)
		if ok != tc.ok || got != tc.want {
			t.Errorf("ParseEvent(%q) = %+v, %v; want %+v, %v", tc.payload, got, ok, tc.want, tc.ok)
		}
	}
}
