package e2e

// Attacks on the agent's promise that a held lock, a hold and an accepted
// target are respected: each test does what a careless operator, a cleanup
// script, a crash or a second agent does, with the real binary, the exec
// driver, real lock tools and other users, and checks the device afterwards.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var kiosk3 = app{name: "kiosk", release: "2026.11.3", services: []svc{{name: "ui"}, {name: "backend"}}}

// --- helpers ---------------------------------------------------------------

// openRoot makes the device's root traversable by other users (t.TempDir is
// 0700), so lock takers can run as uid 1000 or 65534.
func openRoot(t *testing.T, d *device) {
	t.Helper()
	for p := d.root; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// globalLocks returns the device-wide lock paths of the device (under
// --root), with their directories created 1777 as a booted board has them.
func globalLocks(t *testing.T, d *device) []string {
	t.Helper()
	paths := []string{filepath.Join(d.root, "tmp/balena/updates.lock"), filepath.Join(d.root, "tmp/resin/resin-updates.lock")}
	for _, p := range paths {
		dir := filepath.Dir(p)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
			t.Fatal(err)
		}
	}
	return paths
}

// ensureLockDir creates a service's lock directory (1777) as the agent would,
// so that a user can lock before the agent runs (after a reboot).
func ensureLockDir(t *testing.T, dir string) {
	t.Helper()
	for p := dir; ; p = filepath.Dir(p) {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o777|os.ModeSticky); err != nil {
			t.Fatal(err)
		}
		if filepath.Base(p) == "services" {
			break
		}
		if len(p) < 2 {
			t.Fatalf("%s is not under a services directory", dir)
		}
	}
}

// asUser runs a command as uid 1000 when the test runs as root, else as the
// test's own user.
func asUser(name string, args ...string) *exec.Cmd {
	if os.Geteuid() == 0 {
		return exec.Command("setpriv", append([]string{"--reuid=1000", "--regid=1000", "--clear-groups", name}, args...)...)
	}
	return exec.Command(name, args...)
}

// userLock takes path with lockfile(1) as another user; it fails the test if
// the lock cannot be taken.
func userLock(t *testing.T, d *device, path string) {
	t.Helper()
	lf := lockfileTool(t)
	openRoot(t, d)
	if out, err := asUser(lf, "-r0", path).CombinedOutput(); err != nil {
		t.Fatalf("lockfile %s as another user: %v %s", path, err, out)
	}
}

// within polls cond for at most limit and reports whether it held. The limit
// bounds how long a broken agent is waited for; it is never a measured time.
func within(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gate is a point in a shell command that waits until the test opens it: it
// marks that it was reached and records its shell's pid first.
type gate struct {
	t   *testing.T
	dir string
}

func newGate(t *testing.T, d *device, name string) *gate {
	g := &gate{t: t, dir: filepath.Join(d.root, "gates", name)}
	if err := os.MkdirAll(g.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.open()
		if pid := g.pid(); pid > 0 && alive(pid) {
			syscall.Kill(-pid, syscall.SIGKILL)
		}
	})
	return g
}

// shell returns the snippet. once: only the first command to reach the gate
// waits at it. dieWithAgent: the waiting shell exits 1 once its parent (the
// agent) is gone, without running the rest of its command. armed: the gate
// is passed through unless the file "armed" exists in the gate's folder.
func (g *gate) shell(once, dieWithAgent, armed bool) string {
	cond := "true"
	if armed {
		cond = fmt.Sprintf("[ -e %s/armed ]", g.dir)
	}
	if once {
		cond += fmt.Sprintf(" && mkdir %s/claimed 2>/dev/null", g.dir)
	}
	die := ""
	if dieWithAgent {
		die = "kill -0 $PPID 2>/dev/null || exit 1; "
	}
	return fmt.Sprintf(`if %s; then echo $$ > %s/pid; touch %s/entered; while [ ! -e %s/open ]; do %ssleep 0.05; done; fi; `,
		cond, g.dir, g.dir, g.dir, die)
}

func (g *gate) arm() {
	if err := os.WriteFile(filepath.Join(g.dir, "armed"), nil, 0o644); err != nil {
		g.t.Fatal(err)
	}
}

func (g *gate) disarm() { os.Remove(filepath.Join(g.dir, "armed")) }

func (g *gate) open() { os.WriteFile(filepath.Join(g.dir, "open"), nil, 0o644) }

func (g *gate) entered() bool {
	_, err := os.Stat(filepath.Join(g.dir, "entered"))
	return err == nil
}

func (g *gate) pid() int {
	b, err := os.ReadFile(filepath.Join(g.dir, "pid"))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// alive reports whether pid is a live process (a zombie counts as dead).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// patch prepends prefix to the shell command key ("stop", "start",
// "health") of service appName/svcName in a target document.
func patch(t *testing.T, doc []byte, appName, svcName, key, prefix string) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	s := m["apps"].(map[string]any)[appName].(map[string]any)["services"].(map[string]any)[svcName].(map[string]any)
	s[key] = prefix + s[key].(string)
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// kill ends the agent with SIGKILL, a crash.
func (d *device) kill() {
	d.t.Helper()
	d.cmd.Process.Kill()
	d.waitExit()
}

// crashAt starts the agent with a failpoint, gives it the target doc, and
// waits for it to die there.
func crashAt(t *testing.T, d *device, step string, doc []byte) {
	t.Helper()
	d.start("LATCH_FAILPOINT=" + step)
	d.setTarget(doc)
	st := d.waitExit()
	if ws, ok := st.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("agent did not die at failpoint %s: %v\n%s", step, st, d.output())
	}
}

