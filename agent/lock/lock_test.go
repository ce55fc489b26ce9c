package lock

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("not root: ownership by other users not tested")
	}
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed: not tested", name)
	}
	return p
}

func testLayout(t *testing.T) Layout {
	t.Helper()
	root := t.TempDir()
	// Let other users (setpriv) reach the lock directories.
	os.Chmod(root, 0o755)
	os.Chmod(filepath.Dir(root), 0o755)
	return Layout{Dir: filepath.Join(root, "latch"), Global: []string{filepath.Join(root, "balena", "updates.lock"), filepath.Join(root, "resin", "resin-updates.lock")},
		LockUID: os.Geteuid()}
}

// agentUID is the owner the tests give the agent's entries: 65534 as root
// (as the agent does), else the caller's own (-1: no chown).
func agentUID() int {
	if os.Geteuid() == 0 {
		return 65534
	}
	return -1
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatalf("lstat %s: %v", path, err)
	}
	return st.Ino
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func TestParseService(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Service
		wantErr string
	}{
		{"kiosk/ui", Service{"kiosk", "ui"}, ""},
		{"a.b_c-1/S.2", Service{"a.b_c-1", "S.2"}, ""},
		{"kiosk", Service{}, "want APP/SERVICE"},
		{"/ui", Service{}, "app name: empty"},
		{"kiosk/", Service{}, "service name: empty"},
		{"kiosk/ui/x", Service{}, "'/'"},
		{".hidden/ui", Service{}, "starts with '.'"},
		{"kiosk/..", Service{}, "starts with '.'"},
		{"ki osk/ui", Service{}, "' '"},
		{strings.Repeat("a", 129) + "/ui", Service{}, "at most 128"},
		{strings.Repeat("a", 128) + "/ui", Service{strings.Repeat("a", 128), "ui"}, ""},
	} {
		got, err := ParseService(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseService(%q): got error %v, want one containing %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseService(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("String() = %q, want %q", got.String(), tc.in)
		}
	}
}

// deadPID returns the pid of a process that has exited (and been reaped).
func deadPID(t *testing.T) int {
	t.Helper()
	c := exec.Command("true")
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	return c.Process.Pid
}

