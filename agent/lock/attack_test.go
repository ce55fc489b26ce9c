package lock

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tests that attack the lock core as a local user would: uid 1000 (via
// setpriv) plants directories, symlinks and forged records, and root's
// latch must neither act through them nor believe them.

// TestMain lets a copy of the test binary run one helper action as another
// user (see asUser).
func TestMain(m *testing.M) {
	if action := os.Getenv("LATCH_LOCK_HELPER"); action != "" {
		os.Exit(helper(action, os.Args[len(os.Args)-2:]))
	}
	code := m.Run()
	if helperBin != "" {
		os.RemoveAll(filepath.Dir(helperBin))
	}
	os.Exit(code)
}

// helper runs one action and prints its error (or "ok").
func helper(action string, args []string) int {
	var err error
	switch action {
	case "ensure": // lock dir, APP/SERVICE
		var s Service
		if s, err = ParseService(args[1]); err == nil {
			_, err = Layout{Dir: args[0]}.EnsureServiceDir(s)
		}
	case "create": // path, role
		_, err = Create(args[0], NewRecord(Role(args[1])), -1, -1)
	case "flock": // path: try flock(LOCK_EX|LOCK_NB) on it
		err = tryFlock(args[0])
	case "acquire": // lock dir, APP/SERVICE: take the agent's locks, then wait to be killed
		var s Service
		if s, err = ParseService(args[1]); err == nil {
			_, err = Layout{Dir: args[0], LockUID: os.Geteuid()}.Acquire([]Service{s}, []string{UpdatesName, ResinName}, NewRecord(RoleAgent), -1, -1)
		}
		if err == nil {
			fmt.Println("ready")
			io.Copy(io.Discard, os.Stdin) // until the test kills this process
		}
	default:
		err = fmt.Errorf("unknown helper action %q", action)
	}
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("ok")
	return 0
}

var helperBin string

// asUser runs the helper action as uid (with the same gid) and returns its
// output and whether it succeeded.
func asUser(t *testing.T, uid int, action string, args ...string) (string, bool) {
	t.Helper()
	needRoot(t)
	needTool(t, "setpriv")
	if helperBin == "" {
		// The go test binary lives in a directory other users cannot reach.
		dir, err := os.MkdirTemp("", "latch-lock-helper-")
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, 0o755)
		b, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		helperBin = filepath.Join(dir, "lock.test")
		if err := os.WriteFile(helperBin, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a := append([]string{fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups", helperBin}, args...)
	if len(args) < 2 {
		a = append(a, "")
	}
	cmd := exec.Command("setpriv", a...)
	cmd.Env = append(os.Environ(), "LATCH_LOCK_HELPER="+action)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run helper as uid %d: %v", uid, err)
	}
	return strings.TrimSpace(string(out)), err == nil
}

// shAs runs a shell script as uid and fails the test when it fails.
func shAs(t *testing.T, uid int, script string) {
	t.Helper()
	runAs(t, uid, "sh", "-ec", script)
}

// attackRoot returns a directory like /tmp: root's, mode 1777, reachable
// by every user.
func attackRoot(t *testing.T) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "tmp")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	unix.Chmod(d, 0o1777) // os.Chmod takes no sticky bit in this form
	os.Chmod(filepath.Dir(d), 0o755)
	os.Chmod(filepath.Dir(filepath.Dir(d)), 0o755)
	return d
}

// withProtectedSymlinks runs f with fs.protected_symlinks at 0 and at 1,
// restoring the value afterwards: latch must never follow a user's
// symlink, whether or not the kernel would stop it.
func withProtectedSymlinks(t *testing.T, f func(t *testing.T)) {
	const knob = "/proc/sys/fs/protected_symlinks"
	old, err := os.ReadFile(knob)
	if err != nil || os.Geteuid() != 0 {
		t.Run("as-is", f)
		return
	}
	t.Cleanup(func() { os.WriteFile(knob, old, 0o644) })
	for _, v := range []string{"0", "1"} {
		if err := os.WriteFile(knob, []byte(v), 0o644); err != nil {
			t.Fatalf("set %s to %s: %v", knob, v, err)
		}
		t.Run("protected_symlinks="+v, f)
	}
}

// TestLockRootOwnership: a lock root or services/ that another user made,
// or that others can write, is refused by every operation with an error
// naming it, and nothing is created in it.
func TestLockRootOwnership(t *testing.T) {
	needRoot(t)
	svc := Service{"app", "svc"}
	for _, tc := range []struct {
		name    string
		plant   func(t *testing.T, tmp string) string // returns the refused directory
		wantErr string
	}{
		{"lock root made by a user after boot", func(t *testing.T, tmp string) string {
			shAs(t, 1000, "mkdir "+tmp+"/latch "+tmp+"/latch/services")
			return tmp + "/latch"
		}, "owned by uid 1000"},
		{"lock root owned by root but world-writable", func(t *testing.T, tmp string) string {
			os.Mkdir(tmp+"/latch", 0o755)
			unix.Chmod(tmp+"/latch", 0o1777)
			return tmp + "/latch"
		}, "mode 1777"},
		{"services made by a user", func(t *testing.T, tmp string) string {
			os.Mkdir(tmp+"/latch", 0o755)
			os.Chmod(tmp+"/latch", 0o777)
			shAs(t, 1000, "mkdir "+tmp+"/latch/services")
			os.Chmod(tmp+"/latch", 0o755)
			return tmp + "/latch/services"
		}, "owned by uid 1000"},
		{"services group-writable", func(t *testing.T, tmp string) string {
			os.MkdirAll(tmp+"/latch/services", 0o755)
			os.Chmod(tmp+"/latch/services", 0o775)
			return tmp + "/latch/services"
		}, "mode 0775"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := attackRoot(t)
			l := Layout{Dir: tmp + "/latch", LockUID: 65534}
			bad := tc.plant(t, tmp)
			check := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("%s: got %v, want ErrUntrusted naming %s and %q", what, err, bad, tc.wantErr)
				}
			}
			_, err := l.EnsureServiceDir(svc)
			check("EnsureServiceDir", err)
			_, err = l.Acquire([]Service{svc}, []string{UpdatesName}, NewRecord(RoleAgent), 65534, 65534)
			check("Acquire", err)
			_, err = l.Scan()
			check("Scan", err)
			_, err = l.Blocking([]Service{svc})
			check("Blocking", err)
			if _, err := os.Lstat(filepath.Join(l.Dir, "services", "app")); err == nil {
				t.Errorf("an app directory was created in the refused tree")
			}
		})
	}
	// Made by root from nothing: root's, 0755; a second call accepts it.
	tmp := attackRoot(t)
	l := Layout{Dir: tmp + "/latch"}
	if _, err := l.EnsureServiceDir(svc); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{l.Dir, l.Dir + "/services"} {
		var st unix.Stat_t
		unix.Lstat(p, &st)
		if st.Uid != 0 || st.Mode&0o7777 != 0o755 {
			t.Errorf("%s: uid %d mode %04o, want root's 0755", p, st.Uid, st.Mode&0o7777)
		}
	}
}

