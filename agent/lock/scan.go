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
	// LockUID owns the agent's own entries (--lock-uid; the euid when latch
	// does not run as root). A record with role agent or hold counts as the
	// agent's (state agent or hold) only on an entry owned by LockUID;
	// elsewhere it is an ordinary held entry and its claim is ignored.
	// Negative: no entry is the agent's.
	LockUID int
}

// MaxForeignDirs bounds how many app and service directories made by other
// users (not root, not latch's euid) Scan looks into: any user can make
// service directories in the world-writable app directories, as many as
// they like. Directories the agent made are always looked at.
const MaxForeignDirs = 4096

// TruncatedError reports that Scan skipped directories made by other users
// beyond MaxForeignDirs. The entries returned with it are valid.
type TruncatedError struct {
	Dir     string // the services directory
	Skipped int    // directories not looked at
}

func (e *TruncatedError) Error() string {
	return fmt.Sprintf("scan locks: %s holds more than %d service directories made by other users; %d were not looked at (remove the ones no service uses)", e.Dir, MaxForeignDirs, e.Skipped)
}

// Is makes errors.Is(err, ErrTruncated) true for a *TruncatedError.
func (e *TruncatedError) Is(target error) bool { return target == ErrTruncated }

// ServiceDir returns the lock directory of s.
func (l Layout) ServiceDir(s Service) string {
	return filepath.Join(l.Dir, "services", s.App, s.Service)
}

// EnsureServiceDir creates what is missing of Dir and Dir/services (mode
// 0755) and of the app and the service directory (mode 1777, only inside a
// directory this process owns: a user cannot make them), and returns the
// service directory. A component that is a symlink or not a directory is
// refused with an error naming that path (ErrSymlink or ErrNotDir), and so is
// a lock root or services/ owned by another user or writable by others, or
// an app or service directory owned by another user (ErrUntrusted).
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

// procUID returns the real uid of pid from /proc/PID/status, or -1.
func procUID(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return -1
			}
			uid, err := strconv.Atoi(f[0])
			if err != nil {
				return -1
			}
			return uid
		}
	}
	return -1
}

func timeOf(ts unix.Timespec) time.Time { return time.Unix(int64(ts.Sec), int64(ts.Nsec)).UTC() }

// describe looks at the entry name in dirfd (never following it) and returns
// it with its holder and state; lockUID owns the agent's entries (see
// Layout.LockUID). It returns an error wrapping fs.ErrNotExist when there is
// no entry.
func describe(dirfd int, path, name string, locks map[[2]uint64][]int, lockUID int) (Entry, error) {
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
		Since: timeOf(st.Mtim),
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
			// Anyone can write a record: the agent's roles count only on
			// the lock uid's entries.
			if rec.Role == RoleUser || lockUID >= 0 && int(st.Uid) == lockUID {
				e.Record = &rec
				e.Since = rec.Created
			}
		}
	}
	for _, pid := range locks[[2]uint64{e.Dev, e.Ino}] {
		if alive(pid) {
			e.Holder = &Holder{PID: pid, Command: cmdline(pid)}
			break
		}
	}
	if r := e.Record; r != nil {
		// The pid is believed only while it is a process of the entry's
		// owner (root for root's entries and the agent's): a record naming
		// another user's process is forged, or its pid was reused.
		live := r.Alive()
		believed := false
		if live {
			uid := procUID(r.PID)
			believed = uid >= 0 && (uint32(uid) == st.Uid || uid == 0 && int(st.Uid) == lockUID)
		}
		switch {
		case r.Role == RoleAgent:
			e.State = StateAgent
		case r.Role == RoleHold:
			e.State = StateHold
		case !live && e.Holder == nil:
			e.State = StateStale
		}
		if e.Holder == nil && believed {
			cmd := cmdline(r.PID)
			if cmd == "" {
				cmd = r.Command
			}
			e.Holder = &Holder{PID: r.PID, Command: cmd}
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
// are not an error; a lock root or services directory that is a symlink, or
// that another user owns or can write, is. Symlinked app or service
// directories are skipped (they are not lock directories, and
// EnsureServiceDir refuses them). App and service directories made by other
// users are looked at up to MaxForeignDirs; beyond that Scan returns the
// entries it found with a *TruncatedError (errors.Is(err, ErrTruncated))
// saying how many it skipped.
func (l Layout) Scan() ([]Entry, error) {
	locks := readProcLocks()
	var out []Entry
	var trunc error
	if l.Dir != "" {
		es, err := l.scanServices(locks)
		if err != nil && !errors.Is(err, ErrTruncated) {
			return nil, err
		}
		out, trunc = es, err
	}
	gs, err := l.globals(locks)
	if err != nil {
		return nil, fmt.Errorf("scan locks: %w", err)
	}
	out = append(out, gs...)
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Path, b.Path) })
	return out, trunc
}

