package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// openTest opens a fresh journal in t.TempDir() and closes it at the end of
// the test.
func openTest(t testing.TB, opts *Options) *Journal {
	t.Helper()
	j, err := Open(filepath.Join(t.TempDir(), "state", "journal.db"), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

// reopen closes j and opens its file again, as after a restart.
func reopen(t testing.TB, j *Journal, opts *Options) *Journal {
	t.Helper()
	if err := j.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	j2, err := Open(j.Path(), opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	t.Cleanup(func() { j2.Close() })
	return j2
}

var t0 = time.Date(2026, 11, 2, 10, 4, 5, 123456789, time.UTC)

func sampleUpdate() *Update {
	return &Update{
		ID:     "sha256:0123abcd",
		Target: []byte(`{"apps":{"kiosk":{"release":"2026.11.2"}}}`),
		State:  Downloading,
		Files: []File{
			{App: "kiosk", Service: "ui", Source: "https://updates.example/kiosk/ui", SHA256: "aa", Path: "/opt/kiosk/bin/ui", Mode: 0o755, Size: 1 << 40, Done: 12},
			{App: "kiosk", Service: "api", Source: "file:///srv/api", SHA256: "bb", Path: "/opt/kiosk/bin/api", Mode: 0o644, Size: -1, Complete: true},
		},
		Attempts: 2, Reason: "waiting for kiosk/ui", Forced: true,
		Created: t0, Updated: t0.Add(time.Minute), By: "target-file",
	}
}

func sampleApply() *Apply {
	return &Apply{
		UpdateID: "sha256:0123abcd",
		Steps: []Step{
			{App: "kiosk", Service: "ui", Phase: "stopped", At: t0},
			{App: "kiosk", Service: "api", Phase: "pending", At: t0.Add(time.Second)},
		},
		Locks:   []LockRef{{Path: "/tmp/latch/services/kiosk/ui/updates.lock", Dev: 1<<63 + 5, Ino: 1<<40 + 1}},
		Started: t0,
	}
}

// TestRoundTrip writes every record type, reopens the file, and reads it back.
func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		write func(*Tx) error
		read  func(*Tx) (any, error)
		want  any
	}{
		{"app", func(tx *Tx) error {
			return tx.PutApp(App{Name: "kiosk", Current: "2026.11.1", Target: "2026.11.2", Updated: t0, By: "api:uid=0"})
		}, func(tx *Tx) (any, error) { return tx.App("kiosk") },
			App{Name: "kiosk", Current: "2026.11.1", Target: "2026.11.2", Updated: t0, By: "api:uid=0"}},
		{"apps sorted", func(tx *Tx) error {
			for _, n := range []string{"zeta", "alpha", "mid"} {
				if err := tx.PutApp(App{Name: n, Current: n + "-1"}); err != nil {
					return err
				}
			}
			return nil
		}, func(tx *Tx) (any, error) { return tx.Apps() },
			[]App{{Name: "alpha", Current: "alpha-1"}, {Name: "mid", Current: "mid-1"}, {Name: "zeta", Current: "zeta-1"}}},
		{"pending update", func(tx *Tx) error { return tx.PutPending(sampleUpdate()) },
			func(tx *Tx) (any, error) { return tx.Pending() }, sampleUpdate()},
		{"pending update without files", func(tx *Tx) error {
			return tx.PutPending(&Update{ID: "x", State: Failed, Target: []byte("{}")})
		}, func(tx *Tx) (any, error) { return tx.Pending() }, &Update{ID: "x", State: Failed, Target: []byte("{}"), Files: []File{}}},
		{"file progress", func(tx *Tx) error {
			if err := tx.PutPending(sampleUpdate()); err != nil {
				return err
			}
			return tx.SetFileProgress(1, 4096, true)
		}, func(tx *Tx) (any, error) {
			u, err := tx.Pending()
			if err != nil {
				return nil, err
			}
			return u.Files[1], nil
		}, File{App: "kiosk", Service: "api", Source: "file:///srv/api", SHA256: "bb", Path: "/opt/kiosk/bin/api", Mode: 0o644, Size: -1, Done: 4096, Complete: true}},
		{"replaced pending drops old files", func(tx *Tx) error {
			if err := tx.PutPending(sampleUpdate()); err != nil {
				return err
			}
			u := sampleUpdate()
			u.Files = u.Files[:1]
			return tx.PutPending(u)
		}, func(tx *Tx) (any, error) {
			u, err := tx.Pending()
			if err != nil {
				return nil, err
			}
			return len(u.Files), nil
		}, 1},
		{"apply", func(tx *Tx) error { return tx.PutApply(sampleApply()) },
			func(tx *Tx) (any, error) { return tx.Apply() }, sampleApply()},
		{"holds", func(tx *Tx) error {
			for _, h := range []Hold{
				{App: "kiosk", Service: "ui", Reason: "old", Created: t0},
				{App: "kiosk", Service: "ui", Reason: "filming", Expires: t0.Add(time.Hour), Created: t0, By: "cli"},
				{All: true, Reason: "demo", Created: t0},
				{App: "b", Service: "s"},
			} {
				if err := tx.PutHold(h); err != nil {
					return err
				}
			}
			return nil
		}, func(tx *Tx) (any, error) { return tx.Holds() }, []Hold{
			{All: true, Reason: "demo", Created: t0},
			{App: "b", Service: "s"},
			{App: "kiosk", Service: "ui", Reason: "filming", Expires: t0.Add(time.Hour), Created: t0, By: "cli"},
		}},
		{"override", func(tx *Tx) error { return tx.SetOverride(Override{Enabled: true, By: "api:uid=0", At: t0}) },
			func(tx *Tx) (any, error) { return tx.Override() }, Override{Enabled: true, By: "api:uid=0", At: t0}},
		{"override never set", func(tx *Tx) error { return nil },
			func(tx *Tx) (any, error) { return tx.Override() }, Override{}},
		{"pending reboot", func(tx *Tx) error {
			return tx.SetPendingReboot(&Reboot{Kind: "shutdown", BootID: "b00t", Reason: "GPU_MEM", Requested: t0, By: "config"})
		}, func(tx *Tx) (any, error) { return tx.PendingReboot() },
			&Reboot{Kind: "shutdown", BootID: "b00t", Reason: "GPU_MEM", Requested: t0, By: "config"}},
		{"config", func(tx *Tx) error { return tx.PutConfig(map[string]string{"A": "1", "GPU_MEM": "128", "E": ""}) },
			func(tx *Tx) (any, error) { return tx.Config() }, map[string]string{"A": "1", "GPU_MEM": "128", "E": ""}},
		{"config never set", func(tx *Tx) error { return nil },
			func(tx *Tx) (any, error) { return tx.Config() }, map[string]string{}},
		{"events newest first", func(tx *Tx) error {
			for i, k := range []string{"lock-taken", "deferred", "applied"} {
				if _, err := tx.Log(Event{Time: t0.Add(time.Duration(i) * time.Second), Kind: k, App: "kiosk", Service: "ui", Release: "r2", By: "cli", Message: k}); err != nil {
					return err
				}
			}
			return nil
		}, func(tx *Tx) (any, error) { return tx.Events(2) }, []Event{
			{Seq: 3, Time: t0.Add(2 * time.Second), Kind: "applied", App: "kiosk", Service: "ui", Release: "r2", By: "cli", Message: "applied"},
			{Seq: 2, Time: t0.Add(time.Second), Kind: "deferred", App: "kiosk", Service: "ui", Release: "r2", By: "cli", Message: "deferred"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := openTest(t, nil)
			if err := j.Update(tt.write); err != nil {
				t.Fatalf("write: %v", err)
			}
			j = reopen(t, j, nil)
			var got any
			err := j.View(func(tx *Tx) error {
				var err error
				got, err = tt.read(tx)
				return err
			})
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("read back (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDeleteAndNotFound checks the ErrNotFound contract of every getter and
// what each delete does.
func TestDeleteAndNotFound(t *testing.T) {
	j := openTest(t, nil)
	err := j.Update(func(tx *Tx) error {
		if err := tx.PutApp(App{Name: "kiosk"}); err != nil {
			return err
		}
		if err := tx.PutPending(sampleUpdate()); err != nil {
			return err
		}
		if err := tx.PutApply(sampleApply()); err != nil {
			return err
		}
		if err := tx.PutHold(Hold{App: "kiosk", Service: "ui"}); err != nil {
			return err
		}
		return tx.SetPendingReboot(&Reboot{Kind: "reboot", BootID: "b"})
	})
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	err = j.Update(func(tx *Tx) error {
		if err := tx.DeleteApp("kiosk"); err != nil {
			return err
		}
		if err := tx.DeletePending(); err != nil {
			return err
		}
		if err := tx.DeleteApply(); err != nil {
			return err
		}
		if err := tx.DeleteHold("kiosk", "ui", false); err != nil {
			return err
		}
		return tx.SetPendingReboot(nil)
	})
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	j = reopen(t, j, nil)
	j.View(func(tx *Tx) error {
		checks := []struct {
			name string
			err  error
		}{
			{"App", func() error { _, err := tx.App("kiosk"); return err }()},
			{"Pending", func() error { _, err := tx.Pending(); return err }()},
			{"Apply", func() error { _, err := tx.Apply(); return err }()},
			{"PendingReboot", func() error { _, err := tx.PendingReboot(); return err }()},
			{"SetFileProgress in a view without pending", tx.SetFileProgress(0, 1, false)},
		}
		for _, c := range checks {
			if !errors.Is(c.err, ErrNotFound) {
				t.Errorf("%s after delete: got %v, want ErrNotFound", c.name, c.err)
			}
		}
		if h, err := tx.Holds(); err != nil || len(h) != 0 {
			t.Errorf("Holds after delete: got %v, %v, want none", h, err)
		}
		return nil
	})
	err = j.Update(func(tx *Tx) error {
		if err := tx.DeleteHold("kiosk", "ui", false); !errors.Is(err, ErrNotFound) {
			t.Errorf("DeleteHold of a missing hold: got %v, want ErrNotFound", err)
		}
		if err := tx.DeleteHold("", "", true); !errors.Is(err, ErrNotFound) {
			t.Errorf("DeleteHold of a missing --all hold: got %v, want ErrNotFound", err)
		}
		if err := tx.PutPending(sampleUpdate()); err != nil {
			return err
		}
		if err := tx.SetFileProgress(2, 1, false); !errors.Is(err, ErrNotFound) {
			t.Errorf("SetFileProgress of file 2 of 2: got %v, want ErrNotFound", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestInvalidRecords checks that bad names and records are refused and
// nothing of the refused transaction is written.
func TestInvalidRecords(t *testing.T) {
	tests := []struct {
		name  string
		write func(*Tx) error
	}{
		{"app empty name", func(tx *Tx) error { return tx.PutApp(App{}) }},
		{"app NUL", func(tx *Tx) error { return tx.PutApp(App{Name: "a\x00b"}) }},
		{"app slash", func(tx *Tx) error { return tx.PutApp(App{Name: "a/b"}) }},
		{"app dotdot", func(tx *Tx) error { return tx.PutApp(App{Name: ".."}) }},
		{"get app NUL", func(tx *Tx) error { _, err := tx.App("\x00"); return err }},
		{"update no id", func(tx *Tx) error { return tx.PutPending(&Update{State: Waiting}) }},
		{"update bad state", func(tx *Tx) error { return tx.PutPending(&Update{ID: "x", State: "bogus"}) }},
		{"update nil", func(tx *Tx) error { return tx.PutPending(nil) }},
		{"file empty service", func(tx *Tx) error {
			return tx.PutPending(&Update{ID: "x", State: Waiting, Files: []File{{App: "a", Path: "/p"}}})
		}},
		{"file NUL app", func(tx *Tx) error {
			return tx.PutPending(&Update{ID: "x", State: Waiting, Files: []File{{App: "a\x00", Service: "s", Path: "/p"}}})
		}},
		{"progress negative", func(tx *Tx) error { return tx.SetFileProgress(0, -1, false) }},
		{"apply no id", func(tx *Tx) error { return tx.PutApply(&Apply{}) }},
		{"apply step NUL", func(tx *Tx) error {
			return tx.PutApply(&Apply{UpdateID: "x", Steps: []Step{{App: "a", Service: "s\x00"}}})
		}},
		{"hold empty", func(tx *Tx) error { return tx.PutHold(Hold{}) }},
		{"hold all with app", func(tx *Tx) error { return tx.PutHold(Hold{All: true, App: "a"}) }},
		{"hold NUL", func(tx *Tx) error { return tx.PutHold(Hold{App: "a", Service: "\x00"}) }},
		{"reboot kind", func(tx *Tx) error { return tx.SetPendingReboot(&Reboot{Kind: "halt"}) }},
		{"config empty name", func(tx *Tx) error { return tx.PutConfig(map[string]string{"": "x"}) }},
		{"event no kind", func(tx *Tx) error { _, err := tx.Log(Event{Message: "m"}); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := openTest(t, nil)
			err := j.Update(func(tx *Tx) error {
				if err := tx.PutApp(App{Name: "witness"}); err != nil {
					return err
				}
				return tt.write(tx)
			})
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
			j.View(func(tx *Tx) error {
				if _, err := tx.App("witness"); !errors.Is(err, ErrNotFound) {
					t.Errorf("record of the failed transaction: got %v, want ErrNotFound", err)
				}
				return nil
			})
		})
	}
}

// TestOpenCreates checks the modes of a new journal and its directory.
func TestOpenCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	j, err := Open(filepath.Join(dir, "journal.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	for _, c := range []struct {
		path string
		want os.FileMode
	}{{dir, 0o700 | os.ModeDir}, {j.Path(), 0o600}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode(); got != c.want {
			t.Errorf("mode of %s: got %v, want %v", c.path, got, c.want)
		}
	}
	if err := j.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := j.Close(); err != nil {
		t.Errorf("second Close: got %v, want nil", err)
	}
}

func TestRunning(t *testing.T) {
	j := openTest(t, nil)
	err := j.View(func(tx *Tx) error {
		_, err := tx.Running()
		return err
	})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Running on a new journal: %v, want ErrNotFound", err)
	}
	doc := []byte(`{"apps":{"kiosk":{"release":"r1","services":{"ui":{}}}}}`)
	if err := j.Update(func(tx *Tx) error { return tx.SetRunning(doc) }); err != nil {
		t.Fatalf("SetRunning: %v", err)
	}
	for _, bad := range [][]byte{nil, []byte("{"), []byte("not json")} {
		err := j.Update(func(tx *Tx) error { return tx.SetRunning(bad) })
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("SetRunning(%q): %v, want ErrInvalid", bad, err)
		}
	}
	j = reopen(t, j, nil)
	var got []byte
	if err := j.View(func(tx *Tx) error {
		var err error
		got, err = tx.Running()
		return err
	}); err != nil || string(got) != string(doc) {
		t.Fatalf("Running after reopen: %q, %v; want %q", got, err, doc)
	}
}
