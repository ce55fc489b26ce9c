package fetch

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// maxLinks bounds the symbolic links followed while opening a directory,
// like the kernel's own limit.
const maxLinks = 40

// dirFD is an open install directory. Install, Restore and Commit resolve
// the directory's path once, in openDir, and then work only relative to fd:
// a name inside is never resolved through a symbolic link, and a directory
// renamed or replaced after the open does not redirect what they do.
type dirFD struct {
	fd   int
	path string // for messages only
}

// openDir opens the directory path (absolute and clean) one component at a
// time, never following a symbolic link that a user other than root (or the
// agent's own user) could have planted: a link is followed only when the
// directory holding it is owned by root or the agent's euid and is either
// not group- or other-writable, or sticky with the link owned by root or
// the agent's euid (see trustedLink).
//
// A directory on the way that another user owns is walked through, but no
// link in it is followed: that user can put only directories of their own
// there (which the install directory check refuses), or rename a directory
// of root's that is already in it; a directory of root's from elsewhere
// cannot be moved in (that needs write permission on it, for its "..").
//
// With create, missing directories are made, owned by the agent, mode 0755
// whatever the umask, so that services of other users reach their files
// (the mode is set only where no other user could have swapped the new
// directory for one of theirs).
func openDir(path string, create bool) (*dirFD, error) {
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open directory /: %w", err)
	}
	cur := "/" // the path of fd, as walked
	comps := split(path)
	links := 0
	for len(comps) > 0 {
		name := comps[0]
		comps = comps[1:]
		next := filepath.Join(cur, name)
		nfd, err := unix.Openat(fd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && create {
			nfd, err = mkdir(fd, name, next)
		}
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			target, lerr := trustedLink(fd, cur, name)
			if lerr != nil {
				unix.Close(fd)
				return nil, lerr
			}
			if links++; links > maxLinks {
				unix.Close(fd)
				return nil, fmt.Errorf("open directory %s: more than %d symbolic links: %w", path, maxLinks, unix.ELOOP)
			}
			comps = append(split(target), comps...)
			if filepath.IsAbs(target) {
				unix.Close(fd)
				if fd, err = unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
					return nil, fmt.Errorf("open directory /: %w", err)
				}
				cur = "/"
			}
			continue
		}
		unix.Close(fd)
		if err != nil {
			return nil, fmt.Errorf("open directory %s: %w", next, err)
		}
		fd, cur = nfd, next
	}
	// O_PATH descriptors cannot be fsynced or listed: open it for real.
	rfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	unix.Close(fd)
	if err != nil {
		return nil, fmt.Errorf("open directory %s: %w", path, err)
	}
	return &dirFD{fd: rfd, path: path}, nil
}

// mkdir creates the directory name in dirfd (its path next) and opens it
// like openDir does. It sets mode 0755 on it when it made it in a directory
// where no other user can remove or rename it (trusted, or sticky and
// trusted): elsewhere the name may already be someone else's directory.
func mkdir(dirfd int, name, next string) (int, error) {
	made := true
	if err := unix.Mkdirat(dirfd, name, 0o755); errors.Is(err, unix.EEXIST) {
		made = false // made a moment ago by someone else: opened as found
	} else if err != nil {
		return -1, fmt.Errorf("create directory %s: %w", next, err)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil || !made {
		return fd, err
	}
	var pst unix.Stat_t
	if err := unix.Fstat(dirfd, &pst); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("stat directory %s: %w", filepath.Dir(next), err)
	}
	if !trustedOwner(pst.Uid) || pst.Mode&0o022 != 0 && pst.Mode&unix.S_ISVTX == 0 {
		return fd, nil
	}
	rfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.Fchmod(rfd, 0o755)
		unix.Close(rfd)
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("set mode 0755 on new directory %s: %w", next, err)
	}
	return fd, nil
}

// trustedOwner: uid is root or the agent's own.
func trustedOwner(uid uint32) bool { return uid == 0 || int(uid) == os.Geteuid() }

// split cuts a path into its names, dropping empty ones and ".".
func split(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// trustedLink returns the target of the symbolic link name in the directory
// dirfd (walked as cur) if latch may follow it, or an error saying why not.
func trustedLink(dirfd int, cur, name string) (string, error) {
	p := filepath.Join(cur, name)
	var lst unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &lst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return "", fmt.Errorf("open directory %s: %w", p, err)
	}
	if lst.Mode&unix.S_IFMT != unix.S_IFLNK {
		return "", fmt.Errorf("open directory %s: not a directory", p)
	}
	var dst unix.Stat_t
	if err := unix.Fstat(dirfd, &dst); err != nil {
		return "", fmt.Errorf("open directory %s: %w", cur, err)
	}
	ok := trustedOwner(dst.Uid) && (dst.Mode&0o022 == 0 || dst.Mode&unix.S_ISVTX != 0 && trustedOwner(lst.Uid))
	if !ok {
		return "", fmt.Errorf("open directory %s: it is a symbolic link in %s, which a user other than root can change (owner uid %d, mode %s); latch does not follow it: name the real directory in the target state: %w",
			p, cur, dst.Uid, modeString(dst.Mode), ErrUnsafeDir)
	}
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", fmt.Errorf("open directory %s: read link: %w", p, err)
	}
	return string(buf[:n]), nil
}

