package broker

// Anonymous is how logs and the audit trail name the caller of an open
// broker (dev mode, or --allow-unauthenticated), which has no identity.
const Anonymous = "anonymous"

// Name is the caller's ID, or Anonymous for the caller of an open broker.
func (c Caller) Name() string {
	if c.ID == "" {
		return Anonymous
	}
	return c.ID
}