// TestUserCannotMakeLockDirs: as uid 1000, EnsureServiceDir cannot make an
// app directory (services/ is root's) and says who does; in an app
// directory root made, a user still locks in the service directories.
func TestUserCannotMakeLockDirs(t *testing.T) {
	tmp := attackRoot(t)
	l := Layout{Dir: tmp + "/latch"}
	if _, err := l.EnsureServiceDir(Service{"app", "svc"}); err != nil {
		t.Fatal(err)
	}
	out, ok := asUser(t, 1000, "ensure", l.Dir, "other/svc")
	if ok || !strings.Contains(out, filepath.Join(l.Dir, "services", "other")) || !strings.Contains(out, "only uid 0") || !strings.Contains(out, "the agent creates") {
		t.Errorf("uid 1000 making an app dir: got %q (ok=%v), want a refusal naming the dir and saying the agent creates it", out, ok)
	}
	if _, err := os.Lstat(filepath.Join(l.Dir, "services", "other")); err == nil {
		t.Errorf("uid 1000 created an app directory")
	}
	// The lock root a user would make is refused as seen above; a user's
	// latch lock in an existing service directory works.
	p := filepath.Join(l.ServiceDir(Service{"app", "svc"}), UpdatesName)
	if out, ok := asUser(t, 1000, "create", p, string(RoleUser)); !ok {
		t.Fatalf("uid 1000 locking in an existing service dir: %s", out)
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil || st.Uid != 1000 {
		t.Errorf("lock: %v uid %d, want uid 1000's", err, st.Uid)
	}
}

// plantSecret makes a root-only directory holding an updates.lock file and
// an updates.lock tree, as a user cannot even list.
func plantSecret(t *testing.T) (dir string, check func()) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "secret")
	os.MkdirAll(filepath.Join(dir, "sub", UpdatesName, "deep"), 0o700)
	os.WriteFile(filepath.Join(dir, UpdatesName), []byte("precious"), 0o600)
	os.WriteFile(filepath.Join(dir, "sub", UpdatesName, "deep", "data"), []byte("precious"), 0o600)
	os.Chmod(dir, 0o700)
	return dir, func() {
		t.Helper()
		for _, p := range []string{filepath.Join(dir, UpdatesName), filepath.Join(dir, "sub", UpdatesName, "deep", "data")} {
			if b, err := os.ReadFile(p); err != nil || string(b) != "precious" {
				t.Errorf("%s: %q %v, want it untouched", p, b, err)
			}
		}
	}
}