// modeString renders a raw st_mode's permission bits like "drwxrwxrwt".
func modeString(m uint32) string {
	fm := os.FileMode(m & 0o777)
	if m&unix.S_IFMT == unix.S_IFDIR {
		fm |= os.ModeDir
	}
	if m&unix.S_ISVTX != 0 {
		fm |= os.ModeSticky
	}
	if m&unix.S_ISGID != 0 {
		fm |= os.ModeSetgid
	}
	if m&unix.S_ISUID != 0 {
		fm |= os.ModeSetuid
	}
	return fm.String()
}

// checkTrusted refuses a directory that a user other than the agent's
// could write: owned by another uid, or group- or other-writable (sticky
// or not: in a sticky directory a user still creates the names latch uses).
// It looks at the open descriptor, so a swap after the open does not matter.
func (d *dirFD) checkTrusted() error {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return fmt.Errorf("check directory %s: %w", d.path, err)
	}
	euid := os.Geteuid()
	switch {
	case int(st.Uid) != euid:
		return fmt.Errorf("directory %s is owned by uid %d, not by uid %d that latch runs as: that user could make latch overwrite other files through it; run chown %d %s and chmod go-w %s, or set \"allow_writable_dir\": true on the file in the target state: %w",
			d.path, st.Uid, euid, euid, d.path, d.path, ErrUnsafeDir)
	case st.Mode&0o022 != 0:
		return fmt.Errorf("directory %s has mode %s: users other than uid %d can write it and could make latch overwrite other files through it; run chmod go-w %s, or set \"allow_writable_dir\": true on the file in the target state: %w",
			d.path, modeString(st.Mode), euid, d.path, ErrUnsafeDir)
	}
	return nil
}

func (d *dirFD) close() { unix.Close(d.fd) }

func (d *dirFD) name(n string) string { return filepath.Join(d.path, n) }

// lstat stats name without following a link; ok is false when it is absent.
func (d *dirFD) lstat(name string) (st unix.Stat_t, ok bool, err error) {
	err = unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("stat %s: %w", d.name(name), err)
	}
	return st, true, nil
}

// errNotRegular: the name is not (or is no longer) a regular file.
var errNotRegular = errors.New("not a regular file")

// openRegular opens name for reading if it is a regular file: never through
// a symbolic link, never blocking on a FIFO, and checked on the descriptor.
func (d *dirFD) openRegular(name string) (*os.File, unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, st, fmt.Errorf("open %s: is a symbolic link: %w", d.name(name), errNotRegular)
	}
	if err != nil {
		return nil, st, fmt.Errorf("open %s: %w", d.name(name), err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, st, fmt.Errorf("stat %s: %w", d.name(name), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, st, fmt.Errorf("open %s: %w", d.name(name), errNotRegular)
	}
	return os.NewFile(uintptr(fd), d.name(name)), st, nil
}

// hash returns the sha256 of the regular file name and its stat (of the
// descriptor that was hashed).
func (d *dirFD) hash(name string) (string, unix.Stat_t, error) {
	f, st, err := d.openRegular(name)
	if err != nil {
		return "", st, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 64<<10)); err != nil {
		return "", st, fmt.Errorf("hash %s: %w", d.name(name), err)
	}
	return hex.EncodeToString(h.Sum(nil)), st, nil
}

// isRegular says whether name is a regular file (not followed).
func (d *dirFD) isRegular(name string) bool {
	st, ok, err := d.lstat(name)
	return err == nil && ok && st.Mode&unix.S_IFMT == unix.S_IFREG
}

// readMarker returns the digest in the marker name, "" if none (absent,
// unreadable, or anything but a small regular file).
func (d *dirFD) readMarker(name string) string {
	f, _, err := d.openRegular(name)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 256))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// tempName is a fresh name for a temporary file of the install path base;
// removeTemps finds every such name.
func tempName(base string) string {
	return "." + base + tmpInfix + rand.Text()
}

// createTemp creates a new file of its own (O_EXCL: never an existing name,
// never through a link) for base, with mode 0600 until fchmod.
func (d *dirFD) createTemp(base string) (*os.File, string, error) {
	for range 10 {
		name := tempName(base)
		fd, err := unix.Openat(d.fd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("create temporary file in %s: %w", d.path, err)
		}
		return os.NewFile(uintptr(fd), d.name(name)), name, nil
	}
	return nil, "", fmt.Errorf("create temporary file in %s: every name tried exists", d.path)
}

// writeMarker replaces the marker name with data, durably: written into a
// new temporary file, fsynced and renamed over name (a link or anything at
// name is replaced, never followed).
func (d *dirFD) writeMarker(base, name string, data []byte) error {
	f, tmp, err := d.createTemp(base)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(d.fd, tmp, d.fd, name)
	}
	if err != nil {
		unix.Unlinkat(d.fd, tmp, 0)
		return fmt.Errorf("write %s: %w", d.name(name), err)
	}
	return nil
}

// remove unlinks name (a file or a link, never a directory), absent is fine.
func (d *dirFD) remove(name string) error {
	if err := unix.Unlinkat(d.fd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", d.name(name), err)
	}
	return nil
}

func (d *dirFD) rename(from, to string) error {
	if err := unix.Renameat(d.fd, from, d.fd, to); err != nil {
		return fmt.Errorf("rename %s to %s: %w", d.name(from), to, err)
	}
	return nil
}

// sync makes the renames and removals in the directory durable.
func (d *dirFD) sync() error {
	if err := unix.Fsync(d.fd); err != nil {
		return fmt.Errorf("sync directory %s: %w", d.path, err)
	}
	return nil
}

// names lists the directory.
func (d *dirFD) names() ([]string, error) {
	fd, err := unix.Openat(d.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", d.path, err)
	}
	f := os.NewFile(uintptr(fd), d.path)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", d.path, err)
	}
	return names, nil
}
