package fetch

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func sumOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// stage writes content into a staged file and returns its path and digest.
func stage(t *testing.T, content string) (string, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "staged")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, sumOf(content)
}

func wantContent(t *testing.T, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v, want content %q", path, err, want)
	}
	if string(b) != want {
		t.Fatalf("%s: got %q, want %q", path, b, want)
	}
}

func wantMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky); got != want {
		t.Errorf("%s mode: got %v, want %v", path, got, want)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestInstallRestoreExisting(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "bin", "app")
	must(t, os.MkdirAll(filepath.Dir(dst), 0o755))
	must(t, os.WriteFile(dst, []byte("v1"), 0o644))
	staged, sum := stage(t, "v2")

	for i := 0; i < 2; i++ { // the second call is a retry after a crash
		must(t, Install(staged, dst, 0o755, sum))
		wantContent(t, dst, "v2")
		wantMode(t, dst, 0o755)
		wantContent(t, dst+prevSuffix, "v1")
	}
	for i := 0; i < 2; i++ {
		must(t, Restore(dst, sum))
		wantContent(t, dst, "v1")
		wantMode(t, dst, 0o644)
	}
	for _, p := range []string{dst + prevSuffix, dst + absentSuffix, dst + newSuffix} {
		assertMissing(t, p)
	}
}

func TestInstallRestoreAbsent(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "new", "dir", "app") // parents created
	staged, sum := stage(t, "v2")
	must(t, Install(staged, dst, 0o640, sum))
	must(t, Install(staged, dst, 0o640, sum))
	wantContent(t, dst, "v2")
	wantMode(t, dst, 0o640)
	if _, err := os.Stat(dst + absentSuffix); err != nil {
		t.Errorf("absent marker: %v, want it present", err)
	}
	if st, err := os.Stat(filepath.Dir(dst)); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("created parent: %v, %v; want a 0755 directory", st, err)
	}
	must(t, Restore(dst, sum))
	must(t, Restore(dst, sum))
	assertMissing(t, dst)
	assertMissing(t, dst+absentSuffix)
	assertMissing(t, dst+newSuffix)
}

func TestInstallCommit(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "app")
	must(t, os.WriteFile(dst, []byte("v1"), 0o644))
	staged, sum := stage(t, "v2")
	must(t, Install(staged, dst, 0o644, sum))
	must(t, Commit(dst))
	must(t, Commit(dst))
	wantContent(t, dst, "v2")
	wantContent(t, dst+prevSuffix, "v1") // the previous version stays
	assertMissing(t, dst+newSuffix)
	assertMissing(t, dst+absentSuffix)

	// A new file, committed: no marker says it was absent any more.
	dst2 := filepath.Join(dir, "fresh")
	must(t, Install(staged, dst2, 0o644, sum))
	must(t, Commit(dst2))
	assertMissing(t, dst2+absentSuffix)
	wantContent(t, dst2, "v2")
	// Nothing but the file and the kept version in the directory: no temporaries.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 3 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %q, want app, app.latch-prev, fresh", names)
	}
}

func TestInstallReplacesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "elsewhere")
	must(t, os.WriteFile(target, []byte("not mine"), 0o644))
	dst := filepath.Join(dir, "app")
	must(t, os.Symlink(target, dst))
	staged, sum := stage(t, "v2")

	must(t, Install(staged, dst, 0o755, sum))
	wantContent(t, target, "not mine") // not followed
	if st, _ := os.Lstat(dst); !st.Mode().IsRegular() {
		t.Errorf("dst after Install: mode %v, want a regular file", st.Mode())
	}
	wantContent(t, dst, "v2")

	must(t, Restore(dst, sum))
	if got, err := os.Readlink(dst); err != nil || got != target {
		t.Errorf("dst after Restore: Readlink got %q, %v; want the symlink to %s back", got, err, target)
	}
	wantContent(t, target, "not mine")
}

func TestInstallSameContentKeepsItself(t *testing.T) {
	// dst already holds the new content and an older version lies in
	// .latch-prev from a release before: Restore must not go back to that.
	dst := filepath.Join(t.TempDir(), "app")
	must(t, os.WriteFile(dst, []byte("v2"), 0o644))
	must(t, os.WriteFile(dst+prevSuffix, []byte("v0"), 0o644))
	staged, sum := stage(t, "v2")
	must(t, Install(staged, dst, 0o644, sum))
	must(t, Install(staged, dst, 0o644, sum))
	must(t, Restore(dst, sum))
	must(t, Restore(dst, sum))
	wantContent(t, dst, "v2")
}

