package lock

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Layout says where the locks of one device live.
type Layout struct {
	// Dir is the lock root (default /tmp/latch); service lock directories
	// are Dir/services/<app>/<service>. Empty means no service locks.
	Dir string
	// Global are the device-wide lock paths (default
	// /tmp/balena/updates.lock and /tmp/resin/resin-updates.lock).
	Global []string
}

// ServiceDir returns the lock directory of s.
func (l Layout) ServiceDir(s Service) string {
	return filepath.Join(l.Dir, "services", s.App, s.Service)
}

// EnsureServiceDir creates Dir, Dir/services, the app and the service
// directory, each with mode 1777 when it creates it, and returns the service
// directory. A component that is a symlink or not a directory is refused
// with an error naming that path (ErrSymlink or ErrNotDir).
func (l Layout) EnsureServiceDir(s Service) (string, error) {
	if err := validName(s.App); err != nil {
		return "", fmt.Errorf("ensure lock dir for %s: app name: %w", s, err)
	}
	if err := validName(s.Service); err != nil {
		return "", fmt.Errorf("ensure lock dir for %s: service name: %w", s, err)
	}
	if l.Dir == "" {
		return "", fmt.Errorf("ensure lock dir for %s: no lock directory configured", s)
	}
	fd, err := l.openServiceDir(s, true)
	if err != nil {
		return "", err
	}
	unix.Close(fd)
	return l.ServiceDir(s), nil
}

// openServiceDir opens the service directory of s without following any
// symlink below the parent of Dir, creating missing directories when create
// is set.
func (l Layout) openServiceDir(s Service, create bool) (int, error) {
	root := filepath.Clean(l.Dir)
	parent, base := filepath.Dir(root), filepath.Base(root)
	if create {
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return -1, fmt.Errorf("create lock dir parent %s: %w", parent, err)
		}
	}
	fd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open lock dir parent %s: %w", parent, err)
	}
	path := parent
	for _, name := range []string{base, "services", s.App, s.Service} {
		path = filepath.Join(path, name)
		next, err := openDirAt(fd, path, name, create)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// openDirAt opens the directory name in dirfd without following a symlink,
// creating it with mode 1777 when create is set and it is missing.
func openDirAt(dirfd int, path, name string, create bool) (int, error) {
	created := false
	if create {
		err := unix.Mkdirat(dirfd, name, 0o1777)
		switch {
		case err == nil:
			created = true
		case errors.Is(err, unix.EEXIST):
		default:
			return -1, fmt.Errorf("create lock dir %s: %w", path, err)
		}
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			var st unix.Stat_t
			if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				return -1, fmt.Errorf("open lock dir %s: %w", path, ErrSymlink)
			}
			return -1, fmt.Errorf("open lock dir %s: %w", path, ErrNotDir)
		}
		return -1, fmt.Errorf("open lock dir %s: %w", path, err)
	}
	if created {
		// mkdir honours the umask; the mode must be exactly 1777.
		if err := unix.Fchmod(fd, 0o1777); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("chmod lock dir %s: %w", path, err)
		}
	}
	return fd, nil
}

// procLock is one holder of a lock from /proc/locks.
type procLock struct {
	dev, ino uint64
	pid      int
}

// ParseProcLocks parses the content of /proc/locks and returns, for each
// locked file (by device and inode), the pids holding a lock on it (waiters,
// the "->" lines, are skipped; so are open file description locks, whose
// pid is -1).
func ParseProcLocks(r io.Reader) map[[2]uint64][]int {
	out := map[[2]uint64][]int{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		pl, ok := parseProcLocksLine(sc.Text())
		if !ok {
			continue
		}
		k := [2]uint64{pl.dev, pl.ino}
		if !slices.Contains(out[k], pl.pid) {
			out[k] = append(out[k], pl.pid)
		}
	}
	return out
}

func parseProcLocksLine(line string) (procLock, bool) {
	// "1: FLOCK  ADVISORY  WRITE 1234 fe:00:748772 0 EOF"
	f := strings.Fields(line)
	if len(f) < 6 || !strings.HasSuffix(f[0], ":") || f[1] == "->" {
		return procLock{}, false
	}
	pid, err := strconv.Atoi(f[4])
	if err != nil || pid <= 0 {
		return procLock{}, false
	}
	parts := strings.Split(f[5], ":")
	if len(parts) != 3 {
		return procLock{}, false
	}
	maj, err1 := strconv.ParseUint(parts[0], 16, 32)
	min, err2 := strconv.ParseUint(parts[1], 16, 32)
	ino, err3 := strconv.ParseUint(parts[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procLock{}, false
	}
	return procLock{dev: unix.Mkdev(uint32(maj), uint32(min)), ino: ino, pid: pid}, true
}

func readProcLocks() map[[2]uint64][]int {
	f, err := os.Open("/proc/locks")
	if err != nil {
		return nil
	}
	defer f.Close()
	return ParseProcLocks(f)
}

// alive reports whether a process with this pid exists.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// cmdline returns the command line of pid, or "" when it cannot be read.
func cmdline(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return ""
	}
	b = bytes.TrimRight(b, "\x00")
	return string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
}