// judgeAndRotateLog checks the steps logged so far, then starts a new command
// log: the steps' checks judge every logged step by the device's current lock
// layout and lock uid, so a test that changes them (--lock-dir, --lock-uid)
// judges the steps before the change by the old ones.
func (d *device) judgeAndRotateLog() {
	d.t.Helper()
	d.noViolations()
	if err := os.Rename(d.log, d.log+".before"); err != nil && !os.IsNotExist(err) {
		d.t.Fatal(err)
	}
}

// clearServiceLocks is a reboot for the per-service lock directories.
func clearServiceLocks(d *device) { os.RemoveAll(filepath.Join(d.lockDir, "services")) }

func (d *device) lastFor(appName, svcName string) string {
	var last string
	for _, l := range d.commands() {
		f := strings.Fields(l)
		if len(f) >= 2 && (f[0] == "stop" || f[0] == "start") && f[1] == appName+"/"+svcName {
			last = l
		}
	}
	return last
}

// poll reads GET /v1/device like status, on a connection of its own that is
// closed after the answer: the tests poll for many seconds, and idle
// connections left open would count against the API's per-uid cap.
func (d *device) poll() deviceStatus {
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

// rel is releaseOf through poll.
func (d *device) rel(appName string) string {
	for _, kv := range strings.Split(d.poll().Release, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == appName {
			return v
		}
	}
	return ""
}

// request does one API call without failing the test, for goroutines.
func (d *device) request(method, path string, body any) (int, string, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, "http://latch"+path, bytes.NewReader(b))
	c := d.client()
	c.Timeout = 60 * time.Second
	c.Transport.(*http.Transport).DisableKeepAlives = true
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(rb), nil
}

func blockedPaths(s deviceStatus) []string {
	var out []string
	for _, b := range s.BlockedBy {
		out = append(out, b.Path)
	}
	return out
}

func blockedOn(s deviceStatus, path string) bool {
	for _, b := range s.BlockedBy {
		if b.Path == path {
			return true
		}
	}
	return false
}

// finishedOn reports whether every kiosk service runs rel: its installed
// file is rel's and its last command was the start of rel's file.
func finishedOn(t *testing.T, d *device, rel string) bool {
	for _, s := range []string{"ui", "backend"} {
		b, _ := os.ReadFile(d.installed("kiosk", s))
		if strings.TrimSpace(string(b)) != "kiosk/"+s+" "+rel {
			return false
		}
		if !strings.HasPrefix(d.lastFor("kiosk", s), "start kiosk/"+s+" kiosk/"+s+" "+rel) {
			return false
		}
	}
	return true
}

// --- 1 ---------------------------------------------------------------------

// An apply interrupted right after its locks were taken, resumed while a
// device-wide lock appeared during the outage (with the lock directories
// kept, and cleared as by a reboot), waits for the device-wide lock: status
// says so, no service is stopped until it goes, then the apply finishes.
func TestAttack1ResumeHonoursDeviceWideLock(t *testing.T) {
	for _, reboot := range []bool{false, true} {
		name := "crash"
		if reboot {
			name = "reboot"
		}
		t.Run(name, func(t *testing.T) {
			d := newDevice(t)
			global := globalLocks(t, d)[0]
			firstRelease(t, d)
			d.stop()
			crashAt(t, d, "locks-taken", d.targetDoc(nil, kiosk2))
			if reboot {
				// /tmp is cleared at boot: every lock entry is gone.
				clearServiceLocks(d)
				for _, p := range globalLocks(t, d) {
					os.Remove(p)
				}
			} else if agentRecord(t, global) != nil {
				// An agent that holds the device-wide names during an action
				// left its entry; a cleanup script removes it while latch is
				// down, and the user's lock takes its place.
				os.Remove(global)
			}
			userLock(t, d, global)
			stops := d.count("stop ")
			d.start()
			blocked := within(10*time.Second, func() bool {
				s := d.poll()
				return blockedOn(s, global) || d.count("stop ") > stops
			})
			s := d.poll()
			if got := d.count("stop "); got != stops {
				t.Fatalf("the resumed apply ran %d stop commands while %s was held; status %+v\ncommands:\n%s", got-stops, global, s, strings.Join(d.commands(), "\n"))
			}
			if !blocked || s.Status != "waiting" {
				t.Fatalf("resume under %s: status %q blocked_by %v, want waiting on it", global, s.Status, blockedPaths(s))
			}
			if err := os.Remove(global); err != nil {
				t.Fatal(err)
			}
			d.waitFor("kiosk 2026.11.2 running", func() bool { return d.rel("kiosk") == "2026.11.2" && !d.poll().UpdatePending })
			for _, sv := range []string{"ui", "backend"} {
				if n := d.count("start kiosk/" + sv + " kiosk/" + sv + " 2026.11.2"); n != 1 {
					t.Errorf("kiosk/%s started on 2026.11.2 %d times, want once", sv, n)
				}
			}
			d.noViolations()
			d.stop()
		})
	}
}

// --- 2 ---------------------------------------------------------------------

