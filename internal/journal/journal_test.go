package journal_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/journal"
	"github.com/tokenbroker/tokenbroker/internal/seal"
)

const (
	refreshToken = "rt-SUCCESSOR-0123456789abcdef"
	clientSecret = "cs-PRIMARY-fedcba9876543210"
	oldSecret    = "cs-OLD-aaaaaaaaaaaaaaaa"
	accessToken  = "at-CURRENT-5555555555555555"
)

var secrets = []string{refreshToken, clientSecret, oldSecret, accessToken}

func keyring(t testing.TB, id string, b byte) *seal.Keyring {
	t.Helper()
	k, err := seal.NewKeyring(id, map[string][]byte{id: bytes.Repeat([]byte{b}, seal.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func open(t testing.TB, dir string, k *seal.Keyring) *journal.Journal {
	t.Helper()
	j, err := journal.Open(dir, k)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func pending(id string, sent time.Time) *broker.Pending {
	return &broker.Pending{ID: id, Holder: "replica-1", SentAt: sent, Journaled: true}
}

func record(id string, gen uint64) *broker.Record {
	return &broker.Record{
		Credential: broker.Credential{
			ID:            id,
			TokenURL:      "https://idp.example/token",
			ClientID:      "client-" + id,
			ClientSecrets: []string{clientSecret, oldSecret},
			Scopes:        []string{"openid", "offline_access"},
			ReuseGrace:    2 * time.Second,
		},
		RefreshToken:  refreshToken,
		Token:         broker.Token{AccessToken: accessToken, TokenType: "Bearer", Expiry: t0.Add(time.Hour), IssuedAt: t0},
		Generation:    gen,
		Pending:       &broker.Pending{ID: "marker-" + id, Holder: "replica-0", SentAt: t0.Add(-time.Minute)},
		State:         broker.StateActive,
		LastRefreshAt: t0,
		CreatedAt:     t0.Add(-24 * time.Hour),
		UpdatedAt:     t0,
	}
}

func mustSave(t testing.TB, j *journal.Journal, p *broker.Pending, rec *broker.Record) {
	t.Helper()
	if err := j.Save(context.Background(), p, rec); err != nil {
		t.Fatalf("Save(%s): %v", p.ID, err)
	}
}

func mustLoad(t testing.TB, j *journal.Journal) []broker.JournalEntry {
	t.Helper()
	es, err := j.Load(context.Background())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return es
}

// files returns the names in dir.
func files(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// mode is a journal's way of writing entries: in plaintext, or sealed with
// a keyring.
type mode struct {
	name string
	k    *seal.Keyring // nil: plaintext
}

// modes is each way a journal writes entries, for a test to run in both.
func modes(tb testing.TB) []mode {
	return []mode{{"plaintext", nil}, {"sealed", keyring(tb, "k1", 1)}}
}

func noSecrets(t testing.TB, what string, b []byte) {
	t.Helper()
	for _, s := range secrets {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("%s contains the secret %q", what, s)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range modes(t) {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			j := open(t, dir, tc.k)
			// Saved out of order; Load sorts by credential, SentAt, pending ID.
			want := []broker.JournalEntry{
				{Pending: pending("p1", t0), Record: record("alpha", 7)},
				{Pending: pending("p3", t0.Add(time.Second)), Record: record("alpha", 8)},
				{Pending: pending("p0", t0.Add(time.Second)), Record: record("beta:svc.x", 1<<40)},
				{Pending: pending("p2", t0.Add(time.Second)), Record: record("beta:svc.x", 3)},
			}
			want[1].Record.Pending = nil
			for _, i := range []int{3, 1, 0, 2} {
				mustSave(t, j, want[i].Pending, want[i].Record)
			}
			// Saving again replaces.
			mustSave(t, j, want[0].Pending, want[0].Record)

			got := mustLoad(t, open(t, dir, tc.k)) // a new process
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Load:\n got %s\nwant %s", show(got), show(want))
			}
			if got[0].Record.Generation != 7 || got[2].Record.Generation != 1<<40 {
				t.Errorf("generations not kept: %d, %d", got[0].Record.Generation, got[2].Record.Generation)
			}
			if p := got[0].Record.Pending; p == nil || p.ID != "marker-alpha" {
				t.Errorf("Record.Pending not kept: %+v", p)
			}
			if !got[0].Pending.Journaled || got[0].Pending.Holder != "replica-1" {
				t.Errorf("Pending not kept: %+v", got[0].Pending)
			}

			names := files(t, dir)
			if len(names) != 4 {
				t.Fatalf("files %v, want 4 entries", names)
			}
			for _, n := range names {
				fi, err := os.Stat(filepath.Join(dir, n))
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("%s has mode %v, want 0600", n, fi.Mode().Perm())
				}
			}
			if err := j.Unreadable(); err != nil {
				t.Errorf("Unreadable: %v", err)
			}
		})
	}
}

func show(es []broker.JournalEntry) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "\n  %+v gen=%d pending=%+v %+v", *e.Pending, e.Record.Generation, e.Record.Pending, *e.Record)
	}
	return b.String()
}

