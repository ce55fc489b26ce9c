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

	"golang.org/x/sys/unix"
)

// Files Install keeps next to an install path DST. Their presence is the
// whole state of an install, so every function can be re-run after a crash:
//
//	DST.latch-prev    a hard link to what DST was before (a file or a symlink)
//	DST.latch-absent  empty: DST did not exist before
//	DST.latch-new     the sha256 of the content Install put at DST; written
//	                  before the rename, so DST having that content and mode
//	                  with this marker present means the rename happened and
//	                  the two files above describe the version before it
//	.DST.latch-tmp-*  temporary files, removed by the next Install
//
// Install, Restore and Commit open DST's directory once (see openDir) and do
// everything relative to that descriptor: every file they create is new
// (O_EXCL), every file they read is opened without following a symbolic
// link and checked to be a regular file on its descriptor, and they change
// the mode only of a file they have just created. A user who can write the
// directory can therefore spoil the install in it, but cannot make latch
// write, truncate or chmod anything elsewhere.
const (
	prevSuffix   = ".latch-prev"
	absentSuffix = ".latch-absent"
	newSuffix    = ".latch-new"
	tmpInfix     = ".latch-tmp-"
)

// InstallOption changes what Install accepts.
type InstallOption func(*installOptions)

type installOptions struct {
	allowWritableDir bool
}

// AllowWritableDir(true) lets Install write into a directory that a user
// other than the agent's can write (the target's "allow_writable_dir").
// Install still never follows a link there; but that user can replace the
// installed file at any time.
func AllowWritableDir(allow bool) InstallOption {
	return func(o *installOptions) { o.allowWritableDir = allow }
}

// Install puts the staged file at dst with permission bits mode atomically,
// keeping the previous version so that Restore can put it back. If dst
// already is a regular file of the agent's with the content sha256hex and
// the mode, it only records that (idempotent after a crash). Otherwise it
// copies staged to a new temporary file in dst's directory (so dst may be on
// another file system), checking its sha256 (ErrChecksum, with nothing
// changed), setting mode on it and fsyncing it; saves dst as dst.latch-prev
// (a hard link) or, if dst does not exist, creates the marker
// dst.latch-absent; then renames the copy over dst and fsyncs the directory.
// Missing parent directories are created (0755). A symlink at dst is
// replaced, never followed.
//
// dst's directory must not be writable by anyone but the agent's user (nor
// owned by another): else Install fails with ErrUnsafeDir, unless
// AllowWritableDir(true) is given. mode must hold permission bits only
// (0 installs a file of mode 0000).
func Install(staged, dst string, mode os.FileMode, sha256hex string, opts ...InstallOption) error {
	var o installOptions
	for _, opt := range opts {
		opt(&o)
	}
	want, err := normHex(sha256hex)
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if err := checkDst(dst); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if mode&^os.ModePerm != 0 {
		return fmt.Errorf("install %s: mode %v (%#o): only permission bits are installed (setuid, setgid and sticky bits are not installed by latch); pass mode&os.ModePerm", dst, mode, uint32(mode))
	}
	d, err := openDir(filepath.Dir(dst), true)
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	defer d.close()
	if !o.allowWritableDir {
		if err := d.checkTrusted(); err != nil {
			return fmt.Errorf("install %s: %w", dst, err)
		}
	}
	base := filepath.Base(dst)
	st, exists, err := d.lstat(base)
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if exists && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("install %s: is a directory", dst)
	}
	recorded := false // this install's rename already happened
	if exists && st.Mode&unix.S_IFMT == unix.S_IFREG {
		got, fst, err := d.hash(base)
		if err != nil && !errors.Is(err, errNotRegular) {
			return fmt.Errorf("install %s: %w", dst, err)
		}
		marked := err == nil && got == want && d.readMarker(base+newSuffix) == want
		// Only a file of the agent's own, with the very mode, is left in
		// place; anything else is replaced by a new file, so no existing
		// file's mode is ever changed.
		if err == nil && got == want && fst.Mode&0o7777 == uint32(mode) && int(fst.Uid) == os.Geteuid() {
			if !marked {
				// dst had this content before: it is its own previous version.
				if err := recordPrevious(d, base, true, want); err != nil {
					return fmt.Errorf("install %s: %w", dst, err)
				}
			}
			return nil
		}
		// The content is in place and marked, but not the mode (changed
		// since): the markers already describe the version before, unless
		// dst is still that version itself (linked as its own previous).
		if marked {
			pst, ok, err := d.lstat(base + prevSuffix)
			if err != nil {
				return fmt.Errorf("install %s: %w", dst, err)
			}
			recorded = !ok || pst.Dev != fst.Dev || pst.Ino != fst.Ino
		}
	}

	if err := removeTemps(d, base); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	tmp, err := copyVerified(d, staged, base, mode, want)
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if !recorded {
		if err := recordPrevious(d, base, exists, want); err != nil {
			d.remove(tmp)
			return fmt.Errorf("install %s: %w", dst, err)
		}
	}
	if err := d.rename(tmp, base); err != nil {
		d.remove(tmp)
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if err := d.sync(); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	return nil
}