// While an apply runs, the device-wide lock names are the agent's: lockfile(1)
// and `latch lock --path` cannot take them (EEXIST, exit 73), and no step of
// the apply runs under a user's device-wide entry.
func TestAttack2DeviceWideLockDuringApply(t *testing.T) {
	d := newDevice(t)
	globals := globalLocks(t, d)
	openRoot(t, d)
	firstRelease(t, d)
	g := newGate(t, d, "start-backend")
	doc := patch(t, d.targetDoc(nil, kiosk2), "kiosk", "backend", "start", g.shell(false, true, false))
	// Every later step also says whether a device-wide entry that is not the
	// agent's exists while it runs.
	for _, s := range []string{"ui", "backend"} {
		for _, k := range []string{"stop", "start"} {
			check := ""
			for _, p := range globals {
				check += fmt.Sprintf(`if [ -e %s ] && ! grep -q '"role":"agent"' %s 2>/dev/null; then echo "GLOBALVIOLATION %s $LATCH_APP/$LATCH_SERVICE %s" >> %s; fi; `, p, p, k, p, d.log)
			}
			doc = patch(t, doc, "kiosk", s, k, check)
		}
	}
	d.setTarget(doc)
	d.waitFor("kiosk/backend's start reached mid-apply", g.entered)

	lf := lockfileTool(t)
	for _, p := range globals {
		if rec := agentRecord(t, p); rec == nil {
			t.Errorf("during the apply, %s is not the agent's entry", p)
		}
		out, err := asUser(lf, "-r0", p).CombinedOutput()
		if err == nil {
			t.Errorf("lockfile -r0 %s succeeded in the middle of an apply (%s)", p, out)
			os.Remove(p)
		}
		cmd := asUser(latchBin, "lock", "--root", d.root, "--path", p, "--detach")
		out, err = cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 73 {
			t.Errorf("latch lock --path %s --detach in the middle of an apply: %v %s, want exit 73", p, err, out)
			os.Remove(p)
		}
	}
	// A user entry that got in stays for the rest of the apply: the steps
	// below report it.
	if t.Failed() {
		userLock(t, d, globals[0])
	}
	g.open()
	d.waitFor("the apply ends", func() bool {
		s := d.poll()
		return !s.UpdatePending || s.Status == "waiting"
	})
	os.Remove(globals[0])
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.rel("kiosk") == "2026.11.2" && !d.poll().UpdatePending })
	for _, l := range d.commands() {
		if strings.HasPrefix(l, "GLOBALVIOLATION") {
			t.Errorf("a step ran under a user's device-wide lock: %s", l)
		}
	}
	for _, p := range globals {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s is still there after the apply (err %v)", p, err)
		}
	}
	d.noViolations()
	d.stop()
}

// --- 3 ---------------------------------------------------------------------

// A hold asked for while an apply runs waits for the apply or is refused with
// 423 naming the service; once it was granted, the apply never stops or
// replaces the held service.
func TestAttack3HoldDuringApply(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	g := newGate(t, d, "start-backend")
	uiStops := d.count("stop kiosk/ui")
	d.setTarget(patch(t, d.targetDoc(nil, kiosk2), "kiosk", "backend", "start", g.shell(false, true, false)))
	d.waitFor("kiosk/backend's start reached mid-apply (ui not yet touched)", g.entered)
	if n := d.count("stop kiosk/ui") - uiStops; n != 0 {
		t.Fatalf("kiosk/ui already stopped %d times by the apply before the hold", n)
	}

	type answer struct {
		code  int
		body  string
		err   error
		lines int // commands logged when the answer arrived
	}
	done := make(chan answer, 1)
	go func() {
		code, body, err := d.request("POST", "/v2/locks", map[string]any{"app": "kiosk", "service": "ui", "reason": "flashing"})
		done <- answer{code, body, err, len(d.commands())}
	}()
	var ans answer
	got := false
	select {
	case ans = <-done: // answered while the apply is still stuck at the gate
		got = true
	case <-time.After(2 * time.Second): // the hold waits for the apply: let it go on
	}
	g.open()
	if !got {
		ans = <-done
	}
	if ans.err != nil {
		t.Fatalf("POST /v2/locks: %v", ans.err)
	}
	switch ans.code {
	case 201:
		after := d.commands()
		d.waitFor("the apply ends", func() bool {
			s := d.poll()
			after = d.commands()
			return !s.UpdatePending || s.Status == "waiting"
		})
		for _, l := range after[min(ans.lines, len(after)):] {
			if strings.HasPrefix(l, "stop kiosk/ui") || strings.HasPrefix(l, "start kiosk/ui") {
				t.Errorf("after the hold on kiosk/ui was granted, the apply ran: %s", l)
			}
		}
	case 423:
		if !strings.Contains(ans.body, "kiosk/ui") && !strings.Contains(ans.body, d.serviceDir("kiosk", "ui")) {
			t.Errorf("423 for a hold during the apply does not name kiosk/ui: %s", ans.body)
		}
	default:
		t.Fatalf("POST /v2/locks during the apply: %d %s, want 201 (after the apply) or 423", ans.code, ans.body)
	}
	d.api("DELETE", "/v2/locks/kiosk/ui", nil, nil)
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.rel("kiosk") == "2026.11.2" && !d.poll().UpdatePending })
	d.noViolations()
	d.stop()
}

// --- 4 ---------------------------------------------------------------------

