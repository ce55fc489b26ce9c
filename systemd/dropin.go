package systemd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DropInName is the file name of latch's drop-in in each managed unit's <unit>.d/ folder.
const DropInName = "50-latch-lock.conf"

// DropIn returns the text of the drop-in that shows a service its update lock directory where
// balena applications look for it: lockDir bind-mounted at /tmp/balena and /tmp/resin, and
// BALENA_APP_LOCK_PATH and the legacy RESIN_APP_LOCK_PATH both pointing at
// /tmp/balena/updates.lock (as balena sets them). lockDir should pass the checks of
// WriteDropIn; '%' is escaped so that systemd does not read it as a specifier.
func DropIn(lockDir string) string {
	src := strings.ReplaceAll(lockDir, "%", "%%")
	return "# Written by latch at run time; it is re-created whenever latch manages this unit.\n" +
		"# The service's own update lock directory, where applications written for balena look.\n" +
		"[Service]\n" +
		"BindPaths=" + src + ":/tmp/balena\n" +
		"BindPaths=" + src + ":/tmp/resin\n" +
		"Environment=BALENA_APP_LOCK_PATH=" + LockPathEnv + "\n" +
		"Environment=RESIN_APP_LOCK_PATH=" + LockPathEnv + "\n"
}

// LockPathEnv is the lock path a managed unit sees in BALENA_APP_LOCK_PATH and
// RESIN_APP_LOCK_PATH: its own updates.lock, through the /tmp/balena bind mount.
const LockPathEnv = "/tmp/balena/updates.lock"

// WriteDropIn writes DropIn(lockDir) as <DropInRoot>/<unit>.d/50-latch-lock.conf, atomically, and
// reloads systemd when the file's content changed (a write of the same content does nothing).
// The unit must be restarted to see a new bind mount.
func (u *Units) WriteDropIn(ctx context.Context, unit, lockDir string) error {
	u.dmu.Lock()
	defer u.dmu.Unlock()
	root := u.DropInRoot
	if root == "" {
		root = DefaultDropInRoot
	}
	changed, err := writeDropIn(root, unit, lockDir)
	if err != nil || !changed {
		return err
	}
	return u.Reload(ctx)
}

// checkLockDir refuses what cannot be written into BindPaths= unambiguously.
func checkLockDir(dir string) error {
	switch {
	case !filepath.IsAbs(dir) || filepath.Clean(dir) != dir:
		return fmt.Errorf("%w %q: not an absolute, clean path", ErrBadLockDir, dir)
	case strings.ContainsAny(dir, ":\\\"'"):
		return fmt.Errorf("%w %q: contains ':', a quote or a backslash", ErrBadLockDir, dir)
	case strings.IndexFunc(dir, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0:
		return fmt.Errorf("%w %q: contains a space or a control character", ErrBadLockDir, dir)
	}
	return nil
}

// writeDropIn writes the drop-in for unit under root and reports whether the content changed.
func writeDropIn(root, unit, lockDir string) (changed bool, err error) {
	if err := ValidUnit(unit); err != nil {
		return false, fmt.Errorf("write drop-in: %w", err)
	}
	if err := checkLockDir(lockDir); err != nil {
		return false, fmt.Errorf("write drop-in for %s: %w", unit, err)
	}
	dir := filepath.Join(root, unit+".d")
	path := filepath.Join(dir, DropInName)
	want := []byte(DropIn(lockDir))
	if got, err := os.ReadFile(path); err == nil && bytes.Equal(got, want) {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("write drop-in %s: %w", path, err)
	}
	if err := atomicWrite(path, want, 0o644); err != nil {
		return false, fmt.Errorf("write drop-in %s: %w", path, err)
	}
	return true, nil
}

// atomicWrite writes data to path through a temporary file in the same folder, fsynced and renamed
// into place, then fsyncs the folder: readers see the old file or the new one, never a part.
func atomicWrite(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