func writeRecord(t *testing.T, path string, r Record) {
	t.Helper()
	if err := os.WriteFile(path, r.marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestScanRules checks every "what counts as held" and state rule of spec
// section 3 on real entries.
func TestScanRules(t *testing.T) {
	svc := Service{"kiosk", "ui"}
	self := NewRecord(RoleUser)
	for _, tc := range []struct {
		name      string
		root      bool
		make      func(t *testing.T, l Layout, dir string) string // returns the entry's path
		wantKind  Kind
		wantState State
		wantUID   int
		wantApp   bool
		holderPID func() int // nil: no holder expected
	}{
		{name: "updates.lock file", make: func(t *testing.T, l Layout, dir string) string {
			p := filepath.Join(dir, UpdatesName)
			os.WriteFile(p, nil, 0o644)
			return p
		}, wantKind: KindFile, wantState: StateHeld, wantApp: true},
		{name: "resin-updates.lock file", make: func(t *testing.T, l Layout, dir string) string {
			p := filepath.Join(dir, ResinName)
			os.WriteFile(p, []byte("12345\n"), 0o644)
			return p
		}, wantKind: KindFile, wantState: StateHeld, wantApp: true},
		{name: "directory", make: func(t *testing.T, l Layout, dir string) string {
			p := filepath.Join(dir, UpdatesName)
			os.Mkdir(p, 0o755)
			return p
		}, wantKind: KindDir, wantState: StateHeld, wantApp: true},
		{name: "symlink", make: func(t *testing.T, l Layout, dir string) string {
			p := filepath.Join(dir, UpdatesName)
			os.Symlink("/etc/hostname", p)
			return p
		}, wantKind: KindSymlink, wantState: StateHeld, wantApp: true},
		{name: "dangling symlink", make: func(t *testing.T, l Layout, dir string) string {
			p := filepath.Join(dir, ResinName)
			os.Symlink(filepath.Join(dir, "nowhere"), p)
			return p
		}, wantKind: KindSymlink, wantState: StateHeld, wantApp: true},
		{name: "uid 1000 via setpriv", root: true, make: func(t *testing.T, l Layout, dir string) string {
			p := filepath.Join(dir, UpdatesName)
			runAs(t, 1000, "touch", p)
			return p
		}, wantKind: KindFile, wantState: StateHeld, wantUID: 1000, wantApp: true},
		{name: "uid 65534 via setpriv", root: true, make: func(t *testing.T, l Layout, dir string) string {
			p := filepath.Join(dir, ResinName)
			runAs(t, 65534, "mkdir", p)
			return p
		}, wantKind: KindDir, wantState: StateHeld, wantUID: 65534, wantApp: true},
		{name: "latch record, live pid", make: func(t *testing.T, l Layout, dir string) string {
			p := filepath.Join(dir, UpdatesName)
			writeRecord(t, p, self)
			return p
		}, wantKind: KindFile, wantState: StateHeld, wantApp: true, holderPID: os.Getpid},
		{name: "latch record, dead pid", make: func(t *testing.T, l Layout, dir string) string {
			p := filepath.Join(dir, UpdatesName)
			r := self
			r.PID = deadPID(t)
			writeRecord(t, p, r)
			return p
		}, wantKind: KindFile, wantState: StateStale, wantApp: true},
		{name: "latch record, other boot", make: func(t *testing.T, l Layout, dir string) string {
			p := filepath.Join(dir, UpdatesName)
			r := self
			r.BootID = "00000000-0000-0000-0000-000000000000"
			writeRecord(t, p, r)
			return p
		}, wantKind: KindFile, wantState: StateStale, wantApp: true},
		{name: "agent record", make: func(t *testing.T, l Layout, dir string) string {
			p := filepath.Join(dir, ResinName)
			writeRecord(t, p, NewRecord(RoleAgent))
			return p
		}, wantKind: KindFile, wantState: StateAgent, wantApp: true, holderPID: os.Getpid},
		{name: "hold record", make: func(t *testing.T, l Layout, dir string) string {
			p := filepath.Join(dir, HoldName)
			r := NewRecord(RoleHold)
			r.PID = deadPID(t)
			writeRecord(t, p, r)
			return p
		}, wantKind: KindFile, wantState: StateHold, wantApp: true},
		{name: "device-wide lock", make: func(t *testing.T, l Layout, dir string) string {
			p := l.Global[1]
			os.MkdirAll(filepath.Dir(p), 0o755)
			os.WriteFile(p, nil, 0o644)
			return p
		}, wantKind: KindFile, wantState: StateHeld},
		{name: "device-wide dangling symlink", make: func(t *testing.T, l Layout, dir string) string {
			p := l.Global[0]
			os.MkdirAll(filepath.Dir(p), 0o755)
			os.Symlink("/nonexistent", p)
			return p
		}, wantKind: KindSymlink, wantState: StateHeld},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root {
				needRoot(t)
			}
			l := testLayout(t)
			dir, err := l.EnsureServiceDir(svc)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := l.Scan(); len(got) != 0 {
				t.Fatalf("Scan before: got %d entries, want 0", len(got))
			}
			path := tc.make(t, l, dir)
			got, err := l.Scan()
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("Scan: got %d entries (%+v), want 1", len(got), got)
			}
			e := got[0]
			if tc.wantUID == 0 {
				tc.wantUID = os.Geteuid() // made by the test itself
			}
			if e.Path != path || e.Kind != tc.wantKind || e.State != tc.wantState || e.UID != tc.wantUID {
				t.Errorf("got path %s kind %s state %s uid %d; want %s %s %s %d", e.Path, e.Kind, e.State, e.UID, path, tc.wantKind, tc.wantState, tc.wantUID)
			}
			if tc.wantApp != (e.App == svc.App && e.Service == svc.Service) || !tc.wantApp && (e.App != "" || e.Service != "") {
				t.Errorf("got app/service %q/%q, want service entry %v", e.App, e.Service, tc.wantApp)
			}
			switch {
			case tc.holderPID == nil && e.Holder != nil:
				t.Errorf("got holder %+v, want none", e.Holder)
			case tc.holderPID != nil && (e.Holder == nil || e.Holder.PID != tc.holderPID()):
				t.Errorf("got holder %+v, want pid %d", e.Holder, tc.holderPID())
			}
			blocking, err := l.Blocking([]Service{{"other", "svc"}})
			if err != nil {
				t.Fatal(err)
			}
			if wantBlock := !tc.wantApp; (len(blocking) == 1) != wantBlock {
				t.Errorf("Blocking(other/svc): got %d entries, want blocked=%v", len(blocking), wantBlock)
			}
			blocking, _ = l.Blocking([]Service{svc})
			if len(blocking) != 1 {
				t.Errorf("Blocking(%v): got %d entries, want 1", svc, len(blocking))
			}
		})
	}
}

