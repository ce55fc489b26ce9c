package lock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Modes of the lock directories. The lock root and services/ are written by
// their owner alone (the agent creates the app and service directories);
// app and service directories are sticky and world-writable, so that any
// user can lock but nobody can rename or remove another user's entry.
const (
	privateMode = 0o755
	sharedMode  = 0o1777
)

// trusted reports whether a directory owned by uid may be trusted by this
// process: it belongs to root or to the process's own euid.
func trusted(uid uint32) bool { return uid == 0 || int(uid) == os.Geteuid() }

// openPath opens the directory path, walking from / one component at a time
// with O_NOFOLLOW|O_DIRECTORY, so that no component is a symlink and the
// descriptor returned is the directory that was checked. With mkdir it
// creates a missing component with mode 0755. A symlinked component is
// ErrSymlink and a non-directory ErrNotDir, each naming that component
// (bad); a missing one wraps unix.ENOENT.
func openPath(path string, mkdir bool) (fd int, bad string, err error) {
	path = filepath.Clean(path)
	if !filepath.IsAbs(path) {
		abs, err := filepath.Abs(path)
		if err != nil {
			return -1, path, fmt.Errorf("open directory %s: %w", path, err)
		}
		path = abs
	}
	fd, err = unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, "/", fmt.Errorf("open directory /: %w", err)
	}
	cur := "/"
	for _, name := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
		if name == "" {
			continue
		}
		cur = filepath.Join(cur, name)
		if mkdir {
			if err := unix.Mkdirat(fd, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				unix.Close(fd)
				return -1, cur, fmt.Errorf("create directory %s: %w", cur, err)
			}
		}
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			err = classify(fd, cur, name, err)
			unix.Close(fd)
			return -1, cur, err
		}
		unix.Close(fd)
		fd = next
	}
	return fd, "", nil
}

// classify turns the error of an O_NOFOLLOW|O_DIRECTORY open of name in
// dirfd into ErrSymlink or ErrNotDir naming path, or wraps it.
func classify(dirfd int, path, name string, err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		var st unix.Stat_t
		if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return fmt.Errorf("open lock dir %s: %w (latch never follows a symlink here; remove it)", path, ErrSymlink)
		}
		return fmt.Errorf("open lock dir %s: %w", path, ErrNotDir)
	}
	return fmt.Errorf("open lock dir %s: %w", path, err)
}

// openLevel opens the directory name in dirfd (path names it in errors)
// without following a symlink. With create, a missing directory is made
// with mode, but an app or service directory (shared) only inside a
// directory owned by this process's euid: the agent creates those. A
// private level (the lock root, services/) must be owned by root or the
// euid and writable by its owner alone; with create, a shared level must be
// owned by root or the euid too (the agent does not act in a directory
// another user made and can swap).
func openLevel(dirfd int, path, name string, mode uint32, private, create bool) (int, error) {
	created := false
	if create {
		mayCreate := private
		if !mayCreate {
			var pst unix.Stat_t
			mayCreate = unix.Fstat(dirfd, &pst) == nil && int(pst.Uid) == os.Geteuid()
		}
		if mayCreate {
			err := unix.Mkdirat(dirfd, name, mode&0o777)
			switch {
			case err == nil:
				created = true
			case errors.Is(err, unix.EEXIST):
			default:
				return -1, fmt.Errorf("create lock dir %s: %w", path, err)
			}
		}
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if create && !private && errors.Is(err, unix.ENOENT) {
			var pst unix.Stat_t
			unix.Fstat(dirfd, &pst)
			return -1, fmt.Errorf("open lock dir %s: %w: only uid %d, which owns %s, creates it (the agent creates the lock directories of the services in its target; check the name, or run as root)",
				path, err, pst.Uid, filepath.Dir(path))
		}
		return -1, classify(dirfd, path, name, err)
	}
	if created {
		// mkdir honours the umask; the mode must be exact.
		if err := unix.Fchmod(fd, mode); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("chmod lock dir %s: %w", path, err)
		}
	}
	if private || create {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("stat lock dir %s: %w", path, err)
		}
		if !trusted(st.Uid) || private && st.Mode&0o022 != 0 {
			unix.Close(fd)
			return -1, untrustedError(path, &st, private)
		}
	}
	return fd, nil
}

func untrustedError(path string, st *unix.Stat_t, private bool) error {
	want := "owned by root (or uid " + fmt.Sprint(os.Geteuid()) + ", which runs latch)"
	if private {
		want += " and writable by its owner alone"
	}
	return fmt.Errorf("lock dir %s is owned by uid %d with mode %04o; it must be %s: %w; someone else made it, so remove it (rm -r %s) and let latch create it again",
		path, st.Uid, st.Mode&0o7777, want, ErrUntrusted, path)
}

