package fetch

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Files Install keeps next to an install path DST. Their presence is the
// whole state of an install, so every function can be re-run after a crash:
//
//	DST.latch-prev    a hard link to what DST was before (a file or a symlink)
//	DST.latch-absent  empty: DST did not exist before
//	DST.latch-new     the sha256 of the content Install put at DST; written
//	                  before the rename, so DST having that content with this
//	                  marker present means the rename happened and the two
//	                  files above describe the version before it
const (
	prevSuffix   = ".latch-prev"
	absentSuffix = ".latch-absent"
	newSuffix    = ".latch-new"
	tmpInfix     = ".latch-tmp-"
)

// ErrNoPrevious: Restore found an installed file but no previous version.
var ErrNoPrevious = errors.New("no previous version kept")

// Install puts the staged file at dst with mode mode atomically, keeping the
// previous version so that Restore can put it back. If dst already has the
// content sha256hex it only records that (idempotent after a crash).
// Otherwise it copies staged to a temporary file in dst's directory (so dst
// may be on another file system), checking its sha256 (ErrChecksum, with
// nothing changed) and fsyncing it; saves dst as dst.latch-prev (a hard link)
// or, if dst does not exist, creates the marker dst.latch-absent; then renames
// the copy over dst and fsyncs the directory. Missing parent directories are
// created (0755). A symlink at dst is replaced, never followed.
func Install(staged, dst string, mode os.FileMode, sha256hex string) error {
	want, err := normHex(sha256hex)
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if err := checkDst(dst); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	st, err := os.Lstat(dst)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if exists && st.IsDir() {
		return fmt.Errorf("install %s: is a directory", dst)
	}
	if exists && st.Mode().IsRegular() {
		got, err := FileSHA256(dst)
		if err != nil {
			return fmt.Errorf("install %s: %w", dst, err)
		}
		if got == want {
			if readMarker(dst+newSuffix) != want {
				// dst had this content before: it is its own previous version.
				if err := recordPrevious(dst, true, want); err != nil {
					return fmt.Errorf("install %s: %w", dst, err)
				}
			}
			if st.Mode()&modeBits != mode&modeBits {
				if err := os.Chmod(dst, mode); err != nil {
					return fmt.Errorf("install %s: %w", dst, err)
				}
			}
			return nil
		}
	}

	removeTemps(dst)
	tmp, err := copyVerified(staged, dst, mode, want)
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	defer os.Remove(tmp) // a no-op once renamed
	if err := recordPrevious(dst, exists, want); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	return nil
}

// modeBits are the bits of an os.FileMode that chmod sets.
const modeBits = os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky

// recordPrevious saves what dst is now (exists) or that it is absent, then
// writes the new-content marker, durably, before anything replaces dst.
func recordPrevious(dst string, exists bool, want string) error {
	if exists {
		// Link under a temporary name, then rename: prev is never missing
		// once it existed, and never half-made.
		tmp := dst + prevSuffix + tmpInfix + "link"
		os.Remove(tmp)
		if err := os.Link(dst, tmp); err != nil {
			return fmt.Errorf("keep previous version: %w", err)
		}
		if err := os.Rename(tmp, dst+prevSuffix); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("keep previous version: %w", err)
		}
		if err := removeIfExists(dst + absentSuffix); err != nil {
			return err
		}
	} else {
		if err := writeFileSync(dst+absentSuffix, nil); err != nil {
			return err
		}
		if err := removeIfExists(dst + prevSuffix); err != nil {
			return err
		}
	}
	if err := writeFileSync(dst+newSuffix, []byte(want+"\n")); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dst))
}

