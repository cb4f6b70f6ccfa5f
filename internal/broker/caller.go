package broker

import "context"

// Caller is the authenticated identity behind a request.
type Caller struct {
	ID    string // client identity, as listed in Credential.AllowedClients
	Admin bool   // may call the admin methods
}

type callerKey struct{}

// callerCtx is a context carrying a Caller: one allocation per call, where
// context.WithValue would take two (the context and the boxed Caller).
type callerCtx struct {
	context.Context
	c Caller
}

func (c *callerCtx) Value(key any) any {
	if _, ok := key.(callerKey); ok {
		return &c.c
	}
	return c.Context.Value(key)
}

func (c *callerCtx) String() string { return "broker.NewContext(caller)" }

// NewContext returns a context carrying the caller's identity. The transport
// sets it once it has authenticated the request.
func NewContext(ctx context.Context, c Caller) context.Context {
	return &callerCtx{Context: ctx, c: c}
}

// CallerFrom returns the caller's identity carried by ctx, if any.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(*Caller)
	if !ok {
		return Caller{}, false
	}
	return *c, true
}
