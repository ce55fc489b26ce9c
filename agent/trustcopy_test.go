package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"latch/agent/trust"
)

// Each counter of the merged state is the higher of the two, whichever
// side it comes from: a journal put back from an older copy, or a fresh
// journal after a reset, never lowers one.
func TestNewerTrustFieldByField(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	j := trust.State{Root: []byte("root-v3"), RootVersion: 3, TargetVersion: 7, TargetSHA256: "j7", LastIssued: t0}
	c := trust.State{Root: []byte("root-v2"), RootVersion: 2, TargetVersion: 9, TargetSHA256: "c9", LastIssued: t0.Add(time.Hour)}
	got := newerTrust(j, c)
	if string(got.Root) != "root-v3" || got.RootVersion != 3 {
		t.Errorf("root: %s v%d, want the journal's root-v3 v3", got.Root, got.RootVersion)
	}
	if got.TargetVersion != 9 || got.TargetSHA256 != "c9" {
		t.Errorf("target: v%d %s, want the copy's v9 c9", got.TargetVersion, got.TargetSHA256)
	}
	if !got.LastIssued.Equal(t0.Add(time.Hour)) {
		t.Errorf("clock floor %v, want the copy's later %v", got.LastIssued, t0.Add(time.Hour))
	}
	if got := newerTrust(trust.State{}, c); string(got.Root) != "root-v2" || got.TargetVersion != 9 {
		t.Errorf("fresh journal: %+v, want all of the copy", got)
	}
	if got := newerTrust(j, trust.State{}); string(got.Root) != "root-v3" || got.TargetVersion != 7 || !got.LastIssued.Equal(t0) {
		t.Errorf("no copy: %+v, want the journal's", got)
	}
}

// A copy that does not parse, is a symbolic link, or carries a root not
// signed by its own root role is not used, with an error naming the file.
func TestTrustCopyRefused(t *testing.T) {
	dir := t.TempDir()
	a := &Agent{cfg: Config{StateDir: dir, Logf: t.Logf}}
	if _, ok, err := a.loadTrustCopy(); ok || err != nil {
		t.Fatalf("no copy: ok %v err %v, want neither", ok, err)
	}
	path := filepath.Join(dir, TrustCopyName)
	for name, write := range map[string]func() error{
		"garbage": func() error { return os.WriteFile(path, []byte("{not json"), 0o600) },
		"unsigned root": func() error {
			return os.WriteFile(path, []byte(`{"root":"eyJ4IjoxfQ==","root_version":9,"target_version":99}`), 0o600)
		},
		"symlink": func() error {
			other := filepath.Join(t.TempDir(), "elsewhere.json")
			if err := os.WriteFile(other, []byte(`{}`), 0o600); err != nil {
				return err
			}
			return os.Symlink(other, path)
		},
	} {
		os.Remove(path)
		if err := write(); err != nil {
			t.Fatal(err)
		}
		_, ok, err := a.loadTrustCopy()
		if ok || err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: ok %v err %v, want an error naming %s", name, ok, err, path)
		}
	}
}