// globals describes the device-wide entries that exist, and a held entry
// for a device-wide lock that cannot be looked at safely (globalParent).
func (l Layout) globals(locks map[[2]uint64][]int) ([]Entry, error) {
	var out []Entry
	for _, g := range l.Global {
		e, err := l.describeGlobal(filepath.Clean(g), locks)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(out, func(o Entry) bool { return o.Path == e.Path }) {
			out = append(out, e)
		}
	}
	return out, nil
}

// describeGlobal describes the device-wide entry g (see globalParent for a
// directory that cannot be trusted).
func (l Layout) describeGlobal(g string, locks map[[2]uint64][]int) (Entry, error) {
	fd, held, err := globalParent(g)
	if err != nil {
		return Entry{}, err
	}
	if held != nil {
		return *held, nil
	}
	defer unix.Close(fd)
	return describe(fd, g, filepath.Base(g), locks, l.LockUID)
}

// openServices opens Dir/services for reading (each level checked as
// openLevel does). It returns -1 and no error when it does not exist.
func (l Layout) openServices() (int, string, error) {
	root := filepath.Clean(l.Dir)
	pfd, _, err := openPath(filepath.Dir(root), false)
	if errors.Is(err, unix.ENOENT) {
		return -1, "", nil
	}
	if err != nil {
		return -1, "", fmt.Errorf("scan locks: %w", err)
	}
	rfd, err := openLevel(pfd, root, filepath.Base(root), privateMode, true, false)
	unix.Close(pfd)
	if errors.Is(err, unix.ENOENT) {
		return -1, "", nil
	}
	if err != nil {
		return -1, "", fmt.Errorf("scan locks: %w", err)
	}
	sdir := filepath.Join(root, "services")
	sfd, err := openLevel(rfd, sdir, "services", privateMode, true, false)
	unix.Close(rfd)
	if errors.Is(err, unix.ENOENT) {
		return -1, "", nil
	}
	if err != nil {
		return -1, "", fmt.Errorf("scan locks: %w", err)
	}
	return sfd, sdir, nil
}

// describeService appends the held entries in the service directory dfd.
func (l Layout) describeService(out []Entry, dfd int, dir string, s Service, locks map[[2]uint64][]int) ([]Entry, error) {
	for _, name := range HeldNames {
		e, err := describe(dfd, filepath.Join(dir, name), name, locks, l.LockUID)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("scan locks: %w", err)
		}
		e.App, e.Service = s.App, s.Service
		out = append(out, e)
	}
	return out, nil
}

func (l Layout) scanServices(locks map[[2]uint64][]int) ([]Entry, error) {
	sfd, sdir, err := l.openServices()
	if err != nil || sfd < 0 {
		return nil, err
	}
	defer unix.Close(sfd)
	var out []Entry
	apps, err := readDirNames(sfd)
	if err != nil {
		return nil, fmt.Errorf("scan locks: read %s: %w", sdir, err)
	}
	foreign, skipped := 0, 0
	// visit opens the directory name in dirfd unless it is not a lock
	// directory, or is one more made by another user than Scan looks at.
	visit := func(dirfd int, name string) int {
		if validName(name) != nil {
			return -1
		}
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1 // vanished, a symlink or not a directory: not a lock directory
		}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && !trusted(st.Uid) {
			if foreign >= MaxForeignDirs {
				skipped++
				unix.Close(fd)
				return -1
			}
			foreign++
		}
		return fd
	}
	for _, app := range apps {
		afd := visit(sfd, app)
		if afd < 0 {
			continue
		}
		svcs, err := readDirNames(afd)
		if err != nil {
			unix.Close(afd)
			return nil, fmt.Errorf("scan locks: read %s: %w", filepath.Join(sdir, app), err)
		}
		for _, svc := range svcs {
			dfd := visit(afd, svc)
			if dfd < 0 {
				continue
			}
			out, err = l.describeService(out, dfd, filepath.Join(sdir, app, svc), Service{app, svc}, locks)
			unix.Close(dfd)
			if err != nil {
				unix.Close(afd)
				return nil, err
			}
		}
		unix.Close(afd)
	}
	if skipped > 0 {
		return out, &TruncatedError{Dir: sdir, Skipped: skipped}
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

// Blocking returns the entries that block an action on any of svcs: the
// held entries in their service directories and every device-wide entry,
// sorted by path. It looks at those directories alone, not the whole tree.
// A service directory that is a symlink counts as held (at that path): the
// service sees whatever it points to as its lock directory.
func (l Layout) Blocking(svcs []Service) ([]Entry, error) {
	locks := readProcLocks()
	var out []Entry
	if l.Dir != "" {
		for _, s := range svcs {
			if validName(s.App) != nil || validName(s.Service) != nil {
				return nil, fmt.Errorf("blocking locks of %s: not a valid APP/SERVICE", s)
			}
			dir := l.ServiceDir(s)
			dfd, err := l.openServiceDir(s, false)
			switch {
			case errors.Is(err, unix.ENOENT):
				continue
			case errors.Is(err, ErrSymlink) && (isLink(filepath.Dir(dir)) || isLink(dir)):
				link := dir
				if isLink(filepath.Dir(dir)) {
					link = filepath.Dir(dir)
				}
				var st unix.Stat_t
				unix.Lstat(link, &st)
				out = append(out, Entry{App: s.App, Service: s.Service, Path: link, Kind: KindSymlink, UID: int(st.Uid), Since: timeOf(st.Mtim), State: StateHeld,
					Reason: "the lock directory of " + s.String() + " goes through a symlink: latch never follows it, so the service counts as locked until it is removed"})
				continue
			case err != nil:
				return nil, fmt.Errorf("blocking locks of %s: %w", s, err)
			}
			out, err = l.describeService(out, dfd, dir, s, locks)
			unix.Close(dfd)
			if err != nil {
				return nil, err
			}
		}
	}
	gs, err := l.globals(locks)
	if err != nil {
		return nil, fmt.Errorf("blocking locks: %w", err)
	}
	out = append(out, gs...)
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Path, b.Path) })
	return slices.CompactFunc(out, func(a, b Entry) bool { return a.Path == b.Path }), nil
}

