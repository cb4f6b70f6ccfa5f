package audit

import (
	"context"
	"log/slog"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

var _ broker.AuthorizationObserver = (*Log)(nil)

// Authorization writes one "authorization" event for each step of an
// authorization flow: credential_id, flow (authorization_code or
// device_code), action (started, completed, abandoned), started_by (the
// caller that started it), generation and, for an abandoned flow, detail
// (why: expired, denied, the IdP's error; never a secret). Completed flows
// are logged at Info, abandoned ones at Warn. (Who started a flow is also
// in the AdminService call's own "admin" event.)
func (l *Log) Authorization(ev broker.AuthorizationEvent) {
	level := slog.LevelInfo
	if ev.Action == broker.AuthAbandoned {
		level = slog.LevelWarn
	}
	ctx := context.Background()
	if !l.log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.Bool("audit", true),
		slog.String("credential_id", ev.CredentialID),
		slog.String("flow", ev.Flow.String()),
		slog.String("action", ev.Action),
		slog.String("started_by", ev.StartedBy),
		slog.Uint64("generation", ev.Generation),
	}
	if ev.Detail != "" {
		attrs = append(attrs, slog.String("detail", ev.Detail))
	}
	l.log.LogAttrs(ctx, level, "authorization", attrs...)
}

// Authorization tells the observers that hear about authorization flows.
func (t tee) Authorization(ev broker.AuthorizationEvent) {
	for _, o := range t {
		if a, ok := o.(broker.AuthorizationObserver); ok {
			a.Authorization(ev)
		}
	}
}
