package broker

import (
	"context"
	"time"
)

// Store keeps credential records and coordinates refreshes between every
// broker that shares it. Implementations must be safe for concurrent use.
//
// The contract that makes a refresh token be spent once:
//   - TryLock grants a lease on one credential to one holder at a time, for a
//     TTL; a lease that expires is lost.
//   - Commit writes a record only if the lease is still held AND the stored
//     generation equals rec.Generation, in one atomic step, and then stores
//     rec.Generation+1 and publishes an Event.
//
// Every error other than the sentinels named below means the Store could not
// be reached or answered wrongly; the Broker reports it as ErrStoreUnavailable.
type Store interface {
	// Get returns the record of a credential, or ErrNotFound, or an error
	// wrapping ErrUnreadable when the record exists but cannot be opened.
	Get(ctx context.Context, id string) (*Record, error)

	// List returns up to limit records whose IDs sort after the given one, in
	// ID order. A record that cannot be opened is listed as a Record with
	// only its ID and State StateUnreadable, rather than failing the list.
	List(ctx context.Context, after string, limit int) ([]*Record, error)

	// Delete removes a credential. Deleting a missing one is not an error.
	Delete(ctx context.Context, id string) error

	// TryLock obtains the refresh lease of a credential for ttl without
	// waiting, or returns ErrLockHeld. The credential need not exist yet.
	TryLock(ctx context.Context, id string, ttl time.Duration) (Lease, error)

	// Commit stores rec under lease. rec.Generation must be the generation
	// rec was read at (0 for a credential that does not exist yet). It
	// returns the new generation, ErrLockLost when the lease is no longer
	// held, or ErrConflict when the stored generation is another.
	Commit(ctx context.Context, lease Lease, rec *Record) (uint64, error)

	// Subscribe delivers an Event to fn for every change of any credential,
	// made by any broker sharing the Store, until the returned stop function
	// is called. fn runs on the Store's own goroutine and must not block.
	// When events may have been missed (a lost connection), the Store calls
	// fn with Event{Reset: true}.
	Subscribe(fn func(Event)) (stop func())
}

// Resealer is implemented by Stores that seal records at rest with rotating
// keys, so that ReencryptCredentials can move records to the primary key.
type Resealer interface {
	// SealedWith returns the ID of the key a stored record is sealed under,
	// "" for a plaintext record, or ErrNotFound.
	SealedWith(ctx context.Context, id string) (string, error)
	// PrimaryKey returns the ID of the key new writes are sealed under, ""
	// when writes are not sealed.
	PrimaryKey() string
}

// Lease is a held refresh lock on one credential.
type Lease interface {
	// ID is the credential the lease is on.
	ID() string
	// Deadline is when the lease expires unless extended, measured on the
	// local monotonic clock when it was obtained. Past it, the holder must
	// assume it has lost the lease.
	Deadline() time.Time
	// Release gives the lease up and wakes waiters. Releasing a lost lease
	// is not an error.
	Release(ctx context.Context) error
}

// Event says that a credential changed or its lease was released.
type Event struct {
	ID         string // the credential concerned; empty with Reset
	Generation uint64 // the new generation after a Commit
	Deleted    bool   // the credential was deleted
	Released   bool   // a lease was released (with or without a Commit)
	Reset      bool   // events may have been lost: forget everything cached
}