// A hold whose entry a cleanup script deleted still holds: the journal says
// so, the agent puts the entry back, and an update waits for the release.
// The entry goes before the update arrives, or while the update waits on it.
func TestAttack4DeletedHoldEntryStillHolds(t *testing.T) {
	for _, how := range []string{"rm", "rmrf", "rm-wait", "rmrf-wait"} {
		t.Run(how, func(t *testing.T) {
			d := newDevice(t)
			firstRelease(t, d)
			if code := d.api("POST", "/v2/locks", map[string]any{"app": "kiosk", "service": "ui", "reason": "flashing"}, nil); code != 201 {
				t.Fatalf("POST /v2/locks: %d", code)
			}
			entry := filepath.Join(d.serviceDir("kiosk", "ui"), "latch-hold.lock")
			stops := d.count("stop ")
			waiting := strings.HasSuffix(how, "-wait") // else: before the update
			if waiting {
				d.setTarget(d.targetDoc(nil, kiosk2))
				d.waitFor("update blocked by the hold", func() bool { return blockedOn(d.poll(), entry) })
			}
			if strings.HasPrefix(how, "rm-") || how == "rm" { // the entry alone; rmrf: rm -rf the lock dir
				if err := os.Remove(entry); err != nil {
					t.Fatal(err)
				}
			} else if err := os.RemoveAll(d.lockDir); err != nil {
				// An agent that acts on the removal re-creates directories
				// under rm -rf's feet; the hold's entry went first anyway.
				t.Logf("rm -rf %s: %v", d.lockDir, err)
			}
			if !waiting {
				d.setTarget(d.targetDoc(nil, kiosk2))
			} else {
				// Let the agent see the removal before the status is read.
				within(2*time.Second, func() bool { return d.count("stop ") > stops })
			}
			blocked := within(10*time.Second, func() bool {
				s := d.poll()
				return blockedOn(s, entry) || d.count("stop ") > stops || d.rel("kiosk") == "2026.11.2"
			})
			s := d.poll()
			if got := d.count("stop "); got != stops {
				t.Fatalf("with its entry deleted, the hold on kiosk/ui did not hold: %d stops ran, release %q", got-stops, s.Release)
			}
			if !blocked {
				t.Fatalf("update under the hold: status %q blocked_by %v, want blocked by %s", s.Status, blockedPaths(s), entry)
			}
			b, err := os.ReadFile(entry)
			if err != nil {
				t.Fatalf("the hold's entry was not put back: %v", err)
			}
			var r record
			if json.Unmarshal(b, &r) != nil || r.Role != "hold" {
				t.Errorf("the put-back entry's record is %q, want role hold", b)
			}
			if code := d.api("DELETE", "/v2/locks/kiosk/ui", nil, nil); code != 200 {
				t.Fatalf("DELETE hold: %d", code)
			}
			d.waitFor("kiosk 2026.11.2 running", func() bool { return d.rel("kiosk") == "2026.11.2" })
			d.noViolations()
			d.stop()
		})
	}
}

// --- 5 ---------------------------------------------------------------------

// A resume that waits for a lock taken while the agent was down says
// "waiting" and names the lock; a force removes it and the apply finishes.
func TestAttack5ResumeWaitIsReportedAndForceable(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	d.stop()
	crashAt(t, d, "locks-taken", d.targetDoc(nil, kiosk2))
	clearServiceLocks(d)
	userPath := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
	ensureLockDir(t, filepath.Dir(userPath))
	userLock(t, d, userPath)
	d.start()
	within(10*time.Second, func() bool { return blockedOn(d.poll(), userPath) })
	s := d.poll()
	if s.Status != "waiting" || !blockedOn(s, userPath) {
		t.Errorf("resume waiting for %s: status %q blocked_by %v, want waiting on it", userPath, s.Status, blockedPaths(s))
	}
	code := d.api("POST", "/v1/update", map[string]bool{"force": true}, nil)
	if code != 204 {
		t.Errorf("POST /v1/update force during the resume's wait: %d, want 204", code)
	}
	if !within(15*time.Second, func() bool { return d.rel("kiosk") == "2026.11.2" && !d.poll().UpdatePending }) {
		t.Fatalf("the force did nothing: status %+v, user lock present: %v\ncommands:\n%s", d.poll(), exists(userPath), strings.Join(d.commands(), "\n"))
	}
	if exists(userPath) {
		t.Errorf("the forced resume left %s in place", userPath)
	}
	d.noViolations()
	d.stop()
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// Restarted with another --lock-uid after a crash, the agent still resumes
// the interrupted apply, or says plainly why it cannot.
func TestAttack5OtherLockUIDAfterCrash(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the agent's entries owned by --lock-uid 65534, then another --lock-uid, were not tested")
	}
	d := newDevice(t)
	firstRelease(t, d)
	d.stop()
	crashAt(t, d, "locks-taken", d.targetDoc(nil, kiosk2))
	d.judgeAndRotateLog()
	d.args = []string{"--lock-uid", "1000"}
	d.start()
	ok := within(15*time.Second, func() bool {
		s := d.poll()
		if d.rel("kiosk") == "2026.11.2" && !s.UpdatePending {
			return true
		}
		return strings.Contains(s.Reason, "uid")
	})
	if !ok {
		s := d.poll()
		t.Fatalf("restarted with --lock-uid 1000 after a crash, the agent neither resumed nor said why: status %q reason %q blocked_by %v\nagent output:\n%s", s.Status, s.Reason, blockedPaths(s), d.output())
	}
	d.noViolations()
	d.stop()
}

