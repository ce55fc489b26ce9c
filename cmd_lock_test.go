package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"latch/agent/lock"
)

// testLatchBin is the latch binary built by TestMain for the CLI tests of
// every subcommand (package main has one TestMain: reuse it).
var testLatchBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "latch-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755)
	testLatchBin = filepath.Join(dir, "latch")
	if bin := os.Getenv("LATCH_BIN"); bin != "" {
		// A latch built for the architecture under test (scripts/cross-test.sh).
		testLatchBin = bin
	} else if out, err := exec.Command("go", "build", "-o", testLatchBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build latch: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cliRoot returns a device root for one test, reachable by other users.
func lockTestRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	os.Chmod(root, 0o755)
	os.Chmod(filepath.Dir(root), 0o755)
	return root
}

// runLatch runs the binary with --root root inserted after the subcommand, and
// returns stdout, stderr and the exit status.
func runLatch(t *testing.T, root string, args ...string) (string, string, int) {
	t.Helper()
	cmd := latchCmd(root, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run latch %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func latchCmd(root string, args ...string) *exec.Cmd {
	a := append([]string{args[0], "--root", root}, args[1:]...)
	cmd := exec.Command(testLatchBin, a...)
	cmd.Env = append(os.Environ(), "BALENA_APP_LOCK_PATH=")
	return cmd
}

func locksJSON(t *testing.T, root string, extra ...string) []lock.Entry {
	t.Helper()
	out, errs, code := runLatch(t, root, append([]string{"locks", "--json"}, extra...)...)
	if code != 0 {
		t.Fatalf("latch locks --json: status %d: %s", code, errs)
	}
	var es []lock.Entry
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		t.Fatalf("latch locks --json printed %q: %v", out, err)
	}
	if es == nil {
		t.Fatalf("latch locks --json printed %q, want an array", out)
	}
	return es
}

func lockTestExists(p string) bool { _, err := os.Lstat(p); return err == nil }

func TestLockExitStatus(t *testing.T) {
	for _, tc := range []struct {
		name     string
		preheld  bool
		args     []string
		want     int
		wantErr  string
		wantLeft bool // the lock path exists afterwards
	}{
		{"success", false, []string{"--", "true"}, 0, "", false},
		{"status passed through", false, []string{"--", "sh", "-c", "exit 3"}, 3, "", false},
		{"signal is 128+N", false, []string{"--", "sh", "-c", "kill -TERM $$"}, 128 + 15, "", false},
		{"held exits 73 naming the holder", true, []string{"--", "true"}, 73, "is held", true},
		{"wait gives up with 75", true, []string{"--wait=200ms", "--", "true"}, 75, "gave up after 200ms", true},
		{"command not found", false, []string{"--", "/nonexistent/cmd"}, 127, "run /nonexistent/cmd", false},
		{"no command", false, nil, 2, "give -- CMD", false},
		{"-- missing", false, []string{"--wait", "30s"}, 2, "put -- before CMD", false},
		{"detach and command", false, []string{"--detach", "--", "true"}, 2, "not both", false},
		{"detach", false, []string{"--detach"}, 0, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := lockTestRoot(t)
			p := filepath.Join(root, "app.lock")
			if tc.preheld {
				if _, errs, code := runLatch(t, root, "lock", "--path", p, "--detach"); code != 0 {
					t.Fatalf("detach: %d %s", code, errs)
				}
			}
			_, errs, code := runLatch(t, root, append([]string{"lock", "--path", p}, tc.args...)...)
			if code != tc.want {
				t.Errorf("got status %d, want %d (stderr %q)", code, tc.want, errs)
			}
			if !strings.Contains(errs, tc.wantErr) {
				t.Errorf("got stderr %q, want it to contain %q", errs, tc.wantErr)
			}
			if tc.preheld && !strings.Contains(errs, "pid ") {
				t.Errorf("got stderr %q, want it to name the holder's pid", errs)
			}
			if lockTestExists(p) != tc.wantLeft {
				t.Errorf("lock exists afterwards: got %v, want %v", lockTestExists(p), tc.wantLeft)
			}
		})
	}
}