func runAs(t *testing.T, uid int, args ...string) {
	t.Helper()
	needTool(t, "setpriv")
	a := append([]string{fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups"}, args...)
	if out, err := exec.Command("setpriv", a...).CombinedOutput(); err != nil {
		t.Fatalf("setpriv %v: %v\n%s", a, err, out)
	}
}

// TestFlockHolder checks that a real flock(1) holder is found in /proc/locks.
func TestFlockHolder(t *testing.T) {
	needTool(t, "flock")
	l := testLayout(t)
	dir, err := l.EnsureServiceDir(Service{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, UpdatesName)
	cmd := exec.Command("flock", path, "sh", "-c", "echo ready; exec sleep 600")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		t.Fatalf("flock said %q, want ready", line)
	}
	es, err := l.Scan()
	if err != nil || len(es) != 1 {
		t.Fatalf("Scan: %v %+v, want one entry", err, es)
	}
	if h := es[0].Holder; h == nil || h.PID != cmd.Process.Pid || !strings.HasPrefix(h.Command, "flock ") {
		t.Errorf("got holder %+v, want pid %d running flock", h, cmd.Process.Pid)
	}
}

func TestCreate(t *testing.T) {
	l := testLayout(t)
	dir, err := l.EnsureServiceDir(Service{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, UpdatesName)
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		uid, gid = 65534, 65534
	}
	// The agent's entries are the lock uid's: a second Create sees state agent.
	l.LockUID = os.Geteuid()
	if uid >= 0 {
		l.LockUID = uid
	}
	rec := NewRecord(RoleAgent)
	lk, err := l.Create(path, rec, uid, gid)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Lstat(path, &st)
	if uid >= 0 && (int(st.Uid) != uid || int(st.Gid) != gid) {
		t.Errorf("owner: got %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
	}
	if st.Ino != lk.Ino {
		t.Errorf("inode: got %d, want %d", lk.Ino, st.Ino)
	}
	b, _ := os.ReadFile(path)
	got, ok := ParseRecord(b)
	if !ok || got.PID != rec.PID || got.Role != RoleAgent || got.BootID != BootID() || !got.Created.Equal(rec.Created) {
		t.Errorf("record: got %+v (%v), want %+v", got, ok, rec)
	}
	if names, _ := os.ReadDir(dir); len(names) != 1 {
		t.Errorf("dir holds %d entries, want only the lock (no temporary file left)", len(names))
	}
	_, err = l.Create(path, NewRecord(RoleUser), -1, -1)
	var he *HeldError
	if !errors.As(err, &he) || !errors.Is(err, ErrHeld) || he.Entry.State != StateAgent {
		t.Errorf("second Create: got %v, want a HeldError with state agent", err)
	}
	if err := lk.Remove(); err != nil {
		t.Fatal(err)
	}
	if exists(path) {
		t.Errorf("lock still there after Remove")
	}
	if err := lk.Remove(); err != nil {
		t.Errorf("Remove of a removed lock: %v, want nil", err)
	}
}

// TestRemoveOnlyOurs: a lock replaced by someone else is left in place.
func TestRemoveOnlyOurs(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, UpdatesName)
	lk, err := Create(path, NewRecord(RoleUser), -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	os.WriteFile(path, []byte("theirs"), 0o644)
	ino := inode(t, path)
	if err := lk.Remove(); !errors.Is(err, ErrNotOurs) {
		t.Errorf("Remove: got %v, want ErrNotOurs", err)
	}
	if !exists(path) || inode(t, path) != ino {
		t.Errorf("the replacement was removed")
	}
	if err := ReleaseAll([]*Lock{lk}); !errors.Is(err, ErrNotOurs) {
		t.Errorf("ReleaseAll: got %v, want ErrNotOurs", err)
	}
}

// TestSymlinkAttacks plants symlinks to a file outside in place of lock
// directories and lock paths: latch refuses, and the target is untouched.
func TestSymlinkAttacks(t *testing.T) {
	withProtectedSymlinks(t, testSymlinkAttacks)
}

func testSymlinkAttacks(t *testing.T) {
	svc := Service{"app", "svc"}
	for _, tc := range []struct {
		name    string
		plant   func(t *testing.T, l Layout, target string) string // returns the planted path
		act     func(l Layout) error
		wantErr error
	}{
		{"lock dir is a symlink", func(t *testing.T, l Layout, target string) string {
			os.Symlink(filepath.Dir(target), l.Dir)
			return l.Dir
		}, func(l Layout) error { _, err := l.EnsureServiceDir(svc); return err }, ErrSymlink},
		{"services is a symlink", func(t *testing.T, l Layout, target string) string {
			os.MkdirAll(l.Dir, 0o755)
			p := filepath.Join(l.Dir, "services")
			os.Symlink(filepath.Dir(target), p)
			return p
		}, func(l Layout) error { _, err := l.EnsureServiceDir(svc); return err }, ErrSymlink},
		{"app dir is a symlink", func(t *testing.T, l Layout, target string) string {
			os.MkdirAll(filepath.Join(l.Dir, "services"), 0o755)
			p := filepath.Join(l.Dir, "services", "app")
			os.Symlink(filepath.Dir(target), p)
			return p
		}, func(l Layout) error {
			_, err := l.Acquire([]Service{svc}, []string{UpdatesName}, NewRecord(RoleAgent), -1, -1)
			return err
		}, ErrSymlink},
		{"service dir is a file", func(t *testing.T, l Layout, target string) string {
			os.MkdirAll(filepath.Join(l.Dir, "services", "app"), 0o755)
			p := filepath.Join(l.Dir, "services", "app", "svc")
			os.WriteFile(p, nil, 0o644)
			return p
		}, func(l Layout) error { _, err := l.EnsureServiceDir(svc); return err }, ErrNotDir},
		{"lock path is a symlink to the file", func(t *testing.T, l Layout, target string) string {
			dir, _ := l.EnsureServiceDir(svc)
			p := filepath.Join(dir, UpdatesName)
			symlinkAsUser(t, target, p)
			return p
		}, func(l Layout) error {
			_, err := Create(filepath.Join(l.ServiceDir(svc), UpdatesName), NewRecord(RoleUser), agentUID(), agentUID())
			return err
		}, ErrHeld},
		{"lock path symlink, agent acquire", func(t *testing.T, l Layout, target string) string {
			dir, _ := l.EnsureServiceDir(svc)
			p := filepath.Join(dir, ResinName)
			symlinkAsUser(t, target, p)
			return p
		}, func(l Layout) error {
			_, err := l.Acquire([]Service{svc}, []string{ResinName, UpdatesName}, NewRecord(RoleAgent), agentUID(), agentUID())
			return err
		}, ErrHeld},
		{"global parent is a symlink", func(t *testing.T, l Layout, target string) string {
			p := filepath.Dir(l.Global[0])
			os.Symlink(filepath.Dir(target), p)
			return p
		}, func(l Layout) error {
			_, err := Create(l.Global[0], NewRecord(RoleUser), agentUID(), agentUID())
			return err
		}, ErrSymlink},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := testLayout(t)
			outside := t.TempDir()
			target := filepath.Join(outside, "updates.lock")
			os.WriteFile(target, []byte("precious"), 0o600)
			var before unix.Stat_t
			unix.Lstat(target, &before)
			planted := tc.plant(t, l, target)
			err := tc.act(l)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got error %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != ErrHeld && !strings.Contains(err.Error(), planted) {
				t.Errorf("error %q does not name %s", err, planted)
			}
			var after unix.Stat_t
			unix.Lstat(target, &after)
			b, _ := os.ReadFile(target)
			if string(b) != "precious" || after.Mode != before.Mode || after.Uid != before.Uid || after.Gid != before.Gid || after.Nlink != 1 {
				t.Errorf("target changed: content %q mode %o uid %d gid %d links %d", b, after.Mode, after.Uid, after.Gid, after.Nlink)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 1 {
				t.Errorf("outside dir holds %d entries, want 1", len(ents))
			}
		})
	}
}

// symlinkAsUser plants a symlink as uid 1000 when root (in a world-writable
// lock directory, where fs.protected_symlinks applies), else as the caller.
func symlinkAsUser(t *testing.T, target, path string) {
	t.Helper()
	if os.Geteuid() == 0 {
		runAs(t, 1000, "ln", "-s", target, path)
		return
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureServiceDirMode(t *testing.T) {
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	l := testLayout(t)
	dir, err := l.EnsureServiceDir(Service{"app", "svc"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want os.FileMode
	}{
		// Only the agent writes the lock root and services/.
		{l.Dir, os.ModeDir | 0o755},
		{filepath.Join(l.Dir, "services"), os.ModeDir | 0o755},
		// Anyone locks in app and service directories, nobody renames another's entry.
		{filepath.Dir(dir), os.ModeDir | os.ModeSticky | 0o777},
		{dir, os.ModeDir | os.ModeSticky | 0o777},
	} {
		fi, err := os.Lstat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode() & (os.ModePerm | os.ModeSticky | os.ModeDir); got != tc.want {
			t.Errorf("%s: mode %v, want %v", tc.path, got, tc.want)
		}
		if uid := int(fi.Sys().(*syscall.Stat_t).Uid); uid != os.Geteuid() {
			t.Errorf("%s: owner %d, want %d (the euid)", tc.path, uid, os.Geteuid())
		}
	}
	if _, err := l.EnsureServiceDir(Service{"app", "svc"}); err != nil {
		t.Errorf("second EnsureServiceDir: %v", err)
	}
}

// TestAcquireRollback: all or nothing, and a rollback removes exactly the
// attempt's own entries (checked by inode), never the user's lock.
func TestAcquireRollback(t *testing.T) {
	svcs := []Service{{"app", "c"}, {"app", "a"}, {"app", "b"}}
	names := []string{UpdatesName, ResinName}
	for _, tc := range []struct {
		name    string
		block   func(t *testing.T, l Layout) string // plants the blocking entry
		role    Role
		wantErr bool
	}{
		{"free", func(t *testing.T, l Layout) string { return "" }, RoleAgent, false},
		{"user lock in the middle service", func(t *testing.T, l Layout) string {
			dir, _ := l.EnsureServiceDir(Service{"app", "b"})
			p := filepath.Join(dir, UpdatesName)
			if os.Geteuid() == 0 {
				runAs(t, 1000, "touch", p)
			} else {
				os.WriteFile(p, nil, 0o644)
			}
			return p
		}, RoleAgent, true},
		{"user's dangling symlink in the last service", func(t *testing.T, l Layout) string {
			dir, _ := l.EnsureServiceDir(Service{"app", "c"})
			p := filepath.Join(dir, ResinName)
			os.Symlink("/nowhere", p)
			return p
		}, RoleAgent, true},
		{"a hold blocks an action", func(t *testing.T, l Layout) string {
			dir, _ := l.EnsureServiceDir(Service{"app", "c"})
			p := filepath.Join(dir, HoldName)
			writeRecord(t, p, NewRecord(RoleHold))
			return p
		}, RoleAgent, true},
		{"device-wide lock", func(t *testing.T, l Layout) string {
			p := l.Global[1]
			os.MkdirAll(filepath.Dir(p), 0o755)
			os.WriteFile(p, nil, 0o644)
			return p
		}, RoleAgent, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := testLayout(t)
			blocker := tc.block(t, l)
			var ino uint64
			if blocker != "" {
				ino = inode(t, blocker)
			}
			uid := -1
			if os.Geteuid() == 0 {
				uid = 65534
			}
			locks, err := l.Acquire(svcs, names, NewRecord(tc.role), uid, uid)
			if tc.wantErr {
				var he *HeldError
				if !errors.As(err, &he) || he.Entry.Path != blocker {
					t.Fatalf("got %v, want HeldError naming %s", err, blocker)
				}
				if locks != nil {
					t.Errorf("got %d locks on failure, want none", len(locks))
				}
				if !exists(blocker) || inode(t, blocker) != ino {
					t.Errorf("the blocking entry %s was removed or replaced", blocker)
				}
				es, _ := l.Scan()
				for _, e := range es {
					if e.Path != blocker {
						t.Errorf("entry %s left after rollback", e.Path)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, lk := range locks {
				got = append(got, strings.TrimPrefix(lk.Path, l.Dir+"/services/"))
			}
			want := []string{"app/a/resin-updates.lock", "app/a/updates.lock", "app/b/resin-updates.lock", "app/b/updates.lock", "app/c/resin-updates.lock", "app/c/updates.lock"}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("order: got %v, want %v", got, want)
			}
			if uid >= 0 {
				left, _ := l.Leftovers(uid)
				if len(left) != 6 {
					t.Errorf("Leftovers: got %d, want 6", len(left))
				}
			}
			if err := ReleaseAll(locks); err != nil {
				t.Fatal(err)
			}
			if es, _ := l.Scan(); len(es) != 0 {
				t.Errorf("after ReleaseAll: %d entries left", len(es))
			}
		})
	}
}

// TestHoldCoexists: a hold is taken while the application holds updates.lock.
func TestHoldCoexists(t *testing.T) {
	l := testLayout(t)
	s := Service{"app", "svc"}
	dir, _ := l.EnsureServiceDir(s)
	os.WriteFile(filepath.Join(dir, UpdatesName), nil, 0o644)
	locks, err := l.Acquire([]Service{s}, []string{HoldName}, NewRecord(RoleHold), -1, -1)
	if err != nil || len(locks) != 1 {
		t.Fatalf("Acquire hold: %v, %d locks; want 1 lock", err, len(locks))
	}
	es, _ := l.Scan()
	if len(es) != 2 || es[0].State != StateHold {
		t.Errorf("Scan: got %+v, want hold and held", es)
	}
}

func TestLeftoversAndRemoveEntry(t *testing.T) {
	needRoot(t)
	l := testLayout(t)
	a, b := Service{"app", "a"}, Service{"app", "b"}
	mine, err := l.Acquire([]Service{a}, []string{UpdatesName, ResinName}, NewRecord(RoleAgent), 65534, 65534)
	if err != nil {
		t.Fatal(err)
	}
	bdir, _ := l.EnsureServiceDir(b)
	// Not the agent's: a user's latch lock owned by 65534, an agent record owned by 1000, a directory.
	userRec := filepath.Join(bdir, UpdatesName)
	writeRecord(t, userRec, NewRecord(RoleUser))
	os.Chown(userRec, 65534, 65534)
	forged := filepath.Join(bdir, ResinName)
	writeRecord(t, forged, NewRecord(RoleAgent))
	os.Chown(forged, 1000, 1000)
	left, err := l.Leftovers(65534)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 2 || left[0].Path != mine[0].Path && left[0].Path != mine[1].Path {
		t.Fatalf("Leftovers: got %+v, want the agent's two entries in %s", left, l.ServiceDir(a))
	}
	adopted, err := Adopt(left[0].Path)
	if err != nil || adopted.Ino != left[0].Ino {
		t.Fatalf("Adopt: %v %+v", err, adopted)
	}
	if err := adopted.Remove(); err != nil {
		t.Fatal(err)
	}

	// RemoveEntry of a directory tree with a symlink inside: the link's target survives.
	os.Remove(userRec)
	os.Mkdir(userRec, 0o755)
	outside := filepath.Join(t.TempDir(), "keep")
	os.WriteFile(outside, []byte("x"), 0o644)
	os.Symlink(filepath.Dir(outside), filepath.Join(userRec, "link"))
	e, err := l.Inspect(userRec)
	if err != nil || e.Kind != KindDir || e.App != "app" || e.Service != "b" {
		t.Fatalf("Inspect: %+v %v", e, err)
	}
	if err := l.RemoveEntry(e); err != nil {
		t.Fatal(err)
	}
	if exists(userRec) || !exists(outside) {
		t.Errorf("RemoveEntry: dir exists=%v (want false), outside file exists=%v (want true)", exists(userRec), exists(outside))
	}
	if ents, _ := os.ReadDir(bdir); len(ents) != 1 {
		t.Errorf("service dir holds %d entries, want 1 (no leftover of the removal)", len(ents))
	}

	// A replaced entry is not removed; a path outside is refused.
	e, _ = l.Inspect(forged)
	os.Remove(forged)
	os.WriteFile(forged, nil, 0o644)
	if err := l.RemoveEntry(e); !errors.Is(err, ErrNotOurs) || !exists(forged) {
		t.Errorf("RemoveEntry of replaced entry: %v, exists=%v; want ErrNotOurs and kept", err, exists(forged))
	}
	e.Path = outside
	if err := l.RemoveEntry(e); !errors.Is(err, ErrOutside) || !exists(outside) {
		t.Errorf("RemoveEntry outside: %v; want ErrOutside", err)
	}
	e.Path = filepath.Join(bdir, "other.lock")
	if err := l.RemoveEntry(e); !errors.Is(err, ErrOutside) {
		t.Errorf("RemoveEntry of a non-lock name: %v; want ErrOutside", err)
	}
}

func waitEvent(t *testing.T, w *Watcher, what string) {
	t.Helper()
	select {
	case <-w.C:
	case <-time.After(10 * time.Second):
		t.Fatalf("no event after %s", what)
	}
}

func drain(w *Watcher) {
	select {
	case <-w.C:
	default:
	}
}

func TestWatcher(t *testing.T) {
	l := testLayout(t)
	w, err := l.Watch()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	steps := []struct {
		what string
		do   func() error
	}{
		{"creating the service dirs from nothing", func() error { _, err := l.EnsureServiceDir(Service{"a", "b"}); return err }},
		{"taking a lock in a new service dir", func() error {
			return os.WriteFile(filepath.Join(l.ServiceDir(Service{"a", "b"}), UpdatesName), nil, 0o644)
		}},
		{"removing it", func() error { return os.Remove(filepath.Join(l.ServiceDir(Service{"a", "b"}), UpdatesName)) }},
		{"a second app and a dangling symlink lock", func() error {
			d, err := l.EnsureServiceDir(Service{"x", "y"})
			if err != nil {
				return err
			}
			drain(w)
			return os.Symlink("/nowhere", filepath.Join(d, ResinName))
		}},
		{"a directory lock", func() error { return os.Mkdir(filepath.Join(l.ServiceDir(Service{"x", "y"}), HoldName), 0o755) }},
		{"the global lock dir appearing", func() error { return os.MkdirAll(filepath.Dir(l.Global[0]), 0o755) }},
		{"a global lock", func() error { drain(w); return os.WriteFile(l.Global[0], nil, 0o644) }},
		{"renaming a global lock away", func() error { return os.Rename(l.Global[0], l.Global[0]+".old") }},
	}
	for _, s := range steps {
		drain(w)
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		waitEvent(t, w, s.what)
	}
	// Files with other names, then a lock: the lock's event arrives.
	// (TestWatcherIgnoresOtherNames checks that the others wake nothing.)
	drain(w)
	os.WriteFile(filepath.Join(l.ServiceDir(Service{"a", "b"}), "notes.txt"), nil, 0o644)
	os.WriteFile(filepath.Join(filepath.Dir(l.Global[0]), "other"), nil, 0o644)
	// Then a relevant one: the first event seen must be for it.
	p := filepath.Join(l.ServiceDir(Service{"a", "b"}), ResinName)
	os.WriteFile(p, nil, 0o644)
	waitEvent(t, w, "a lock after irrelevant files")
	if !exists(p) {
		t.Fatal("unexpected")
	}
	if err := w.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// TestWatcherOverflow: after an inotify queue overflow the watcher rescans
// and watches directories whose creation events were lost.
func TestWatcherOverflow(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events")
	if err != nil {
		t.Skip("no /proc/sys/fs/inotify/max_queued_events: overflow not tested")
	}
	var max int
	fmt.Sscan(string(b), &max)
	if max > 200000 {
		t.Skipf("max_queued_events is %d: overflow too costly to provoke", max)
	}
	l := testLayout(t)
	dir, _ := l.EnsureServiceDir(Service{"a", "b"})
	w, err := l.newWatcher() // not reading yet: the kernel queue fills
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, UpdatesName)
	for i := 0; i < max/2+10; i++ {
		os.WriteFile(p, nil, 0o644)
		os.Remove(p)
	}
	// Its creation event is dropped: the queue is full.
	late, err := l.EnsureServiceDir(Service{"late", "svc"})
	if err != nil {
		t.Fatal(err)
	}
	// Read the whole queue here, so that its end is known.
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	overflowed := false
	for {
		n, err := unix.Read(w.fd, buf)
		if err != nil {
			if !errors.Is(err, unix.EAGAIN) {
				t.Fatal(err)
			}
			break
		}
		for off := 0; off < n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			overflowed = overflowed || ev.Mask&unix.IN_Q_OVERFLOW != 0
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
		w.handle(buf[:n])
	}
	if !overflowed {
		t.Fatalf("the queue of %d events did not overflow", max)
	}
	go w.loop()
	defer w.Close()
	waitEvent(t, w, "an overflow")
	// The rescan after the overflow watches the late service directory.
	os.WriteFile(filepath.Join(late, UpdatesName), nil, 0o644)
	waitEvent(t, w, "a lock in a directory created during the overflow")
}

// AcquireExcept passes the entries its caller ignores (a forced action and
// the agent's own hold), and still blocks on the others.
func TestAcquireExcept(t *testing.T) {
	l := Layout{Dir: t.TempDir(), Global: []string{filepath.Join(t.TempDir(), "updates.lock")}, LockUID: os.Geteuid()}
	s := Service{App: "a", Service: "s"}
	dir, err := l.EnsureServiceDir(s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Create(filepath.Join(dir, HoldName), NewRecord(RoleHold), -1, -1); err != nil {
		t.Fatal(err)
	}
	names := []string{UpdatesName, ResinName}
	if _, err := l.Acquire([]Service{s}, names, NewRecord(RoleAgent), -1, -1); !errors.Is(err, ErrHeld) {
		t.Fatalf("Acquire over a hold: %v, want ErrHeld", err)
	}
	holds := func(e Entry) bool { return e.State == StateHold }
	locks, err := l.AcquireExcept([]Service{s}, names, NewRecord(RoleAgent), -1, -1, holds)
	if err != nil {
		t.Fatalf("AcquireExcept ignoring holds: %v", err)
	}
	if len(locks) != 2 {
		t.Fatalf("got %d locks, want 2", len(locks))
	}
	ReleaseAll(locks)
	if err := os.WriteFile(l.Global[0], nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := l.AcquireExcept([]Service{s}, names, NewRecord(RoleAgent), -1, -1, holds); !errors.Is(err, ErrHeld) {
		t.Fatalf("AcquireExcept with a device-wide lock it does not ignore: %v, want ErrHeld", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, UpdatesName)); !os.IsNotExist(err) {
		t.Errorf("the refused attempt left %s behind (err %v)", UpdatesName, err)
	}
}