// TestGlobalParentSymlink: a user makes /tmp/balena a symlink to a
// directory they cannot list. latch counts the device-wide lock as held (at
// the symlink), force and unlock remove nothing through it, and the agent's
// EnsureGlobalDirs refuses it.
func TestGlobalParentSymlink(t *testing.T) {
	needRoot(t)
	withProtectedSymlinks(t, func(t *testing.T) {
		for _, sub := range []string{"sub", "."} {
			tmp := attackRoot(t)
			secret, untouched := plantSecret(t)
			target := filepath.Join(secret, sub)
			link := tmp + "/balena"
			shAs(t, 1000, fmt.Sprintf("ln -s %q %q", target, link))
			g := link + "/updates.lock"
			l := Layout{Dir: tmp + "/latch", Global: []string{g}, LockUID: 65534}
			es, err := l.Scan()
			if err != nil || len(es) != 1 || es[0].Path != link || es[0].Kind != KindSymlink || es[0].State != StateHeld || es[0].UID != 1000 {
				t.Fatalf("Scan: %v %+v; want one held symlink at %s owned by 1000", err, es, link)
			}
			bl, err := l.Blocking([]Service{{"app", "svc"}})
			if err != nil || len(bl) != 1 || bl[0].Path != link {
				t.Errorf("Blocking: %v %+v; want the symlink", err, bl)
			}
			// What force and override do: remove what blocks, then take.
			if err := l.RemoveEntry(es[0]); !errors.Is(err, ErrSymlink) || !strings.Contains(err.Error(), "by hand") {
				t.Errorf("RemoveEntry of the held symlink: %v, want ErrSymlink saying to remove it by hand", err)
			}
			if !exists(link) {
				t.Errorf("RemoveEntry removed the symlink %s", link)
			}
			var st unix.Stat_t
			unix.Stat(filepath.Join(target, UpdatesName), &st)
			forged := Entry{Path: g, Dev: uint64(st.Dev), Ino: uint64(st.Ino)}
			if err := l.RemoveEntry(forged); !errors.Is(err, ErrSymlink) || !strings.Contains(err.Error(), link) {
				t.Errorf("RemoveEntry through the symlink: %v, want ErrSymlink naming %s", err, link)
			}
			if _, err := l.Acquire([]Service{{"app", "svc"}}, []string{UpdatesName}, NewRecord(RoleAgent), 65534, 65534); !errors.Is(err, ErrHeld) {
				t.Errorf("Acquire: %v, want held by the symlink", err)
			}
			if _, err := Create(g, NewRecord(RoleUser), -1, -1); !errors.Is(err, ErrSymlink) {
				t.Errorf("Create through the symlink: %v, want ErrSymlink", err)
			}
			if err := l.EnsureGlobalDirs(); !errors.Is(err, ErrSymlink) || !strings.Contains(err.Error(), link) {
				t.Errorf("EnsureGlobalDirs: %v, want ErrSymlink naming %s", err, link)
			}
			if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Errorf("the symlink was replaced: %v", err)
			}
			untouched()
		}
	})
}