func TestSealedFilesHoldNoSecrets(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir, keyring(t, "k1", 1))
	mustSave(t, j, pending("p1", t0), record("alpha", 1))
	mustSave(t, j, pending("p2", t0), record("beta", 2))
	for _, n := range files(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if !seal.IsSealed(b) {
			t.Errorf("%s is not sealed", n)
		}
		noSecrets(t, n, b)
		if bytes.Contains(b, []byte("alpha")) || bytes.Contains(b, []byte("client-")) {
			t.Errorf("%s shows its plaintext", n)
		}
	}

	// The test can fail: the same entries without a keyring do hold them.
	pdir := t.TempDir()
	mustSave(t, open(t, pdir, nil), pending("p1", t0), record("alpha", 1))
	b, err := os.ReadFile(filepath.Join(pdir, "p1.entry"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		if !bytes.Contains(b, []byte(s)) {
			t.Errorf("plaintext entry lacks %q; the sealed check proves nothing", s)
		}
	}
}

// unreadable checks that the last Load of j reported exactly the files
// named, each matching target, and that the report holds no secret.
func unreadable(t *testing.T, j *journal.Journal, target error, names ...string) {
	t.Helper()
	err := j.Unreadable()
	if len(names) == 0 {
		if err != nil {
			t.Fatalf("Unreadable: %v, want nil", err)
		}
		return
	}
	if !errors.Is(err, journal.ErrUnreadable) {
		t.Fatalf("Unreadable: %v, want ErrUnreadable", err)
	}
	if target != nil && !errors.Is(err, target) {
		t.Errorf("Unreadable: %v, want it to match %v", err, target)
	}
	msg := err.Error()
	for _, n := range names {
		if !strings.Contains(msg, n) {
			t.Errorf("Unreadable: %q does not name %s", msg, n)
		}
	}
	if got := len(err.(interface{ Unwrap() []error }).Unwrap()); got != len(names) {
		t.Errorf("Unreadable reports %d files, want %d: %v", got, len(names), err)
	}
	noSecrets(t, "Unreadable's message", []byte(msg))
	t.Logf("Unreadable: %v", err)
}

