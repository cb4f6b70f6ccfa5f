package broker

import "context"

// Caller is the authenticated identity behind a request.
type Caller struct {
	ID    string // client identity, as listed in Credential.AllowedClients
	Admin bool   // may call the admin methods
}

type callerKey struct{}

// NewContext returns a context carrying the caller's identity. The transport
// sets it once it has authenticated the request.
func NewContext(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the caller's identity carried by ctx, if any.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}