// TestGlobalParentForeign: /tmp/balena made by a user (a real directory
// they can swap): its lock counts as held at the directory, and nothing
// in it is removed by root.
func TestGlobalParentForeign(t *testing.T) {
	needRoot(t)
	tmp := attackRoot(t)
	dir := tmp + "/balena"
	shAs(t, 1000, fmt.Sprintf("mkdir %q && echo x > %q/updates.lock", dir, dir))
	l := Layout{Global: []string{dir + "/updates.lock"}, LockUID: 65534}
	es, err := l.Scan()
	if err != nil || len(es) != 1 || es[0].Path != dir || es[0].State != StateHeld || es[0].UID != 1000 || !strings.Contains(es[0].Reason, "uid 1000") {
		t.Fatalf("Scan: %v %+v; want the directory, held, owned by 1000, with a reason", err, es)
	}
	if err := l.RemoveEntry(es[0]); !errors.Is(err, ErrUntrusted) || !exists(dir+"/updates.lock") {
		t.Errorf("RemoveEntry of the held directory: %v, want ErrUntrusted and nothing removed", err)
	}
	e, err := l.Inspect(dir + "/updates.lock")
	if err != nil {
		t.Fatal(err)
	}
	e.Path, e.Reason = dir+"/updates.lock", ""
	if err := l.RemoveEntry(e); !errors.Is(err, ErrUntrusted) || !exists(dir+"/updates.lock") {
		t.Errorf("RemoveEntry in a user's directory: %v, want ErrUntrusted and kept", err)
	}
	if err := l.EnsureGlobalDirs(); !errors.Is(err, ErrUntrusted) {
		t.Errorf("EnsureGlobalDirs over a user's directory: %v, want ErrUntrusted", err)
	}
	// Missing: made root's, mode 1777; a second call accepts it.
	l.Global = []string{tmp + "/resin/resin-updates.lock"}
	if err := l.EnsureGlobalDirs(); err != nil {
		t.Fatal(err)
	}
	if err := l.EnsureGlobalDirs(); err != nil {
		t.Errorf("second EnsureGlobalDirs: %v", err)
	}
	var st unix.Stat_t
	unix.Lstat(tmp+"/resin", &st)
	if st.Uid != 0 || st.Mode&0o7777 != 0o1777 {
		t.Errorf("%s/resin: uid %d mode %04o, want root's 1777", tmp, st.Uid, st.Mode&0o7777)
	}
}

// TestForgedRecord: any user can write latch's record. An agent or hold
// record counts only on the lock uid's entries, and a record's pid is named
// as the holder only when it is a process of the entry's owner.
func TestForgedRecord(t *testing.T) {
	needRoot(t)
	tmp := attackRoot(t)
	l := Layout{Dir: tmp + "/latch", LockUID: 65534}
	s := Service{"app", "svc"}
	dir, err := l.EnsureServiceDir(s)
	if err != nil {
		t.Fatal(err)
	}
	// A process of uid 1000 to name.
	sleeper := exec.Command("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	for procUID(sleeper.Process.Pid) != 1000 { // setpriv execs sleep as 1000
		time.Sleep(time.Millisecond)
	}
	rec := func(role Role, pid int) string {
		r := NewRecord(role)
		r.PID, r.Command = pid, "latch agent"
		return strings.TrimSpace(string(r.marshal()))
	}
	for _, tc := range []struct {
		name      string
		name2     string
		content   string
		owner     int
		wantState State
		wantPID   int // 0: no holder
		wantRec   bool
	}{
		{"agent role from a user", UpdatesName, rec(RoleAgent, 1), 1000, StateHeld, 0, false},
		{"hold role from a user", HoldName, rec(RoleHold, 1), 1000, StateHeld, 0, false},
		{"user role naming pid 1", ResinName, rec(RoleUser, 1), 1000, StateHeld, 0, true},
		{"user role naming the user's own process", UpdatesName, rec(RoleUser, sleeper.Process.Pid), 1000, StateHeld, sleeper.Process.Pid, true},
		{"user role naming this test (root)", UpdatesName, rec(RoleUser, os.Getpid()), 1000, StateHeld, 0, true},
		{"agent role on the lock uid's entry", UpdatesName, rec(RoleAgent, os.Getpid()), 65534, StateAgent, os.Getpid(), true},
		{"hold role on the lock uid's entry", HoldName, rec(RoleHold, os.Getpid()), 65534, StateHold, os.Getpid(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name2)
			defer os.Remove(p)
			if tc.owner == 1000 {
				shAs(t, 1000, fmt.Sprintf("printf '%%s\\n' %q > %q", tc.content, p))
			} else {
				os.WriteFile(p, []byte(tc.content+"\n"), 0o644)
				os.Chown(p, tc.owner, tc.owner)
			}
			es, err := l.Scan()
			if err != nil || len(es) != 1 {
				t.Fatalf("Scan: %v %+v", err, es)
			}
			e := es[0]
			gotPID := 0
			if e.Holder != nil {
				gotPID = e.Holder.PID
			}
			if e.State != tc.wantState || gotPID != tc.wantPID || (e.Record != nil) != tc.wantRec {
				t.Errorf("got state %s holder %+v record %v; want state %s holder pid %d record %v", e.State, e.Holder, e.Record != nil, tc.wantState, tc.wantPID, tc.wantRec)
			}
			if e.Holder != nil && strings.Contains(e.Holder.Command, "latch agent") {
				t.Errorf("holder command %q comes from the record, not from the process", e.Holder.Command)
			}
			// What force does: the agent's own entries are skipped, the rest removed.
			b, _ := l.Blocking([]Service{s})
			if len(b) != 1 || b[0].State != tc.wantState {
				t.Errorf("Blocking: %+v, want state %s", b, tc.wantState)
			}
		})
	}
}

