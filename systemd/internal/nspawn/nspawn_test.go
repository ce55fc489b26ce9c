package nspawn

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestRootfs(t *testing.T) {
	cache := t.TempDir()
	t.Setenv(EnvRootfs, "")
	t.Setenv(EnvCache, cache)
	if _, err := Rootfs("amd64"); !errors.Is(err, ErrNoRootfs) {
		t.Errorf("empty cache: got %v, want ErrNoRootfs", err)
	}
	// A tree without the completion marker (an interrupted build) is not used.
	tree := filepath.Join(cache, "bookworm-amd64")
	if err := os.MkdirAll(filepath.Join(tree, "lib/systemd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Rootfs("amd64"); !errors.Is(err, ErrNoRootfs) {
		t.Errorf("unmarked tree: got %v, want ErrNoRootfs", err)
	}
	if err := os.WriteFile(filepath.Join(tree, ".latch-rootfs-ok"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := Rootfs("amd64"); err != nil || got != tree {
		t.Errorf("marked tree: got (%q, %v), want (%q, nil)", got, err, tree)
	}
	t.Setenv(EnvRootfs, t.TempDir())
	if _, err := Rootfs("amd64"); !errors.Is(err, ErrNoRootfs) {
		t.Errorf("%s without systemd: got %v, want ErrNoRootfs", EnvRootfs, err)
	}
}

func TestFindScript(t *testing.T) {
	got, err := findScript("scripts/nspawn/rootfs.sh")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := filepath.Abs("../../../scripts/nspawn/rootfs.sh")
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if _, err := findScript("no/such/script.sh"); err == nil {
		t.Error("missing script: got nil error, want one")
	}
}
