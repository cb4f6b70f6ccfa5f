package broker

import (
	"context"
	"time"
)

// Store keeps credential records and coordinates refreshes between every
// broker that shares it. Implementations must be safe for concurrent use.
//
// The contract that makes a refresh token be spent once, and its successor
// never lost:
//   - TryLock grants a lease on one credential to one holder at a time, for a
//     TTL; a lease that expires is lost.
//   - Commit writes a record only if the lease is still held AND the stored
//     generation equals rec.Generation, in one atomic step, and then stores
//     rec.Generation+1 and publishes an Event. It clears a pending marker.
//   - MarkPending writes, under the lease, a marker saying that a refresh of
//     the record at its generation is about to be sent. Every holder reads it
//     (Record.Pending) and does not present the refresh token again while it
//     stands.
//   - Settle writes the outcome of the refresh a marker announced, fenced on
//     the generation and on the marker, whether or not the lease is still
//     held: a holder that lost its lease in a Store outage, or a replica
//     restarted from its journal, can still store the successor, and nobody
//     else can overwrite the record meanwhile without the operator's say.
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

	// Commit stores rec under lease, and clears any pending marker.
	// rec.Generation must be the generation rec was read at (0 for a
	// credential that does not exist yet). It returns the new generation,
	// ErrLockLost when the lease is no longer held, or ErrConflict when the
	// stored generation is another.
	Commit(ctx context.Context, lease Lease, rec *Record) (uint64, error)

	// MarkPending stores p as the pending refresh of the record, under lease,
	// fenced on rec.Generation, without changing the record or its
	// generation, and publishes Event{ID, PendingFrom: rec.Generation}. It
	// returns ErrLockLost or ErrConflict as Commit does.
	MarkPending(ctx context.Context, lease Lease, rec *Record, p *Pending) error

	// Settle stores rec, the outcome of the refresh that p announced, if the
	// stored generation is rec.Generation and p is still the record's
	// pending refresh; the lease need not be held. It clears the marker,
	// bumps the generation and publishes an Event like Commit, and returns
	// the new generation, or ErrConflict when the record moved on. Repeating
	// a Settle that was applied but whose reply was lost returns the same
	// generation again.
	Settle(ctx context.Context, p *Pending, rec *Record) (uint64, error)

	// Subscribe delivers an Event to fn for every change of any credential,
	// made by any broker sharing the Store, until the returned stop function
	// is called. fn runs on the Store's own goroutine and must not block.
	// When events may have been missed (a lost connection), the Store calls
	// fn with Event{Reset: true}.
	Subscribe(fn func(Event)) (stop func())

	// SaveFlow keeps an authorization code flow under its state for ttl,
	// sealed like a record (the code verifier is a secret). A state is
	// saved once: saving it again fails with ErrConflict.
	SaveFlow(ctx context.Context, state string, f *CodeFlow, ttl time.Duration) error

	// TakeFlow returns the flow saved under state and removes it, in one
	// atomic step, so that a state is used once whatever replica the
	// callback lands on. An unknown, expired or taken state is ErrNotFound.
	TakeFlow(ctx context.Context, state string) (*CodeFlow, error)

	// AppendChange adds c to the change log, shared by every broker of the
	// Store, and returns its number: one more than the last one appended
	// by anyone. The log keeps at least the last MaxChanges. It publishes
	// an Event with Change set to the number.
	AppendChange(ctx context.Context, c *Change) (uint64, error)

	// ReadChanges returns, in order, up to limit changes numbered after
	// after, with Seq set, or ErrChangesGone when the log no longer holds
	// the one right after it (or after is beyond the last one).
	ReadChanges(ctx context.Context, after uint64, limit int) ([]*Change, error)

	// LastChange returns the number of the last change appended, 0 for
	// none.
	LastChange(ctx context.Context) (uint64, error)

	// LoadCursor returns the position (a change number) a consumer of the
	// change log saved under name, and whether it saved one.
	LoadCursor(ctx context.Context, name string) (pos uint64, ok bool, err error)

	// SaveCursor saves pos under name if lease, a lease on name itself
	// (TryLock(name)), is still held; else ErrLockLost. So only the one
	// consumer holding the lease moves the cursor.
	SaveCursor(ctx context.Context, lease Lease, name string, pos uint64) error
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
	// Extend keeps the lease for ttl from now and moves Deadline, or returns
	// ErrLockLost when it is no longer held.
	Extend(ctx context.Context, ttl time.Duration) error
	// Release gives the lease up and wakes waiters. Releasing a lost lease
	// is not an error.
	Release(ctx context.Context) error
}

// Pending is the marker of a refresh that a holder is about to send, or has
// sent and not yet stored the outcome of. It holds no secret.
type Pending struct {
	ID     string    `json:"id"`      // unique per refresh; fences its Settle
	Holder string    `json:"holder"`  // the replica that sends it (Config.ReplicaID)
	SentAt time.Time `json:"sent_at"` // when it was about to be sent
	// Journaled says that the holder keeps the outcome in a Journal, so it
	// may still store it after a restart.
	Journaled bool `json:"journaled,omitempty"`
}

// Journal keeps the outcomes of refreshes on local disk from the IdP's
// answer until they are stored, so that a replica killed or restarted in
// between still stores them when it starts again. It must be safe for
// concurrent use, and it seals what it writes: the records hold refresh
// tokens.
type Journal interface {
	// Save durably records rec as the outcome of the refresh p announced.
	Save(ctx context.Context, p *Pending, rec *Record) error
	// Remove forgets the entry of p, once its outcome is stored or moot.
	Remove(ctx context.Context, p *Pending) error
	// Load returns every entry saved and not removed.
	Load(ctx context.Context) ([]JournalEntry, error)
}

// JournalEntry is one outcome kept by a Journal.
type JournalEntry struct {
	Pending *Pending
	Record  *Record
}

// Event says that a credential changed or its lease was released.
type Event struct {
	ID         string // the credential concerned; empty with Reset
	Generation uint64 // the new generation after a Commit
	Deleted    bool   // the credential was deleted
	Released   bool   // a lease was released (with or without a Commit)
	Change     uint64 // a change was appended to the change log, with this number
	Reset      bool   // events may have been lost: forget everything cached

	// PendingFrom is set by MarkPending: a refresh of the record at this
	// generation is about to be sent. With a credential whose IdP revokes
	// the previous access token, that generation's token must not be handed
	// out any more.
	PendingFrom uint64
}
