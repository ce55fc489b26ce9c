package agent

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"latch/store"
)

// NoticeName is the file that tells a service that an update of its app
// waits or runs (spec section 12): the agent keeps it in each service's lock
// directory, where the service sees /tmp/balena/update-pending. The lock
// scanners count only the lock names (lock.HeldNames), never this one.
const NoticeName = "update-pending"

// Notice is the content of update-pending.
type Notice struct {
	App      string     `json:"app"`
	From     string     `json:"from"` // the release that runs ("" for a new app)
	To       string     `json:"to"`   // the release it is updated to ("" when removed)
	Since    time.Time  `json:"since"`
	Deadline *time.Time `json:"deadline"` // max-defer: when the update is forced or failed; null when unbounded
}

// wantNotices is every update-pending that the pending update calls for:
// service dir -> content. None while no update waits or runs.
func (a *Agent) wantNotices() map[string][]byte {
	s := &a.st
	want := map[string][]byte{}
	p := s.pending
	if p == nil || cancelled(p) {
		return want
	}
	switch p.State {
	case store.Downloading, store.Downloaded, store.Waiting, store.Applying:
	default:
		return want // failed: the update neither waits nor runs
	}
	for _, app := range planApps(s.plan) {
		part := appPart(s.plan, app)
		n := Notice{App: app, From: s.apps[app].Current, To: part[0].Release, Since: p.Created.UTC()}
		if d, ok := a.appDeadline(app); ok {
			d = d.UTC()
			n.Deadline = &d
		}
		b, _ := json.Marshal(n)
		b = append(b, '\n')
		for _, pl := range part {
			want[a.cfg.Layout.ServiceDir(pl.Svc)] = b
		}
	}
	return want
}

// syncNotices writes and removes update-pending files so that they match
// what the pending update calls for. It acts only on a change (and, after
// a start, once on every known service, to drop what an earlier run left).
func (a *Agent) syncNotices() {
	s := &a.st
	want := a.wantNotices()
	if s.notices == nil {
		s.notices = map[string][]byte{}
		for _, svc := range a.knownServices() {
			dir := a.cfg.Layout.ServiceDir(svc)
			if _, ok := want[dir]; !ok {
				s.notices[dir] = nil // maybe left by an earlier run: removed below
			}
		}
	}
	for dir, b := range want {
		if old, ok := s.notices[dir]; ok && bytes.Equal(old, b) {
			continue
		}
		if err := writeNotice(dir, b); err != nil {
			if s.noticeErr[dir] != err.Error() {
				a.logf("tell the service in %s of its update: %v", dir, err)
				a.event("notice", "", "could not write %s: %v", filepath.Join(dir, NoticeName), err)
				s.noticeErr[dir] = err.Error()
			}
			continue
		}
		delete(s.noticeErr, dir)
		s.notices[dir] = b
	}
	for dir := range s.notices {
		if _, ok := want[dir]; ok {
			continue
		}
		if err := removeNotice(dir); err != nil {
			a.logf("remove %s: %v", filepath.Join(dir, NoticeName), err)
		}
		delete(s.notices, dir)
		delete(s.noticeErr, dir)
	}
}

// openLockDir opens the directory dir inside the lock root, walking from /
// one component at a time with O_NOFOLLOW|O_DIRECTORY: no component may be
// a symlink, and the directories from the lock root down to services/ must
// be root's (the agent's), as the agent makes them.
func openLockDir(dir string) (int, error) {
	dir = filepath.Clean(dir)
	if !filepath.IsAbs(dir) {
		return -1, fmt.Errorf("open %s: not an absolute path", dir)
	}
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /: %w", err)
	}
	cur := "/"
	for _, name := range strings.Split(strings.TrimPrefix(dir, "/"), "/") {
		if name == "" {
			continue
		}
		cur = filepath.Join(cur, name)
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return -1, fmt.Errorf("open %s: %s is a symlink or not a directory: %w", dir, cur, err)
			}
			return -1, fmt.Errorf("open %s: %w", cur, err)
		}
		fd = next
	}
	return fd, nil
}

// writeNotice puts b at dir/update-pending atomically: a new file under a
// random name (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0644, owned by the agent),
// synced, then renamed over the name. A rename replaces a symlink that a
// user planted there, never writing through it; a directory planted there
// is reported and left alone.
func writeNotice(dir string, b []byte) error {
	fd, err := openLockDir(dir)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstatat(fd, NoticeName, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%s is a directory (uid %d), not latch's file: remove it so that latch can tell the service of its update", filepath.Join(dir, NoticeName), st.Uid)
	}
	var tmp string
	var f int
	for i := 0; ; i++ {
		r := make([]byte, 8)
		rand.Read(r)
		tmp = "." + NoticeName + "." + hex.EncodeToString(r)
		f, err = unix.Openat(fd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EEXIST) || i >= 8 {
			return fmt.Errorf("create %s: %w", filepath.Join(dir, tmp), err)
		}
	}
	fail := func(err error) error {
		unix.Close(f)
		unix.Unlinkat(fd, tmp, 0)
		return fmt.Errorf("write %s: %w", filepath.Join(dir, NoticeName), err)
	}
	if err := unix.Fchmod(f, 0o644); err != nil {
		return fail(err)
	}
	for rest := b; len(rest) > 0; {
		n, err := unix.Write(f, rest)
		if err != nil {
			return fail(err)
		}
		rest = rest[n:]
	}
	if err := unix.Fsync(f); err != nil {
		return fail(err)
	}
	unix.Close(f)
	if err := unix.Renameat(fd, tmp, fd, NoticeName); err != nil {
		unix.Unlinkat(fd, tmp, 0)
		return fmt.Errorf("rename into %s: %w", filepath.Join(dir, NoticeName), err)
	}
	return nil
}

// removeNotice removes dir/update-pending when it is the agent's (a regular
// file of the agent's uid); anything else at that name is left alone.
func removeNotice(dir string) error {
	fd, err := openLockDir(dir)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstatat(fd, NoticeName, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || int(st.Uid) != unix.Geteuid() {
		return nil // not the agent's
	}
	if err := unix.Unlinkat(fd, NoticeName, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}
