package systemd

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/systemd")

func TestDropInGolden(t *testing.T) {
	golden := filepath.Join("..", "testdata", "systemd", "50-latch-lock.conf.golden")
	got := DropIn("/tmp/latch/services/kiosk/ui")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("read golden (run with -update to create it): %v", err)
	}
	if got != string(want) {
		t.Errorf("DropIn text:\ngot:\n%s\nwant:\n%s", got, want)
	}
}

// TestDropInLockPathEnv: a unit sees its lock where balena applications
// look for it, under both names, with the same value, once each.
func TestDropInLockPathEnv(t *testing.T) {
	env := map[string][]string{}
	for _, line := range strings.Split(DropIn("/tmp/latch/services/kiosk/ui"), "\n") {
		if kv, ok := strings.CutPrefix(line, "Environment="); ok {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = append(env[k], v)
		}
	}
	for _, k := range []string{"BALENA_APP_LOCK_PATH", "RESIN_APP_LOCK_PATH"} {
		if got := env[k]; len(got) != 1 || got[0] != "/tmp/balena/updates.lock" {
			t.Errorf("drop-in sets %s to %q, want once /tmp/balena/updates.lock", k, got)
		}
	}
}

func TestDropInEscapesSpecifiers(t *testing.T) {
	got := DropIn("/tmp/latch/services/100%/ui")
	if !strings.Contains(got, "BindPaths=/tmp/latch/services/100%%/ui:/tmp/balena\n") {
		t.Errorf("got %q, want '%%' doubled in BindPaths", got)
	}
}

func TestWriteDropIn(t *testing.T) {
	root := t.TempDir()
	const unit = "kiosk-ui.service"
	path := filepath.Join(root, unit+".d", DropInName)

	steps := []struct {
		lockDir     string
		wantChanged bool
	}{
		{"/tmp/latch/services/kiosk/ui", true},  // new file
		{"/tmp/latch/services/kiosk/ui", false}, // same content: no write, no reload
		{"/tmp/other/services/kiosk/ui", true},  // changed
	}
	for i, s := range steps {
		before, _ := os.Stat(path)
		changed, err := writeDropIn(root, unit, s.lockDir)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if changed != s.wantChanged {
			t.Errorf("step %d: got changed=%v, want %v", i, changed, s.wantChanged)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(data) != DropIn(s.lockDir) {
			t.Errorf("step %d: got file %q, want %q", i, data, DropIn(s.lockDir))
		}
		after, _ := os.Stat(path)
		if after.Mode().Perm() != 0o644 {
			t.Errorf("step %d: got mode %v, want 0644", i, after.Mode().Perm())
		}
		if !s.wantChanged && !os.SameFile(before, after) {
			t.Errorf("step %d: unchanged drop-in was rewritten", i)
		}
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("got %d files in the drop-in folder, want 1 (temporary files left behind?)", len(entries))
	}
}

func TestWriteDropInRefuses(t *testing.T) {
	root := t.TempDir()
	tests := []struct {
		unit, lockDir string
		want          error
	}{
		{"../evil.service", "/tmp/l", ErrBadUnit},
		{"a.service", "relative/dir", ErrBadLockDir},
		{"a.service", "/tmp/a b", ErrBadLockDir},
		{"a.service", "/tmp/a:b", ErrBadLockDir},
		{"a.service", "/tmp/a\nb", ErrBadLockDir},
		{"a.service", "/tmp/a/../b", ErrBadLockDir},
		{"a.service", `/tmp/a"b`, ErrBadLockDir},
	}
	for _, tt := range tests {
		_, err := writeDropIn(root, tt.unit, tt.lockDir)
		if !errors.Is(err, tt.want) {
			t.Errorf("writeDropIn(%q, %q): got %v, want %v", tt.unit, tt.lockDir, err, tt.want)
		}
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("refused drop-ins left %d entries in %s, want none", len(entries), root)
	}
}

func TestValidUnit(t *testing.T) {
	tests := []struct {
		unit string
		ok   bool
	}{
		{"kiosk-ui.service", true},
		{"reboot.target", true},
		{"app@1.service", true},
		{"foo.socket", true},
		{"", false},
		{"foo", false},
		{".service", false},
		{"foo.exe", false},
		{"a/b.service", false},
		{"a\x00.service", false},
		{"a b.service", false},
		{strings.Repeat("a", 250) + ".service", false},
	}
	for _, tt := range tests {
		err := ValidUnit(tt.unit)
		if (err == nil) != tt.ok {
			t.Errorf("ValidUnit(%q) = %v, want ok=%v", tt.unit, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrBadUnit) {
			t.Errorf("ValidUnit(%q) = %v, want ErrBadUnit", tt.unit, err)
		}
	}
}

// FuzzDropIn checks that whatever lock directory passes the checks, the drop-in has exactly its
// section header and four settings, and that the unit-name check never accepts a path separator.
func FuzzDropIn(f *testing.F) {
	f.Add("kiosk-ui.service", "/tmp/latch/services/kiosk/ui")
	f.Add("a/b.service", "/tmp/x%y")
	f.Add("x.target", "/tmp/a\nBindPaths=/:/tmp/balena")
	f.Fuzz(func(t *testing.T, unit, lockDir string) {
		if ValidUnit(unit) == nil && (strings.ContainsAny(unit, "/\x00\n") || unit == "." || unit == "..") {
			t.Fatalf("ValidUnit accepted %q", unit)
		}
		if checkLockDir(lockDir) != nil {
			return
		}
		lines := 0
		for _, l := range strings.Split(DropIn(lockDir), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				lines++
			}
		}
		if lines != 5 {
			t.Fatalf("DropIn(%q) has %d non-comment lines, want 5", lockDir, lines)
		}
	})
}