// copyVerified copies staged into a new temporary file next to dst, checks
// its sha256, sets mode and fsyncs it; it returns the temporary file's path.
func copyVerified(staged, dst string, mode os.FileMode, want string) (string, error) {
	in, err := os.Open(staged)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+tmpInfix+"*")
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(out.Name())
		}
	}()
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(out, h), in, make([]byte, bufSize)); err != nil {
		return "", fmt.Errorf("copy %s: %w", staged, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return "", fmt.Errorf("staged %s has sha256 %s, want %s: %w", staged, got, want, ErrChecksum)
	}
	if err := out.Chmod(mode); err != nil {
		return "", err
	}
	if err := out.Sync(); err != nil {
		return "", err
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	ok = true
	return out.Name(), nil
}

// removeTemps deletes temporary copies that a crashed Install left behind.
func removeTemps(dst string) {
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), "."+globEscape(filepath.Base(dst))+tmpInfix+"*"))
	for _, m := range matches {
		os.Remove(m)
	}
}

func globEscape(s string) string {
	r := strings.NewReplacer(`*`, `\*`, `?`, `\?`, `[`, `\[`, `\`, `\\`)
	return r.Replace(s)
}

// Restore undoes Install, and only if it completed: when dst has the content
// sha256hex, it renames dst.latch-prev back over dst, or removes dst if
// dst.latch-absent says it did not exist. When dst has other content the
// install never happened and dst is left alone. Idempotent after a crash.
func Restore(dst, sha256hex string) error {
	want, err := normHex(sha256hex)
	if err != nil {
		return fmt.Errorf("restore %s: %w", dst, err)
	}
	if err := checkDst(dst); err != nil {
		return fmt.Errorf("restore %s: %w", dst, err)
	}
	dir := filepath.Dir(dst)
	st, err := os.Lstat(dst)
	if errors.Is(err, fs.ErrNotExist) {
		// Never installed, or already restored to "absent".
		return cleanMarkers(dst)
	}
	if err != nil {
		return fmt.Errorf("restore %s: %w", dst, err)
	}
	installed := false
	if st.Mode().IsRegular() {
		got, err := FileSHA256(dst)
		if err != nil {
			return fmt.Errorf("restore %s: %w", dst, err)
		}
		installed = got == want
	}
	if !installed {
		return cleanMarkers(dst)
	}
	if _, err := os.Lstat(dst + absentSuffix); err == nil {
		if err := os.Remove(dst); err != nil {
			return fmt.Errorf("restore %s: %w", dst, err)
		}
		if err := syncDir(dir); err != nil {
			return fmt.Errorf("restore %s: %w", dst, err)
		}
		return cleanMarkers(dst)
	}
	pst, err := os.Lstat(dst + prevSuffix)
	if errors.Is(err, fs.ErrNotExist) {
		if readMarker(dst+newSuffix) == "" {
			return nil // no install recorded: nothing to undo
		}
		return fmt.Errorf("restore %s: %w", dst, ErrNoPrevious)
	}
	if err != nil {
		return fmt.Errorf("restore %s: %w", dst, err)
	}
	// When prev is a link to dst itself (the content did not change),
	// rename(2) would do nothing; leaving both is the restored state.
	if !os.SameFile(st, pst) {
		if err := os.Rename(dst+prevSuffix, dst); err != nil {
			return fmt.Errorf("restore %s: %w", dst, err)
		}
		if err := syncDir(dir); err != nil {
			return fmt.Errorf("restore %s: %w", dst, err)
		}
	}
	return cleanMarkers(dst)
}

// Commit ends an install after a successful apply: it forgets the markers
// and keeps dst.latch-prev as the previous version.
func Commit(dst string) error {
	if err := checkDst(dst); err != nil {
		return fmt.Errorf("commit %s: %w", dst, err)
	}
	if err := cleanMarkers(dst); err != nil {
		return fmt.Errorf("commit %s: %w", dst, err)
	}
	return nil
}

func cleanMarkers(dst string) error {
	if err := removeIfExists(dst + absentSuffix); err != nil {
		return err
	}
	if err := removeIfExists(dst + newSuffix); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dst))
}

func checkDst(dst string) error {
	if !filepath.IsAbs(dst) || filepath.Clean(dst) != dst || dst == "/" {
		return fmt.Errorf("want an absolute clean file path")
	}
	return nil
}

// readMarker returns the digest in a .latch-new marker, "" if none.
func readMarker(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
