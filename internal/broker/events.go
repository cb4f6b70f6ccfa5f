package broker

// changed reports the change of a credential from prev (nil: created) to
// next (nil: deleted), caused by actor, to those who watch changes. Not yet:
// WatchCredentials comes with the change log.
func (b *Broker) changed(prev, next *Record, actor, detail string) {}