// --- 6 ---------------------------------------------------------------------

// While a resume waits for a lock, a cancel (or a target that asks for the
// running release again) rolls the half-done apply back: every touched
// service ends on the old release's file, started.
func TestAttack6CancelDuringResumeWaitRollsBack(t *testing.T) {
	for _, how := range []string{"cancel", "revert-target"} {
		t.Run(how, func(t *testing.T) {
			d := newDevice(t)
			firstRelease(t, d)
			d.stop()
			uiBase := d.count("stop kiosk/ui") // the first install stops it too
			// backend comes first: it is stopped and holds the new file.
			crashAt(t, d, "installed:kiosk/backend", d.targetDoc(nil, kiosk2))
			if got := readFile(t, d.installed("kiosk", "backend")); got != "kiosk/backend 2026.11.2" {
				t.Fatalf("at the crash backend = %q, want the new release's file", got)
			}
			clearServiceLocks(d)
			userPath := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
			ensureLockDir(t, filepath.Dir(userPath))
			userLock(t, d, userPath)
			d.start()
			within(10*time.Second, func() bool { return len(d.poll().BlockedBy) > 0 })
			if how == "cancel" {
				code, body, err := d.request("POST", "/v1/update", map[string]bool{"cancel": true})
				if err != nil || (code != 200 && code != 202 && code != 204) {
					t.Errorf("cancel during the resume's wait: %d %s %v, want it accepted (and rolled back)", code, body, err)
				}
			} else {
				d.setTarget(d.targetDoc(nil, kiosk1))
			}
			// The rollback may run at once (it touches backend alone) or wait
			// for the user's lock, saying so; it may not be dropped.
			released := false
			uiStopsHeld := -1 // stops of kiosk/ui while its user held its lock
			if !within(10*time.Second, func() bool { return finishedOn(t, d, "2026.11.1") }) {
				s := d.poll()
				if s.Status == "idle" || !blockedOn(s, userPath) {
					t.Fatalf("after the %s: backend = %q, last backend command %q; status %q release %q pending %v blocked_by %v; want backend back on 2026.11.1 and started, or the rollback waiting on %s\ncommands:\n%s",
						how, readFile(t, d.installed("kiosk", "backend")), d.lastFor("kiosk", "backend"), s.Status, s.Release, s.UpdatePending, blockedPaths(s), userPath, strings.Join(d.commands(), "\n"))
				}
				uiStopsHeld = d.count("stop kiosk/ui") - uiBase
				if err := os.Remove(userPath); err != nil {
					t.Fatal(err)
				}
				if !within(15*time.Second, func() bool { return finishedOn(t, d, "2026.11.1") }) {
					t.Fatalf("after the %s and the user lock's release: backend = %q, last backend command %q, status %+v; want backend back on 2026.11.1 and started",
						how, readFile(t, d.installed("kiosk", "backend")), d.lastFor("kiosk", "backend"), d.poll())
				}
				released = true
			}
			// After a revert the target asks for 2026.11.1. After a cancel
			// the target file still names 2026.11.2: the agent may take it
			// up again, and must then end on it whole.
			end := "2026.11.1"
			d.waitFor("idle, every service on one release", func() bool {
				s := d.poll()
				if s.UpdatePending {
					return false
				}
				if how == "cancel" && d.rel("kiosk") == "2026.11.2" && finishedOn(t, d, "2026.11.2") {
					end = "2026.11.2"
					return true
				}
				return d.rel("kiosk") == "2026.11.1" && finishedOn(t, d, "2026.11.1")
			})
			if end != "2026.11.1" {
				t.Logf("after the cancel and its rollback, the agent took the target file's 2026.11.2 up again")
			}
			if uiStopsHeld < 0 {
				uiStopsHeld = d.count("stop kiosk/ui") - uiBase
			}
			if uiStopsHeld != 0 {
				t.Errorf("kiosk/ui, locked by its user, was stopped %d times", uiStopsHeld)
			}
			if !released && !exists(userPath) {
				t.Errorf("the user's lock %s was removed", userPath)
			}
			d.noViolations()
			d.stop()
		})
	}
}

// --- 7 ---------------------------------------------------------------------

// Restarted with another --lock-dir after a crash, the resume takes the locks
// of the new layout: a user lock there is waited for.
func TestAttack7ResumeUsesNewLockDir(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	d.stop()
	crashAt(t, d, "locks-taken", d.targetDoc(nil, kiosk2))
	d.judgeAndRotateLog()
	d.lockDir = filepath.Join(d.root, "tmp/latch2")
	d.args = []string{"--lock-dir", d.lockDir}
	userPath := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
	ensureLockDir(t, filepath.Dir(userPath))
	userLock(t, d, userPath)
	stops := d.count("stop ")
	d.start()
	within(10*time.Second, func() bool {
		return blockedOn(d.poll(), userPath) || d.count("stop ") > stops
	})
	s := d.poll()
	if got := d.count("stop "); got != stops {
		t.Fatalf("resumed under --lock-dir %s with %s held, the agent ran %d stops (status %q blocked_by %v)\ncommands:\n%s", d.lockDir, userPath, got-stops, s.Status, blockedPaths(s), strings.Join(d.commands(), "\n"))
	}
	if !blockedOn(s, userPath) {
		t.Errorf("status %q blocked_by %v, want blocked by %s", s.Status, blockedPaths(s), userPath)
	}
	os.Remove(userPath)
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.rel("kiosk") == "2026.11.2" && !d.poll().UpdatePending })
	d.noViolations()
	d.stop()
}

