package store

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// within runs fn and fails the test if it has not returned after a
// generous watchdog: a journal path that is a named pipe must never make
// the agent's start hang. unblock, when not nil, is called at the deadline
// so that the stuck call can return.
func within[T any](t *testing.T, what string, unblock func(), fn func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- fn() }()
	select {
	case r := <-done:
		return r
	case <-time.After(20 * time.Second):
		if unblock != nil {
			unblock()
		}
		t.Fatalf("%s still blocked after 20s: it must return, not wait", what)
		var zero T
		return zero
	}
}

// unblockFIFO opens path for writing, which releases a reader blocked in
// open(2) on it.
func unblockFIFO(path string) func() {
	return func() {
		if f, err := os.OpenFile(path, os.O_RDWR|unix.O_NONBLOCK, 0); err == nil {
			time.AfterFunc(time.Second, func() { f.Close() })
		}
	}
}

// thing is a non-regular file put at the journal path.
type thing struct {
	name  string
	kind  string // what the error must call it
	make  func(t *testing.T, path string) (unblock func())
	check func(t *testing.T, moved string) // the moved-aside thing is intact
}

func things(t *testing.T) []thing {
	other := fillJournal(t, 20, 3) // a valid journal elsewhere, for a link to point to
	otherBytes, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	otherInfo, err := os.Stat(other)
	if err != nil {
		t.Fatal(err)
	}
	isKind := func(t *testing.T, moved string, mode os.FileMode) {
		t.Helper()
		fi, err := os.Lstat(moved)
		if err != nil {
			t.Fatalf("moved-aside thing: %v", err)
		}
		if fi.Mode().Type() != mode {
			t.Fatalf("moved-aside thing is %s, want %s", fileKind(fi.Mode()), fileKind(mode))
		}
	}
	return []thing{
		{"fifo", "a named pipe (FIFO)", func(t *testing.T, path string) func() {
			if err := unix.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
			return unblockFIFO(path)
		}, func(t *testing.T, moved string) { isKind(t, moved, os.ModeNamedPipe) }},

		{"directory", "a directory", func(t *testing.T, path string) func() {
			if err := os.MkdirAll(filepath.Join(path, "sub"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(path, "sub", "keep"), []byte("operator's file"), 0o600); err != nil {
				t.Fatal(err)
			}
			return nil
		}, func(t *testing.T, moved string) {
			isKind(t, moved, os.ModeDir)
			if b, err := os.ReadFile(filepath.Join(moved, "sub", "keep")); err != nil || string(b) != "operator's file" {
				t.Errorf("file inside the moved directory: %q, %v, want it kept", b, err)
			}
		}},

		{"socket", "a socket", func(t *testing.T, path string) func() {
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			t.Cleanup(func() { l.Close() })
			return nil
		}, func(t *testing.T, moved string) { isKind(t, moved, os.ModeSocket) }},

		{"dangling symlink", "a symbolic link", func(t *testing.T, path string) func() {
			if err := os.Symlink(filepath.Join(t.TempDir(), "nowhere", "journal.db"), path); err != nil {
				t.Fatal(err)
			}
			return nil
		}, func(t *testing.T, moved string) {
			isKind(t, moved, os.ModeSymlink)
			target, _ := os.Readlink(moved)
			if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the dangling link's target %s: %v, want it still missing (never created through the link)", target, err)
			}
		}},

		{"symlink to a journal", "a symbolic link to " + other, func(t *testing.T, path string) func() {
			if err := os.Symlink(other, path); err != nil {
				t.Fatal(err)
			}
			return nil
		}, func(t *testing.T, moved string) {
			isKind(t, moved, os.ModeSymlink)
			if target, err := os.Readlink(moved); err != nil || target != other {
				t.Errorf("moved link points to %q, %v, want %s", target, err, other)
			}
			b, err := os.ReadFile(other)
			fi, _ := os.Stat(other)
			if err != nil || !bytes.Equal(b, otherBytes) || !fi.ModTime().Equal(otherInfo.ModTime()) {
				t.Errorf("the journal the link points to was modified (read error %v)", err)
			}
		}},

		{"symlink to a fifo", "a symbolic link", func(t *testing.T, path string) func() {
			fifo := filepath.Join(t.TempDir(), "fifo")
			if err := unix.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(fifo, path); err != nil {
				t.Fatal(err)
			}
			return unblockFIFO(fifo)
		}, func(t *testing.T, moved string) { isKind(t, moved, os.ModeSymlink) }},

		{"character device", "a character device", func(t *testing.T, path string) func() {
			if os.Geteuid() != 0 {
				t.Skip("needs root: a device node at the journal path was not tested")
			}
			if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 5))); err != nil { // like /dev/zero
				t.Fatal(err)
			}
			return nil
		}, func(t *testing.T, moved string) { isKind(t, moved, os.ModeDevice|os.ModeCharDevice) }},
	}
}