// TestLockDefaultPaths: --service, $BALENA_APP_LOCK_PATH and the first
// device-wide path.
func TestLockDefaultPaths(t *testing.T) {
	root := lockTestRoot(t)
	for _, tc := range []struct {
		name string
		args []string
		env  string
		want string
	}{
		{"service", []string{"--service", "kiosk/ui"}, "", filepath.Join(root, "tmp/latch/services/kiosk/ui/updates.lock")},
		{"BALENA_APP_LOCK_PATH", nil, filepath.Join(root, "env.lock"), filepath.Join(root, "env.lock")},
		{"first device-wide lock", nil, "", filepath.Join(root, "tmp/balena/updates.lock")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"lock", "--root", root}, tc.args...), "--", "sh", "-c", `test -f "$0" && cat "$0"`, tc.want)
			cmd := exec.Command(testLatchBin, args...)
			cmd.Env = append(os.Environ(), "BALENA_APP_LOCK_PATH="+tc.env)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("latch lock: %v: %s", err, out)
			}
			rec, ok := lock.ParseRecord(out)
			if !ok || rec.Role != lock.RoleUser {
				t.Errorf("lock file held %q, want latch's user record", out)
			}
			if lockTestExists(tc.want) {
				t.Errorf("%s left after CMD", tc.want)
			}
		})
	}
	if _, errs, code := runLatch(t, root, "lock", "--service", "../x", "--", "true"); code != 2 || !strings.Contains(errs, "app name") {
		t.Errorf("bad --service: got %d %q, want 2 naming the app name", code, errs)
	}
}

// TestLockFlockAndHolder: while CMD runs, latch holds a flock(2) on the lock
// (flock -n fails) and latch locks names latch as the holder.
func TestLockFlockAndHolder(t *testing.T) {
	lockNeedBin(t, "flock")
	root := lockTestRoot(t)
	p := filepath.Join(root, "tmp/balena/updates.lock")
	script := `flock -n "$0" true; echo "flock=$?"; exec "$1" locks --root "$2" --json`
	cmd := latchCmd(root, "lock", "--", "sh", "-c", script, p, testLatchBin, root)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("latch lock: %v", err)
	}
	first, rest, _ := strings.Cut(string(out), "\n")
	if first != "flock=1" {
		t.Errorf("flock -n while CMD runs: got %q, want flock=1 (lock busy)", first)
	}
	var es []lock.Entry
	if err := json.Unmarshal([]byte(rest), &es); err != nil || len(es) != 1 {
		t.Fatalf("locks --json: %v %q", err, rest)
	}
	e := es[0]
	if e.Path != p || e.Kind != lock.KindFile || e.State != lock.StateHeld || e.Holder == nil || e.Holder.PID != cmd.Process.Pid || e.Record == nil {
		t.Errorf("got %+v holder %+v, want held file %s held by latch pid %d", e, e.Holder, p, cmd.Process.Pid)
	}
	if lockTestExists(p) {
		t.Errorf("lock left after CMD")
	}
}

// TestLockSignalForwarding: SIGTERM to latch reaches CMD, which traps it and
// exits 42; latch exits 42 and removes the lock.
func TestLockSignalForwarding(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1} {
		t.Run(sig.String(), func(t *testing.T) {
			root := lockTestRoot(t)
			p := filepath.Join(root, "x.lock")
			name := strings.TrimPrefix(strings.ToUpper(lockSigName(sig)), "SIG")
			cmd := latchCmd(root, "lock", "--path", p, "--", "sh", "-c", fmt.Sprintf(`trap "exit 42" %s; echo ready; while :; do sleep 0.05; done`, name))
			stdout, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
				t.Fatalf("CMD said %q, want ready", line)
			}
			cmd.Process.Signal(sig)
			err := cmd.Wait()
			if code := cmd.ProcessState.ExitCode(); code != 42 {
				t.Errorf("got status %d (%v), want 42", code, err)
			}
			if lockTestExists(p) {
				t.Errorf("lock left after CMD")
			}
		})
	}
}

func lockSigName(s syscall.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "TERM"
	case syscall.SIGINT:
		return "INT"
	case syscall.SIGHUP:
		return "HUP"
	case syscall.SIGUSR1:
		return "USR1"
	}
	return ""
}

