package e2e

// Hardening: what a full disk, a bad file mode, an install path inside
// latch's own state, a hostile configuration value and a target file that is
// not a regular file do to the real agent. Each test checks that what the
// agent refuses leaves no trace on the device.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// meter1 is an app that the first release does not have: a target naming it
// asks for a new lock directory, new downloads and new commands.
var meter1 = app{name: "meter", release: "1.0", services: []svc{{name: "probe"}}}

// --- helpers ---------------------------------------------------------------

// mountTmpfs mounts a tmpfs of size bytes at dir (created if missing) and
// unmounts it when the test ends, after the agent, which may keep files open
// there (its journal), has been killed.
func mountTmpfs(t *testing.T, d *device, dir string, size int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs: the full-disk behaviour was not tested")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("size=%d,mode=0755", size)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "latch-e2e-full", dir).CombinedOutput(); err != nil {
		t.Skipf("mount -t tmpfs -o %s %s: %v %s: the full-disk behaviour was not tested", opts, dir, err, out)
	}
	t.Cleanup(func() {
		if d.cmd != nil && d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			err := <-d.waitErr
			d.waitErr <- err
		}
		if err := syscall.Unmount(dir, 0); err != nil {
			// Still busy (a command of the agent's?): detach it, so that
			// nothing of the test stays mounted.
			if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		}
	})
}

// fillDisk writes a file in dir until the file system says ENOSPC, and
// returns its path. The last bytes go in one at a time, so that not even a
// partial page is left.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, chunk := range []int{1 << 16, 4096, 1} {
		buf := bytes.Repeat([]byte{'x'}, chunk)
		for {
			if _, err := f.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("fill %s: %v, want ENOSPC in the end", p, err)
				}
				break
			}
		}
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bavail != 0 {
		t.Fatalf("%s still has %d free blocks after the filler", dir, st.Bavail)
	}
	return p
}