func isLink(path string) bool {
	var st unix.Stat_t
	return unix.Lstat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK
}

// Leftovers lists the entries in service directories that are owned by uid
// and carry latch's RoleAgent record: the agent's own, e.g. after a crash.
// Every directory the agent made is looked at, however many other users
// made (a *TruncatedError from Scan is not an error here).
func (l Layout) Leftovers(uid int) ([]Entry, error) {
	l.LockUID = uid
	all, err := l.Scan()
	if err != nil && !errors.Is(err, ErrTruncated) {
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

// Inspect describes the entry at path (never following it, nor any
// directory on the way), with App and Service filled in when path is in a
// service lock directory. It returns an error wrapping fs.ErrNotExist when
// nothing is there.
func (l Layout) Inspect(path string) (Entry, error) {
	path = filepath.Clean(path)
	locks := readProcLocks()
	if s, name, ok := l.serviceOf(path); ok {
		dfd, err := l.openServiceDir(s, false)
		if errors.Is(err, unix.ENOENT) {
			return Entry{}, fmt.Errorf("look at %s: %w", path, os.ErrNotExist)
		}
		if err != nil {
			return Entry{}, fmt.Errorf("look at %s: %w", path, err)
		}
		defer unix.Close(dfd)
		e, err := describe(dfd, path, name, locks, l.LockUID)
		e.App, e.Service = s.App, s.Service
		return e, err
	}
	if slices.Contains(l.Global, path) {
		return l.describeGlobal(path, locks)
	}
	fd, name, err := openParent(path)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Entry{}, fmt.Errorf("look at %s: %w", path, os.ErrNotExist)
		}
		return Entry{}, fmt.Errorf("look at %s: %w", path, err)
	}
	defer unix.Close(fd)
	return describe(fd, path, name, locks, l.LockUID)
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

// IsEntryPath reports whether path is a lock entry of the layout: a held
// name in a service lock directory, or a device-wide path.
func (l Layout) IsEntryPath(path string) bool {
	path = filepath.Clean(path)
	_, _, ok := l.serviceOf(path)
	return ok || slices.Contains(l.Global, path)
}

// RemoveEntry removes the entry e (a file, a symlink or a directory tree,
// never following a symlink) if it is still the same device and inode, else
// it returns ErrNotOurs (an entry from Inspect or a scan must also keep its
// type, owner, size and ctime, since inode numbers are reused at once). It is
// for force, override and --break-stale, and refuses (ErrOutside) a path that
// is neither a held name in a service lock directory nor a device-wide path,
// and (ErrSymlink, ErrUntrusted) a device-wide lock whose directory is a
// symlink or another user's, and an entry that is such a directory (one
// with a Reason). An entry already gone is not an error.
func (l Layout) RemoveEntry(e Entry) error {
	path := filepath.Clean(e.Path)
	if e.Reason != "" {
		// A directory that counts as held (see globalParent, Blocking):
		// nothing is removed in or through it.
		why := ErrUntrusted
		if e.Kind == KindSymlink {
			why = ErrSymlink
		}
		return fmt.Errorf("remove lock %s: %w: %s; latch removes nothing there, remove it by hand", path, why, e.Reason)
	}
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
		fd, held, err := globalParent(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return fmt.Errorf("remove lock %s: %w", path, err)
		}
		if held != nil {
			why := ErrUntrusted
			if held.Kind == KindSymlink {
				why = ErrSymlink
			}
			return fmt.Errorf("remove lock %s: %s: %w; latch removes nothing through it", path, held.Path, why)
		}
		dirfd, name = fd, filepath.Base(path)
	} else {
		return fmt.Errorf("remove lock %s: %w (only a held name in %s/APP/SERVICE or a device-wide lock path is removed)", path, ErrOutside, filepath.Join(l.Dir, "services"))
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