// --- 8 ---------------------------------------------------------------------

// A target pushed through the API while an apply runs is answered 202 and
// survives SIGTERM and a crash: after the restart the agent applies it.
func TestAttack8PushedTargetSurvivesRestart(t *testing.T) {
	for _, how := range []string{"sigterm", "sigkill"} {
		t.Run(how, func(t *testing.T) {
			d := newDevice(t)
			d.start() // no target file: every target comes through the API
			if code := d.push(d.targetDoc(nil, kiosk1), nil); code != 202 {
				t.Fatalf("push kiosk1: %d", code)
			}
			d.waitFor("kiosk 2026.11.1 running", func() bool { return d.rel("kiosk") == "2026.11.1" })
			g := newGate(t, d, "start-backend")
			if code := d.push(patch(t, d.targetDoc(nil, kiosk2), "kiosk", "backend", "start", g.shell(false, true, false)), nil); code != 202 {
				t.Fatalf("push kiosk2: %d", code)
			}
			d.waitFor("kiosk/backend's start reached mid-apply", g.entered)
			if code := d.push(d.targetDoc(nil, kiosk3), nil); code != 202 {
				t.Fatalf("push kiosk3 during the apply: %d, want 202", code)
			}
			if how == "sigterm" {
				d.cmd.Process.Signal(syscall.SIGTERM)
				g.open() // the step in flight finishes, then the agent stops
				d.waitExit()
			} else {
				d.kill()
				g.open()
			}
			d.start()
			if !within(20*time.Second, func() bool { return d.rel("kiosk") == "2026.11.3" && finishedOn(t, d, "2026.11.3") }) {
				s := d.poll()
				t.Fatalf("after %s, the target answered 202 during the apply was lost: release %q status %q pending %v\ncommands:\n%s", how, s.Release, s.Status, s.UpdatePending, strings.Join(d.commands(), "\n"))
			}
			d.noViolations()
			d.stop()
		})
	}
}

// --- 9 ---------------------------------------------------------------------

// A crash in the middle of restart-service (stopped, not yet started) is
// resumed after the restart: the service is started again, once.
func TestAttack9CrashDuringRestartService(t *testing.T) {
	d := newDevice(t)
	g := newGate(t, d, "start-ui")
	d.setTarget(patch(t, d.targetDoc(nil, kiosk1), "kiosk", "ui", "start", g.shell(true, true, true)))
	d.start()
	d.waitFor("kiosk 2026.11.1 running", func() bool { return d.rel("kiosk") == "2026.11.1" })
	starts, stops := d.count("start kiosk/ui"), d.count("stop kiosk/ui")
	g.arm()
	go d.request("POST", "/v2/applications/kiosk/restart-service", map[string]any{"serviceName": "ui"})
	d.waitFor("kiosk/ui's start reached during restart-service", g.entered)
	if d.count("stop kiosk/ui") != stops+1 {
		t.Fatalf("restart-service did not stop kiosk/ui first:\n%s", strings.Join(d.commands(), "\n"))
	}
	d.kill()
	// The start in flight dies with the agent: the service stays stopped.
	if !within(10*time.Second, func() bool { return !alive(g.pid()) }) {
		t.Fatalf("the gated start (pid %d) did not end with the agent", g.pid())
	}
	g.disarm()
	d.start()
	if !within(15*time.Second, func() bool { return d.count("start kiosk/ui") > starts }) {
		t.Fatalf("after a crash during restart-service, kiosk/ui was never started again; last command %q, status %+v", d.lastFor("kiosk", "ui"), d.poll())
	}
	d.waitFor("idle", func() bool { return d.poll().Status == "idle" })
	if n := d.count("start kiosk/ui") - starts; n != 1 {
		t.Errorf("kiosk/ui started %d times after the crash, want once", n)
	}
	if !strings.HasPrefix(d.lastFor("kiosk", "ui"), "start kiosk/ui kiosk/ui 2026.11.1") {
		t.Errorf("kiosk/ui's last command is %q, want its start", d.lastFor("kiosk", "ui"))
	}
	d.noViolations()
	d.stop()
}

// --- 10 --------------------------------------------------------------------

// A stop command of a killed agent does not outlive it: it is killed before
// the restarted agent acts, so it cannot land after the apply finished and
// leave the service stopped.
func TestAttack10OrphanedCommandIsKilled(t *testing.T) {
	d := newDevice(t)
	g := newGate(t, d, "stop-backend")
	// kiosk1's stop is the one that stops the running release; only its
	// first run after arming waits, and it does not notice the agent dying.
	d.setTarget(patch(t, d.targetDoc(nil, kiosk1), "kiosk", "backend", "stop", g.shell(true, false, true)))
	d.start()
	d.waitFor("kiosk 2026.11.1 running", func() bool { return d.rel("kiosk") == "2026.11.1" })
	g.arm()
	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("kiosk/backend's stop reached mid-apply", g.entered)
	orphan := g.pid()
	d.kill()
	d.start()
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.rel("kiosk") == "2026.11.2" && !d.poll().UpdatePending })
	if alive(orphan) {
		t.Errorf("the dead agent's stop command (pid %d) is still running after the restarted agent finished", orphan)
	}
	g.open()
	within(10*time.Second, func() bool { return !alive(orphan) })
	time.Sleep(100 * time.Millisecond) // let an orphan's last write land before reading the log
	if last := d.lastFor("kiosk", "backend"); !strings.HasPrefix(last, "start kiosk/backend kiosk/backend 2026.11.2") {
		t.Errorf("kiosk/backend's last command is %q while status says %q: the service ends stopped", last, d.poll().Status)
	}
	d.noViolations()
	d.stop()
}