// recordPrevious saves what base is now (exists) or that it is absent, then
// writes the new-content marker, durably, before anything replaces base.
func recordPrevious(d *dirFD, base string, exists bool, want string) error {
	if exists {
		// Link under a temporary name, then rename: prev is never missing
		// once it existed, and never half-made. linkat without
		// AT_SYMLINK_FOLLOW links a symlink itself, and fails on any
		// existing name.
		tmp := base + prevSuffix + tmpInfix + "link"
		if err := d.remove(tmp); err != nil {
			return fmt.Errorf("keep previous version: %w", err)
		}
		if err := unix.Linkat(d.fd, base, d.fd, tmp, 0); err != nil {
			return fmt.Errorf("keep previous version: link %s: %w", d.name(base), err)
		}
		if err := d.rename(tmp, base+prevSuffix); err != nil {
			d.remove(tmp)
			return fmt.Errorf("keep previous version: %w", err)
		}
		if err := d.remove(base + absentSuffix); err != nil {
			return err
		}
	} else {
		if err := d.writeMarker(base, base+absentSuffix, nil); err != nil {
			return err
		}
		if err := d.remove(base + prevSuffix); err != nil {
			return err
		}
	}
	if err := d.writeMarker(base, base+newSuffix, []byte(want+"\n")); err != nil {
		return err
	}
	return d.sync()
}

// copyVerified copies staged into a new temporary file next to base, checks
// its sha256, sets mode on its descriptor and fsyncs it; it returns the
// temporary file's name.
func copyVerified(d *dirFD, staged, base string, mode os.FileMode, want string) (string, error) {
	in, err := openRegular(staged)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, name, err := d.createTemp(base)
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			d.remove(name)
		}
	}()
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(out, h), in, make([]byte, bufSize)); err != nil {
		return "", fmt.Errorf("copy %s: %w", staged, err)
	}
	// The staged file's own digest is not quoted: it may have come from a
	// file that the reader of this error must not learn anything about.
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return "", fmt.Errorf("staged %s does not have the expected sha256 %s: %w", staged, want, ErrChecksum)
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
	return name, nil
}

// removeTemps deletes temporary files that a crashed Install left behind
// (unlinked, never followed).
func removeTemps(d *dirFD, base string) error {
	names, err := d.names()
	if err != nil {
		return err
	}
	for _, n := range names {
		if strings.HasPrefix(n, "."+base+tmpInfix) {
			if err := d.remove(n); err != nil {
				return err
			}
		}
	}
	return nil
}

// Restore undoes Install, and only if it completed: when dst has the content
// sha256hex, it renames dst.latch-prev back over dst, or removes dst if
// dst.latch-absent says it did not exist. When dst has other content the
// install never happened and dst is left alone. Idempotent after a crash.
// Restore and Commit do not check who can write the directory (an install
// that the target allowed there must be undoable); like Install they never
// follow a link in it, and they only rename and remove names in it.
func Restore(dst, sha256hex string) error {
	want, err := normHex(sha256hex)
	if err != nil {
		return fmt.Errorf("restore %s: %w", dst, err)
	}
	if err := checkDst(dst); err != nil {
		return fmt.Errorf("restore %s: %w", dst, err)
	}
	d, err := openDir(filepath.Dir(dst), false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // never installed: no directory, no markers
	}
	if err != nil {
		return fmt.Errorf("restore %s: %w", dst, err)
	}
	defer d.close()
	base := filepath.Base(dst)
	st, exists, err := d.lstat(base)
	if err != nil {
		return fmt.Errorf("restore %s: %w", dst, err)
	}
	if !exists {
		// Never installed, or already restored to "absent".
		return cleanMarkers(d, base)
	}
	installed := false
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		got, fst, err := d.hash(base)
		if err != nil && !errors.Is(err, errNotRegular) {
			return fmt.Errorf("restore %s: %w", dst, err)
		}
		installed, st = err == nil && got == want, fst
	}
	if !installed {
		return cleanMarkers(d, base)
	}
	if d.isRegular(base + absentSuffix) {
		if err := d.remove(base); err != nil {
			return fmt.Errorf("restore %s: %w", dst, err)
		}
		if err := d.sync(); err != nil {
			return fmt.Errorf("restore %s: %w", dst, err)
		}
		return cleanMarkers(d, base)
	}
	pst, ok, err := d.lstat(base + prevSuffix)
	if err != nil {
		return fmt.Errorf("restore %s: %w", dst, err)
	}
	if !ok {
		if d.readMarker(base+newSuffix) == "" {
			return nil // no install recorded: nothing to undo
		}
		return fmt.Errorf("restore %s: %w", dst, ErrNoPrevious)
	}
	// When prev is a link to dst itself (the content did not change),
	// rename(2) would do nothing; leaving both is the restored state.
	if st.Dev != pst.Dev || st.Ino != pst.Ino {
		if err := d.rename(base+prevSuffix, base); err != nil {
			return fmt.Errorf("restore %s: %w", dst, err)
		}
		if err := d.sync(); err != nil {
			return fmt.Errorf("restore %s: %w", dst, err)
		}
	}
	return cleanMarkers(d, base)
}

// Commit ends an install after a successful apply: it forgets the markers
// and keeps dst.latch-prev as the previous version.
func Commit(dst string) error {
	if err := checkDst(dst); err != nil {
		return fmt.Errorf("commit %s: %w", dst, err)
	}
	d, err := openDir(filepath.Dir(dst), false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // nothing installed there: nothing to forget
	}
	if err != nil {
		return fmt.Errorf("commit %s: %w", dst, err)
	}
	defer d.close()
	if err := cleanMarkers(d, filepath.Base(dst)); err != nil {
		return fmt.Errorf("commit %s: %w", dst, err)
	}
	return nil
}

func cleanMarkers(d *dirFD, base string) error {
	if err := d.remove(base + absentSuffix); err != nil {
		return err
	}
	if err := d.remove(base + newSuffix); err != nil {
		return err
	}
	return d.sync()
}

func checkDst(dst string) error {
	if !filepath.IsAbs(dst) || filepath.Clean(dst) != dst || dst == "/" {
		return fmt.Errorf("want an absolute clean file path")
	}
	return nil
}
