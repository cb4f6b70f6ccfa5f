// Package audit writes tokenbroker's audit trail with log/slog: one event
// for every refresh of a credential (msg "refresh") and one for every
// AdminService call (msg "admin"), each saying who, which credential, what
// came of it and the resulting generation. Events never hold a secret: they
// are built from the broker's secret-free RefreshEvent and from the IDs,
// codes and generations of admin calls, never from request or response
// bodies.
//
// Every event carries the attribute audit=true, so that a handler can route
// the trail apart from other logs.
//
//	al := audit.New(logger)
//	cfg.Observer = audit.Tee(metrics, al)
//	// inside the interceptor that authenticates:
//	grpc.ChainUnaryInterceptor(al.UnaryServerInterceptor(codeOf))
package audit

import (
	"context"
	"log/slog"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Log is the audit trail. It implements broker.Observer (only Refreshed
// writes anything) and provides the AdminService interceptor. It is safe
// for concurrent use.
type Log struct {
	log *slog.Logger
}

// New returns a Log writing to logger; nil means slog.Default().
func New(logger *slog.Logger) *Log {
	if logger == nil {
		logger = slog.Default()
	}
	return &Log{log: logger}
}

// TokenServed does nothing: serving a token is not an audit event.
func (*Log) TokenServed(broker.Source) {}

// LockWaited does nothing.
func (*Log) LockWaited(time.Duration, bool) {}

// Regressed writes one "generation regression" event at Error: the Store
// went back to an older generation of a credential (a failover to a replica
// that missed writes), with whether this replica repaired it.
func (l *Log) Regressed(ev broker.RegressionEvent) {
	attrs := []slog.Attr{
		slog.Bool("audit", true),
		slog.String("credential_id", ev.CredentialID),
		slog.Uint64("seen", ev.Seen),
		slog.Uint64("stored", ev.Stored),
		slog.Bool("repaired", ev.Repaired),
	}
	if ev.Err != nil {
		attrs = append(attrs, slog.String("error", ev.Err.Error()))
	}
	l.log.LogAttrs(context.Background(), slog.LevelError, "generation regression", attrs...)
}

// Refreshed writes one "refresh" event: caller (who caused it: its client
// ID, "anonymous" on an open broker, empty for background refreshes),
// credential_id, reason, outcome, generation (stored afterwards),
// duration_ms (of the IdP call) and, for a failure, error (the
// broker's errors hold no secret by contract). It is logged at Info when
// the refresh succeeded, Error when the grant is dead (REAUTH_REQUIRED:
// someone must act) and Warn otherwise.
func (l *Log) Refreshed(ev broker.RefreshEvent) {
	level := slog.LevelWarn
	switch ev.Outcome {
	case broker.OutcomeOK:
		level = slog.LevelInfo
	case broker.OutcomePermanent:
		level = slog.LevelError
	}
	ctx := context.Background()
	if !l.log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 8)
	attrs = append(attrs,
		slog.Bool("audit", true),
		slog.String("caller", ev.Caller),
		slog.String("credential_id", ev.CredentialID),
		slog.String("reason", ev.Reason),
		slog.String("outcome", ev.Outcome),
		slog.Uint64("generation", ev.Generation),
		slog.Float64("duration_ms", float64(ev.Duration.Microseconds())/1000),
	)
	if ev.Err != nil {
		attrs = append(attrs, slog.String("error", ev.Err.Error()))
	}
	l.log.LogAttrs(ctx, level, "refresh", attrs...)
}
