package broker

// Cached returns how many credentials the Broker keeps in memory.
func (b *Broker) Cached() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.slots)
}