func TestRecordAlive(t *testing.T) {
	r := NewRecord(RoleUser)
	if !r.Alive() {
		t.Errorf("this process's record: Alive() = false, want true")
	}
	dead := r
	dead.PID = deadPID(t)
	other := r
	other.BootID = "00000000-0000-0000-0000-000000000000"
	none := r
	none.BootID = ""
	for name, rr := range map[string]Record{"dead pid": dead, "other boot": other, "no boot id": none} {
		if rr.Alive() {
			t.Errorf("%s: Alive() = true, want false", name)
		}
	}
}

// reuseInode removes path and creates regular files there (with content)
// until one gets the inode number ino back; it returns false after tries.
func reuseInode(t *testing.T, path string, ino uint64, content []byte, tries int) bool {
	t.Helper()
	var aside []string
	defer func() {
		for _, p := range aside {
			os.Remove(p)
		}
	}()
	os.Remove(path)
	for i := 0; i < tries; i++ {
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
		if inode(t, path) == ino {
			return true
		}
		p := fmt.Sprintf("%s.aside%d", path, i)
		os.Rename(path, p)
		aside = append(aside, p)
	}
	return false
}

// fsDirs returns a directory on ext4 (this machine's /tmp) and one on a
// private tmpfs mounted for the test.
func fsDirs(t *testing.T) map[string]string {
	dirs := map[string]string{}
	var sfs unix.Statfs_t
	d := t.TempDir()
	if unix.Statfs(d, &sfs) == nil && sfs.Type == unix.EXT4_SUPER_MAGIC {
		dirs["ext4"] = d
	}
	if os.Geteuid() == 0 {
		m := t.TempDir()
		if err := unix.Mount("tmpfs", m, "tmpfs", 0, "size=64m"); err == nil {
			t.Cleanup(func() { unix.Unmount(m, unix.MNT_DETACH) })
			dirs["tmpfs"] = m
		}
	}
	return dirs
}

// TestInodeReuse: an entry removed and replaced by a new one with the same
// inode number (same type, owner and size) is not removed by Remove or by
// RemoveEntry holding the old identity.
func TestInodeReuse(t *testing.T) {
	for fs, base := range fsDirs(t) {
		t.Run(fs, func(t *testing.T) {
			l := Layout{Dir: filepath.Join(base, "latch"), LockUID: -1}
			s := Service{"app", "svc"}
			dir, err := l.EnsureServiceDir(s)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, UpdatesName)
			rec := NewRecord(RoleUser).marshal()

			// An entry made by Create keeps its inode while its flock's
			// descriptor is open, so a replacement never gets its number;
			// an adopted entry (a dead agent's) has no descriptor.
			if err := os.WriteFile(p, rec, 0o644); err != nil {
				t.Fatal(err)
			}
			lk, err := Adopt(p)
			if err != nil {
				t.Fatal(err)
			}
			if !reuseInode(t, p, lk.Ino, rec, 2000) {
				t.Skipf("%s did not hand out inode %d again in 2000 files (tmpfs numbers only grow): reuse cannot happen here, not tested", fs, lk.Ino)
			}
			if err := lk.Remove(); !errors.Is(err, ErrNotOurs) || !exists(p) {
				t.Errorf("Lock.Remove of a replaced entry with the same inode: %v, exists=%v; want ErrNotOurs and kept", err, exists(p))
			}

			e, err := l.Inspect(p)
			if err != nil {
				t.Fatal(err)
			}
			if !reuseInode(t, p, e.Ino, rec, 2000) {
				t.Fatalf("inode %d not reused the second time", e.Ino)
			}
			if err := l.RemoveEntry(e); !errors.Is(err, ErrNotOurs) || !exists(p) {
				t.Errorf("RemoveEntry of a replaced entry with the same inode, type, owner and size: %v, exists=%v; want ErrNotOurs and kept", err, exists(p))
			}
			// The entry as it is now is removed.
			e, _ = l.Inspect(p)
			if err := l.RemoveEntry(e); err != nil || exists(p) {
				t.Errorf("RemoveEntry of the current entry: %v, exists=%v", err, exists(p))
			}
		})
	}
}