// TestLockReplacedIsKept: a lock replaced while CMD runs is not removed.
func TestLockReplacedIsKept(t *testing.T) {
	root := lockTestRoot(t)
	p := filepath.Join(root, "x.lock")
	_, errs, code := runLatch(t, root, "lock", "--path", p, "--", "sh", "-c", `rm "$0" && echo theirs > "$0"`, p)
	if code != 0 {
		t.Fatalf("status %d: %s", code, errs)
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "theirs\n" {
		t.Errorf("replacement: got %q, %v; want it kept", b, err)
	}
	if !strings.Contains(errs, "replaced") {
		t.Errorf("stderr %q does not say the lock was replaced", errs)
	}
}

// TestLockWaitIsWoken: --wait takes the lock once the holder releases it.
func TestLockWaitIsWoken(t *testing.T) {
	root := lockTestRoot(t)
	p := filepath.Join(root, "x.lock")
	if _, errs, code := runLatch(t, root, "lock", "--path", p, "--detach"); code != 0 {
		t.Fatal(errs)
	}
	cmd := latchCmd(root, "lock", "--path", p, "--wait", "--", "echo", "got it")
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lockWaitInotify(t, cmd.Process.Pid)
	if _, errs, code := runLatch(t, root, "unlock", "--path", p); code != 0 {
		t.Fatalf("unlock: %d %s", code, errs)
	}
	if err := cmd.Wait(); err != nil || out.String() != "got it\n" {
		t.Errorf("waiter: %v, output %q; want success and 'got it'", err, out.String())
	}
}

// waitForInotify polls (with a deadline: nothing else can be awaited) until
// pid has an inotify descriptor, i.e. is waiting for the lock.
func lockWaitInotify(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
		for _, fd := range fds {
			if l, _ := os.Readlink(fd); l == "anon_inode:inotify" {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("pid %d never started waiting", pid)
}

func TestUnlock(t *testing.T) {
	root := lockTestRoot(t)
	p := filepath.Join(root, "x.lock")
	if _, errs, code := runLatch(t, root, "unlock", "--path", p); code != 1 || !strings.Contains(errs, "no lock at") {
		t.Errorf("unlock of nothing: %d %q; want 1, no lock", code, errs)
	}
	if _, errs, code := runLatch(t, root, "lock", "--path", p, "--detach"); code != 0 {
		t.Fatal(errs)
	}
	es := locksJSON(t, root, "--global-lock", p)
	if len(es) != 1 || es[0].Holder == nil || es[0].Holder.PID != os.Getpid() {
		t.Errorf("detached lock: got %+v, want held by this test process %d (latch's parent)", es, os.Getpid())
	}
	if _, errs, code := runLatch(t, root, "unlock", "--path", p); code != 0 || lockTestExists(p) {
		t.Errorf("unlock: %d %q exists=%v; want removed", code, errs, lockTestExists(p))
	}
	// Another tool's lock, and latch's agent's: refused without --force.
	for _, make := range []func() error{
		func() error { return os.WriteFile(p, []byte("1234\n"), 0o644) },
		func() error { return os.Symlink("/nowhere", p) },
		func() error { return os.Mkdir(p, 0o755) },
		func() error {
			_, err := lock.Create(p, lock.NewRecord(lock.RoleAgent), -1, -1)
			return err
		},
	} {
		if err := make(); err != nil {
			t.Fatal(err)
		}
		if _, errs, code := runLatch(t, root, "unlock", "--path", p); code != 1 || !lockTestExists(p) || !strings.Contains(errs, "--force") {
			t.Errorf("unlock of a foreign entry: %d %q exists=%v; want refused, pointing at --force", code, errs, lockTestExists(p))
		}
		if _, errs, code := runLatch(t, root, "unlock", "--path", p, "--force"); code != 0 || lockTestExists(p) {
			t.Errorf("unlock --force: %d %q exists=%v; want removed", code, errs, lockTestExists(p))
		}
	}
}

func TestLocksListing(t *testing.T) {
	root := lockTestRoot(t)
	if es := locksJSON(t, root); len(es) != 0 {
		t.Errorf("empty: got %+v, want []", es)
	}
	if out, _, _ := runLatch(t, root, "locks"); !strings.Contains(out, "no locks held") {
		t.Errorf("empty table: got %q, want 'no locks held'", out)
	}
	dir := filepath.Join(root, "tmp/latch/services/kiosk/ui")
	if _, errs, code := runLatch(t, root, "lock", "--service", "kiosk/ui", "--detach"); code != 0 {
		t.Fatal(errs)
	}
	os.Symlink("/nowhere", filepath.Join(dir, lock.ResinName))
	os.MkdirAll(filepath.Join(root, "tmp/resin"), 0o755)
	os.Mkdir(filepath.Join(root, "tmp/resin/resin-updates.lock"), 0o755)
	es := locksJSON(t, root)
	type row struct {
		app, svc, name string
		kind           lock.Kind
	}
	want := []row{
		{"kiosk", "ui", lock.ResinName, lock.KindSymlink},
		{"kiosk", "ui", lock.UpdatesName, lock.KindFile},
		{"", "", "resin-updates.lock", lock.KindDir},
	}
	if len(es) != len(want) {
		t.Fatalf("got %d entries %+v, want %d", len(es), es, len(want))
	}
	for i, w := range want {
		e := es[i]
		if e.App != w.app || e.Service != w.svc || filepath.Base(e.Path) != w.name || e.Kind != w.kind || e.Since.IsZero() {
			t.Errorf("entry %d: got %s/%s %s %s since %v, want %s/%s %s %s", i, e.App, e.Service, e.Path, e.Kind, e.Since, w.app, w.svc, w.name, w.kind)
		}
	}
	out, _, _ := runLatch(t, root, "locks")
	for _, s := range []string{"PATH", "APP/SERVICE", "HOLDER", "kiosk/ui", "symlink", "(device)", "pid "} {
		if !strings.Contains(out, s) {
			t.Errorf("table %q lacks %q", out, s)
		}
	}
	// The JSON keys of spec section 3.
	raw, _, _ := runLatch(t, root, "locks", "--json")
	var objs []map[string]any
	json.Unmarshal([]byte(raw), &objs)
	for _, k := range []string{"app", "service", "path", "kind", "uid", "since", "state", "holder"} {
		if _, ok := objs[0][k]; !ok {
			t.Errorf("JSON object lacks key %q: %v", k, objs[0])
		}
	}
	if _, err := time.Parse(time.RFC3339, objs[0]["since"].(string)); err != nil {
		t.Errorf("since is not RFC 3339: %v", err)
	}
}

func TestHelp(t *testing.T) {
	for _, c := range []string{"lock", "unlock", "locks"} {
		out, _, code := runLatch(t, lockTestRoot(t), c, "-h")
		if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, "Example:") || !strings.Contains(out, "latch "+c) {
			t.Errorf("latch %s -h: status %d, output %q; want usage, flags and an example", c, code, out)
		}
	}
}

func lockNeedBin(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed: not tested", name)
	}
	return p
}

// holdTool starts a real lock tool holding path; it prints "ready" once it
// holds the lock and releases it when its stdin closes.
type holdTool struct {
	name    string
	need    func(t *testing.T)
	cmd     func(path string) *exec.Cmd
	lockAt  func(path string) string // where the entry appears
	pid     bool                     // latch names its pid
	leaves  bool                     // the entry stays after release (balena rule: still held)
	release func(path string)        // extra step after the tool exits
}

func TestRealToolsSeenHeld(t *testing.T) {
	npmDir, _ := filepath.Abs("testdata/lock/npm/node_modules")
	tools := []holdTool{
		{name: "flock(1)", need: func(t *testing.T) { lockNeedBin(t, "flock") },
			cmd: func(p string) *exec.Cmd {
				return exec.Command("flock", p, "sh", "-c", "echo ready; exec cat >/dev/null")
			}, lockAt: func(p string) string { return p }, pid: true, leaves: true,
			release: func(p string) { os.Remove(p) }},
		{name: "procmail lockfile(1)", need: func(t *testing.T) { lockNeedBin(t, "lockfile") },
			cmd: func(p string) *exec.Cmd {
				return exec.Command("sh", "-c", `lockfile -1 "$0" && echo ready && cat >/dev/null; rm -f "$0"`, p)
			}, lockAt: func(p string) string { return p }},
		{name: "python3-lockfile", need: func(t *testing.T) {
			if exec.Command("/usr/bin/python3", "-c", "import lockfile").Run() != nil {
				t.Skip("python3-lockfile not installed (apt-get install python3-lockfile): not tested")
			}
		}, cmd: func(p string) *exec.Cmd {
			return exec.Command("/usr/bin/python3", "-c", `import lockfile.linklockfile, sys
l = lockfile.linklockfile.LinkLockFile(sys.argv[1][:-len(".lock")])
l.acquire()
print("ready", flush=True)
sys.stdin.read()
l.release()`, p)
		}, lockAt: func(p string) string { return p }},
		{name: "npm lockfile", need: func(t *testing.T) {
			lockNeedBin(t, "node")
			if !lockTestExists(filepath.Join(npmDir, "lockfile")) {
				t.Skip("npm lockfile not installed (npm install --prefix testdata/lock/npm): not tested")
			}
		}, cmd: func(p string) *exec.Cmd {
			c := exec.Command("node", "-e", `const lf = require("lockfile"); const p = process.argv[1];
lf.lockSync(p); console.log("ready");
process.stdin.on("end", () => { lf.unlockSync(p); process.exit(0); }); process.stdin.resume();`, p)
			c.Env = append(os.Environ(), "NODE_PATH="+npmDir)
			return c
		}, lockAt: func(p string) string { return p }},
	}
	for _, tool := range tools {
		t.Run(tool.name, func(t *testing.T) {
			tool.need(t)
			root := lockTestRoot(t)
			svcDir := filepath.Join(root, "tmp/latch/services/app/svc")
			if _, errs, code := runLatch(t, root, "lock", "--service", "app/svc", "--detach"); code != 0 {
				t.Fatal(errs)
			}
			if _, errs, code := runLatch(t, root, "unlock", "--service", "app/svc"); code != 0 {
				t.Fatal(errs)
			}
			p := filepath.Join(svcDir, lock.UpdatesName)
			c := tool.cmd(p)
			stdin, _ := c.StdinPipe()
			stdout, _ := c.StdoutPipe()
			c.Stderr = os.Stderr
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			defer c.Process.Kill()
			if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
				t.Fatalf("%s said %q, want ready", tool.name, line)
			}
			es := locksJSON(t, root)
			if len(es) != 1 || es[0].Path != tool.lockAt(p) || es[0].Kind != lock.KindFile || es[0].State != lock.StateHeld || es[0].App != "app" {
				t.Fatalf("while held: got %+v, want one held file at %s", es, p)
			}
			if tool.pid && (es[0].Holder == nil || es[0].Holder.PID != c.Process.Pid) {
				t.Errorf("holder: got %+v, want pid %d", es[0].Holder, c.Process.Pid)
			}
			if _, errs, code := runLatch(t, root, "lock", "--service", "app/svc", "--", "true"); code != 73 {
				t.Errorf("latch lock while %s holds: status %d (%s), want 73", tool.name, code, errs)
			}
			stdin.Close()
			io.Copy(io.Discard, stdout)
			if err := c.Wait(); err != nil {
				t.Fatalf("%s: %v", tool.name, err)
			}
			es = locksJSON(t, root)
			if tool.leaves {
				// Spec 3: a file left behind still blocks, with no holder.
				if len(es) != 1 || es[0].Holder != nil || es[0].State != lock.StateHeld {
					t.Errorf("after release: got %+v, want the left file, held, holder unknown", es)
				}
				tool.release(p)
				es = locksJSON(t, root)
			}
			if len(es) != 0 {
				t.Errorf("after release: got %+v, want no locks", es)
			}
			if _, errs, code := runLatch(t, root, "lock", "--service", "app/svc", "--", "true"); code != 0 {
				t.Errorf("latch lock after release: status %d (%s), want 0", code, errs)
			}
		})
	}
}