func TestWrongKey(t *testing.T) {
	dir := t.TempDir()
	k1 := keyring(t, "k1", 1)
	mustSave(t, open(t, dir, k1), pending("good", t0), record("alpha", 1))
	mustSave(t, open(t, dir, keyring(t, "k1", 2)), pending("samekeyid", t0), record("beta", 1))
	mustSave(t, open(t, dir, keyring(t, "k2", 1)), pending("otherkeyid", t0), record("gamma", 1))

	j := open(t, dir, k1)
	es := mustLoad(t, j)
	if len(es) != 1 || es[0].Pending.ID != "good" {
		t.Fatalf("Load: %s, want only the good entry", show(es))
	}
	unreadable(t, j, nil, "samekeyid.entry", "otherkeyid.entry")
	if err := j.Unreadable(); !errors.Is(err, seal.ErrOpen) || !errors.Is(err, seal.ErrUnknownKey) {
		t.Errorf("Unreadable: %v, want seal.ErrOpen and seal.ErrUnknownKey", err)
	}
	// Left in place, for a restart with the right key.
	if n := len(files(t, dir)); n != 3 {
		t.Errorf("%d files left, want 3", n)
	}
	both, err := seal.NewKeyring("k1", map[string][]byte{
		"k1": bytes.Repeat([]byte{1}, seal.KeySize), "k2": bytes.Repeat([]byte{1}, seal.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	j = open(t, dir, both)
	if es := mustLoad(t, j); len(es) != 2 {
		t.Errorf("with k2 restored: %s, want 2 entries", show(es))
	}
	unreadable(t, j, seal.ErrOpen, "samekeyid.entry")

	// No keyring at all.
	j = open(t, dir, nil)
	if es := mustLoad(t, j); len(es) != 0 {
		t.Errorf("without a keyring: %s, want none", show(es))
	}
	unreadable(t, j, nil, "good.entry", "samekeyid.entry", "otherkeyid.entry")
}

func TestTruncated(t *testing.T) {
	for _, tc := range modes(t) {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			j := open(t, dir, tc.k)
			mustSave(t, j, pending("whole", t0), record("alpha", 1))
			mustSave(t, j, pending("cut", t0), record("beta", 1))
			mustSave(t, j, pending("empty", t0), record("gamma", 1))
			path := filepath.Join(dir, "cut.entry")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// Cut past the secrets, so that a report quoting the
			// content would show them.
			if err := os.WriteFile(path, b[:len(b)-8], 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "empty.entry"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(dir, "dir.entry"), 0o700); err != nil {
				t.Fatal(err)
			}
			es := mustLoad(t, j)
			if len(es) != 1 || es[0].Pending.ID != "whole" {
				t.Fatalf("Load: %s, want only the whole entry", show(es))
			}
			unreadable(t, j, nil, "cut.entry", "empty.entry", "dir.entry")

			// Once the operator moves them away, the report clears.
			for _, n := range []string{"cut.entry", "empty.entry", "dir.entry"} {
				if err := os.Remove(filepath.Join(dir, n)); err != nil {
					t.Fatal(err)
				}
			}
			mustLoad(t, j)
			unreadable(t, j, nil)
		})
	}
}

// TestSwapped: an entry moved to another entry's name does not open.
func TestSwapped(t *testing.T) {
	for _, tc := range modes(t) {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			j := open(t, dir, tc.k)
			mustSave(t, j, pending("pa", t0), record("alpha", 1))
			mustSave(t, j, pending("pb", t0), record("beta", 5))
			a := filepath.Join(dir, "pa.entry")
			b := filepath.Join(dir, "pb.entry")
			if err := os.Rename(a, b); err != nil {
				t.Fatal(err)
			}
			if es := mustLoad(t, j); len(es) != 0 {
				t.Fatalf("Load: %s, want none", show(es))
			}
			if tc.k != nil {
				unreadable(t, j, seal.ErrOpen, "pb.entry")
			} else {
				unreadable(t, j, nil, "pb.entry")
			}
		})
	}
}

// TestPlaintextThenKey: entries written before a key was configured are
// still stored; new ones are sealed.
func TestPlaintextThenKey(t *testing.T) {
	dir := t.TempDir()
	mustSave(t, open(t, dir, nil), pending("old", t0), record("alpha", 1))
	j := open(t, dir, keyring(t, "k1", 1))
	mustSave(t, j, pending("new", t0), record("alpha", 2))
	es := mustLoad(t, j)
	if len(es) != 2 {
		t.Fatalf("Load: %s, want 2", show(es))
	}
	unreadable(t, j, nil)
	b, err := os.ReadFile(filepath.Join(dir, "new.entry"))
	if err != nil {
		t.Fatal(err)
	}
	if !seal.IsSealed(b) {
		t.Error("new entry not sealed")
	}
}

func TestLeftoverTempFiles(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir, keyring(t, "k1", 1))
	mustSave(t, j, pending("kept", t0), record("alpha", 1))
	for _, n := range []string{".entry-123.tmp", ".entry-.tmp"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("half a wr"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Files the journal does not own are left alone.
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("operator notes"), 0o600); err != nil {
		t.Fatal(err)
	}
	es := mustLoad(t, j)
	if len(es) != 1 || es[0].Pending.ID != "kept" {
		t.Fatalf("Load: %s, want the kept entry", show(es))
	}
	unreadable(t, j, nil)
	if got, want := files(t, dir), []string{"README", "kept.entry"}; !reflect.DeepEqual(got, want) {
		t.Errorf("files %v, want %v", got, want)
	}
}

