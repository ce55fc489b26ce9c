package lock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Lock is an entry this process created or adopted, identified by device and
// inode so that it is never confused with an entry that replaced it.
type Lock struct {
	Path string
	Dev  uint64
	Ino  uint64
	// ctime is the entry's change time once in place (zero when adopted):
	// file systems reuse inode numbers at once, so a replacement can have
	// the same device and inode but never the same change time.
	ctime unix.Timespec
	// f is the entry's own descriptor (close-on-exec), on which this
	// process holds flock(LOCK_EX) for as long as it holds the entry, so
	// that tools testing the lock with flock (flock -n) see it held. It is
	// nil for an entry adopted with Adopt. The kernel drops the flock when
	// the process dies; the entry left behind is a dead record.
	f *os.File
}

var tmpSeq atomic.Uint32

// Create makes the lock entry path exclusively. The entry appears atomically,
// already owned by uid:gid (uid < 0 leaves the caller's), already holding
// rec and already flocked (LOCK_EX) by this process until Remove, or not at
// all: it is written under a temporary name in the same directory and linked
// into place with link(2), which never follows or replaces anything at path.
// If something exists at path, Create returns a *HeldError
// (errors.Is(err, ErrHeld)) describing it. Every directory on the
// way is opened without following a symlink (ErrSymlink naming it). Create
// counts no entry as the agent's in that description; Layout.Create does.
func Create(path string, rec Record, uid, gid int) (*Lock, error) {
	return Layout{LockUID: -1}.Create(path, rec, uid, gid)
}

// Create is the package's Create, describing an entry in its way with the
// layout's LockUID.
func (l Layout) Create(path string, rec Record, uid, gid int) (*Lock, error) {
	path = filepath.Clean(path)
	dirfd, name, err := openParent(path)
	if err != nil {
		return nil, fmt.Errorf("take lock %s: %w", path, err)
	}
	defer unix.Close(dirfd)
	return createAt(dirfd, path, name, rec, uid, gid, l.LockUID)
}

func createAt(dirfd int, path, name string, rec Record, uid, gid, lockUID int) (*Lock, error) {
	tmp := fmt.Sprintf(".%s.latch-%d-%d", name, os.Getpid(), tmpSeq.Add(1))
	// Mode 0600 until the flock is taken: no other user can open the
	// temporary file and flock it first.
	fd, err := unix.Openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("take lock %s: create temporary file: %w", path, err)
	}
	defer unix.Unlinkat(dirfd, tmp, 0)
	kept := false
	defer func() {
		if !kept {
			unix.Close(fd)
		}
	}()
	// The flock is on the descriptor that made the file, taken before the
	// entry is linked into place: the entry is never seen unflocked, and
	// nothing is opened again by a path that could be swapped.
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return nil, fmt.Errorf("take lock %s: flock temporary file %s: %w", path, tmp, err)
	}
	err = writeAll(fd, rec.marshal())
	if err == nil && uid >= 0 {
		err = unix.Fchown(fd, uid, gid)
	}
	if err == nil {
		err = unix.Fchmod(fd, 0o644) // readable by all now it is flocked (and whatever the umask)
	}
	if err == nil {
		// Durable before it is linked into place: on a file system that
		// outlives a power cut (the legacy /data/resin-updates.lock), an entry
		// that appears after the cut also has its record, so the next agent
		// knows it for its own instead of waiting on an anonymous lock.
		err = unix.Fsync(fd)
	}
	if err != nil {
		return nil, fmt.Errorf("take lock %s: write record: %w", path, err)
	}
	for attempt := 0; ; attempt++ {
		err = unix.Linkat(dirfd, tmp, dirfd, name, 0)
		if err == nil {
			// The link count is final once the temporary name is gone.
			unix.Unlinkat(dirfd, tmp, 0)
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				return nil, fmt.Errorf("take lock %s: stat: %w", path, err)
			}
			kept = true
			return &Lock{Path: path, Dev: uint64(st.Dev), Ino: uint64(st.Ino), ctime: st.Ctim, f: os.NewFile(uintptr(fd), path)}, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("take lock %s: link: %w", path, err)
		}
		e, derr := describe(dirfd, path, name, readProcLocks(), lockUID)
		if derr == nil {
			return nil, &HeldError{Entry: e}
		}
		if !errors.Is(derr, os.ErrNotExist) || attempt > 3 {
			return nil, &HeldError{Entry: Entry{Path: path, State: StateHeld}}
		}
		// It vanished between link and lstat: try again.
	}
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// Adopt returns a *Lock for the entry that exists at path (used to re-adopt
// the agent's own leftovers after a crash), identified by device, inode and
// change time as it is now. It never follows a symlink, at path or on the
// way to it.
func Adopt(path string) (*Lock, error) {
	path = filepath.Clean(path)
	dirfd, name, err := openParent(path)
	if err != nil {
		return nil, fmt.Errorf("adopt lock %s: %w", path, err)
	}
	defer unix.Close(dirfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, fmt.Errorf("adopt lock %s: %w", path, err)
	}
	return &Lock{Path: path, Dev: uint64(st.Dev), Ino: uint64(st.Ino), ctime: st.Ctim}, nil
}

