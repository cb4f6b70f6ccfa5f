package audit_test

import (
	"log/slog"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/audit"
	"github.com/tokenbroker/tokenbroker/internal/broker"
)

func TestAuthorizationEvents(t *testing.T) {
	buf := &syncBuffer{}
	l := audit.New(slog.New(slog.NewJSONHandler(buf, nil)))
	var obs broker.Observer = audit.Tee(l, &recorder{}) // the tee passes them on
	ao, ok := obs.(broker.AuthorizationObserver)
	if !ok {
		t.Fatal("the tee does not hear about authorizations")
	}
	ao.Authorization(broker.AuthorizationEvent{CredentialID: "crm", Flow: broker.FlowDevice, Action: broker.AuthCompleted, StartedBy: "ops", Generation: 4})
	ao.Authorization(broker.AuthorizationEvent{CredentialID: "crm", Flow: broker.FlowCode, Action: broker.AuthAbandoned, StartedBy: "ops", Detail: "expired"})
	evs := buf.events(t, "authorization")
	if len(evs) != 2 {
		t.Fatalf("%d events, want 2", len(evs))
	}
	want(t, evs[0], map[string]any{"audit": true, "level": "INFO", "credential_id": "crm", "flow": "device_code", "action": "completed", "started_by": "ops", "generation": float64(4)})
	want(t, evs[1], map[string]any{"level": "WARN", "flow": "authorization_code", "action": "abandoned", "detail": "expired"})
}
