package broker

import "context"

// A Tracer brackets the steps of a refresh for distributed tracing, so that
// the domain needs no tracing library: internal/tracing implements it with
// OpenTelemetry. The spans of a refresh: "refresh" (from the announcement to
// the stored outcome), with children "store.mark_pending", "idp.token" (each
// request to the IdP) and "store.settle". Their attributes are the
// credential ID, its generation and the outcome; never a token or secret.
// Nil (Config.Tracer) means none, at no cost.
type Tracer interface {
	// Start starts a span named name, a child of the span ctx carries, and
	// returns ctx carrying the new span.
	Start(ctx context.Context, name, credentialID string, generation uint64) (context.Context, Span)
	// Carry returns to carrying the span from carries: work that outlives
	// its caller (a refresh runs on the Broker's own context) continues the
	// caller's trace.
	Carry(from, to context.Context) context.Context
}

// A Span is one traced step; End it once with its outcome (an Outcome*
// constant, or "ok"/"error" for a Store write) and its error, if any.
type Span interface {
	End(outcome string, generation uint64, err error)
}

type nopSpan struct{}

func (nopSpan) End(string, uint64, error) {}

// span starts a span when the Broker has a Tracer; without one it returns
// ctx and a span that does nothing, without allocating.
func (b *Broker) span(ctx context.Context, name, id string, gen uint64) (context.Context, Span) {
	if b.cfg.Tracer == nil {
		return ctx, nopSpan{}
	}
	return b.cfg.Tracer.Start(ctx, name, id, gen)
}

// carry returns the Broker's own context carrying the span of ctx, the
// context a refresh started by a caller of ctx runs on.
func (b *Broker) carry(ctx context.Context) context.Context {
	if b.cfg.Tracer == nil || ctx == nil {
		return b.bg
	}
	return b.cfg.Tracer.Carry(ctx, b.bg)
}

// writeOutcome is a Store write's outcome for its span.
func writeOutcome(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// exchangeOutcome is an IdP request's outcome for its span: ok, or the
// class of its error.
func exchangeOutcome(err error) string {
	if err == nil {
		return OutcomeOK
	}
	switch class, _ := classOf(err); class {
	case Permanent:
		return OutcomePermanent
	case Unanswered:
		return OutcomeUnknown
	}
	return OutcomeTransient
}