// A second agent with its own state dir and the same lock dir does not remove
// the live agent's entries as leftovers: their recorded pid is alive.
func TestAttack10SecondAgentKeepsLiveAgentsLocks(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	g := newGate(t, d, "start-backend")
	d.setTarget(patch(t, d.targetDoc(nil, kiosk2), "kiosk", "backend", "start", g.shell(false, true, false)))
	d.waitFor("kiosk/backend's start reached mid-apply", g.entered)
	var paths []string
	for _, s := range []string{"ui", "backend"} {
		p := filepath.Join(d.serviceDir("kiosk", s), "updates.lock")
		if rec := agentRecord(t, p); rec == nil || rec.PID != d.cmd.Process.Pid {
			t.Fatalf("during the apply %s is not the running agent's (record %+v)", p, rec)
		}
		paths = append(paths, p)
	}
	d2 := newDevice(t)
	d2.lockDir = d.lockDir
	d2.args = []string{"--lock-dir", d.lockDir}
	d2.start()
	for _, p := range paths {
		if rec := agentRecord(t, p); rec == nil || rec.PID != d.cmd.Process.Pid {
			t.Errorf("a second agent on the same lock dir removed or replaced the live agent's %s (record now %+v)", p, rec)
		}
	}
	d2.stop()
	g.open()
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.rel("kiosk") == "2026.11.2" && !d.poll().UpdatePending })
	d.noViolations()
	d.stop()
}

// --- further attacks -------------------------------------------------------

type journalEvent struct {
	Kind    string `json:"kind"`
	By      string `json:"by"`
	Message string `json:"message"`
}

func (d *device) journalEvents() []journalEvent {
	d.t.Helper()
	var evs []journalEvent
	if code := d.api("GET", "/v2/journal?limit=100000", nil, &evs); code != 200 {
		d.t.Fatalf("GET /v2/journal: %d", code)
	}
	return evs
}

// A reboot that a configuration change needs, blocked by a user lock, says
// which lock blocks it.
func TestAttackRebootPendingNamesItsLock(t *testing.T) {
	d := newDevice(t)
	rebootLog := filepath.Join(d.root, "reboots.log")
	d.args = []string{"--reboot-command", "echo reboot >> " + rebootLog}
	firstRelease(t, d)
	userPath := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
	userLock(t, d, userPath)
	d.setTarget(d.targetDoc(map[string]any{"GPU_MEM": map[string]any{"value": "128", "reboot": true}}, kiosk1))
	var raw map[string]any
	d.waitFor("a pending reboot", func() bool {
		raw = nil
		d.api("GET", "/v1/device", nil, &raw)
		return raw["pending_reboot"] != nil
	})
	if exists(rebootLog) {
		t.Fatalf("rebooted under %s", userPath)
	}
	if !within(10*time.Second, func() bool { return blockedOn(d.poll(), userPath) }) {
		s := d.poll()
		t.Errorf("a reboot pending behind %s: status %q reason %q blocked_by %v, want blocked_by naming it", userPath, s.Status, s.Reason, blockedPaths(s))
	}
	os.Remove(userPath)
	d.waitFor("the reboot command ran", func() bool { return exists(rebootLog) })
	d.stop()
}

// A reboot command that fails is reported as failing (not as "waiting for
// locks") and retried, but not again and again at the retry delay: the
// retries back off, and may stop after a bound.
func TestAttackFailingRebootCommand(t *testing.T) {
	d := newDevice(t)
	rebootLog := filepath.Join(d.root, "reboots.log")
	d.args = []string{"--reboot-command", "echo attempt >> " + rebootLog + "; exit 1"}
	firstRelease(t, d)
	d.setTarget(d.targetDoc(map[string]any{"GPU_MEM": map[string]any{"value": "128", "reboot": true}}, kiosk1))
	attempts := func() int { b, _ := os.ReadFile(rebootLog); return strings.Count(string(b), "attempt") }
	d.waitFor("the reboot command ran", func() bool { return attempts() > 0 })
	// --retry-delay is 100ms: a retry comes well within this bound.
	if !within(15*time.Second, func() bool { return attempts() >= 2 }) {
		t.Errorf("a failing reboot command was not retried (ran %d times)", attempts())
	}
	// Then give it the room of 30 retry delays: with a backoff that doubles
	// it runs about 5 times more, without one about 30.
	first := attempts()
	time.Sleep(3 * time.Second)
	if n := attempts() - first; n > 10 {
		t.Errorf("a failing reboot command ran %d more times in 30 retry delays: no backoff and no bound", n)
	}
	out, err := exec.Command(latchBin, "status", "--root", d.root).CombinedOutput()
	if err != nil {
		t.Fatalf("latch status: %v %s", err, out)
	}
	t.Logf("the failing reboot command ran %d times", attempts())
	// What latch status says of the state, before its list of past events.
	head, _, _ := strings.Cut(string(out), "Recent events")
	if strings.Contains(head, "waiting for locks") {
		t.Errorf("latch status says the failing reboot waits for locks (no lock is held):\n%s", out)
	}
	var raw map[string]any
	d.api("GET", "/v1/device", nil, &raw)
	if !strings.Contains(head, "fail") && !strings.Contains(fmt.Sprint(raw["reason"]), "fail") {
		t.Errorf("neither latch status nor /v1/device says the reboot command fails:\n%s\n%v", out, raw)
	}
	d.stop()
}