// readEvents reads what the kernel queued for the watcher (it has no
// reading goroutine) and hands it to handle; the kernel queues an event
// before the call that caused it returns.
func readEvents(t *testing.T, w *Watcher) {
	t.Helper()
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := unix.Read(w.fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		w.handle(buf[:n])
	}
}

func woken(w *Watcher) bool {
	select {
	case <-w.C:
		return true
	default:
		return false
	}
}

// TestWatcherIgnoresOtherNames: files with other names in the watched
// directories (notes, editors' swap files, latch's own temporary names) do
// not wake the watcher nor make it recompute its watches; a lock does.
func TestWatcherIgnoresOtherNames(t *testing.T) {
	for _, narrow := range []bool{false, true} {
		t.Run(fmt.Sprintf("SetServices=%v", narrow), func(t *testing.T) {
			l := testLayout(t)
			s := Service{"a", "b"}
			dir, err := l.EnsureServiceDir(s)
			if err != nil {
				t.Fatal(err)
			}
			os.MkdirAll(filepath.Dir(l.Global[0]), 0o755)
			w, err := l.newWatcher()
			if err != nil {
				t.Fatal(err)
			}
			defer w.f.Close()
			if narrow {
				w.SetServices([]Service{s})
			}
			readEvents(t, w)
			woken(w)
			syncs := w.syncs
			for _, p := range []string{
				filepath.Join(dir, "notes.txt"),
				filepath.Join(dir, ".updates.lock.swp"),
				filepath.Join(dir, "updates.lock~"),
				filepath.Join(filepath.Dir(dir), "foo.txt"),
				filepath.Join(filepath.Dir(l.Global[0]), "other"),
				filepath.Join(l.Dir, "services", "README"),
			} {
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					t.Fatal(err)
				}
				os.Remove(p)
			}
			readEvents(t, w)
			if woken(w) {
				t.Errorf("the watcher woke for files with other names")
			}
			if w.syncs != syncs {
				t.Errorf("the watcher recomputed its watches %d times for files with other names", w.syncs-syncs)
			}
			for _, p := range []string{filepath.Join(dir, ResinName), l.Global[0]} {
				os.WriteFile(p, nil, 0o644)
				readEvents(t, w)
				if !woken(w) {
					t.Errorf("no wake-up for %s", p)
				}
			}
		})
	}
}