// TestMutualExclusion: latch lock --wait and lockfile(1) contend for one
// path; a critical section that makes a marker directory detects a second
// entrant. None may ever get in while another is inside.
func TestMutualExclusion(t *testing.T) {
	lockNeedBin(t, "lockfile")
	root := lockTestRoot(t)
	p := filepath.Join(root, "shared.lock")
	marker := filepath.Join(root, "inside")
	breach := filepath.Join(root, "breach")
	count := filepath.Join(root, "count")
	crit := fmt.Sprintf(`mkdir %q 2>/dev/null || echo "$$" >> %q; echo x >> %q; rmdir %q 2>/dev/null`, marker, breach, count, marker)
	const latchWorkers, latchRounds, lfWorkers, lfRounds = 3, 70, 3, 8
	// One shell starts every worker and waits for them all: the test process
	// forks once (under qemu-user, concurrent forks of a threaded process
	// can hang the emulator).
	var script strings.Builder
	for i := range latchWorkers + lfWorkers {
		if i < latchWorkers {
			fmt.Fprintf(&script, `(i=0; while [ $i -lt %d ]; do %q lock --path %q --wait -- sh -c %q || exit 1; i=$((i+1)); done) & `, latchRounds, testLatchBin, p, crit)
		} else {
			fmt.Fprintf(&script, `(i=0; while [ $i -lt %d ]; do lockfile -1 %q || exit 1; %s; rm -f %q; i=$((i+1)); done) & `, lfRounds, p, crit, p)
		}
		fmt.Fprintf(&script, "pids=\"$pids $!\"\n")
	}
	script.WriteString(`rc=0; for p in $pids; do wait $p || rc=1; done; exit $rc`)
	if out, err := exec.Command("sh", "-c", script.String()).CombinedOutput(); err != nil {
		t.Errorf("a worker failed: %v: %s", err, out)
	}
	if b, err := os.ReadFile(breach); err == nil {
		t.Errorf("a second process entered the critical section %d times", bytes.Count(b, []byte("\n")))
	}
	b, _ := os.ReadFile(count)
	if got, want := bytes.Count(b, []byte("\n")), latchWorkers*latchRounds+lfWorkers*lfRounds; got != want {
		t.Errorf("rounds: got %d, want %d", got, want)
	}
	if lockTestExists(p) {
		t.Errorf("lock left at the end")
	}
}

