// Package journal implements broker.Journal over a directory of files on
// local disk: it keeps the outcome of each refresh (the record with the
// successor refresh token) from the IdP's answer until the broker has stored
// it, so that a replica killed or restarted in between stores it when it
// starts again.
//
// # Layout
//
// Each entry is one file, <pending id>.entry, holding a JSON document with
// the pending marker, the record, and the record's Generation and Pending,
// which broker.Record does not serialize. (Pending IDs follow the rules of
// credential IDs, [A-Za-z0-9][A-Za-z0-9._:-]*; a ':' is written as '+' so that
// names stay portable.) Save writes a temporary file in the same
// directory, fsyncs it, renames it over the entry's name and fsyncs the
// directory, so a crash at any point leaves either no entry or a whole one.
// Load removes the temporary files a crash left behind. Files are created
// 0600, and Open creates the directory 0700. The directory belongs to one
// process: two processes sharing it would remove each other's temporary
// files.
//
// # Sealing
//
// With a keyring, every entry is sealed with AES-256-GCM (package seal), with
// its file name as additional data: an entry moved or copied to another name
// fails to open, and the content names its credential and pending refresh,
// which Load checks against the name. Without a keyring (dev mode, or
// --allow-plaintext), entries are written as PLAINTEXT JSON, refresh tokens
// and client secrets included, protected only by the file and directory
// permissions. A journal with a keyring still loads plaintext entries, so that
// outcomes written before a key was configured are not lost.
//
// # Unreadable entries
//
// An entry that cannot be opened (sealed under a key that is not in the
// keyring, tampered with, truncated, renamed) is neither dropped nor fatal:
// Load returns the entries it could open and no error, leaves the unreadable
// files where they are (they may hold the only copy of a successor refresh
// token: restoring the key and restarting recovers it), and Unreadable
// reports them by file name, never by content. Load returns an error only
// when the directory itself cannot be read. Callers should log Unreadable
// after Load.
package journal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/seal"
)

// ErrUnreadable is wrapped by every error that Unreadable reports: an entry
// file exists but cannot be opened.
var ErrUnreadable = errors.New("journal: entry cannot be read")

const (
	suffix    = ".entry"
	tmpPrefix = ".entry-"
	tmpSuffix = ".tmp"
	version   = 1
	maxEntry  = 1 << 20 // far above any record the broker accepts
	adPrefix  = "tokenbroker journal v1\x00"
	colonEsc  = "+"
	dirPerm   = 0o700
)

// Journal is a broker.Journal over a directory. It is safe for concurrent
// use.
type Journal struct {
	dir     string
	keyring *seal.Keyring // nil: plaintext

	// mu lets Saves and Removes run together but not alongside a Load,
	// which removes temporary files that an in-flight Save may be writing.
	mu         sync.RWMutex
	unreadable []error // from the last Load
}

var _ broker.Journal = (*Journal)(nil)

// entry is the format of an entry file.
type entry struct {
	Version       int             `json:"v"`
	Pending       *broker.Pending `json:"pending"`
	Generation    uint64          `json:"generation"`
	RecordPending *broker.Pending `json:"record_pending,omitempty"`
	Record        *broker.Record  `json:"record"`
}

// Open returns a Journal over dir, creating dir (0700) if it is missing, and
// checks that dir is a directory this process can write to. With a nil
// keyring, entries are written as plaintext (see the package doc).
func Open(dir string, keyring *seal.Keyring) (*Journal, error) {
	if dir == "" {
		return nil, errors.New("journal: no directory given")
	}
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		if errors.Is(err, syscall.ENOTDIR) {
			return nil, fmt.Errorf("journal: %q is not a directory (it, or a parent, is a file)", dir)
		}
		return nil, fmt.Errorf("journal: create directory %q: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("journal: %q is not a directory", dir)
	}
	// Probe: what Save does, minus the rename.
	f, err := os.CreateTemp(dir, tmpPrefix+"*"+tmpSuffix)
	if err != nil {
		return nil, fmt.Errorf("journal: directory %q is not writable: %w", dir, err)
	}
	name := f.Name()
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(name); err == nil {
		err = rerr
	}
	if err != nil {
		return nil, fmt.Errorf("journal: directory %q is not writable: %w", dir, err)
	}
	return &Journal{dir: dir, keyring: keyring}, nil
}