// TestServiceDirFlood: uid 1000 makes thousands of service directories in
// an app directory. A watcher narrowed to the services that matter watches
// none of them and wakes for none; Blocking looks at the named services
// only; Scan looks at MaxForeignDirs of them and says how many it skipped,
// while the agent's own directories are always looked at.
func TestServiceDirFlood(t *testing.T) {
	needRoot(t)
	tmp := attackRoot(t)
	l := Layout{Dir: tmp + "/latch", LockUID: 65534}
	mine := Service{"app", "mine"}
	if _, err := l.Acquire([]Service{mine}, []string{UpdatesName}, NewRecord(RoleAgent), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	w, err := l.newWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.f.Close()
	w.SetServices([]Service{mine})
	readEvents(t, w)
	woken(w)
	watches, syncs := len(w.paths), w.syncs
	const n = MaxForeignDirs + 7
	appDir := filepath.Join(l.Dir, "services", "app")
	// Sorted before "mine": a bound that counted the agent's directories
	// would skip them.
	shAs(t, 1000, fmt.Sprintf("cd %q && seq -f 'f%%05g' %d | xargs mkdir && touch f00001/updates.lock", appDir, n))
	readEvents(t, w)
	if woken(w) || w.syncs != syncs || len(w.paths) != watches {
		t.Errorf("narrowed watcher: woken=%v, %d resyncs, %d watches (had %d); want no wake, no resync, no new watch", woken(w), w.syncs-syncs, len(w.paths), watches)
	}
	b, err := l.Blocking([]Service{mine})
	if err != nil || len(b) != 1 || b[0].State != StateAgent {
		t.Errorf("Blocking(app/mine): %v %+v; want only the agent's entry", err, b)
	}
	es, err := l.Scan()
	var te *TruncatedError
	if !errors.As(err, &te) || !errors.Is(err, ErrTruncated) || te.Skipped != n-MaxForeignDirs || !strings.Contains(err.Error(), fmt.Sprint(te.Skipped)) {
		t.Fatalf("Scan: %v, want a TruncatedError skipping %d", err, n-MaxForeignDirs)
	}
	var paths []string
	for _, e := range es {
		paths = append(paths, strings.TrimPrefix(e.Path, appDir+"/"))
	}
	if strings.Join(paths, " ") != "f00001/updates.lock mine/updates.lock" {
		t.Errorf("Scan found %v, want the user's lock and the agent's", paths)
	}
	if left, err := l.Leftovers(65534); err != nil || len(left) != 1 {
		t.Errorf("Leftovers: %v %+v, want the agent's entry", err, left)
	}
}

// TestNonRoot runs the tests that say they work without root as uid 1000,
// for real: their non-root branches (the caller's own uid for entries, no
// setpriv) are what a board without root runs.
func TestNonRoot(t *testing.T) {
	if os.Getenv("LATCH_LOCK_NONROOT") != "" {
		t.Skip("already running as a user")
	}
	needRoot(t)
	asUser(t, 1000, "none") // copies the binary where uid 1000 reaches it
	tmp := attackRoot(t)
	tests := "^(TestCreate|TestRemoveOnlyOurs|TestSymlinkAttacks|TestEnsureServiceDirMode|TestAcquireRollback|TestHoldCoexists|TestWatcher|TestAcquireExcept|TestInodeReuse|TestScanRules|TestCreateFlocks|TestFlockNoLeak|TestFlockDiesWithHolder|TestReclaim)$"
	cmd := exec.Command("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", helperBin, "-test.v", "-test.count=1", "-test.run", tests)
	cmd.Env = append(os.Environ(), "LATCH_LOCK_NONROOT=1", "TMPDIR="+tmp)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		t.Fatalf("as uid 1000: %v\n%s", err, out.String())
	}
	for _, name := range []string{"TestCreate", "TestRemoveOnlyOurs", "TestSymlinkAttacks", "TestEnsureServiceDirMode", "TestAcquireRollback", "TestHoldCoexists", "TestWatcher", "TestAcquireExcept", "TestInodeReuse/ext4",
		"TestCreateFlocks", "TestFlockNoLeak", "TestFlockDiesWithHolder", "TestReclaim"} {
		if !strings.Contains(out.String(), "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass as uid 1000:\n%s", name, out.String())
		}
	}
}

// TestWatcherSetServicesLive narrows a running watcher and widens it again:
// locks of the named service wake it, and after SetServices(nil) so do
// those of a service that was not named.
func TestWatcherSetServicesLive(t *testing.T) {
	l := testLayout(t)
	a, b := Service{"a", "one"}, Service{"b", "two"}
	for _, s := range []Service{a, b} {
		if _, err := l.EnsureServiceDir(s); err != nil {
			t.Fatal(err)
		}
	}
	w, err := l.Watch()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.SetServices([]Service{a, {"c", "later"}})
	drain(w)
	os.WriteFile(filepath.Join(l.ServiceDir(a), UpdatesName), nil, 0o644)
	waitEvent(t, w, "a lock of a named service")
	// A named service whose directories appear later is watched then.
	if _, err := l.EnsureServiceDir(Service{"c", "later"}); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, w, "the directory of a named service appearing")
	drain(w)
	os.WriteFile(filepath.Join(l.ServiceDir(Service{"c", "later"}), ResinName), nil, 0o644)
	waitEvent(t, w, "a lock in the new directory")
	w.SetServices(nil)
	drain(w)
	os.WriteFile(filepath.Join(l.ServiceDir(b), UpdatesName), nil, 0o644)
	waitEvent(t, w, "a lock of another service after SetServices(nil)")
}