// TestCrashBeforeRename: a Save that wrote and fsynced its temporary file
// but died before the rename leaves no entry.
func TestCrashBeforeRename(t *testing.T) {
	for _, tc := range modes(t) {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			j := open(t, dir, tc.k)
			// A whole entry's bytes, as Save would have written them.
			mustSave(t, j, pending("crash", t0), record("alpha", 1))
			b, err := os.ReadFile(filepath.Join(dir, "crash.entry"))
			if err != nil {
				t.Fatal(err)
			}
			if err := j.Remove(context.Background(), pending("crash", t0)); err != nil {
				t.Fatal(err)
			}
			tmp := filepath.Join(dir, ".entry-4242424242.tmp")
			if err := os.WriteFile(tmp, b, 0o600); err != nil {
				t.Fatal(err)
			}

			j = open(t, dir, tc.k) // the restart
			if es := mustLoad(t, j); len(es) != 0 {
				t.Fatalf("Load: %s, want none", show(es))
			}
			unreadable(t, j, nil)
			if names := files(t, dir); len(names) != 0 {
				t.Errorf("files left: %v", names)
			}
		})
	}
}

func TestRemove(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	j := open(t, dir, keyring(t, "k1", 1))
	if err := j.Remove(ctx, pending("never", t0)); err != nil {
		t.Fatalf("Remove of a missing entry: %v", err)
	}
	mustSave(t, j, pending("a", t0), record("alpha", 1))
	mustSave(t, j, pending("b", t0), record("beta", 1))
	for range 2 {
		if err := j.Remove(ctx, pending("a", t0)); err != nil {
			t.Fatalf("Remove: %v", err)
		}
	}
	es := mustLoad(t, j)
	if len(es) != 1 || es[0].Pending.ID != "b" {
		t.Fatalf("Load: %s, want b", show(es))
	}
}

// TestNames: any pending ID that broker.ValidateID accepts makes a safe,
// distinct file name; others are refused.
func TestNames(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	j := open(t, dir, keyring(t, "k1", 1))
	ids := []string{"a", "a:b", "a.b", "a_b", "a-b", "A", "0...", "x:" + strings.Repeat(":", broker.MaxIDLen-2)}
	for _, id := range ids {
		mustSave(t, j, pending(id, t0), record("alpha", 1))
	}
	if n := len(files(t, dir)); n != len(ids) {
		t.Errorf("%d files for %d IDs: %v", n, len(ids), files(t, dir))
	}
	es := mustLoad(t, j)
	if len(es) != len(ids) {
		t.Fatalf("Load: %d entries, want %d", len(es), len(ids))
	}
	unreadable(t, j, nil)
	for _, id := range ids {
		if err := j.Remove(ctx, pending(id, t0)); err != nil {
			t.Fatalf("Remove(%q): %v", id, err)
		}
	}
	if names := files(t, dir); len(names) != 0 {
		t.Errorf("files left: %v", names)
	}

	for _, id := range []string{"", "../x", "a/b", ".hidden", "-x", "a b", "a+b", "a\x00", strings.Repeat("a", broker.MaxIDLen+1)} {
		if err := j.Save(ctx, pending(id, t0), record("alpha", 1)); err == nil {
			t.Errorf("Save with pending ID %q: no error", id)
		}
		if err := j.Remove(ctx, pending(id, t0)); err == nil {
			t.Errorf("Remove with pending ID %q: no error", id)
		}
	}
	if err := j.Save(ctx, pending("ok", t0), record("../etc", 1)); err == nil {
		t.Error("Save of a record with a bad ID: no error")
	}
	if err := j.Save(ctx, nil, record("alpha", 1)); err == nil {
		t.Error("Save(nil pending): no error")
	}
	if err := j.Save(ctx, pending("ok", t0), nil); err == nil {
		t.Error("Save(nil record): no error")
	}
	if err := j.Remove(ctx, nil); err == nil {
		t.Error("Remove(nil): no error")
	}
	if names := files(t, dir); len(names) != 0 {
		t.Errorf("files left: %v", names)
	}
}