// describe looks at the entry name in dirfd (never following it) and returns
// it with its holder and state. It returns an error wrapping fs.ErrNotExist
// when there is no entry.
func describe(dirfd int, path, name string, locks map[[2]uint64][]int) (Entry, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Entry{}, fmt.Errorf("look at %s: %w", path, os.ErrNotExist)
		}
		return Entry{}, fmt.Errorf("look at %s: %w", path, err)
	}
	e := Entry{
		Path:  path,
		Kind:  KindFile,
		UID:   int(st.Uid),
		Since: time.Unix(int64(st.Mtim.Sec), int64(st.Mtim.Nsec)).UTC(),
		State: StateHeld,
		Dev:   uint64(st.Dev),
		Ino:   uint64(st.Ino),
		seen:  seen{mode: st.Mode, uid: st.Uid, size: st.Size, ctime: st.Ctim},
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.Kind = KindDir
	case unix.S_IFLNK:
		e.Kind = KindSymlink
	case unix.S_IFREG:
		if rec, ok := readRecordAt(dirfd, name, e.Dev, e.Ino); ok {
			e.Record = &rec
			e.Since = rec.Created
		}
	}
	for _, pid := range locks[[2]uint64{e.Dev, e.Ino}] {
		if alive(pid) {
			e.Holder = &Holder{PID: pid, Command: cmdline(pid)}
			break
		}
	}
	if r := e.Record; r != nil {
		live := r.BootID == BootID() && alive(r.PID)
		switch {
		case r.Role == RoleAgent:
			e.State = StateAgent
		case r.Role == RoleHold:
			e.State = StateHold
		case !live && e.Holder == nil:
			e.State = StateStale
		}
		if e.Holder == nil && live {
			e.Holder = &Holder{PID: r.PID, Command: r.Command}
		}
	}
	return e, nil
}

// readRecordAt reads latch's record from the regular file name in dirfd,
// provided it is still the file with dev and ino.
func readRecordAt(dirfd int, name string, dev, ino uint64) (Record, bool) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Record{}, false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || uint64(st.Dev) != dev || uint64(st.Ino) != ino || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return Record{}, false
	}
	buf := make([]byte, maxRecord+1)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if m <= 0 || err != nil {
			break
		}
		n += m
	}
	return ParseRecord(buf[:n])
}

// Scan lists every entry that exists: the held names in every service
// directory and every device-wide path, sorted by path. Missing directories
// are not an error; a lock root or services directory that is a symlink is.
// Symlinked app or service directories are skipped (they are not lock
// directories, and EnsureServiceDir refuses them).
func (l Layout) Scan() ([]Entry, error) {
	locks := readProcLocks()
	var out []Entry
	if l.Dir != "" {
		es, err := l.scanServices(locks)
		if err != nil {
			return nil, err
		}
		out = es
	}
	for _, g := range l.Global {
		e, err := describePath(g, locks)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("scan locks: %w", err)
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}

// describePath describes the entry at path, following the components of its
// parent but never the entry itself.
func describePath(path string, locks map[[2]uint64][]int) (Entry, error) {
	dir, name := filepath.Split(filepath.Clean(path))
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return Entry{}, fmt.Errorf("look at %s: %w", path, os.ErrNotExist)
		}
		return Entry{}, fmt.Errorf("look at %s: %w", path, err)
	}
	defer unix.Close(fd)
	return describe(fd, path, name, locks)
}

func (l Layout) scanServices(locks map[[2]uint64][]int) ([]Entry, error) {
	root := filepath.Clean(l.Dir)
	pfd, err := unix.Open(filepath.Dir(root), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("scan locks: open %s: %w", filepath.Dir(root), err)
	}
	rfd, err := openDirAt(pfd, root, filepath.Base(root), false)
	unix.Close(pfd)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("scan locks: %w", err)
	}
	sdir := filepath.Join(root, "services")
	sfd, err := openDirAt(rfd, sdir, "services", false)
	unix.Close(rfd)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("scan locks: %w", err)
	}
	defer unix.Close(sfd)
	var out []Entry
	apps, err := readDirNames(sfd)
	if err != nil {
		return nil, fmt.Errorf("scan locks: read %s: %w", sdir, err)
	}
	for _, app := range apps {
		if validName(app) != nil {
			continue
		}
		afd, err := openDirAt(sfd, filepath.Join(sdir, app), app, false)
		if err != nil {
			continue // vanished, a symlink or not a directory: not a lock directory
		}
		svcs, err := readDirNames(afd)
		if err != nil {
			unix.Close(afd)
			return nil, fmt.Errorf("scan locks: read %s: %w", filepath.Join(sdir, app), err)
		}
		for _, svc := range svcs {
			if validName(svc) != nil {
				continue
			}
			dir := filepath.Join(sdir, app, svc)
			dfd, err := openDirAt(afd, dir, svc, false)
			if err != nil {
				continue
			}
			for _, name := range HeldNames {
				e, err := describe(dfd, filepath.Join(dir, name), name, locks)
				if errors.Is(err, os.ErrNotExist) {
					continue
				}
				if err != nil {
					unix.Close(dfd)
					unix.Close(afd)
					return nil, fmt.Errorf("scan locks: %w", err)
				}
				e.App, e.Service = app, svc
				out = append(out, e)
			}
			unix.Close(dfd)
		}
		unix.Close(afd)
	}
	return out, nil
}