// TestLockSymlinkAttack: a lock path or lock directory planted as a symlink
// to a file outside is refused, and the file is left as it was.
func TestLockSymlinkAttack(t *testing.T) {
	for _, tc := range []struct {
		name    string
		plant   func(root, target string) error
		args    []string
		want    int
		wantErr string
	}{
		{"lock path", func(root, target string) error {
			return os.Symlink(target, filepath.Join(root, "x.lock"))
		}, []string{"--path", "x.lock"}, exitLocked, "(symlink)"},
		{"device-wide lock", func(root, target string) error {
			os.MkdirAll(filepath.Join(root, "tmp/balena"), 0o1777)
			return os.Symlink(target, filepath.Join(root, "tmp/balena/updates.lock"))
		}, nil, exitLocked, "(symlink)"},
		{"service lock dir", func(root, target string) error {
			os.MkdirAll(filepath.Join(root, "tmp/latch/services/app"), 0o1777)
			return os.Symlink(filepath.Dir(target), filepath.Join(root, "tmp/latch/services/app/svc"))
		}, []string{"--service", "app/svc"}, exitFailure, "services/app/svc: path component is a symlink"},
		{"lock root", func(root, target string) error {
			os.MkdirAll(filepath.Join(root, "tmp"), 0o1777)
			return os.Symlink(filepath.Dir(target), filepath.Join(root, "tmp/latch"))
		}, []string{"--service", "app/svc"}, exitFailure, "tmp/latch: path component is a symlink"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := lockTestRoot(t)
			outside := t.TempDir()
			target := filepath.Join(outside, "updates.lock")
			os.WriteFile(target, []byte("precious"), 0o600)
			before, _ := os.Lstat(target)
			if err := tc.plant(root, target); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"lock"}, tc.args...)
			args = append(args, "--", "touch", target+".ran")
			cmd := latchCmd(root, args...)
			cmd.Dir = root
			out, _ := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != tc.want || !strings.Contains(string(out), tc.wantErr) {
				t.Errorf("got status %d %q, want %d and %q", code, out, tc.want, tc.wantErr)
			}
			after, _ := os.Lstat(target)
			b, _ := os.ReadFile(target)
			if string(b) != "precious" || after.Mode() != before.Mode() || after.Sys().(*syscall.Stat_t).Uid != before.Sys().(*syscall.Stat_t).Uid || !after.ModTime().Equal(before.ModTime()) {
				t.Errorf("target changed: %q mode %v", b, after.Mode())
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 1 {
				t.Errorf("outside dir holds %d entries, want 1 (CMD must not have run)", len(ents))
			}
		})
	}
}