func TestContextCanceled(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir, nil)
	mustSave(t, j, pending("a", t0), record("alpha", 1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := j.Save(ctx, pending("b", t0), record("beta", 1)); !errors.Is(err, context.Canceled) {
		t.Errorf("Save: %v, want context.Canceled", err)
	}
	if err := j.Remove(ctx, pending("a", t0)); !errors.Is(err, context.Canceled) {
		t.Errorf("Remove: %v, want context.Canceled", err)
	}
	if _, err := j.Load(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Load: %v, want context.Canceled", err)
	}
	if got := files(t, dir); !reflect.DeepEqual(got, []string{"a.entry"}) {
		t.Errorf("files %v, want just a.entry", got)
	}
}

func TestConcurrent(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir, keyring(t, "k1", 1))
	ctx := context.Background()
	const workers, rounds = 8, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds*3)
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				p := pending(fmt.Sprintf("w%d-r%d", w, r), t0.Add(time.Duration(r)*time.Second))
				// Two workers share each credential; a second Save of
				// the same entry races with the first's Remove.
				rec := record(fmt.Sprintf("cred%d", w/2), uint64(r))
				if err := j.Save(ctx, p, rec); err != nil {
					errs <- err
				}
				if r%2 == 0 {
					if err := j.Remove(ctx, p); err != nil {
						errs <- err
					}
				}
			}
		})
	}
	wg.Go(func() {
		for range 10 {
			if _, err := j.Load(ctx); err != nil {
				errs <- err
			}
			if err := j.Unreadable(); err != nil {
				errs <- err
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	es := mustLoad(t, j)
	if len(es) != workers*rounds/2 {
		t.Fatalf("Load: %d entries, want %d", len(es), workers*rounds/2)
	}
	unreadable(t, j, nil)
	for i, e := range es {
		var w, r int
		if _, err := fmt.Sscanf(e.Pending.ID, "w%d-r%d", &w, &r); err != nil || r%2 != 1 ||
			e.Record.Generation != uint64(r) || e.Record.ID != fmt.Sprintf("cred%d", w/2) {
			t.Errorf("entry %d: %s of %s gen %d", i, e.Pending.ID, e.Record.ID, e.Record.Generation)
		}
		if i > 0 {
			p := es[i-1]
			if p.Record.ID > e.Record.ID || p.Record.ID == e.Record.ID && p.Pending.SentAt.After(e.Pending.SentAt) {
				t.Errorf("entries %d and %d out of order", i-1, i)
			}
		}
	}
	if names := files(t, dir); len(names) != len(es) {
		t.Errorf("%d files for %d entries", len(names), len(es))
	}
}

func TestOpen(t *testing.T) {
	base := t.TempDir()

	dir := filepath.Join(base, "a", "journal")
	if _, err := journal.Open(dir, nil); err != nil {
		t.Fatalf("Open of a missing directory: %v", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("created %v, want a 0700 directory", fi.Mode())
	}
	if names := files(t, dir); len(names) != 0 {
		t.Errorf("Open left files: %v", names)
	}

	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, filepath.Join(file, "sub")} {
		_, err := journal.Open(p, nil)
		if err == nil || !strings.Contains(err.Error(), "not a directory") || !strings.Contains(err.Error(), p) {
			t.Errorf("Open(%s): %v, want a 'not a directory' error naming it", p, err)
		}
	}
	if _, err := journal.Open("", nil); err == nil {
		t.Error("Open(\"\"): no error")
	}

	ro := filepath.Join(base, "ro")
	if err := os.Mkdir(ro, 0o500); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		t.Log("running as root: permissions do not stop writes; skipping the read-only case")
		return
	}
	if _, err := journal.Open(ro, nil); err == nil || !strings.Contains(err.Error(), "not writable") {
		t.Errorf("Open of a read-only directory: %v, want 'not writable'", err)
	}
}

func BenchmarkSave(b *testing.B) {
	for _, bc := range modes(b) {
		b.Run(bc.name, func(b *testing.B) {
			j := open(b, b.TempDir(), bc.k)
			ctx := context.Background()
			p, rec := pending("bench", t0), record("alpha", 1)
			b.ReportAllocs()
			for b.Loop() {
				if err := j.Save(ctx, p, rec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
