package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func putHolds(t *testing.T, j *Journal, reasons ...string) {
	t.Helper()
	err := j.Update(func(tx *Tx) error {
		for i, r := range reasons {
			if err := tx.PutHold(Hold{App: "kiosk", Service: fmt.Sprint("svc", i), Reason: r, Created: t0}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("write holds: %v", err)
	}
}

func reasonsOf(holds []Hold) []string {
	var r []string
	for _, h := range holds {
		r = append(r, h.Reason)
	}
	return r
}

// leftovers lists what Restore may have left next to the journal.
func leftovers(t *testing.T, path, infix string) []string {
	t.Helper()
	m, err := filepath.Glob(path + infix + "*")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// checkRestored checks, after Restore, that the file at path is the one
// the Journal writes to and holds what was committed before and after:
// read after Close by another process, which only sees the file.
func checkRestored(t *testing.T, j *Journal, wantHolds []string, wantEvent string) {
	t.Helper()
	if err := j.Check(); err != nil {
		t.Fatalf("Check after Restore: %v", err)
	}
	if err := j.Update(func(tx *Tx) error { return tx.PutApp(App{Name: "later", Current: "r2"}) }); err != nil {
		t.Fatalf("Update after Restore: %v", err)
	}
	if err := j.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	d := dumpOther(t, j.Path())
	if got := strings.Join(reasonsOf(d.Holds), ","); got != strings.Join(wantHolds, ",") {
		t.Errorf("holds in the file at the path: %q, want %q", got, strings.Join(wantHolds, ","))
	}
	if len(d.Apps) != 1 || d.Apps[0].Name != "later" {
		t.Errorf("apps in the file at the path: %+v, want the one written after Restore", d.Apps)
	}
	if len(d.Events) == 0 || d.Events[0].Kind != "journal" || !strings.Contains(d.Events[0].Message, wantEvent) {
		t.Errorf("events in the file at the path: %+v, want a journal event saying %q", d.Events, wantEvent)
	}
	if l := leftovers(t, j.Path(), ".restore-"); len(l) != 0 {
		t.Errorf("temporary files left: %v", l)
	}
}

// TestCheckHealthy checks that Check passes on a journal that is where it
// should be (also with a second hard link) and that Restore then does
// nothing.
func TestCheckHealthy(t *testing.T) {
	j := openTest(t, nil)
	putHolds(t, j, "a")
	if err := j.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if err := os.Link(j.Path(), j.Path()+".backup"); err != nil {
		t.Fatal(err)
	}
	if err := j.Check(); err != nil {
		t.Fatalf("Check with a second link: %v", err)
	}
	before, _ := os.Stat(j.Path())
	if err := j.Restore(); err != nil {
		t.Fatalf("Restore of a healthy journal: %v", err)
	}
	after, _ := os.Stat(j.Path())
	if !os.SameFile(before, after) {
		t.Errorf("Restore of a healthy journal replaced the file")
	}
	if l := append(leftovers(t, j.Path(), ".replaced-"), leftovers(t, j.Path(), ".restore-")...); len(l) != 0 {
		t.Errorf("Restore of a healthy journal left %v", l)
	}
	// A closed journal is not gone, and Restore writes nothing for it.
	j.Close()
	os.Remove(j.Path())
	if err := j.Check(); !errors.Is(err, os.ErrClosed) || errors.Is(err, ErrGone) {
		t.Errorf("Check of a closed journal: got %v, want os.ErrClosed", err)
	}
	if err := j.Restore(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Restore of a closed journal: got %v, want os.ErrClosed", err)
	}
	if _, err := os.Lstat(j.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Restore of a closed journal wrote %s: %v", j.Path(), err)
	}
}

// TestRestoreDeleted deletes the journal file under an open Journal:
// Check must say ErrGone, and after Restore the file at the path holds
// every commit, also those made while it was gone and after Restore.
func TestRestoreDeleted(t *testing.T) {
	for _, how := range []string{"file deleted", "file moved away", "directory deleted"} {
		t.Run(how, func(t *testing.T) {
			j := openTest(t, nil)
			path := j.Path()
			putHolds(t, j, "filming", "demo")
			var err error
			switch how {
			case "file deleted":
				err = os.Remove(path)
			case "file moved away":
				err = os.Rename(path, filepath.Join(t.TempDir(), "elsewhere.db"))
			case "directory deleted":
				err = os.RemoveAll(filepath.Dir(path))
			}
			if err != nil {
				t.Fatal(err)
			}
			err = j.Check()
			if !errors.Is(err, ErrGone) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Check: got %v, want ErrGone naming %s", err, path)
			}
			if want := map[string]string{"file moved away": "moved away"}[how]; want != "" && !strings.Contains(err.Error(), want) {
				t.Errorf("Check: %v does not say %q", err, want)
			}
			// A commit while the file is gone is not lost either.
			putHolds(t, j, "filming", "demo", "while gone")
			if err := j.Restore(); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if l := leftovers(t, path, ".replaced-"); len(l) != 0 {
				t.Errorf("Restore moved aside %v, but nothing was at the path", l)
			}
			checkRestored(t, j, []string{"filming", "demo", "while gone"}, "was gone from its path")
		})
	}
}

// TestRestoreReplaced puts something else at the journal path under an
// open Journal: Check must say ErrGone naming it, Restore must move it
// aside intact (never delete it, never write through a link) and write the
// journal back.
func TestRestoreReplaced(t *testing.T) {
	tests := []struct {
		name  string
		kind  string
		put   func(t *testing.T, path string)
		check func(t *testing.T, aside string)
	}{
		{"renamed over", "a regular file", func(t *testing.T, path string) {
			tmp := path + ".new"
			if err := os.WriteFile(tmp, []byte("someone's file"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, aside string) {
			if b, err := os.ReadFile(aside); err != nil || string(b) != "someone's file" {
				t.Errorf("aside %s: %q, %v, want the file that was put there", aside, b, err)
			}
		}},
		{"deleted and an empty file created", "a regular file", func(t *testing.T, path string) {
			os.Remove(path)
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, aside string) {
			if fi, err := os.Lstat(aside); err != nil || !fi.Mode().IsRegular() || fi.Size() != 0 {
				t.Errorf("aside %s: %v, want the empty file", aside, err)
			}
		}},
		{"a symbolic link", "a symbolic link", func(t *testing.T, path string) {
			target := filepath.Join(filepath.Dir(filepath.Dir(path)), "precious")
			if err := os.WriteFile(target, []byte("not the journal"), 0o600); err != nil {
				t.Fatal(err)
			}
			os.Remove(path)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, aside string) {
			target, err := os.Readlink(aside)
			if err != nil {
				t.Fatalf("aside %s is not the link: %v", aside, err)
			}
			if b, err := os.ReadFile(target); err != nil || string(b) != "not the journal" {
				t.Errorf("the link's target %s: %q, %v, want it untouched", target, b, err)
			}
		}},
		{"a directory", "a directory", func(t *testing.T, path string) {
			os.Remove(path)
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(path, "keep"), []byte("k"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, aside string) {
			if b, err := os.ReadFile(filepath.Join(aside, "keep")); err != nil || string(b) != "k" {
				t.Errorf("file in the moved directory: %q, %v", b, err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := openTest(t, nil)
			path := j.Path()
			putHolds(t, j, "filming")
			tt.put(t, path)
			thing, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			err = j.Check()
			if !errors.Is(err, ErrGone) || !strings.Contains(err.Error(), tt.kind) {
				t.Fatalf("Check: got %v, want ErrGone naming %s", err, tt.kind)
			}
			if err := j.Restore(); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			asides := leftovers(t, path, ".replaced-")
			if len(asides) != 1 {
				t.Fatalf("moved aside: %v, want one %s.replaced-<time>", asides, path)
			}
			if fi, err := os.Lstat(asides[0]); err != nil || !os.SameFile(fi, thing) {
				t.Fatalf("aside %s is not what was put at the path: %v", asides[0], err)
			}
			tt.check(t, asides[0])
			checkRestored(t, j, []string{"filming"}, "moved that aside to "+asides[0])
			tt.check(t, asides[0])
		})
	}
}

// TestRestoreConcurrent deletes the journal again and again while writers
// commit, restoring each time: no Update may fail or be lost in the switch.
func TestRestoreConcurrent(t *testing.T) {
	j := openTest(t, nil)
	path := j.Path()
	const writers, perWriter = 4, 40
	var wg sync.WaitGroup
	errs := make(chan error, writers*perWriter)
	stop := make(chan struct{})
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				name := fmt.Sprintf("w%d-%d", w, i)
				if err := j.Update(func(tx *Tx) error { return tx.PutApp(App{Name: name, Current: name}) }); err != nil {
					errs <- fmt.Errorf("Update %s: %w", name, err)
				}
				if err := j.View(func(tx *Tx) error { _, err := tx.App(name); return err }); err != nil {
					errs <- fmt.Errorf("View %s after its Update: %w", name, err)
				}
			}
		}()
	}
	restores := 0
	go func() { wg.Wait(); close(stop) }()
loop:
	for {
		select {
		case <-stop:
			break loop
		default:
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := j.Restore(); err != nil {
			t.Fatalf("Restore %d: %v", restores, err)
		}
		restores++
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if restores == 0 {
		t.Fatal("no Restore ran while the writers did")
	}
	j.Close()
	d := dumpOther(t, path)
	if len(d.Apps) != writers*perWriter {
		t.Errorf("file at the path holds %d apps, want every one of the %d committed", len(d.Apps), writers*perWriter)
	}
	t.Logf("%d restores during %d commits", restores, writers*perWriter)
}