// fileOf edits files[0] of service appName/svcName of a target document.
func fileOf(t *testing.T, doc []byte, appName, svcName string, edit func(f map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	s := m["apps"].(map[string]any)[appName].(map[string]any)["services"].(map[string]any)[svcName].(map[string]any)
	edit(s["files"].([]any)[0].(map[string]any))
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pushBody posts a target state as root and returns the status and body.
func (d *device) pushBody(doc []byte) (int, string) {
	d.t.Helper()
	resp, err := d.client().Post("http://latch/v2/local/target-state", "application/json", bytes.NewReader(doc))
	if err != nil {
		d.t.Fatalf("push: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// message is the message of an API error body, or the body itself.
func message(body string) string {
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal([]byte(body), &e) != nil || e.Message == "" {
		return body
	}
	return e.Message
}

// fullStatus is the part of GET /v1/device that a refused request must not
// change.
type fullStatus struct {
	Status        string `json:"status"`
	Release       string `json:"release"`
	UpdatePending bool   `json:"update_pending"`
	UpdateFailed  bool   `json:"update_failed"`
	Holds         []struct {
		App     string `json:"app"`
		Service string `json:"service"`
		All     bool   `json:"all"`
	} `json:"holds"`
	PendingReboot any `json:"pending_reboot"`
}

func (d *device) fullStatus() fullStatus {
	d.t.Helper()
	var s fullStatus
	if code := d.api("GET", "/v1/device", nil, &s); code != 200 {
		d.t.Fatalf("GET /v1/device: status %d", code)
	}
	return s
}

// lockPaths lists the paths of GET /v2/locks.
func (d *device) lockPaths() []string {
	d.t.Helper()
	var es []struct {
		Path  string `json:"path"`
		State string `json:"state"`
	}
	if code := d.api("GET", "/v2/locks", nil, &es); code != 200 {
		d.t.Fatalf("GET /v2/locks: status %d", code)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Path+" ("+e.State+")")
	}
	return out
}

// settle gives the agent time to act on what it was just told, for checks
// that something did not happen (nothing can be awaited for that): a ping
// first, so the loop has answered since.
func (d *device) settle() {
	d.t.Helper()
	time.Sleep(time.Second)
	if code := d.api("GET", "/ping", nil, nil); code != 200 {
		d.t.Fatalf("GET /ping: %d", code)
	}
}

// --- 1. full disk ------------------------------------------------------------

// A target pushed while the state dir is full (a new app and a config change)
// is refused with a 5xx and leaves no trace: no lock directory, no change of
// target.json, config.env or the status, no command, no restartable service.
// A hold refused on the full disk does not exist once space is back, and
// does not block the next update.
func TestHardeningFullDisk(t *testing.T) {
	d := newDevice(t)
	mountTmpfs(t, d, d.stateDir, 4<<20)
	d.setTarget(d.targetDoc(map[string]any{"PANEL": "dim"}, kiosk1))
	d.start()
	d.waitFor("kiosk 2026.11.1 running", func() bool { return d.releaseOf("kiosk") == "2026.11.1" && !d.status().UpdatePending })

	latest := filepath.Join(d.stateDir, "target.json")
	envPath := filepath.Join(d.stateDir, "config.env")
	latestBefore, err := os.ReadFile(latest)
	if err != nil {
		t.Fatalf("the agent keeps no target.json after the first release: %v", err)
	}
	envBefore, err := os.ReadFile(envPath)
	if err != nil {
		t.Fatalf("the agent wrote no config.env for PANEL: %v", err)
	}
	before := d.fullStatus()
	cmdsBefore := d.commands()

	filler := fillDisk(t, d.stateDir)
	// A long value makes the journalled target span several pages, which
	// the journal's free pages cannot hold.
	doc := d.targetDoc(map[string]any{"PANEL": "bright", "METER_NOTE": strings.Repeat("n", 64<<10)}, kiosk1, meter1)
	code, body := d.pushBody(doc)
	if code < 500 {
		t.Errorf("push on a full state dir: status %d %s, want a 5xx refusal", code, body)
	} else if !strings.Contains(message(body), "no space left") {
		t.Errorf("push on a full state dir refused with %d %s, want the message to say that the disk is full", code, body)
	}
	d.settle()
	checkNoTrace := func(when string) {
		t.Helper()
		if exists(d.serviceDir("meter", "probe")) || exists(filepath.Join(d.lockDir, "services", "meter")) {
			t.Errorf("%s: the refused target's lock directory %s exists", when, d.serviceDir("meter", "probe"))
		}
		if got, err := os.ReadFile(latest); err != nil || !bytes.Equal(got, latestBefore) {
			t.Errorf("%s: %s changed (err %v):\n%s\nwant the first release's target", when, latest, err, got)
		}
		if got, err := os.ReadFile(envPath); err != nil || !bytes.Equal(got, envBefore) {
			t.Errorf("%s: %s changed (err %v):\n%s\nwant\n%s", when, envPath, err, got, envBefore)
		}
		after := d.fullStatus()
		if after.Release != before.Release || after.UpdatePending || after.Status != before.Status || after.PendingReboot != nil {
			t.Errorf("%s: status %+v, want it unchanged from %+v", when, after, before)
		}
		if cmds := d.commands(); len(cmds) != len(cmdsBefore) {
			t.Errorf("%s: commands ran for a refused target: %q", when, cmds[len(cmdsBefore):])
		}
		if exists(d.installed("meter", "probe")) {
			t.Errorf("%s: %s was installed", when, d.installed("meter", "probe"))
		}
		code, body, err := d.request("POST", "/v2/applications/meter/restart-service", map[string]any{"serviceName": "probe"})
		if err != nil || code != 404 {
			t.Errorf("%s: restart-service meter/probe: status %d %s (err %v), want 404 (no such service)", when, code, body, err)
		}
	}
	checkNoTrace("on the full disk")

	// A hold on the full disk. The journal may still find room in pages
	// it freed before: hold and release again, with a long reason, until its
	// log needs a page that the disk cannot give.
	holdCode, tries := 0, 0
	var refusal map[string]any
	for tries = 1; tries <= 500; tries++ {
		refusal = nil
		reason := fmt.Sprintf("calibration %d %s", tries, strings.Repeat("r", 900))
		holdCode = d.api("POST", "/v2/locks", map[string]any{"app": "kiosk", "service": "ui", "reason": reason}, &refusal)
		if holdCode != 201 {
			break
		}
		if code := d.api("DELETE", "/v2/locks/kiosk/ui", nil, nil); code != 200 {
			// The release could not be journalled either: it is
			// released once there is room, and the disk filled again.
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			if code := d.api("DELETE", "/v2/locks/kiosk/ui", nil, nil); code != 200 {
				t.Fatalf("release of hold %d once space came back: status %d, want 200", tries, code)
			}
			filler = fillDisk(t, d.stateDir)
		}
	}
	t.Logf("hold refused after %d tries: %d %v", tries, holdCode, refusal)
	if holdCode < 500 {
		t.Fatalf("hold on a full state dir: status %d %v after %d tries, want a 5xx refusal", holdCode, refusal, tries)
	}
	if msg, _ := refusal["message"].(string); !strings.Contains(msg, "no space left") {
		t.Errorf("hold refused on the full disk with %q, want the message to say that the disk is full", msg)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	d.settle()
	checkNoTrace("after space came back")
	holdEntry := filepath.Join(d.serviceDir("kiosk", "ui"), "latch-hold.lock")
	{
		if s := d.fullStatus(); len(s.Holds) != 0 {
			t.Errorf("a hold refused with %d is in the status: %+v", holdCode, s.Holds)
		}
		for _, p := range d.lockPaths() {
			if strings.HasPrefix(p, holdEntry) {
				t.Errorf("a hold refused with %d is listed by GET /v2/locks: %s", holdCode, p)
			}
		}
		if exists(holdEntry) {
			t.Errorf("a hold refused with %d left its entry %s", holdCode, holdEntry)
		}
	}

	// The next update is not blocked by the refused hold, and the refused
	// target left nothing for it to trip on.
	d.setTarget(d.targetDoc(map[string]any{"PANEL": "dim"}, kiosk2))
	d.waitFor("kiosk 2026.11.2 running after space came back", func() bool {
		return d.releaseOf("kiosk") == "2026.11.2" && !d.status().UpdatePending
	})
	d.noViolations()
	d.stop()
}

// --- 2. modes ----------------------------------------------------------------

// A file mode with setuid, setgid or the sticky bit is refused, over the API
// (400) and from the target file, with nothing downloaded or installed and
// the journal saying why; "0000" installs the file with no permission bits.
func TestHardeningModes(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	uiPath := d.installed("kiosk", "ui")
	served := func() int64 {
		d.mu.Lock()
		defer d.mu.Unlock()
		var n int64
		for p, b := range d.served {
			if strings.Contains(p, "/2026.11.2/") {
				n += b
			}
		}
		return n
	}
	cmdsBefore := len(d.commands())
	for _, mode := range []string{"4755", "2755", "1755", "6755", "7777", "04755"} {
		// How the refusal names the mode: a valid octal mode with the
		// special bits, or not a mode at all.
		named := "mode " + mode + " of " + uiPath
		if len(mode) != 4 {
			named = `"` + mode + `"`
		}
		// rejected returns the newest rejected event from the file (or not).
		rejected := func(fromFile bool) string {
			for _, e := range d.journalEvents() {
				if e.Kind == "rejected" && strings.Contains(e.Message, "file:"+d.target) == fromFile {
					return e.Message
				}
			}
			return ""
		}
		doc := fileOf(t, d.targetDoc(nil, kiosk2), "kiosk", "ui", func(f map[string]any) { f["mode"] = mode })
		code, body := d.pushBody(doc)
		if code != 400 || !strings.Contains(message(body), named) {
			t.Errorf("push with mode %q: %d %s, want 400 naming the mode (%s)", mode, code, body, named)
		}
		if msg := rejected(false); !strings.Contains(msg, named) {
			t.Errorf("the push with mode %q: newest rejected event %q, want one naming the mode (%s)", mode, msg, named)
		}
		// The same from the target file: refused, and journalled as such.
		d.setTarget(doc)
		d.waitFor("the target file with mode "+mode+" rejected in the journal", func() bool {
			return strings.Contains(rejected(true), named)
		})
	}
	d.settle()
	if s := d.status(); s.UpdatePending || s.Release != "kiosk=2026.11.1" {
		t.Errorf("after refused modes: status %+v, want kiosk=2026.11.1 and nothing pending", s)
	}
	if n := served(); n != 0 {
		t.Errorf("refused targets downloaded %d bytes", n)
	}
	if got := readFile(t, uiPath); got != "kiosk/ui 2026.11.1" {
		t.Errorf("%s = %q after refused modes, want the first release's", uiPath, got)
	}
	if fi, err := os.Stat(uiPath); err != nil || fi.Mode() != 0o644 {
		t.Errorf("%s: mode %v (err %v) after refused modes, want -rw-r--r--", uiPath, fi.Mode(), err)
	}
	if cmds := d.commands(); len(cmds) != cmdsBefore {
		t.Errorf("refused targets ran commands: %q", cmds[cmdsBefore:])
	}

	// "0000": installed, and with no permission bit at all.
	doc := fileOf(t, d.targetDoc(nil, kiosk2), "kiosk", "ui", func(f map[string]any) { f["mode"] = "0000" })
	if code, body := d.pushBody(doc); code != 202 {
		t.Fatalf("push with mode 0000: %d %s, want 202", code, body)
	}
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.releaseOf("kiosk") == "2026.11.2" && !d.status().UpdatePending })
	fi, err := os.Lstat(uiPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0 {
		t.Errorf("%s installed with mode %v (%#o), want ---------- (0000)", uiPath, fi.Mode(), uint32(fi.Mode()))
	}
	if got := readFile(t, uiPath); got != "kiosk/ui 2026.11.2" {
		t.Errorf("%s = %q, want the new release's", uiPath, got)
	}
	if fi, err := os.Lstat(d.installed("kiosk", "backend")); err != nil || fi.Mode() != 0o644 {
		t.Errorf("backend installed with mode %v (err %v), want -rw-r--r--", fi.Mode(), err)
	}
	d.noViolations()
	d.stop()
}

// --- 3. install paths inside latch's own state -------------------------------

// fileState is what a test remembers of a path to see that it was left alone.
type fileState struct {
	exists  bool
	mode    os.FileMode
	ino     uint64
	size    int64
	mtime   time.Time
	content []byte
}

func stateOf(t *testing.T, p string) fileState {
	t.Helper()
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return fileState{}
	}
	if err != nil {
		t.Fatal(err)
	}
	s := fileState{exists: true, mode: fi.Mode(), ino: fi.Sys().(*syscall.Stat_t).Ino, size: fi.Size(), mtime: fi.ModTime()}
	if fi.Mode().IsRegular() {
		if s.content, err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s fileState) String() string {
	if !s.exists {
		return "absent"
	}
	return fmt.Sprintf("%v inode %d, %d bytes, modified %s", s.mode, s.ino, s.size, s.mtime.Format(time.RFC3339Nano))
}

func (s fileState) equal(o fileState) bool {
	return s.exists == o.exists && s.mode == o.mode && s.ino == o.ino && s.size == o.size && s.mtime.Equal(o.mtime) && bytes.Equal(s.content, o.content)
}

// A target that would install a file into the state dir, the lock dir, a
// device-wide lock path or its directory, or the run dir is refused with a
// 400 naming the path, and the file at that path is left as it was.
func TestHardeningSelfReferentialPaths(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	globals := globalLocks(t, d) // their directories exist, as on a booted board
	paths := []string{
		filepath.Join(d.stateDir, "journal.db"),
		filepath.Join(d.stateDir, "target.json"),
		filepath.Join(d.stateDir, "config.env"),
		filepath.Join(d.stateDir, "downloads", "blob"),
		d.stateDir,
		filepath.Join(d.lockDir, "services", "kiosk", "ui", "updates.lock"),
		filepath.Join(d.lockDir, "services", "meter", "probe", "resin-updates.lock"),
		d.lockDir,
		globals[0],
		filepath.Dir(globals[0]),
		globals[1],
		filepath.Join(filepath.Dir(globals[1]), "other"),
		filepath.Join(d.runDir, "api.sock"),
		d.runDir,
	}
	cmdsBefore := len(d.commands())
	journal := filepath.Join(d.stateDir, "journal.db")
	for _, p := range paths {
		before := stateOf(t, p)
		doc := fileOf(t, d.targetDoc(nil, kiosk2), "kiosk", "ui", func(f map[string]any) { f["path"] = p })
		code, body := d.pushBody(doc)
		if code != 400 || !strings.Contains(message(body), p) {
			t.Errorf("push installing at %s: %d %s, want 400 naming the path", p, code, body)
		}
		d.settle()
		after := stateOf(t, p)
		if p == journal || p == d.stateDir {
			// The agent journals the refusal itself: its journal (and
			// so the state dir's times) may change, but stays the same
			// file of the same mode.
			after.size, after.mtime, after.content = before.size, before.mtime, before.content
		}
		if !after.equal(before) {
			t.Errorf("%s was %s, now %s: a refused target touched it", p, before, after)
		}
	}
	if s := d.status(); s.UpdatePending || s.Release != "kiosk=2026.11.1" {
		t.Errorf("after refused targets: status %+v, want kiosk=2026.11.1 and nothing pending", s)
	}
	if cmds := d.commands(); len(cmds) != cmdsBefore {
		t.Errorf("refused targets ran commands: %q", cmds[cmdsBefore:])
	}
	if code := d.api("GET", "/ping", nil, nil); code != 200 {
		t.Errorf("the API socket answers %d after the refused targets, want 200", code)
	}
	d.stop()
}

// --- 4. config.env quoting ---------------------------------------------------

// A configuration value full of shell syntax is written to config.env so that
// a shell sourcing the file gets the value back byte for byte and runs
// nothing of it.
func TestHardeningConfigQuoting(t *testing.T) {
	d := newDevice(t)
	marks := t.TempDir()
	m1, m2, m3 := filepath.Join(marks, "backtick"), filepath.Join(marks, "dollar"), filepath.Join(marks, "semicolon")
	values := map[string]string{
		"HOSTILE":  "a`touch " + m1 + "`b$(touch " + m2 + ")c\"d\\e$HOME f'g\"; touch " + m3 + "; x=\"",
		"TRAILING": `ends with a backslash \`,
		"DOLLARS":  `$ $$ ${HOME} $1 \$ \\$ \" \\" '`,
		"EMPTY":    "",
		"SPACES":   "  two leading, two trailing  ",
		"GLOB":     "* ? [a] ~ # not a comment",
	}
	cfg := map[string]any{}
	for k, v := range values {
		cfg[k] = v
	}
	d.setTarget(d.targetDoc(cfg, kiosk1))
	d.start()
	d.waitFor("kiosk 2026.11.1 running", func() bool { return d.releaseOf("kiosk") == "2026.11.1" })
	env := filepath.Join(d.stateDir, "config.env")
	d.waitFor("config.env written", func() bool {
		b, _ := os.ReadFile(env)
		return bytes.Contains(b, []byte("HOSTILE="))
	})
	raw, _ := os.ReadFile(env)
	for _, sh := range []string{"/bin/sh", "/bin/dash", "/bin/bash"} {
		if _, err := os.Stat(sh); err != nil {
			continue
		}
		for k, want := range values {
			cmd := exec.Command(sh, "-c", `. "$0"; printf %s "$`+k+`"`, env)
			cmd.Dir = marks
			cmd.Env = []string{"HOME=/home/latch-test", "PATH=/usr/bin:/bin"}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil || stderr.Len() > 0 {
				t.Errorf("%s sourcing %s: %v %s\nfile:\n%s", sh, env, err, stderr.String(), raw)
			}
			if string(out) != want {
				t.Errorf("%s gets %s=%q from %s, want %q\nfile:\n%s", sh, k, out, env, want, raw)
			}
		}
	}
	for _, m := range []string{m1, m2, m3} {
		if exists(m) {
			t.Errorf("sourcing %s ran a command planted in a value: %s exists\nfile:\n%s", env, m, raw)
		}
	}
	d.stop()
	t.Run("systemd", func(t *testing.T) { systemdReadsEnv(t, d.stateDir, values) })
}

// nspawnRoot is the Debian rootfs with systemd that the lab keeps for
// systemd-nspawn (see the lab's README, section 3).
const nspawnRoot = "/var/cache/latch/nspawn/bookworm-amd64"

// systemdReadsEnv boots a real systemd in a container, on an overlay of
// nspawnRoot, with dir bind-mounted read-only at /latch, and checks that a
// unit whose EnvironmentFile is /latch/config.env sees every value of want
// byte for byte.
func systemdReadsEnv(t *testing.T, dir string, want map[string]string) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for systemd-nspawn: systemd's reading of config.env was not tested")
	}
	nspawn, err := exec.LookPath("systemd-nspawn")
	if err != nil {
		t.Skip("systemd-nspawn (Debian package systemd-container) is not installed: systemd's reading of config.env was not tested")
	}
	if _, err := os.Stat(filepath.Join(nspawnRoot, "usr/lib/systemd/systemd")); err != nil {
		t.Skipf("no systemd rootfs at %s (build it with debootstrap as in the lab's README, section 3): systemd's reading of config.env was not tested", nspawnRoot)
	}
	var out bytes.Buffer
	cmd := exec.Command(nspawn, "-q", "-b", "-D", nspawnRoot, "--volatile=overlay",
		fmt.Sprintf("--machine=latch-env-%d", os.Getpid()), "--register=no", "--keep-unit", "--console=passive",
		"--bind-ro="+dir+":/latch")
	lw := &lockedWriter{w: &out}
	cmd.Stdout, cmd.Stderr = lw, lw
	output := func() string {
		lw.mu.Lock()
		defer lw.mu.Unlock()
		return out.String()
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	pid1 := 0
	defer func() {
		if pid1 != 0 {
			exec.Command("nsenter", "-t", fmt.Sprint(pid1), "-a", "systemctl", "poweroff").Run()
		}
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("systemd-nspawn did not end within 30s of the poweroff")
		}
	}()
	if !within(30*time.Second, func() bool {
		b, _ := exec.Command("pgrep", "-P", fmt.Sprint(cmd.Process.Pid), "-x", "systemd").Output()
		_, err := fmt.Sscan(string(b), &pid1)
		return err == nil
	}) {
		t.Fatalf("the container's systemd did not start within 30s:\n%s", output())
	}
	enter := func(args ...string) *exec.Cmd {
		return exec.Command("nsenter", append([]string{"-t", fmt.Sprint(pid1), "-a"}, args...)...)
	}
	if !within(60*time.Second, func() bool {
		b, _ := enter("systemctl", "is-system-running").Output()
		s := strings.TrimSpace(string(b))
		return s == "running" || s == "degraded"
	}) {
		t.Fatalf("the container's systemd did not come up within 60s:\n%s", output())
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "config.env"))
	for _, k := range slices.Sorted(maps.Keys(want)) {
		var stderr bytes.Buffer
		c := enter("systemd-run", "--wait", "--pipe", "-q", "-p", "EnvironmentFile=/latch/config.env", "/usr/bin/printenv", k)
		c.Stderr = &stderr
		got, err := c.Output()
		if err != nil {
			t.Errorf("a unit with EnvironmentFile=config.env: printenv %s: %v %s\nfile:\n%s", k, err, stderr.String(), raw)
			continue
		}
		if g := strings.TrimSuffix(string(got), "\n"); g != want[k] {
			t.Errorf("a unit with EnvironmentFile=config.env gets %s=%q, want %q\nfile:\n%s", k, g, want[k], raw)
		}
	}
}

// --- 5. a target file that is not a regular file ---------------------------

// A FIFO, a directory or a file over 1 MiB at --target-file does not stop
// the agent: it answers the API, logs what is wrong with the file, takes up
// a good target written afterwards, and still stops on SIGTERM.
func TestHardeningTargetFileKinds(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T, d *device)
		logs string // what the log says about the file
	}{
		{"fifo", func(t *testing.T, d *device) {
			if err := syscall.Mkfifo(d.target, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "named pipe"},
		{"directory", func(t *testing.T, d *device) {
			if err := os.Mkdir(d.target, 0o755); err != nil {
				t.Fatal(err)
			}
		}, "directory"},
		{"over 1 MiB", func(t *testing.T, d *device) {
			// A valid document, padded with white space past the bound.
			doc := d.targetDoc(nil, kiosk1)
			doc = append(doc, bytes.Repeat([]byte(" "), 1<<20+1-len(doc))...)
			if err := os.WriteFile(d.target, doc, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "more than"},
		{"symlink to /dev/zero", func(t *testing.T, d *device) {
			// An endless file: read whole, it would eat the memory.
			if err := os.Symlink("/dev/zero", d.target); err != nil {
				t.Fatal(err)
			}
		}, "character device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDevice(t)
			tc.make(t, d)
			d.start()
			d.waitFor("the bad target file logged", func() bool {
				out := d.output()
				return strings.Contains(out, d.target) && strings.Contains(out, tc.logs)
			})
			if code := d.api("GET", "/ping", nil, nil); code != 200 {
				t.Errorf("GET /ping with a %s at the target file: %d, want 200", tc.name, code)
			}
			if s := d.status(); s.Release != "" || s.UpdatePending {
				t.Errorf("status with a %s at the target file: %+v, want no release and nothing pending", tc.name, s)
			}
			if n := len(d.commands()); n != 0 {
				t.Errorf("a %s at the target file ran %d commands", tc.name, n)
			}
			if tc.name == "directory" {
				if err := os.Remove(d.target); err != nil {
					t.Fatal(err)
				}
			}
			d.setTarget(d.targetDoc(nil, kiosk1))
			d.waitFor("kiosk 2026.11.1 running from the good target", func() bool {
				return d.releaseOf("kiosk") == "2026.11.1" && !d.status().UpdatePending
			})

			// The same thing put over the good target while the agent runs.
			tmp := d.target + ".bad"
			good := d.target
			d.target = tmp
			tc.make(t, d)
			d.target = good
			if tc.name == "directory" {
				// rename(2) puts a directory only over a directory.
				if err := os.Remove(d.target); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Rename(tmp, d.target); err != nil {
				t.Fatal(err)
			}
			d.waitFor("the bad target file logged again", func() bool {
				return strings.Count(d.output(), tc.logs) >= 2
			})
			if code := d.api("GET", "/ping", nil, nil); code != 200 {
				t.Errorf("GET /ping after a %s replaced the target file: %d, want 200", tc.name, code)
			}
			if s := d.status(); s.Release != "kiosk=2026.11.1" || s.UpdatePending {
				t.Errorf("status after a %s replaced the target file: %+v, want kiosk=2026.11.1 and nothing pending", tc.name, s)
			}
			if tc.name == "directory" {
				if err := os.Remove(d.target); err != nil {
					t.Fatal(err)
				}
			}
			d.setTarget(d.targetDoc(nil, kiosk2))
			d.waitFor("kiosk 2026.11.2 running from the good target", func() bool {
				return d.releaseOf("kiosk") == "2026.11.2" && !d.status().UpdatePending
			})
			d.noViolations()

			// SIGTERM with the bad thing at the path again.
			if err := os.Remove(d.target); err != nil {
				t.Fatal(err)
			}
			tc.make(t, d)
			d.waitFor("the bad target file logged a third time", func() bool {
				return strings.Count(d.output(), tc.logs) >= 3
			})
			d.stop() // fails the test if SIGTERM does not end the agent
		})
	}
}

// A configuration-only change pushed while the state dir is full cannot be
// written to config.env. Either the push is refused (5xx) and nothing
// changed, or it was accepted, and then the agent must not forget it: once
// space is back, config.env gets the new value without another push.
func TestHardeningFullDiskConfigOnly(t *testing.T) {
	d := newDevice(t)
	mountTmpfs(t, d, d.stateDir, 4<<20)
	d.setTarget(d.targetDoc(map[string]any{"PANEL": "dim"}, kiosk1))
	d.start()
	d.waitFor("kiosk 2026.11.1 running", func() bool { return d.releaseOf("kiosk") == "2026.11.1" && !d.status().UpdatePending })
	envPath := filepath.Join(d.stateDir, "config.env")
	envBefore, err := os.ReadFile(envPath)
	if err != nil {
		t.Fatalf("the agent wrote no config.env for PANEL: %v", err)
	}
	cmdsBefore := len(d.commands())
	filler := fillDisk(t, d.stateDir)
	code, body := d.pushBody(d.targetDoc(map[string]any{"PANEL": "bright"}, kiosk1))
	d.settle()
	if got, _ := os.ReadFile(envPath); !bytes.Equal(got, envBefore) {
		t.Errorf("config.env changed on a full disk:\n%s", got)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	switch {
	case code >= 500:
		d.settle()
		if got, _ := os.ReadFile(envPath); !bytes.Equal(got, envBefore) {
			t.Errorf("a configuration refused with %d %s was written once space came back:\n%s", code, body, got)
		}
	case code == 202:
		if !within(10*time.Second, func() bool {
			b, _ := os.ReadFile(envPath)
			return bytes.Contains(b, []byte(`PANEL="bright"`))
		}) {
			got, _ := os.ReadFile(envPath)
			t.Errorf("a configuration accepted (202) on a full disk was never written, 10s after space came back: %s holds\n%s\nwant PANEL=\"bright\"; the agent said:\n%s", envPath, got, d.output())
		}
	default:
		t.Errorf("push of a configuration on a full disk: %d %s, want 202 or a 5xx", code, body)
	}
	if cmds := d.commands(); len(cmds) != cmdsBefore {
		t.Errorf("a configuration-only change ran commands: %q", cmds[cmdsBefore:])
	}
	d.stop()
}

// An install path that is outside latch's state only as written, and inside
// it once resolved (a symlinked directory, /proc/self/root), must not reach
// latch's files either: the target is refused, or its install fails, and
// the journal, target.json and the API socket stay as they were.
func TestHardeningSelfReferentialAliases(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	alias := filepath.Join(d.root, "opt", "alias")
	if err := os.Symlink(d.stateDir, alias); err != nil {
		t.Fatal(err)
	}
	runAlias := filepath.Join(d.root, "opt", "run-alias")
	if err := os.Symlink(d.runDir, runAlias); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, real string }{
		{filepath.Join(alias, "journal.db"), filepath.Join(d.stateDir, "journal.db")},
		{filepath.Join(alias, "target.json"), filepath.Join(d.stateDir, "target.json")},
		{"/proc/self/root" + filepath.Join(d.stateDir, "journal.db"), filepath.Join(d.stateDir, "journal.db")},
		{filepath.Join(runAlias, "api.sock"), filepath.Join(d.runDir, "api.sock")},
	} {
		before := stateOf(t, tc.real)
		doc := fileOf(t, d.targetDoc(nil, kiosk2), "kiosk", "ui", func(f map[string]any) { f["path"] = tc.path })
		code, body := d.pushBody(doc)
		switch code {
		case 400:
			t.Logf("install at %s: refused at once: %s", tc.path, message(body))
		case 202:
			// Polled without failing at once: the API socket itself may
			// be what the install replaced.
			var s deviceStatus
			var apiErr error
			ended := within(30*time.Second, func() bool {
				c, b, err := d.request("GET", "/v1/device", nil)
				if apiErr = err; err != nil || c != 200 || json.Unmarshal([]byte(b), &s) != nil {
					return err != nil
				}
				return s.UpdateFailed || (!s.UpdatePending && s.Release == "kiosk=2026.11.2")
			})
			switch {
			case apiErr != nil:
				t.Errorf("install at %s (really %s): the API no longer answers: %v", tc.path, tc.real, apiErr)
			case !ended:
				t.Errorf("install at %s: neither failed nor done within 30s: status %+v", tc.path, s)
			case !s.UpdateFailed:
				t.Errorf("install at %s (really %s) succeeded: status %+v, want it refused", tc.path, tc.real, s)
			default:
				t.Logf("install at %s: accepted, then failed: %s", tc.path, s.Reason)
			}
		default:
			t.Errorf("push installing at %s: %d %s, want 400, or 202 and a failed install", tc.path, code, body)
		}
		after := stateOf(t, tc.real)
		if tc.real == filepath.Join(d.stateDir, "journal.db") {
			after.size, after.mtime, after.content = before.size, before.mtime, before.content
		}
		if !after.equal(before) {
			t.Errorf("%s (through %s) was %s, now %s", tc.real, tc.path, before, after)
		}
		if code, _, err := d.request("GET", "/ping", nil); err != nil || code != 200 {
			t.Fatalf("the API answers %d (%v) after an install at %s: the cases after it cannot run", code, err, tc.path)
		}
		// Back to the running release for the next case.
		if c, b := d.pushBody(d.targetDoc(nil, kiosk1)); c != 202 {
			t.Fatalf("push of the running release: %d %s", c, b)
		}
		d.waitFor("nothing pending", func() bool { s := d.status(); return !s.UpdatePending && !s.UpdateFailed })
	}
	if got := readFile(t, d.installed("kiosk", "ui")); got != "kiosk/ui 2026.11.1" {
		t.Errorf("installed ui = %q, want the first release's", got)
	}
	d.stop()
}

// A target file that arrives while the state dir is full cannot be journalled:
// it leaves no trace then, and once space is back the agent takes it up
// without the file having to change (the watch delivers a file's content
// once; the target is valid, only the disk was full).
func TestHardeningFullDiskTargetFile(t *testing.T) {
	d := newDevice(t)
	mountTmpfs(t, d, d.stateDir, 4<<20)
	firstRelease(t, d)
	d.waitFor("nothing pending", func() bool { return !d.status().UpdatePending })
	cmdsBefore := len(d.commands())
	filler := fillDisk(t, d.stateDir)
	d.setTarget(d.targetDoc(map[string]any{"METER_NOTE": strings.Repeat("n", 64<<10)}, kiosk2, meter1))
	d.waitFor("the target file refused for the full disk", func() bool {
		return strings.Contains(d.output(), "target from file:"+d.target) && strings.Contains(d.output(), "no space left")
	})
	d.settle()
	if s := d.status(); s.Release != "kiosk=2026.11.1" || s.UpdatePending {
		t.Errorf("status after the refused target file: %+v, want kiosk=2026.11.1 and nothing pending", s)
	}
	if exists(d.serviceDir("meter", "probe")) {
		t.Errorf("the refused target's lock directory %s exists", d.serviceDir("meter", "probe"))
	}
	if cmds := d.commands(); len(cmds) != cmdsBefore {
		t.Errorf("a refused target ran commands: %q", cmds[cmdsBefore:])
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if !within(30*time.Second, func() bool {
		return d.rel("kiosk") == "2026.11.2" && d.rel("meter") == "1.0" && !d.poll().UpdatePending
	}) {
		t.Errorf("30s after space came back, the target file refused on the full disk is still not taken up: status %+v\nagent output:\n%s", d.poll(), d.output())
	}
	d.noViolations()
	d.stop()
}

// An agent started on a full state dir comes up (READY, API, status of the
// release it runs) rather than exiting into a restart loop, and works once
// space is back.
func TestHardeningFullDiskStart(t *testing.T) {
	d := newDevice(t)
	mountTmpfs(t, d, d.stateDir, 4<<20)
	firstRelease(t, d)
	d.waitFor("nothing pending", func() bool { return !d.status().UpdatePending })
	d.stop()
	filler := fillDisk(t, d.stateDir)
	d.start()
	if code := d.api("GET", "/ping", nil, nil); code != 200 {
		t.Errorf("GET /ping of an agent started on a full disk: %d, want 200", code)
	}
	if s := d.status(); s.Release != "kiosk=2026.11.1" || s.UpdatePending {
		t.Errorf("status of an agent started on a full disk: %+v, want kiosk=2026.11.1 and nothing pending", s)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("kiosk 2026.11.2 running once space came back", func() bool {
		return d.releaseOf("kiosk") == "2026.11.2" && !d.status().UpdatePending
	})
	d.noViolations()
	d.stop()
}

// Configuration that config.env could not hold as one assignment (a key that
// is not a variable name, a value with a line break or a NUL, which would
// start a second assignment of the attacker's) is refused with a 400 naming
// the key, and config.env stays as it was.
func TestHardeningConfigRefused(t *testing.T) {
	d := newDevice(t)
	d.setTarget(d.targetDoc(map[string]any{"PANEL": "dim"}, kiosk1))
	d.start()
	d.waitFor("kiosk 2026.11.1 running", func() bool { return d.releaseOf("kiosk") == "2026.11.1" })
	env := filepath.Join(d.stateDir, "config.env")
	d.waitFor("config.env written", func() bool { return exists(env) })
	before := stateOf(t, env)
	mark := filepath.Join(t.TempDir(), "ran")
	for _, tc := range []struct {
		key   string
		value any
	}{
		{"A;touch " + mark + ";B", "1"},
		{"A B", "1"},
		{"1A", "1"},
		{"A=B", "1"},
		{"A$(touch " + mark + ")", "1"},
		{"", "1"},
		{"NOTE", "one\nLD_PRELOAD=/tmp/evil.so"},
		{"NOTE", "one\rtwo"},
		{"NOTE", "one\x00two"},
		{"NOTE", map[string]any{"value": "one\ntouch " + mark, "reboot": true}},
		{"NOTE", 42},
	} {
		doc := d.targetDoc(map[string]any{"PANEL": "bright", tc.key: tc.value}, kiosk1)
		code, body := d.pushBody(doc)
		if code != 400 || !strings.Contains(message(body), "config") {
			t.Errorf("config %q=%#v: %d %s, want 400 naming the config entry", tc.key, tc.value, code, body)
		}
	}
	d.settle()
	if after := stateOf(t, env); !after.equal(before) {
		b, _ := os.ReadFile(env)
		t.Errorf("%s changed after refused configurations: was %s, now %s:\n%s", env, before, after, b)
	}
	out, err := exec.Command("/bin/sh", "-c", `. "$0"; printf %s "$PANEL"`, env).CombinedOutput()
	if err != nil || string(out) != "dim" {
		t.Errorf("sourcing %s: %q %v, want PANEL=dim", env, out, err)
	}
	if exists(mark) {
		t.Errorf("a command planted in a refused configuration ran: %s exists", mark)
	}
	if s := d.status(); s.UpdatePending || s.Release != "kiosk=2026.11.1" {
		t.Errorf("status after refused configurations: %+v, want kiosk=2026.11.1 and nothing pending", s)
	}
	d.stop()
}

// A hold whose lock entry cannot be written (the lock dir's file system is
// full) is refused, and the journal forgets it: it does not come back once
// space is back, nor after a restart, and it blocks no update.
func TestHardeningFullLockDir(t *testing.T) {
	d := newDevice(t)
	mountTmpfs(t, d, d.lockDir, 1<<20)
	firstRelease(t, d)
	d.waitFor("nothing pending", func() bool { return !d.status().UpdatePending })
	filler := fillDisk(t, d.lockDir)
	entry := filepath.Join(d.serviceDir("kiosk", "ui"), "latch-hold.lock")
	code, body, err := d.request("POST", "/v2/locks", map[string]any{"app": "kiosk", "service": "ui", "reason": "calibration"})
	if err != nil {
		t.Fatal(err)
	}
	if code < 500 {
		t.Errorf("hold with a full lock dir: %d %s, want a 5xx refusal", code, body)
	} else if !strings.Contains(message(body), "no space left") || !strings.Contains(message(body), "kiosk/ui") {
		t.Errorf("hold with a full lock dir refused with %q, want it to name the service and say that the disk is full", message(body))
	}
	noHold := func(when string) {
		t.Helper()
		if s := d.fullStatus(); len(s.Holds) != 0 {
			t.Errorf("%s: the refused hold is in the status: %+v", when, s.Holds)
		}
		for _, p := range d.lockPaths() {
			if strings.HasPrefix(p, entry) {
				t.Errorf("%s: the refused hold is listed by GET /v2/locks: %s", when, p)
			}
		}
		if exists(entry) {
			t.Errorf("%s: the refused hold left its entry %s", when, entry)
		}
	}
	noHold("on the full lock dir")
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	d.settle()
	noHold("after space came back")
	d.stop()
	d.start()
	noHold("after a restart")
	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.releaseOf("kiosk") == "2026.11.2" && !d.status().UpdatePending })
	d.noViolations()
	d.stop()
}