// Reclaim is Adopt for an entry this process takes over and holds (a dead
// agent's entry that it resumes with): it also opens the entry, never
// following a symlink, and holds flock(LOCK_EX) on it until Remove, like an
// entry made by Create. The entry must be a regular file that nobody else
// flocks; a file another process flocks is returned as a *HeldError.
func Reclaim(path string) (*Lock, error) {
	path = filepath.Clean(path)
	dirfd, name, err := openParent(path)
	if err != nil {
		return nil, fmt.Errorf("reclaim lock %s: %w", path, err)
	}
	defer unix.Close(dirfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, fmt.Errorf("reclaim lock %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("reclaim lock %s: not a regular file (mode %#o): only an entry latch made can be taken over", path, st.Mode&unix.S_IFMT)
	}
	// O_NONBLOCK: a fifo swapped in after the lstat does not hang the open.
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reclaim lock %s: %w", path, err)
	}
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("reclaim lock %s: %w", path, ErrNotOurs)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			e, derr := describe(dirfd, path, name, readProcLocks(), -1)
			if derr != nil {
				e = Entry{Path: path, State: StateHeld}
			}
			return nil, &HeldError{Entry: e}
		}
		return nil, fmt.Errorf("reclaim lock %s: flock: %w", path, err)
	}
	return &Lock{Path: path, Dev: uint64(st.Dev), Ino: uint64(st.Ino), ctime: st.Ctim, f: os.NewFile(uintptr(fd), path)}, nil
}

// Flocked reports whether this process holds a flock on the entry (made by
// Create or Reclaim, and not yet removed).
func (l *Lock) Flocked() bool { return l.f != nil }

// unflock drops the flock and closes the entry's descriptor.
func (l *Lock) unflock() {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// Remove deletes the entry if it is still the one created or adopted (same
// device, inode and change time: a freed inode number is reused at once);
// otherwise it leaves it and returns an error wrapping ErrNotOurs. The
// directories on the way are opened without following a symlink. An entry
// already gone is not an error. Remove ends the holding whatever it returns:
// the flock is dropped (after the unlink, so that a flock(1) waiter never
// wins a file that is being removed) and the descriptor closed.
func (l *Lock) Remove() error {
	defer l.unflock()
	dirfd, name, err := openParent(l.Path)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("remove lock %s: %w", l.Path, err)
	}
	defer unix.Close(dirfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("remove lock %s: %w", l.Path, err)
	}
	if uint64(st.Dev) != l.Dev || uint64(st.Ino) != l.Ino || st.Mode&unix.S_IFMT == unix.S_IFDIR ||
		l.ctime != (unix.Timespec{}) && st.Ctim != l.ctime {
		return fmt.Errorf("remove lock %s: %w", l.Path, ErrNotOurs)
	}
	if err := unix.Unlinkat(dirfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove lock %s: %w", l.Path, err)
	}
	return nil
}