func TestInstallInterrupted(t *testing.T) {
	// The state after a crash between saving the previous version and the
	// rename: dst still old. Restore leaves dst alone; Install completes.
	dst := filepath.Join(t.TempDir(), "app")
	must(t, os.WriteFile(dst, []byte("v1"), 0o644))
	staged, sum := stage(t, "v2")
	must(t, recordPreviousAt(t, dst, sum))
	must(t, os.WriteFile(filepath.Join(filepath.Dir(dst), ".app"+tmpInfix+"123"), []byte("half"), 0o600))

	must(t, Restore(dst, sum))
	wantContent(t, dst, "v1")
	assertMissing(t, dst+newSuffix)

	must(t, recordPreviousAt(t, dst, sum))
	must(t, Install(staged, dst, 0o644, sum))
	wantContent(t, dst, "v2")
	assertMissing(t, filepath.Join(filepath.Dir(dst), ".app"+tmpInfix+"123"))
	must(t, Restore(dst, sum))
	wantContent(t, dst, "v1")
}

func TestInstallBadStaged(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "app")
	must(t, os.WriteFile(dst, []byte("v1"), 0o644))
	staged, _ := stage(t, "corrupt")
	err := Install(staged, dst, 0o644, sumOf("v2"))
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("Install of a corrupt staged file: got %v, want ErrChecksum", err)
	}
	wantContent(t, dst, "v1")
	for _, p := range []string{dst + prevSuffix, dst + absentSuffix, dst + newSuffix} {
		assertMissing(t, p)
	}
	ents, _ := os.ReadDir(filepath.Dir(dst))
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only dst", len(ents))
	}
}

func TestInstallOtherFileSystem(t *testing.T) {
	// /dev/shm is a tmpfs on Linux; the install directory (t.TempDir) is not
	// necessarily the same file system, which Install must not care about.
	shm, err := os.MkdirTemp("/dev/shm", "latch-fetch-")
	if err != nil {
		t.Skipf("no /dev/shm (%v): cross-file-system install not tested", err)
	}
	defer os.RemoveAll(shm)
	staged := filepath.Join(shm, "staged")
	must(t, os.WriteFile(staged, []byte("v2"), 0o600))
	dst := filepath.Join(t.TempDir(), "app")
	must(t, Install(staged, dst, 0o755, sumOf("v2")))
	wantContent(t, dst, "v2")
}

func TestInstallRefuses(t *testing.T) {
	dir := t.TempDir()
	staged, sum := stage(t, "x")
	for _, dst := range []string{"rel/path", dir + "/../x", "/", dir} {
		if err := Install(staged, dst, 0o644, sum); err == nil {
			t.Errorf("Install to %q: got nil, want an error", dst)
		}
	}
	if err := Restore("rel", sum); err == nil {
		t.Errorf("Restore(rel): got nil, want an error")
	}
}

// recordPreviousAt runs the step of Install that saves dst's previous
// version, alone, as a crash right after it would leave things.
func recordPreviousAt(t *testing.T, dst, sum string) error {
	t.Helper()
	d, err := openDir(filepath.Dir(dst), false)
	if err != nil {
		return err
	}
	defer d.close()
	return recordPrevious(d, filepath.Base(dst), true, sum)
}

func TestInstallModeChangedAfterInstall(t *testing.T) {
	// Install completed but was not committed, then dst's mode changed
	// (by hand, or an earlier latch): the retry puts the mode right and
	// keeps the version before the install as the previous one.
	dst := filepath.Join(t.TempDir(), "app")
	must(t, os.WriteFile(dst, []byte("v1"), 0o644))
	staged, sum := stage(t, "v2")
	must(t, Install(staged, dst, 0o755, sum))
	must(t, os.Chmod(dst, 0o700))
	must(t, Install(staged, dst, 0o755, sum))
	wantContent(t, dst, "v2")
	wantMode(t, dst, 0o755)
	wantContent(t, dst+prevSuffix, "v1")
	must(t, Restore(dst, sum))
	wantContent(t, dst, "v1")
	wantMode(t, dst, 0o644)

	// The same for a file that did not exist before.
	fresh := filepath.Join(filepath.Dir(dst), "fresh")
	must(t, Install(staged, fresh, 0o755, sum))
	must(t, os.Chmod(fresh, 0o700))
	must(t, Install(staged, fresh, 0o755, sum))
	wantMode(t, fresh, 0o755)
	must(t, Restore(fresh, sum))
	assertMissing(t, fresh)

	// Only the mode changes, nothing else: the previous version is the
	// same content with the old mode, and Restore brings the mode back.
	same := filepath.Join(filepath.Dir(dst), "same")
	must(t, os.WriteFile(same, []byte("v2"), 0o644))
	for i := 0; i < 2; i++ { // the second time as a retry
		must(t, Install(staged, same, 0o755, sum))
		wantMode(t, same, 0o755)
	}
	must(t, Restore(same, sum))
	wantContent(t, same, "v2")
	wantMode(t, same, 0o644)
}