// openServiceDir opens the service directory of s, each level from / with
// O_NOFOLLOW|O_DIRECTORY (see openLevel for what is created and checked).
func (l Layout) openServiceDir(s Service, create bool) (int, error) {
	root := filepath.Clean(l.Dir)
	if !filepath.IsAbs(root) {
		abs, err := filepath.Abs(root)
		if err != nil {
			return -1, fmt.Errorf("lock dir %s: %w", root, err)
		}
		root = abs
	}
	parent := filepath.Dir(root)
	fd, _, err := openPath(parent, create)
	if err != nil {
		return -1, fmt.Errorf("open lock dir parent: %w", err)
	}
	path := parent
	for _, lv := range []struct {
		name    string
		mode    uint32
		private bool
	}{
		{filepath.Base(root), privateMode, true},
		{"services", privateMode, true},
		{s.App, sharedMode, false},
		{s.Service, sharedMode, false},
	} {
		path = filepath.Join(path, lv.name)
		next, err := openLevel(fd, path, lv.name, lv.mode, lv.private, create)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// openParent opens the directory that holds path without following a
// symlink anywhere (openPath) and returns it with the entry's name.
func openParent(path string) (int, string, error) {
	path = filepath.Clean(path)
	fd, _, err := openPath(filepath.Dir(path), false)
	return fd, filepath.Base(path), err
}

// globalParent opens the directory of the device-wide path g. When that
// directory (or a component above it) is a symlink, or is owned by another
// user (who can swap what it holds), it returns no descriptor and a held
// Entry at that directory instead: latch cannot tell whether the lock that
// applications see through it is held, so it counts as held and nothing is
// removed through it. A missing directory wraps os.ErrNotExist.
func globalParent(g string) (int, *Entry, error) {
	g = filepath.Clean(g)
	dir := filepath.Dir(g)
	fd, bad, err := openPath(dir, false)
	switch {
	case errors.Is(err, ErrSymlink):
		e := Entry{Path: bad, Kind: KindSymlink, State: StateHeld, UID: -1,
			Reason: "a symlink on the way to device-wide lock " + g + ": latch never follows it, so the lock counts as held until it is removed"}
		var st unix.Stat_t
		if unix.Lstat(bad, &st) == nil {
			e.UID = int(st.Uid)
			e.Since = timeOf(st.Mtim)
		}
		return -1, &e, nil
	case errors.Is(err, unix.ENOENT) || errors.Is(err, ErrNotDir):
		return -1, nil, fmt.Errorf("look at %s: %w", g, os.ErrNotExist)
	case err != nil:
		return -1, nil, fmt.Errorf("look at %s: %w", g, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("look at %s: %w", dir, err)
	}
	if !trusted(st.Uid) {
		unix.Close(fd)
		e := Entry{Path: dir, Kind: KindDir, State: StateHeld, UID: int(st.Uid), Since: timeOf(st.Mtim),
			Dev: uint64(st.Dev), Ino: uint64(st.Ino),
			Reason: fmt.Sprintf("the directory of device-wide lock %s is owned by uid %d with mode %04o (another user can swap it), so the lock counts as held; remove it and restart the agent, which creates it owned by root", g, st.Uid, st.Mode&0o7777)}
		return -1, &e, nil
	}
	return fd, nil, nil
}

// EnsureGlobalDirs creates the directory of every device-wide lock path
// (/tmp/balena, /tmp/resin) with mode 1777 when it is missing, so that it is
// owned by root from the start and applications of any user can lock in it.
// A symlink there is refused (ErrSymlink); a directory that exists but is
// owned by another user is left alone and reported (ErrUntrusted): Scan
// counts its locks as held until it is removed. The agent calls it at
// start; each error names the path.
func (l Layout) EnsureGlobalDirs() error {
	var errs []error
	for _, g := range l.Global {
		dir := filepath.Dir(filepath.Clean(g))
		pfd, _, err := openPath(filepath.Dir(dir), true)
		if err != nil {
			errs = append(errs, fmt.Errorf("create device-wide lock dir %s: %w", dir, err))
			continue
		}
		name := filepath.Base(dir)
		created := false
		if err := unix.Mkdirat(pfd, name, 0o777); err == nil {
			created = true
		} else if !errors.Is(err, unix.EEXIST) {
			unix.Close(pfd)
			errs = append(errs, fmt.Errorf("create device-wide lock dir %s: %w", dir, err))
			continue
		}
		fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("create device-wide lock dir: %w", classify(pfd, dir, name, err)))
			unix.Close(pfd)
			continue
		}
		unix.Close(pfd)
		var st unix.Stat_t
		switch {
		case created:
			if err := unix.Fchmod(fd, sharedMode); err != nil {
				errs = append(errs, fmt.Errorf("chmod device-wide lock dir %s: %w", dir, err))
			}
		case unix.Fstat(fd, &st) != nil:
		case !trusted(st.Uid):
			errs = append(errs, untrustedError(dir, &st, false))
		}
		unix.Close(fd)
	}
	return errors.Join(errs...)
}