// ReleaseAll removes every lock in locks (in reverse order) that is still
// the entry it names, and returns the errors joined.
func ReleaseAll(locks []*Lock) error {
	var errs []error
	for i := len(locks) - 1; i >= 0; i-- {
		if err := locks[i].Remove(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Acquire takes every name in names in the lock directory of every service
// in svcs (creating the directories as EnsureServiceDir does), all or nothing,
// in a fixed order (services, then names, sorted). Device-wide paths must not
// exist; they are checked, never created. Unless rec.Role is RoleHold, any
// other held name already in a service directory blocks too (a hold coexists
// with the application's own lock, an action does not).
//
// On any failure Acquire removes exactly the entries it created in this
// attempt (checked by inode) and returns the error: a *HeldError naming the
// blocking entry when something is held.
func (l Layout) Acquire(svcs []Service, names []string, rec Record, uid, gid int) (locks []*Lock, err error) {
	return l.AcquireExcept(svcs, names, rec, uid, gid, nil)
}

// AcquireExcept is Acquire, except that the existing entries for which
// ignore returns true do not block (a forced action passes the agent's own
// holds this way). Entries at the names being taken always block: they
// cannot be created over.
func (l Layout) AcquireExcept(svcs []Service, names []string, rec Record, uid, gid int, ignore func(Entry) bool) (locks []*Lock, err error) {
	blocks := func(e Entry) bool { return ignore == nil || !ignore(e) }
	svcs = slices.Clone(svcs)
	slices.SortFunc(svcs, func(a, b Service) int { return strings.Compare(a.String(), b.String()) })
	svcs = slices.Compact(svcs)
	names = slices.Clone(names)
	slices.Sort(names)
	names = slices.Compact(names)
	for _, n := range names {
		if !slices.Contains(HeldNames, n) {
			return nil, fmt.Errorf("acquire locks: %q is not a lock name", n)
		}
	}
	defer func() {
		if err != nil {
			if rerr := ReleaseAll(locks); rerr != nil {
				err = fmt.Errorf("%w (and rolling back: %v)", err, rerr)
			}
			locks = nil
		}
	}()
	checkGlobals := func() error {
		if rec.Role == RoleHold {
			return nil
		}
		es, err := l.globals(readProcLocks())
		if err != nil {
			return fmt.Errorf("acquire locks: %w", err)
		}
		for _, e := range es {
			if blocks(e) {
				return &HeldError{Entry: e}
			}
		}
		return nil
	}
	if err := checkGlobals(); err != nil {
		return nil, err
	}
	for _, s := range svcs {
		if err := validName(s.App); err != nil {
			return locks, fmt.Errorf("acquire locks of %s: app name: %w", s, err)
		}
		if err := validName(s.Service); err != nil {
			return locks, fmt.Errorf("acquire locks of %s: service name: %w", s, err)
		}
		if l.Dir == "" {
			return locks, fmt.Errorf("acquire locks of %s: no lock directory configured", s)
		}
		dirfd, err := l.openServiceDir(s, true)
		if err != nil {
			return locks, err
		}
		dir := l.ServiceDir(s)
		for _, n := range names {
			lk, err := createAt(dirfd, filepath.Join(dir, n), n, rec, uid, gid, l.LockUID)
			if err != nil {
				unix.Close(dirfd)
				return locks, err
			}
			locks = append(locks, lk)
		}
		if rec.Role != RoleHold {
			for _, n := range HeldNames {
				if slices.Contains(names, n) {
					continue
				}
				e, err := describe(dirfd, filepath.Join(dir, n), n, readProcLocks(), l.LockUID)
				if err == nil && blocks(e) {
					unix.Close(dirfd)
					return locks, &HeldError{Entry: e}
				}
				if err == nil {
					continue
				}
				if !errors.Is(err, os.ErrNotExist) {
					unix.Close(dirfd)
					return locks, fmt.Errorf("acquire locks: %w", err)
				}
			}
		}
		unix.Close(dirfd)
	}
	// A device-wide lock that appeared while the service locks were taken
	// blocks too: the caller must not act under it.
	if err := checkGlobals(); err != nil {
		return locks, err
	}
	return locks, nil
}