// TestNotRegular puts each kind of non-regular file at the journal path:
// Open must return (never block), with ErrCorrupt naming the kind and
// nothing changed; OpenOrReset must move the thing itself aside, intact,
// and start a fresh, usable journal.
func TestNotRegular(t *testing.T) {
	for _, th := range things(t) {
		t.Run(th.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state", "journal.db")
			os.MkdirAll(filepath.Dir(path), 0o700)
			unblock := th.make(t, path)
			before, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}

			err = within(t, "Open", unblock, func() error {
				j, err := Open(path, &Options{Timeout: 200 * time.Millisecond})
				if err == nil {
					j.Close()
				}
				return err
			})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open: got %v, want ErrCorrupt", err)
			}
			for _, want := range []string{path, th.kind, "not a regular file"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Open error %q does not say %q", err, want)
				}
			}
			if now, err := os.Lstat(path); err != nil || !os.SameFile(before, now) || now.Mode() != before.Mode() {
				t.Fatalf("Open changed what is at the path: %v", err)
			}

			type result struct {
				j     *Journal
				aside string
				err   error
			}
			r := within(t, "OpenOrReset", unblock, func() result {
				j, aside, err := OpenOrReset(path, &Options{Timeout: 200 * time.Millisecond})
				return result{j, aside, err}
			})
			if r.err != nil {
				t.Fatalf("OpenOrReset: %v", r.err)
			}
			defer r.j.Close()
			if !strings.HasPrefix(r.aside, path+".corrupt-") {
				t.Errorf("aside %q, want prefix %s.corrupt-", r.aside, path)
			}
			if moved, err := os.Lstat(r.aside); err != nil || !os.SameFile(before, moved) {
				t.Fatalf("aside %s is not the thing that was at the path: %v", r.aside, err)
			}
			th.check(t, r.aside)
			if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
				t.Fatalf("journal path after OpenOrReset: %v, want a regular file", err)
			}
			if err := r.j.Update(func(tx *Tx) error { return tx.PutHold(Hold{App: "kiosk", Service: "ui", Reason: "r"}) }); err != nil {
				t.Fatalf("write to the fresh journal: %v", err)
			}
			r.j.Close()
			j2, aside2, err := OpenOrReset(path, nil)
			if err != nil || aside2 != "" {
				t.Fatalf("OpenOrReset of the fresh journal: %q, %v, want it opened, nothing moved", aside2, err)
			}
			defer j2.Close()
			if holds := holdsOf(t, j2); len(holds) != 1 || holds[0].Reason != "r" {
				t.Errorf("fresh journal after reopen holds %+v, want the hold written", holds)
			}
			th.check(t, r.aside)
		})
	}
}

// TestOpenRegularRace covers the moment between Open's lstat and its open:
// the functions that open the path (the pre-check and bbolt's open) must
// themselves refuse, without blocking, anything but a regular file.
func TestOpenRegularRace(t *testing.T) {
	for _, th := range things(t) {
		t.Run(th.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "journal.db")
			unblock := th.make(t, path)
			err := within(t, "precheck", unblock, func() error { return precheck(path) })
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), th.kind) {
				t.Errorf("precheck: got %v, want ErrCorrupt naming %s", err, th.kind)
			}
			err = within(t, "bbolt's open", unblock, func() error {
				f, err := openRegular(path, os.O_RDWR|os.O_CREATE, 0o600)
				if err == nil {
					f.Close()
				}
				return err
			})
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), th.kind) {
				t.Errorf("openRegular: got %v, want ErrCorrupt naming %s", err, th.kind)
			}
			th.check(t, path)
		})
	}
}

// TestMoveAsideNeverReplaces checks that moving aside skips a taken name
// instead of renaming over it (which would delete what is there).
func TestMoveAsideNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "journal.db")
	stamp := time.Now().UTC()
	// Take the names of this second and the next, in case the clock ticks.
	for _, s := range []time.Time{stamp, stamp.Add(time.Second)} {
		name := path + ".corrupt-" + s.Format("20060102T150405Z")
		if err := os.WriteFile(name, []byte("earlier "+name), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name+".1", []byte("earlier "+name+".1"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, []byte("now"), 0o600); err != nil {
		t.Fatal(err)
	}
	aside, err := moveAside(path, ".corrupt-")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(aside); string(b) != "now" {
		t.Errorf("aside %s holds %q, want the moved file", aside, b)
	}
	entries, _ := filepath.Glob(path + ".corrupt-*")
	for _, e := range entries {
		if e == aside {
			continue
		}
		if b, _ := os.ReadFile(e); string(b) != "earlier "+e {
			t.Errorf("%s holds %q: an earlier aside file was replaced", e, b)
		}
	}
	if len(entries) != 5 {
		t.Errorf("%d aside files, want the 4 earlier ones and the new one: %v", len(entries), entries)
	}
}

func holdsOf(t *testing.T, j *Journal) []Hold {
	t.Helper()
	var holds []Hold
	if err := j.View(func(tx *Tx) error {
		var err error
		holds, err = tx.Holds()
		return err
	}); err != nil {
		t.Fatalf("holds: %v", err)
	}
	return holds
}