// A user lock removed by a force is journalled as removed by the operator who
// forced, not by the target's source.
func TestAttackForcedRemovalJournalsOperator(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	userPath := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
	userLock(t, d, userPath)
	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("update blocked", func() bool { return blockedOn(d.poll(), userPath) })
	if code := d.api("POST", "/v1/update", map[string]bool{"force": true}, nil); code != 204 {
		t.Fatalf("force: %d", code)
	}
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.rel("kiosk") == "2026.11.2" })
	var forcedBy, update string
	var removal *journalEvent
	evs := d.journalEvents()
	for i, e := range evs {
		switch {
		case e.Kind == "forced":
			forcedBy = e.By
		case e.Kind == "update" && strings.Contains(e.Message, "new update"):
			update = e.By
		case strings.Contains(e.Message, userPath) && strings.Contains(e.Message, "removed"):
			removal = &evs[i]
		}
	}
	if forcedBy == "" || removal == nil {
		t.Fatalf("journal has no forced event (by %q) or no removal of %s: %+v", forcedBy, userPath, evs)
	}
	if removal.By != forcedBy {
		t.Errorf("the removal of %s is journalled by %q, want the operator who forced (%q; the target came from %q)", userPath, removal.By, forcedBy, update)
	}
	d.stop()
}

// `latch update --force` while an apply runs does not say that no update is
// pending.
func TestAttackForceDuringApplyMessage(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	g := newGate(t, d, "start-backend")
	d.setTarget(patch(t, d.targetDoc(nil, kiosk2), "kiosk", "backend", "start", g.shell(false, true, false)))
	d.waitFor("kiosk/backend's start reached mid-apply", g.entered)
	out, err := exec.Command(latchBin, "update", "--force", "--no-wait", "--root", d.root).CombinedOutput()
	g.open()
	if strings.Contains(string(out), "no update is pending") {
		t.Errorf("latch update --force during an apply says %q (err %v)", strings.TrimSpace(string(out)), err)
	}
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.rel("kiosk") == "2026.11.2" && !d.poll().UpdatePending })
	d.stop()
}

// A hold on a service that no target names (a typo) is refused, or the
// answer warns that it protects nothing the agent manages.
func TestAttackHoldOnUnknownService(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	code, body, err := d.request("POST", "/v2/locks", map[string]any{"app": "kiosk", "service": "uii"})
	if err != nil {
		t.Fatal(err)
	}
	if code == 201 && !strings.Contains(strings.ToLower(body), "warn") {
		t.Errorf("hold on kiosk/uii (no target names it): %d %s, want it refused or a warning", code, body)
	}
	if code != 201 && !strings.Contains(body, "kiosk/uii") {
		t.Errorf("refusal of a hold on kiosk/uii does not name it: %d %s", code, body)
	}
	d.stop()
}

// A staged download deleted while the update waits for a lock is fetched
// again before the apply: the service gets the new release's file.
func TestAttackStagedDownloadDeleted(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	userPath := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
	userLock(t, d, userPath)
	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("downloaded and blocked", func() bool { s := d.poll(); return s.UpdateDownloaded && blockedOn(s, userPath) })
	staged, _ := filepath.Glob(filepath.Join(d.stateDir, "downloads", "*"))
	if len(staged) == 0 {
		t.Fatalf("nothing staged in %s", filepath.Join(d.stateDir, "downloads"))
	}
	for _, p := range staged {
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
	}
	os.Remove(userPath)
	if !within(15*time.Second, func() bool { return finishedOn(t, d, "2026.11.2") && !d.poll().UpdatePending }) {
		s := d.poll()
		t.Fatalf("with its staged files deleted, the update did not end on 2026.11.2: status %q failed %v reason %q release %q\ncommands:\n%s\nagent output:\n%s",
			s.Status, s.UpdateFailed, s.Reason, s.Release, strings.Join(d.commands(), "\n"), d.output())
	}
	d.noViolations()
	d.stop()
}

// SIGTERM in the middle of an apply logs where the apply will resume.
func TestAttackSigtermLogsResumePoint(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	g := newGate(t, d, "start-backend")
	d.setTarget(patch(t, d.targetDoc(nil, kiosk2), "kiosk", "backend", "start", g.shell(false, true, false)))
	d.waitFor("kiosk/backend's start reached mid-apply", g.entered)
	d.cmd.Process.Signal(syscall.SIGTERM)
	g.open()
	d.waitExit()
	out := d.output()
	low := strings.ToLower(out)
	if !strings.Contains(low, "resum") || !strings.Contains(out, "kiosk/") {
		t.Errorf("stopped by SIGTERM in the middle of an apply, the agent does not log where it will resume:\n%s", out)
	}
	d.start()
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.rel("kiosk") == "2026.11.2" && !d.poll().UpdatePending })
	d.noViolations()
	d.stop()
}
