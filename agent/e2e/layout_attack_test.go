package e2e

// Attacks on the lock layout's defences, against the real agent running as
// root: users 1000 and 65534 (the lock uid) forge the agent's records, make
// the lock root before the agent does, point /tmp/balena at a directory of
// root's, flood an app directory with service directories, and a second
// agent shares the lock directory. Each test checks what the agent promises
// about the device-wide names, its own entries and the directories it trusts.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var laKiosk3 = app{name: "kiosk", release: "2026.11.3", services: []svc{{name: "ui"}, {name: "backend"}}}

// --- helpers ---------------------------------------------------------------

// laNeedRoot skips the test when it does not run as root, saying what was
// not tested.
func laNeedRoot(t *testing.T, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: " + what + " was not tested")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv(1) missing: " + what + " was not tested")
	}
}

// laAs runs a command as uid (and gid) uid with no supplementary groups.
func laAs(uid int, name string, args ...string) *exec.Cmd {
	u := strconv.Itoa(uid)
	return exec.Command("setpriv", append([]string{"--reuid=" + u, "--regid=" + u, "--clear-groups", name}, args...)...)
}

// laSh runs a shell script as uid and fails the test if it fails.
func laSh(t *testing.T, uid int, script string, args ...string) {
	t.Helper()
	out, err := laAs(uid, "sh", append([]string{"-c", script, "sh"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("as uid %d: sh -c %q %q: %v\n%s", uid, script, args, err, out)
	}
}

// laOpenRoot makes the device's root and the folders above it traversable
// by other users (t.TempDir is 0700).
func laOpenRoot(t *testing.T, d *device) {
	t.Helper()
	for p := d.root; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// laLatch returns a copy of the latch binary that other users can run (the
// one the tests build lives in a 0700 folder).
func laLatch(t *testing.T, d *device) string {
	t.Helper()
	laOpenRoot(t, d)
	dir := filepath.Join(d.root, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "latch")
	if _, err := os.Stat(dst); err == nil {
		return dst
	}
	b, err := os.ReadFile(latchBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// laPoll reads GET /v1/device on a connection of its own, closed after the
// answer (idle connections would count against the API's per-uid cap).
func laPoll(d *device) deviceStatus {
	d.t.Helper()
	c := d.client()
	c.Transport.(*http.Transport).DisableKeepAlives = true
	resp, err := c.Get("http://latch/v1/device")
	if err != nil {
		d.t.Fatalf("GET /v1/device: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var s deviceStatus
	if resp.StatusCode != 200 || json.Unmarshal(b, &s) != nil {
		d.t.Fatalf("GET /v1/device: %d %q", resp.StatusCode, b)
	}
	return s
}

// laApplied reports whether the kiosk app runs rel with nothing pending.
func laApplied(d *device, rel string) bool {
	s := laPoll(d)
	return strings.Contains(","+s.Release+",", ",kiosk="+rel+",") && !s.UpdatePending
}

func laBlocked(s deviceStatus) []string {
	var out []string
	for _, b := range s.BlockedBy {
		out = append(out, b.Path)
	}
	return out
}

func laBlockedOn(s deviceStatus, paths ...string) bool {
	for _, b := range s.BlockedBy {
		for _, p := range paths {
			if b.Path == p {
				return true
			}
		}
	}
	return false
}

// laWithin polls cond for at most limit and reports whether it held; the
// limit bounds how long a broken agent is waited for, it is not a measure.
func laWithin(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// laRecord is latch's holder record as read from a lock file.
type laRecord struct {
	PID     int    `json:"pid"`
	BootID  string `json:"boot_id"`
	Command string `json:"command"`
	Role    string `json:"role"`
}

// laEntry is a regular file's owner, inode and record (nil when the path is
// missing, not a regular file, or holds no record).
func laEntry(path string) (uid int, ino uint64, rec *laRecord) {
	var st syscall.Stat_t
	if syscall.Lstat(path, &st) != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return -1, 0, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return int(st.Uid), st.Ino, nil
	}
	var r laRecord
	if json.Unmarshal(b, &r) != nil {
		return int(st.Uid), st.Ino, nil
	}
	return int(st.Uid), st.Ino, &r
}

func laExists(p string) bool { _, err := os.Lstat(p); return err == nil }

// laTree describes every path under dir without following a symlink: type,
// mode, owner, size, mtime, inode, and a file's content or a link's target.
// Two equal descriptions mean nothing under dir was added, removed or
// changed.
func laTree(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		l := fmt.Sprintf("%s %v uid=%d size=%d mtime=%d ino=%d", p, fi.Mode(), st.Uid, st.Size, fi.ModTime().UnixNano(), st.Ino)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			l += " -> " + target
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			l += fmt.Sprintf(" %q", b)
		}
		lines = append(lines, l)
		return nil
	})
	if err != nil {
		t.Fatalf("describe %s: %v", dir, err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// laSecret makes a directory only root can enter, holding what name says:
// "file" an updates.lock file, "dir" an updates.lock directory with content;
// with a ui/updates.lock and a keep file too.
func laSecret(t *testing.T, d *device, name, kind string) string {
	t.Helper()
	dir := filepath.Join(d.root, name)
	if err := os.MkdirAll(filepath.Join(dir, "ui"), 0o700); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"keep": "root's own file\n", "ui/updates.lock": "root's lock\n"}
	switch kind {
	case "file":
		files["updates.lock"] = "root's device-wide lock\n"
	case "dir":
		if err := os.MkdirAll(filepath.Join(dir, "updates.lock", "inner"), 0o700); err != nil {
			t.Fatal(err)
		}
		files["updates.lock/content"] = "inside root's lock directory\n"
		files["updates.lock/inner/more"] = "more\n"
	}
	for p, c := range files {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// laStickyTmp makes <root>/tmp sticky and world-writable, as /tmp is.
func laStickyTmp(t *testing.T, d *device) string {
	t.Helper()
	tmp := filepath.Join(d.root, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return tmp
}

// laProtectedSymlinks sets fs.protected_symlinks for the test and restores
// it afterwards.
func laProtectedSymlinks(t *testing.T, v string) {
	t.Helper()
	const p = "/proc/sys/fs/protected_symlinks"
	old, err := os.ReadFile(p)
	if err != nil {
		t.Skipf("cannot read %s: %v: the symlinked /tmp/balena test did not run", p, err)
	}
	if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
		t.Skipf("cannot set %s to %s: %v: the symlinked /tmp/balena test did not run", p, v, err)
	}
	t.Cleanup(func() { os.WriteFile(p, old, 0o644) })
}

// laForge writes path as uid, exclusively, with a record that claims the
// agent's role: pid 1, this boot, command "latch agent".
func laForge(t *testing.T, uid int, path, role string) {
	t.Helper()
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(map[string]any{
		"pid": 1, "boot_id": strings.TrimSpace(string(boot)), "command": "latch agent",
		"role": role, "created": time.Now().UTC().Format(time.RFC3339Nano),
	})
	cmd := laAs(uid, "sh", "-c", `set -C; cat > "$0"`, path)
	cmd.Stdin = strings.NewReader(string(rec) + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("as uid %d: write the forged record to %s: %v %s", uid, path, err, out)
	}
}

// laLocks is `latch locks --json` as root, decoded.
type laLock struct {
	Path   string `json:"path"`
	Kind   string `json:"kind"`
	UID    int    `json:"uid"`
	State  string `json:"state"`
	Holder *struct {
		PID     int    `json:"pid"`
		Command string `json:"command"`
	} `json:"holder"`
}

func laLocks(t *testing.T, d *device, extra ...string) []laLock {
	t.Helper()
	out, err := exec.Command(latchBin, append([]string{"locks", "--json", "--root", d.root}, extra...)...).Output()
	if err != nil {
		t.Fatalf("latch locks --json: %v %s", err, out)
	}
	var ls []laLock
	if err := json.Unmarshal(out, &ls); err != nil {
		t.Fatalf("latch locks --json: %v in %q", err, out)
	}
	return ls
}

// laEvents is the agent's journal, newest first.
type laEvent struct {
	Kind    string `json:"kind"`
	By      string `json:"by"`
	Message string `json:"message"`
}

func laEvents(d *device) []laEvent {
	d.t.Helper()
	var evs []laEvent
	if code := d.api("GET", "/v2/journal?limit=100000", nil, &evs); code != 200 {
		d.t.Fatalf("GET /v2/journal: %d", code)
	}
	return evs
}

// laWatches counts the inotify watches of process pid, and its open
// descriptors.
func laWatches(t *testing.T, pid int) (watches, fds int) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		fds++
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "inotify wd:") {
				watches++
			}
		}
	}
	return watches, fds
}

// laGate makes every stop command of kiosk/ui wait until the returned
// function is called.
func laGate(d *device) (open func()) {
	d.writeOracle("gate.stop.kiosk.ui", "closed")
	return func() { d.writeOracle("gate.stop.kiosk.ui", "") }
}

// --- 1 ---------------------------------------------------------------------

// While an apply runs, the agent holds both device-wide names: they exist,
// owned by the lock uid, with its record; neither latch lock nor
// lockfile(1) as uid 1000 can take them; once the agent is idle they are
// gone.
func TestLayoutAttackDeviceWideDuringApply(t *testing.T) {
	laNeedRoot(t, "the device-wide names an apply holds against uid 1000")
	lf := lockfileTool(t)
	d := newDevice(t)
	firstRelease(t, d)
	bin := laLatch(t, d)
	globals := []string{filepath.Join(d.root, "tmp/balena/updates.lock"), filepath.Join(d.root, "tmp/resin/resin-updates.lock")}
	for _, g := range globals {
		if laExists(g) {
			t.Fatalf("%s exists while the agent is idle", g)
		}
	}
	open := laGate(d)
	defer open()
	d.setTarget(d.targetDoc(nil, kiosk2))
	pid := d.cmd.Process.Pid
	held := func() bool {
		for _, g := range globals {
			uid, _, rec := laEntry(g)
			if uid != d.lockUID() || rec == nil || rec.Role != "agent" || rec.PID != pid {
				return false
			}
		}
		return true
	}
	if !laWithin(20*time.Second, func() bool { return held() && laPoll(d).Status == "applying" }) {
		for _, g := range globals {
			uid, _, rec := laEntry(g)
			t.Errorf("while kiosk/ui's stop is held open: %s has owner %d, record %+v; want uid %d, role agent, pid %d", g, uid, rec, d.lockUID(), pid)
		}
		t.Fatalf("the apply does not hold the device-wide names (status %+v)", laPoll(d))
	}
	inodes := map[string]uint64{}
	for _, g := range globals {
		_, inodes[g], _ = laEntry(g)
		out, err := laAs(1000, bin, "lock", "--root", d.root, "--path", g, "--", "true").CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 73 {
			t.Errorf("as uid 1000, latch lock --path %s -- true during an apply: %v %s, want exit 73", g, err, out)
		}
		if out, err := laAs(1000, lf, "-r0", g).CombinedOutput(); err == nil {
			t.Errorf("as uid 1000, lockfile -r0 %s succeeded during an apply: %s", g, out)
		}
		if _, ino, rec := laEntry(g); ino != inodes[g] || rec == nil || rec.PID != pid {
			t.Errorf("after uid 1000's attempts, %s is no longer the agent's entry (inode %d, was %d; record %+v)", g, ino, inodes[g], rec)
		}
	}
	if d.count("start kiosk/ui kiosk/ui 2026.11.2") != 0 {
		t.Fatalf("kiosk/ui started on the new release while its stop was held open")
	}
	open()
	d.waitFor("kiosk 2026.11.2 running", func() bool { return laApplied(d, "2026.11.2") && laPoll(d).Status == "idle" })
	for _, g := range globals {
		if laExists(g) {
			uid, _, rec := laEntry(g)
			t.Errorf("%s is still there once the agent is idle (owner %d, record %+v)", g, uid, rec)
		}
	}
	d.noViolations()
	d.stop()
}

// --- 2 ---------------------------------------------------------------------

// A lock file that claims to be the agent's (or a hold's), naming pid 1 on
// this boot and written by uid 1000 or by uid 65534 (the lock uid itself),
// is an ordinary lock: the update waits for it and names it, latch locks
// does not make it the agent's (nor pid 1 its holder, for uid 1000's), and
// only a force removes it, journalled as done by the operator.
func TestLayoutAttackForgedRecord(t *testing.T) {
	laNeedRoot(t, "records forged by uid 1000 and 65534")
	for _, uid := range []int{1000, 65534} {
		for _, role := range []string{"agent", "hold"} {
			t.Run(fmt.Sprintf("uid%d-%s", uid, role), func(t *testing.T) {
				d := newDevice(t)
				firstRelease(t, d)
				bin := laLatch(t, d)
				path := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
				laForge(t, uid, path, role)
				_, ino, _ := laEntry(path)
				stops := d.count("stop ")
				d.setTarget(d.targetDoc(nil, kiosk2))
				laWithin(15*time.Second, func() bool {
					s := laPoll(d)
					return laBlockedOn(s, path) || !laExists(path) || d.count("stop ") > stops
				})
				s := laPoll(d)
				if !laBlockedOn(s, path) || d.count("stop ") > stops {
					var removal []string
					for _, e := range laEvents(d) {
						if strings.Contains(e.Message, path) {
							removal = append(removal, fmt.Sprintf("%s by %q: %s", e.Kind, e.By, e.Message))
						}
					}
					_, now, _ := laEntry(path)
					t.Fatalf("uid %d's forged %s record at %s did not hold the update: status %q blocked_by %v, %d stops ran, the forgery still there: %v; journal on it: %q",
						uid, role, path, s.Status, laBlocked(s), d.count("stop ")-stops, now == ino, removal)
				}
				if s.Status != "waiting" {
					t.Errorf("status %q while the forged lock blocks, want waiting", s.Status)
				}
				if _, now, _ := laEntry(path); now != ino {
					t.Errorf("%s was replaced while the update waited (inode %d, was %d)", path, now, ino)
				}
				var found *laLock
				ls := laLocks(t, d)
				for i := range ls {
					if ls[i].Path == path {
						found = &ls[i]
					}
				}
				switch {
				case found == nil:
					t.Errorf("latch locks does not list %s: %+v", path, ls)
				case uid == 1000 && (found.State == "agent" || found.State == "hold"):
					t.Errorf("latch locks shows uid 1000's forgery %s with state %q, as the agent's", path, found.State)
				case uid == 1000 && found.Holder != nil && found.Holder.PID == 1:
					t.Errorf("latch locks names pid 1 (%s) as the holder of uid 1000's forgery %s", found.Holder.Command, path)
				default:
					t.Logf("latch locks: %s uid %d state %s holder %+v", path, found.UID, found.State, found.Holder)
				}

				// The operator forces: the forgery goes, the update applies.
				out, err := exec.Command(bin, "update", "--force", "--no-wait", "--root", d.root).CombinedOutput()
				if err != nil {
					t.Fatalf("latch update --force: %v %s", err, out)
				}
				d.waitFor("kiosk 2026.11.2 running after the force", func() bool { return laApplied(d, "2026.11.2") })
				if laExists(path) {
					if _, now, _ := laEntry(path); now == ino {
						t.Errorf("the forced update left the forgery %s in place", path)
					}
				}
				var forcedBy string
				var removal *laEvent
				evs := laEvents(d)
				for i, e := range evs {
					switch {
					case e.Kind == "forced":
						forcedBy = e.By
					case strings.Contains(e.Message, path) && strings.Contains(e.Message, "removed"):
						removal = &evs[i]
					}
				}
				switch {
				case forcedBy == "":
					t.Errorf("the journal has no forced event: %+v", evs)
				case removal == nil:
					t.Errorf("the journal does not say that %s was removed: %+v", path, evs)
				case removal.By != forcedBy:
					t.Errorf("the removal of %s is journalled by %q (%s), want the operator who forced (%q)", path, removal.By, removal.Message, forcedBy)
				}
				d.noViolations()
				d.stop()
			})
		}
	}
}

// --- 3 ---------------------------------------------------------------------

// A lock root that uid 1000 made before the agent started, in a sticky,
// world-writable directory as /tmp, with symlinks inside to a directory only
// root can enter: the agent moves it aside, changes nothing under root's
// directory, makes its own lock root and services/ (root's, 0755) and applies
// updates with every step under its own locks.
func TestLayoutAttackEarlyLockRoot(t *testing.T) {
	laNeedRoot(t, "a lock root made by uid 1000 before the agent")
	d := newDevice(t)
	laOpenRoot(t, d)
	tmp := laStickyTmp(t, d)
	secret := laSecret(t, d, "secret", "file")
	before := laTree(t, secret)
	laSh(t, 1000, `mkdir -m 777 "$1" "$1/services" "$1/services/other" "$1/services/other/ui" &&
		ln -s "$2" "$1/services/kiosk" && ln -s "$2/ui/updates.lock" "$1/services/other/ui/updates.lock" &&
		ln -s "$2" "$1/services/other/backend"`, d.lockDir, secret)
	userTree := laTree(t, d.lockDir)

	// The lock root is dealt with before READY=1.
	d.setTarget(d.targetDoc(nil, kiosk1))
	d.start()
	if got := laTree(t, secret); got != before {
		t.Errorf("the directory only root can enter changed:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	asides, _ := filepath.Glob(filepath.Join(tmp, "latch.untrusted-*"))
	if len(asides) != 1 {
		t.Fatalf("uid 1000's lock root was not moved aside to one latch.untrusted-* sibling: %v\nagent output:\n%s", asides, d.output())
	}
	// The directory moved aside is uid 1000's, whole, under its new name.
	if got, want := laTree(t, asides[0]), strings.ReplaceAll(userTree, d.lockDir, asides[0]); got != want {
		t.Errorf("uid 1000's lock root changed as it was moved aside:\nbefore:\n%s\nafter:\n%s", want, got)
	}
	d.waitFor("kiosk 2026.11.1 running", func() bool { return laApplied(d, kiosk1.release) })
	for _, dir := range []string{d.lockDir, filepath.Join(d.lockDir, "services")} {
		fi, err := os.Lstat(dir)
		if err != nil {
			t.Fatalf("the agent's lock directory %s: %v", dir, err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if !fi.IsDir() || st.Uid != 0 || fi.Mode()&(os.ModePerm|os.ModeSticky) != 0o755 {
			t.Errorf("%s is %v owned by uid %d, want the agent's own directory, root's, 0755", dir, fi.Mode(), st.Uid)
		}
	}
	for _, s := range []string{"ui", "backend"} {
		fi, err := os.Lstat(d.serviceDir("kiosk", s))
		if err != nil || !fi.IsDir() || fi.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("the lock directory of kiosk/%s is not a directory of root's: %v %v", s, fi, err)
		}
	}
	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("kiosk 2026.11.2 running", func() bool { return laApplied(d, "2026.11.2") })
	if got := laTree(t, secret); got != before {
		t.Errorf("the directory only root can enter changed during the updates:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	d.noViolations()
	d.stop()
}

// A lock root that uid 1000 made where the parent is not sticky and
// world-writable (uid 1000 owns the parent, or the parent is 0777 without
// the sticky bit) is not moved or deleted: the agent says so, naming it, and
// takes no lock and runs no step in it.
func TestLayoutAttackEarlyLockRootNotSticky(t *testing.T) {
	laNeedRoot(t, "a lock root made by uid 1000 in a directory that is not sticky")
	for _, parent := range []string{"owned-by-user", "world-writable"} {
		t.Run(parent, func(t *testing.T) {
			d := newDevice(t)
			laOpenRoot(t, d)
			tmp := filepath.Join(d.root, "tmp")
			if err := os.MkdirAll(tmp, 0o755); err != nil {
				t.Fatal(err)
			}
			if parent == "owned-by-user" {
				if err := os.Chown(tmp, 1000, 1000); err != nil {
					t.Fatal(err)
				}
			} else if err := os.Chmod(tmp, 0o777); err != nil {
				t.Fatal(err)
			}
			secret := laSecret(t, d, "secret", "file")
			before := laTree(t, secret)
			laSh(t, 1000, `mkdir -m 777 "$1" "$1/services" && ln -s "$2" "$1/services/kiosk"`, d.lockDir, secret)
			userTree := laTree(t, d.lockDir)

			d.setTarget(d.targetDoc(nil, kiosk1))
			d.start()
			var line string
			laWithin(10*time.Second, func() bool {
				for _, l := range strings.Split(d.output(), "\n") {
					if strings.Contains(l, d.lockDir) && strings.Contains(l, "1000") && strings.Contains(l, "remove") {
						line = l
						return true
					}
				}
				return false
			})
			if line == "" {
				t.Errorf("the agent does not say that %s, made by uid 1000, is not its own and what to do (a line naming it, the owner and what to remove):\n%s", d.lockDir, d.output())
			} else {
				t.Logf("agent: %s", line)
			}
			// Give the target its chance to be applied: it must not be.
			laWithin(5*time.Second, func() bool { return laApplied(d, kiosk1.release) })
			s := laPoll(d)
			t.Logf("status: %s, reason %q", s.Status, s.Reason)
			if got := laTree(t, d.lockDir); got != userTree {
				t.Errorf("uid 1000's lock root %s was changed:\nbefore:\n%s\nafter:\n%s", d.lockDir, userTree, got)
			}
			if asides, _ := filepath.Glob(filepath.Join(tmp, "latch.untrusted-*")); len(asides) > 0 {
				t.Errorf("uid 1000's lock root in a directory that is not sticky was moved aside: %v", asides)
			}
			if got := laTree(t, secret); got != before {
				t.Errorf("the directory only root can enter changed:\nbefore:\n%s\nafter:\n%s", before, got)
			}
			if n := d.count("stop ") + d.count("start "); n > 0 {
				t.Errorf("%d steps ran with the lock root in uid 1000's hands:\n%s", n, strings.Join(d.commands(), "\n"))
			}
			d.noViolations()
			d.stop()
		})
	}
}

// --- 4 ---------------------------------------------------------------------

// uid 1000 puts a symlink at /tmp/balena (after a reboot, before the agent
// makes it) to a directory only root can enter that holds an updates.lock
// file, or directory: the update counts it as a held device-wide lock and
// names it; latch unlock --force, a forced update and the override remove
// nothing and change nothing under root's directory, and the forced and
// overridden updates apply. With fs.protected_symlinks 0 and 1.
func TestLayoutAttackSymlinkedBalena(t *testing.T) {
	laNeedRoot(t, "a /tmp/balena symlinked by uid 1000")
	for _, prot := range []string{"0", "1"} {
		for _, kind := range []string{"file", "dir"} {
			t.Run("protected_symlinks="+prot+"/"+kind, func(t *testing.T) {
				laProtectedSymlinks(t, prot)
				d := newDevice(t)
				firstRelease(t, d)
				bin := laLatch(t, d)
				d.stop()
				// A reboot clears /tmp; uid 1000 is first to make /tmp/balena.
				tmp := laStickyTmp(t, d)
				balena := filepath.Join(tmp, "balena")
				if err := os.RemoveAll(balena); err != nil {
					t.Fatal(err)
				}
				secret := laSecret(t, d, "secret", kind)
				before := laTree(t, secret)
				laSh(t, 1000, `ln -s "$1" "$2"`, secret, balena)
				global := filepath.Join(balena, "updates.lock")
				unchanged := func(after string) {
					t.Helper()
					if got := laTree(t, secret); got != before {
						t.Errorf("after %s, the directory only root can enter changed:\nbefore:\n%s\nafter:\n%s", after, before, got)
					}
					if target, err := os.Readlink(balena); err != nil || target != secret {
						t.Errorf("after %s, %s is no longer uid 1000's symlink to %s: %q %v", after, balena, secret, target, err)
					}
				}

				d.start()
				unchanged("the agent started")
				stops := d.count("stop ")
				d.setTarget(d.targetDoc(nil, kiosk2))
				if !laWithin(15*time.Second, func() bool { return laBlockedOn(laPoll(d), balena, global) || d.count("stop ") > stops }) {
					s := laPoll(d)
					t.Errorf("the update does not wait for the symlinked %s: status %q blocked_by %v", balena, s.Status, laBlocked(s))
				}
				if n := d.count("stop ") - stops; n > 0 {
					t.Fatalf("%d stops ran while %s was a symlink (a device-wide lock that counts as held)", n, balena)
				}
				unchanged("the update waited")

				out, err := exec.Command(bin, "unlock", "--force", "--root", d.root, "--path", global).CombinedOutput()
				if err == nil {
					t.Errorf("latch unlock --force --path %s through uid 1000's symlink succeeded: %s", global, out)
				} else if !strings.Contains(string(out), balena) {
					t.Errorf("latch unlock --force --path %s refused without naming %s: %s", global, balena, out)
				}
				unchanged("latch unlock --force")

				d.allowForced()
				if out, err := exec.Command(bin, "update", "--force", "--no-wait", "--root", d.root).CombinedOutput(); err != nil {
					t.Errorf("latch update --force: %v %s", err, out)
				}
				if !laWithin(10*time.Second, func() bool { return laApplied(d, "2026.11.2") }) {
					s := laPoll(d)
					t.Errorf("the forced update did not apply while %s is a symlink: status %q reason %q blocked_by %v\nagent output:\n%s", balena, s.Status, s.Reason, laBlocked(s), d.output())
				}
				unchanged("latch update --force")

				d.setTarget(d.targetDoc(nil, laKiosk3))
				if code := d.api("PUT", "/v2/device/override", map[string]any{"enabled": true}, nil); code != 200 {
					t.Fatalf("PUT /v2/device/override on: %d", code)
				}
				if !laWithin(10*time.Second, func() bool { return laApplied(d, laKiosk3.release) }) {
					s := laPoll(d)
					t.Errorf("with the override on, the update did not apply while %s is a symlink: status %q reason %q blocked_by %v", balena, s.Status, s.Reason, laBlocked(s))
				}
				unchanged("the override")
				if code := d.api("PUT", "/v2/device/override", map[string]any{"enabled": false}, nil); code != 200 {
					t.Fatalf("PUT /v2/device/override off: %d", code)
				}
				unchanged("the override was turned off")

				// A forced or overridden step may run while root's file shows
				// through the symlink (nothing may be removed there); every
				// other entry counts as usual.
				steps := d.steps()
				for i := range steps {
					if steps[i].Forced == "" {
						continue
					}
					var kept []lockEntry
					for _, e := range steps[i].Entries {
						if !strings.HasPrefix(e.Path, balena+"/") {
							kept = append(kept, e)
						}
					}
					steps[i].Entries = kept
				}
				for _, v := range d.stepViolations(steps) {
					t.Errorf("a step ran outside the agent's locks: %s", v)
				}
				d.stop()
			})
		}
	}
}

// --- 5 ---------------------------------------------------------------------

// uid 1000 makes 3000 service directories in the kiosk app directory (1777)
// and tries to make an app directory of its own (services/ is root's 0755,
// so it cannot): the agent keeps working, applies an update, keeps its
// inotify watches and descriptors where they were, and a lock taken in one
// of the flooding directories blocks nothing.
func TestLayoutAttackServiceDirFlood(t *testing.T) {
	laNeedRoot(t, "a flood of service directories by uid 1000")
	d := newDevice(t)
	firstRelease(t, d)
	laOpenRoot(t, d)
	pid := d.cmd.Process.Pid
	baseW, baseFD := laWatches(t, pid)

	appDir := filepath.Join(d.lockDir, "services", "kiosk")
	laSh(t, 1000, `cd "$1" && seq -f 'x%.0f' 0 2999 | xargs mkdir`, appDir)
	names, err := os.ReadDir(appDir)
	if err != nil || len(names) < 3002 {
		t.Fatalf("the flood made %d entries in %s (%v), want 3000 and the agent's two", len(names), appDir, err)
	}
	evil := filepath.Join(d.lockDir, "services", "evil")
	if out, err := laAs(1000, "mkdir", "-m", "1777", evil).CombinedOutput(); err == nil {
		t.Errorf("uid 1000 made an app directory %s: services/ is writable by others", evil)
		laSh(t, 1000, `seq -f "$1/x%.0f" 0 999 | xargs mkdir`, evil)
	} else {
		t.Logf("uid 1000 cannot make %s: %s", evil, strings.TrimSpace(string(out)))
	}
	flood := filepath.Join(appDir, "x1717", "updates.lock")
	laSh(t, 1000, `set -C; echo "uid 1000" > "$1"`, flood)

	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("kiosk 2026.11.2 running despite the flood", func() bool {
		s := laPoll(d)
		if laBlockedOn(s, flood) {
			d.t.Fatalf("the lock %s in a flooding directory blocks the update: %v", flood, laBlocked(s))
		}
		return laApplied(d, "2026.11.2")
	})
	if !laExists(flood) {
		t.Errorf("the agent removed uid 1000's %s", flood)
	}
	w, fd := laWatches(t, pid)
	t.Logf("agent pid %d: %d inotify watches and %d descriptors before the flood, %d and %d after it and an update", pid, baseW, baseFD, w, fd)
	// The kiosk services and the same device-wide directories are watched
	// before and after; a few descriptors may come and go (HTTP, the
	// journal), not one per flooding directory.
	if w > baseW {
		t.Errorf("inotify watches grew from %d to %d with 3000 directories of uid 1000's", baseW, w)
	}
	if fd > baseFD+16 {
		t.Errorf("open descriptors grew from %d to %d with 3000 directories of uid 1000's", baseFD, fd)
	}
	// The agent still reacts to a lock in a service it manages.
	userPath := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
	laSh(t, 1000, `set -C; echo "uid 1000" > "$1"`, userPath)
	d.setTarget(d.targetDoc(nil, laKiosk3))
	d.waitFor("the update waiting for "+userPath, func() bool { return laBlockedOn(laPoll(d), userPath) })
	if laBlockedOn(laPoll(d), flood) {
		t.Errorf("the lock %s in a flooding directory is named as blocking: %v", flood, laBlocked(laPoll(d)))
	}
	if err := os.Remove(userPath); err != nil {
		t.Fatal(err)
	}
	d.waitFor("kiosk 2026.11.3 running", func() bool { return laApplied(d, laKiosk3.release) })
	d.noViolations()
	d.stop()
}

// --- 6 ---------------------------------------------------------------------

// A second agent with its own state dir, the same lock dir and the same
// device-wide paths, started while the first applies (a stop held open),
// neither removes nor replaces the first one's entries: their record names a
// live process.
func TestLayoutAttackSecondAgent(t *testing.T) {
	laNeedRoot(t, "a second agent beside a live one")
	d := newDevice(t)
	firstRelease(t, d)
	open := laGate(d)
	defer open()
	d.setTarget(d.targetDoc(nil, kiosk2))
	pid := d.cmd.Process.Pid
	var paths []string
	for _, s := range []string{"ui", "backend"} {
		for _, n := range []string{"updates.lock", "resin-updates.lock"} {
			paths = append(paths, filepath.Join(d.serviceDir("kiosk", s), n))
		}
	}
	globals := d.globalLocks(nil)
	paths = append(paths, globals...)
	ours := func() bool {
		for _, p := range paths {
			if _, _, rec := laEntry(p); rec == nil || rec.Role != "agent" || rec.PID != pid {
				return false
			}
		}
		return true
	}
	d.waitFor("the first agent applying with its entries in place", func() bool { return ours() && laPoll(d).Status == "applying" })
	inodes := map[string]uint64{}
	for _, p := range paths {
		_, inodes[p], _ = laEntry(p)
	}
	check := func(when string) {
		t.Helper()
		for _, p := range paths {
			uid, ino, rec := laEntry(p)
			if ino != inodes[p] || rec == nil || rec.PID != pid || uid != d.lockUID() {
				t.Errorf("%s, the first agent's %s is gone or replaced: inode %d (was %d), owner %d, record %+v", when, p, ino, inodes[p], uid, rec)
			}
		}
	}

	d2 := newDevice(t)
	d2.lockDir = d.lockDir
	d2.args = []string{"--lock-dir", d.lockDir}
	for _, g := range globals {
		d2.args = append(d2.args, "--global-lock", g)
	}
	d2.start()
	check("once the second agent is ready")
	// The second agent's loop has run by now; give it a moment more to act
	// on what it scanned (nothing can be awaited: it must do nothing).
	time.Sleep(2 * time.Second)
	check("while the second agent runs")
	d2.stop()
	check("after the second agent stopped")
	if n := d.count("start kiosk/ui kiosk/ui 2026.11.2"); n != 0 {
		t.Fatalf("kiosk/ui started on the new release while its stop was held open")
	}
	open()
	d.waitFor("the first agent finishing its apply", func() bool { return laApplied(d, "2026.11.2") })
	d.noViolations()
	d.stop()
}