// Save durably records rec as the outcome of the refresh p announced,
// replacing any entry of p. When it returns nil, the entry survives a crash
// of the process or the machine.
func (j *Journal) Save(ctx context.Context, p *broker.Pending, rec *broker.Record) error {
	if p == nil || rec == nil {
		return errors.New("journal: save: nil pending or record")
	}
	name, err := fileName(p.ID)
	if err != nil {
		return err
	}
	if err := broker.ValidateID("record.id", rec.ID); err != nil {
		return fmt.Errorf("journal: save: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	data, err := j.encode(name, p, rec)
	if err != nil {
		return err
	}
	j.mu.RLock()
	defer j.mu.RUnlock()
	return j.write(name, data)
}

// encode returns the file content of an entry, sealed when j has a keyring.
func (j *Journal) encode(name string, p *broker.Pending, rec *broker.Record) ([]byte, error) {
	data, err := json.Marshal(entry{
		Version:       version,
		Pending:       p,
		Generation:    rec.Generation,
		RecordPending: rec.Pending,
		Record:        rec,
	})
	if err != nil {
		// Marshalling a Record cannot fail; its error would not hold a
		// secret either, but say nothing more than that it failed.
		return nil, errors.New("journal: save: cannot encode the entry")
	}
	if j.keyring == nil {
		return data, nil
	}
	defer clear(data)
	sealed, err := j.keyring.Seal(data, additionalData(name))
	if err != nil {
		return nil, fmt.Errorf("journal: save: %w", err)
	}
	return sealed, nil
}

// write stores data as the file name: temporary file, fsync, rename, fsync
// of the directory.
func (j *Journal) write(name string, data []byte) (err error) {
	f, err := os.CreateTemp(j.dir, tmpPrefix+"*"+tmpSuffix) // 0600
	if err != nil {
		return fmt.Errorf("journal: save: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("journal: save %s: %w", name, err)
	}
	if err := os.Rename(tmp, filepath.Join(j.dir, name)); err != nil {
		return fmt.Errorf("journal: save %s: %w", name, err)
	}
	// The entry is in place; a failed directory fsync leaves it there but
	// not known to be durable, so report it (and do not remove tmp: it is
	// gone already).
	if err := j.syncDir(); err != nil {
		return fmt.Errorf("journal: save %s: %w", name, err)
	}
	return nil
}

// Remove forgets the entry of p. Removing an entry that does not exist is
// not an error.
func (j *Journal) Remove(ctx context.Context, p *broker.Pending) error {
	if p == nil {
		return errors.New("journal: remove: nil pending")
	}
	name, err := fileName(p.ID)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	j.mu.RLock()
	defer j.mu.RUnlock()
	if err := os.Remove(filepath.Join(j.dir, name)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("journal: remove %s: %w", name, err)
	}
	if err := j.syncDir(); err != nil {
		return fmt.Errorf("journal: remove %s: %w", name, err)
	}
	return nil
}

// Load returns every entry saved and not removed that can be opened, ordered
// by credential ID, then by the time the refresh was sent, then by pending
// ID. It removes the temporary files of Saves that a crash interrupted (best
// effort). Entries that cannot be opened are left in place and reported by
// Unreadable, not by Load's error, which only says that the directory could
// not be read or ctx is done: broker.New gives up on any error from Load,
// and one bad file must not keep a replica from starting.
func (j *Journal) Load(ctx context.Context) ([]broker.JournalEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	des, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("journal: load: %w", err)
	}
	var (
		entries    []broker.JournalEntry
		unreadable []error
		cleaned    bool
	)
	for _, de := range des {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		name := de.Name()
		switch {
		case strings.HasPrefix(name, tmpPrefix) && strings.HasSuffix(name, tmpSuffix):
			// Best effort: a leftover is harmless, and the next Load
			// tries again.
			if os.Remove(filepath.Join(j.dir, name)) == nil {
				cleaned = true
			}
		case strings.HasSuffix(name, suffix):
			e, err := j.read(de)
			if err != nil {
				unreadable = append(unreadable, err)
				continue
			}
			entries = append(entries, e)
		}
	}
	if cleaned {
		_ = j.syncDir() // only the cleanup's durability is at stake
	}
	slices.SortFunc(entries, func(a, b broker.JournalEntry) int {
		if c := strings.Compare(a.Record.ID, b.Record.ID); c != 0 {
			return c
		}
		if c := a.Pending.SentAt.Compare(b.Pending.SentAt); c != 0 {
			return c
		}
		return strings.Compare(a.Pending.ID, b.Pending.ID)
	})
	j.unreadable = unreadable
	return entries, nil
}

// Unreadable returns nil, or an error naming every entry file that the last
// Load found but could not open, and why (an unknown key, a failed
// authentication, a truncated or malformed file, a name that does not match
// the content), never what the file holds. It wraps ErrUnreadable, and one
// error per file, which errors.Join joins; each also wraps the seal error
// where there is one (seal.ErrUnknownKey, seal.ErrOpen, seal.ErrFormat).
func (j *Journal) Unreadable() error {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return errors.Join(j.unreadable...)
}

// read opens one entry file.
func (j *Journal) read(de os.DirEntry) (broker.JournalEntry, error) {
	name := de.Name()
	bad := func(why string) error { return fmt.Errorf("%w: %q: %s", ErrUnreadable, name, why) }
	if !de.Type().IsRegular() {
		return broker.JournalEntry{}, bad("not a regular file")
	}
	f, err := os.Open(filepath.Join(j.dir, name))
	if err != nil {
		return broker.JournalEntry{}, fmt.Errorf("%w: %q: %w", ErrUnreadable, name, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxEntry+1))
	_ = f.Close()
	if err != nil {
		return broker.JournalEntry{}, fmt.Errorf("%w: %q: %w", ErrUnreadable, name, err)
	}
	if len(data) > maxEntry {
		return broker.JournalEntry{}, bad("larger than any entry")
	}
	switch {
	case seal.IsSealed(data):
		if j.keyring == nil {
			return broker.JournalEntry{}, bad("sealed, and no keyring is configured")
		}
		pt, _, err := j.keyring.Open(data, additionalData(name))
		if err != nil {
			return broker.JournalEntry{}, fmt.Errorf("%w: %q: %w", ErrUnreadable, name, err)
		}
		defer clear(pt)
		data = pt
	case len(data) == 0:
		return broker.JournalEntry{}, bad("empty")
	case data[0] != '{':
		return broker.JournalEntry{}, bad("neither sealed nor JSON")
	}
	var e entry
	if err := json.Unmarshal(data, &e); err != nil {
		// json's errors may quote the input, which holds secrets.
		return broker.JournalEntry{}, bad("not a valid entry (truncated or malformed JSON)")
	}
	switch {
	case e.Version != version:
		return broker.JournalEntry{}, bad(fmt.Sprintf("unsupported version %d", e.Version))
	case e.Pending == nil || e.Record == nil:
		return broker.JournalEntry{}, bad("incomplete entry")
	case broker.ValidateID("record.id", e.Record.ID) != nil:
		return broker.JournalEntry{}, bad("invalid credential id")
	}
	if want, err := fileName(e.Pending.ID); err != nil || want != name {
		return broker.JournalEntry{}, bad("content belongs to another file name")
	}
	e.Record.Generation = e.Generation
	e.Record.Pending = e.RecordPending
	return broker.JournalEntry{Pending: e.Pending, Record: e.Record}, nil
}

// syncDir makes renames and removals in the directory durable.
func (j *Journal) syncDir() error {
	if runtime.GOOS == "windows" {
		return nil // directories cannot be fsynced there; renames are durable
	}
	d, err := os.Open(j.dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// fileName returns the name of the entry file of a pending ID.
func fileName(pendingID string) (string, error) {
	if err := broker.ValidateID("pending.id", pendingID); err != nil {
		return "", fmt.Errorf("journal: %w", err)
	}
	return strings.ReplaceAll(pendingID, ":", colonEsc) + suffix, nil
}

func additionalData(name string) []byte { return []byte(adPrefix + name) }