// readDirNames lists the names in the directory dirfd (without closing it).
func readDirNames(dirfd int) ([]string, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), ".")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	slices.Sort(names)
	return names, err
}

// Blocking returns the entries that block an action on any of svcs: their
// service entries and every device-wide entry.
func (l Layout) Blocking(svcs []Service) ([]Entry, error) {
	all, err := l.Scan()
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, e := range all {
		if e.App == "" || slices.Contains(svcs, Service{e.App, e.Service}) {
			out = append(out, e)
		}
	}
	return out, nil
}

// Leftovers lists the entries in service directories that are owned by uid
// and carry latch's RoleAgent record: the agent's own, e.g. after a crash.
func (l Layout) Leftovers(uid int) ([]Entry, error) {
	all, err := l.Scan()
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, e := range all {
		if e.App != "" && e.Kind == KindFile && e.UID == uid && e.Record != nil && e.Record.Role == RoleAgent {
			out = append(out, e)
		}
	}
	return out, nil
}

// Inspect describes the entry at path (never following it), with App and
// Service filled in when path is in a service lock directory. It returns an
// error wrapping fs.ErrNotExist when nothing is there.
func (l Layout) Inspect(path string) (Entry, error) {
	path = filepath.Clean(path)
	e, err := describePath(path, readProcLocks())
	if err != nil {
		return Entry{}, err
	}
	if s, _, ok := l.serviceOf(path); ok {
		e.App, e.Service = s.App, s.Service
	}
	return e, nil
}

// serviceOf reports whether path is Dir/services/<app>/<service>/<name>
// with one of the held names.
func (l Layout) serviceOf(path string) (Service, string, bool) {
	if l.Dir == "" {
		return Service{}, "", false
	}
	rel, err := filepath.Rel(filepath.Join(filepath.Clean(l.Dir), "services"), path)
	if err != nil {
		return Service{}, "", false
	}
	parts := strings.Split(rel, string(filepath.Separator))
	if len(parts) != 3 || validName(parts[0]) != nil || validName(parts[1]) != nil || !slices.Contains(HeldNames, parts[2]) {
		return Service{}, "", false
	}
	return Service{parts[0], parts[1]}, parts[2], true
}

// RemoveEntry removes the entry e (a file, a symlink or a directory tree,
// never following a symlink) if it is still the same device and inode, else
// it returns ErrNotOurs (an entry from Inspect or a scan must also keep its
// type, owner, size and ctime, since inode numbers are reused at once). It is
// for force, override and --break-stale, and refuses (ErrOutside) a path that
// is neither a held name in a service lock directory nor a device-wide path.
// An entry already gone is not an error.
func (l Layout) RemoveEntry(e Entry) error {
	path := filepath.Clean(e.Path)
	var dirfd int
	var name string
	if s, n, ok := l.serviceOf(path); ok {
		fd, err := l.openServiceDir(s, false)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return fmt.Errorf("remove lock %s: %w", path, err)
		}
		dirfd, name = fd, n
	} else if slices.Contains(l.Global, path) {
		fd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return fmt.Errorf("remove lock %s: %w", path, err)
		}
		dirfd, name = fd, filepath.Base(path)
	} else {
		return fmt.Errorf("remove lock %s: %w", path, ErrOutside)
	}
	defer unix.Close(dirfd)
	return removeAt(dirfd, path, name, e.Dev, e.Ino, e.seen)
}

// removeAt removes name in dirfd if it is still dev/ino and looks as it was
// seen; a directory is first
// renamed out of the way (so the lock disappears at once) and then removed
// without following symlinks.
func removeAt(dirfd int, path, name string, dev, ino uint64, was seen) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("remove lock %s: %w", path, err)
	}
	if uint64(st.Dev) != dev || uint64(st.Ino) != ino || !was.same(&st) {
		return fmt.Errorf("remove lock %s: %w", path, ErrNotOurs)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlinkat(dirfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove lock %s: %w", path, err)
		}
		return nil
	}
	tmp := fmt.Sprintf(".%s.latch-rm-%d-%d", name, os.Getpid(), time.Now().UnixNano())
	if err := unix.Renameat(dirfd, name, dirfd, tmp); err != nil {
		return fmt.Errorf("remove lock %s: %w", path, err)
	}
	if err := removeTreeAt(dirfd, tmp); err != nil {
		return fmt.Errorf("remove lock %s: %w", path, err)
	}
	return nil
}

// removeTreeAt removes name in dirfd and, when it is a directory, all it
// contains, never following a symlink.
func removeTreeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	names, err := readDirNames(fd)
	if err == nil {
		for _, n := range names {
			if err = removeTreeAt(fd, n); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}
