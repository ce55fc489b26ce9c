package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
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
	cmd.Env = append(os.Environ(), "BALENA_APP_LOCK_PATH=", "RESIN_APP_LOCK_PATH=")
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

// TestLockRunsCommandAsGiven: CMD is found on PATH, gets its arguments,
// environment and terminal (stdin, stdout, stderr) as given, and a CMD that
// cannot be run exits 127 (not found) or 126 (found, not runnable), naming
// it, with the lock removed.
func TestLockRunsCommandAsGiven(t *testing.T) {
	root := lockTestRoot(t)
	p := filepath.Join(root, "app.lock")
	cmd := latchCmd(root, "lock", "--path", p, "--", "sh", "-c", `read line; echo "$0|$1|$LATCH_TEST_VALUE|$line"; echo err >&2`, "arg zero", "a b")
	cmd.Env = append(cmd.Env, "LATCH_TEST_VALUE=v=1 2")
	cmd.Stdin = strings.NewReader("from stdin\n")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("latch lock: %v %s", err, errb.String())
	}
	if got, want := out.String(), "arg zero|a b|v=1 2|from stdin\n"; got != want {
		t.Errorf("CMD printed %q, want %q", got, want)
	}
	if errb.String() != "err\n" {
		t.Errorf("CMD's stderr %q, want %q", errb.String(), "err\n")
	}

	garbage := filepath.Join(root, "garbage")
	os.WriteFile(garbage, []byte{0x7f, 'E', 'L', 'F', 0, 1, 2, 3}, 0o755)
	plain := filepath.Join(root, "plain")
	os.WriteFile(plain, []byte("#!/bin/sh\ntrue\n"), 0o644)
	for _, tc := range []struct {
		cmd  string
		want int
	}{
		{"latch-no-such-command", 127},
		{filepath.Join(root, "missing"), 127},
		{plain, 126},   // not executable
		{garbage, 126}, // exec format error
	} {
		_, errs, code := runLatch(t, root, "lock", "--path", p, "--", tc.cmd)
		if code != tc.want || !strings.Contains(errs, "run "+tc.cmd) {
			t.Errorf("latch lock -- %s: status %d, stderr %q; want %d naming it", tc.cmd, code, errs, tc.want)
		}
		if lockTestExists(p) {
			t.Errorf("latch lock -- %s left the lock behind", tc.cmd)
		}
	}
}

// TestLockForksOnlyCMD: latch lock -- CMD creates exactly one process, CMD
// (os/exec's first start forks a pidfd probe child of its own, which doubles
// the cost of a short CMD). Counted with strace.
func TestLockForksOnlyCMD(t *testing.T) {
	lockNeedBin(t, "strace")
	root := lockTestRoot(t)
	trace := filepath.Join(root, "trace")
	cmd := exec.Command("strace", "-f", "-qq", "-o", trace, "-e", "trace=clone,clone3,fork,vfork,execve",
		testLatchBin, "lock", "--path", filepath.Join(root, "x.lock"), "--", "true")
	if out, err := cmd.CombinedOutput(); err != nil {
		if strings.Contains(string(out), "ptrace") {
			t.Skipf("strace cannot trace here (%s): the processes latch lock creates were not counted", strings.TrimSpace(string(out)))
		}
		t.Fatalf("strace latch lock: %v\n%s", err, out)
	}
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	var procs []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "clone") && !strings.Contains(line, "CLONE_THREAD") && !strings.Contains(line, "resumed>") ||
			strings.Contains(line, "fork(") {
			procs = append(procs, line)
		}
	}
	if len(procs) != 1 || !strings.Contains(string(b), `execve("/usr/bin/true"`) && !strings.Contains(string(b), `execve("/bin/true"`) {
		t.Errorf("latch lock -- true created %d processes, want 1 (true):\n%s", len(procs), strings.Join(procs, "\n"))
	}
}

// TestLockDefaultPaths: --service, $BALENA_APP_LOCK_PATH and the first
// device-wide path.
func TestLockDefaultPaths(t *testing.T) {
	root := lockTestRoot(t)
	for _, tc := range []struct {
		name          string
		args          []string
		balena, resin string // BALENA_APP_LOCK_PATH, RESIN_APP_LOCK_PATH
		want          string
	}{
		{"service", []string{"--service", "kiosk/ui"}, "", filepath.Join(root, "resin.lock"), filepath.Join(root, "tmp/latch/services/kiosk/ui/updates.lock")},
		{"path", []string{"--path", filepath.Join(root, "p.lock")}, filepath.Join(root, "env.lock"), filepath.Join(root, "resin.lock"), filepath.Join(root, "p.lock")},
		{"BALENA_APP_LOCK_PATH", nil, filepath.Join(root, "env.lock"), "", filepath.Join(root, "env.lock")},
		{"BALENA_APP_LOCK_PATH before RESIN_APP_LOCK_PATH", nil, filepath.Join(root, "env.lock"), filepath.Join(root, "resin.lock"), filepath.Join(root, "env.lock")},
		{"RESIN_APP_LOCK_PATH when BALENA_APP_LOCK_PATH is empty", nil, "", filepath.Join(root, "resin.lock"), filepath.Join(root, "resin.lock")},
		{"first device-wide lock", nil, "", "", filepath.Join(root, "tmp/balena/updates.lock")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"lock", "--root", root}, tc.args...), "--", "sh", "-c", `test -f "$0" && cat "$0"`, tc.want)
			cmd := exec.Command(testLatchBin, args...)
			cmd.Env = append(os.Environ(), "BALENA_APP_LOCK_PATH="+tc.balena, "RESIN_APP_LOCK_PATH="+tc.resin)
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

// TestLockFlockNotInherited: the descriptor latch holds its flock on is
// close-on-exec (CMD has nothing of the lock open, so a CMD that outlives
// latch keeps no flock), and a --detach lock keeps no flock once latch
// has exited: the entry alone holds it.
func TestLockFlockNotInherited(t *testing.T) {
	lockNeedBin(t, "flock")
	root := lockTestRoot(t)
	p := filepath.Join(root, "x.lock")
	script := `for f in /proc/$$/fd/*; do readlink "$f"; done; true`
	out, errs, code := runLatch(t, root, "lock", "--path", p, "--", "sh", "-c", script)
	if code != 0 {
		t.Fatalf("latch lock: status %d: %s", code, errs)
	}
	if !strings.Contains(out, "/") {
		t.Fatalf("CMD listed no descriptors: %q", out)
	}
	if strings.Contains(out, root) {
		// (The descriptor was opened on the entry's temporary name.)
		t.Errorf("CMD inherited a descriptor on the lock %s or in its directory:\n%s", p, out)
	}
	if _, errs, code := runLatch(t, root, "lock", "--path", p, "--detach"); code != 0 {
		t.Fatalf("latch lock --detach: status %d: %s", code, errs)
	}
	if !lockTestExists(p) {
		t.Fatalf("--detach left no lock at %s", p)
	}
	if out, err := exec.Command("flock", "-n", p, "true").CombinedOutput(); err != nil {
		t.Errorf("flock -n on a --detach lock after latch exited: %v %s, want no flock left", err, out)
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
	// p is a configured device-wide path here: --force removes only lock entries.
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
		if _, errs, code := runLatch(t, root, "unlock", "--path", p, "--global-lock", p); code != 1 || !lockTestExists(p) || !strings.Contains(errs, "--force") {
			t.Errorf("unlock of a foreign entry: %d %q exists=%v; want refused, pointing at --force", code, errs, lockTestExists(p))
		}
		if _, errs, code := runLatch(t, root, "unlock", "--path", p, "--global-lock", p, "--force"); code != 0 || lockTestExists(p) {
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
				// Exit 9 when lockfile(1) fails, 8 when the release fails: Wait checks it.
				return exec.Command("sh", "-c", `lockfile -1 -r 3 "$0" || exit 9; echo ready; cat >/dev/null; rm -f "$0" || exit 8`, p)
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

// TestUnlockForceOutside: unlock --force removes lock entries only; a file
// or a tree anywhere else, or another name in a lock directory, is refused
// with an error that says so, and left as it was.
func TestUnlockForceOutside(t *testing.T) {
	root := lockTestRoot(t)
	if _, errs, code := runLatch(t, root, "lock", "--service", "app/svc", "--detach"); code != 0 {
		t.Fatal(errs)
	}
	svcDir := filepath.Join(root, "tmp/latch/services/app/svc")
	tree := filepath.Join(root, "etc")
	os.MkdirAll(filepath.Join(tree, "deep"), 0o755)
	os.WriteFile(filepath.Join(tree, "deep", "passwd"), []byte("precious"), 0o644)
	file := filepath.Join(root, "precious.lock")
	os.WriteFile(file, []byte("precious"), 0o644)
	notes := filepath.Join(svcDir, "notes.txt")
	os.WriteFile(notes, []byte("precious"), 0o644)
	for _, p := range []string{tree, file, notes, svcDir, filepath.Join(root, "tmp/latch/services/app")} {
		_, errs, code := runLatch(t, root, "unlock", "--force", "--path", p)
		if code != 1 || !strings.Contains(errs, "removes only a lock entry") {
			t.Errorf("unlock --force --path %s: status %d %q; want 1 and a refusal", p, code, errs)
		}
	}
	for _, p := range []string{filepath.Join(tree, "deep", "passwd"), file, notes} {
		if b, err := os.ReadFile(p); err != nil || string(b) != "precious" {
			t.Errorf("%s: %q %v; want it untouched", p, b, err)
		}
	}
	// The service's own lock still goes.
	if _, errs, code := runLatch(t, root, "unlock", "--force", "--service", "app/svc"); code != 0 || lockTestExists(filepath.Join(svcDir, lock.UpdatesName)) {
		t.Errorf("unlock --force --service: %d %q", code, errs)
	}
}

func lockNeedRoot(t *testing.T, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: " + what + " was not tested")
	}
	lockNeedBin(t, "setpriv")
}

// latchAs runs latch as uid (setpriv) and returns its output and status.
func latchAs(t *testing.T, uid int, root string, args ...string) (string, int) {
	t.Helper()
	a := append([]string{fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups", testLatchBin, args[0], "--root", root}, args[1:]...)
	cmd := exec.Command("setpriv", a...)
	cmd.Env = append(os.Environ(), "BALENA_APP_LOCK_PATH=")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("setpriv latch: %v", err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// lockUserRoot is a device root like / with a /tmp of mode 1777.
func lockUserRoot(t *testing.T) string {
	root := lockTestRoot(t)
	os.Mkdir(filepath.Join(root, "tmp"), 0o755)
	syscall.Chmod(filepath.Join(root, "tmp"), 0o1777)
	return root
}

// TestLockServiceAsUser: a user's latch lock --service locks in a service
// directory the agent made, and, where there is none, says that the agent
// makes them instead of making a lock root the agent would refuse.
func TestLockServiceAsUser(t *testing.T) {
	lockNeedRoot(t, "latch lock --service as uid 1000")
	root := lockUserRoot(t)
	out, code := latchAs(t, 1000, root, "lock", "--service", "app/svc", "--", "true")
	if code != 1 || !strings.Contains(out, "the agent creates the lock directories") {
		t.Errorf("no lock dirs yet: status %d %q; want 1 and that the agent creates them", code, out)
	}
	if lockTestExists(filepath.Join(root, "tmp/latch")) {
		t.Fatalf("a user's latch lock made the lock root")
	}
	// Root (the agent, or root's latch lock) makes them: then the user locks.
	if _, errs, code := runLatch(t, root, "lock", "--service", "app/svc", "--", "true"); code != 0 {
		t.Fatal(errs)
	}
	out, code = latchAs(t, 1000, root, "lock", "--service", "app/svc", "--", "sh", "-c", `stat -c %u "$0"`, filepath.Join(root, "tmp/latch/services/app/svc/updates.lock"))
	if code != 0 || strings.TrimSpace(out) != "1000" {
		t.Errorf("as uid 1000 in the agent's service dir: status %d %q; want the lock taken as 1000", code, out)
	}
	out, code = latchAs(t, 1000, root, "lock", "--service", "app/other", "--", "true")
	if code != 1 || !strings.Contains(out, "the agent creates the lock directories") {
		t.Errorf("another service: status %d %q", code, out)
	}
}

// TestLocksForgedRecord: a user's file claiming to be the agent's, naming
// pid 1, is listed as an ordinary held lock with no holder, and plain
// unlock does not call it the agent's.
func TestLocksForgedRecord(t *testing.T) {
	lockNeedRoot(t, "a record forged by uid 1000")
	root := lockUserRoot(t)
	if _, errs, code := runLatch(t, root, "lock", "--service", "app/svc", "--", "true"); code != 0 {
		t.Fatal(errs)
	}
	p := filepath.Join(root, "tmp/latch/services/app/svc/updates.lock")
	r := lock.NewRecord(lock.RoleAgent)
	r.PID, r.Command = 1, "latch agent"
	b, _ := json.Marshal(r)
	cmd := exec.Command("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "sh", "-c", `printf '%s\n' "$1" > "$0"`, p, string(b))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("forge: %v %s", err, out)
	}
	es := locksJSON(t, root)
	if len(es) != 1 || es[0].State != lock.StateHeld || es[0].Holder != nil || es[0].UID != 1000 {
		t.Fatalf("latch locks: %+v; want one held entry of uid 1000 with no holder", es)
	}
	out, _, _ := runLatch(t, root, "locks")
	if strings.Contains(out, "pid 1 ") || strings.Contains(out, "latch agent") || strings.Contains(out, "agent") {
		t.Errorf("latch locks names the forged holder:\n%s", out)
	}
	if _, errs, code := runLatch(t, root, "unlock", "--service", "app/svc"); code != 1 || strings.Contains(errs, "agent's lock") || !lockTestExists(p) {
		t.Errorf("unlock: %d %q; want refused as not latch lock's, not as the agent's", code, errs)
	}
	// With --lock-uid 1000 the same file is the agent's.
	es = locksJSON(t, root, "--lock-uid", "1000")
	if len(es) != 1 || es[0].State != lock.StateAgent {
		t.Errorf("--lock-uid 1000: %+v; want state agent", es)
	}
	if _, errs, code := runLatch(t, root, "unlock", "--lock-uid", "1000", "--service", "app/svc"); code != 1 || !strings.Contains(errs, "agent's lock") {
		t.Errorf("unlock --lock-uid 1000: %d %q; want refused as the agent's lock", code, errs)
	}
}

// TestUnlockThroughSymlinkedGlobalDir: uid 1000 makes <root>/tmp/balena a
// symlink into a directory it cannot list; unlock --force removes nothing
// through it, latch locks counts the device-wide lock as held, with
// fs.protected_symlinks at 0 and at 1.
func TestUnlockThroughSymlinkedGlobalDir(t *testing.T) {
	lockNeedRoot(t, "a symlink planted by uid 1000")
	const knob = "/proc/sys/fs/protected_symlinks"
	old, err := os.ReadFile(knob)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(knob, old, 0o644) })
	for _, v := range []string{"0", "1"} {
		t.Run("protected_symlinks="+v, func(t *testing.T) {
			if err := os.WriteFile(knob, []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
			root := lockUserRoot(t)
			secret := filepath.Join(t.TempDir(), "secret")
			os.MkdirAll(filepath.Join(secret, lock.UpdatesName, "deep"), 0o700)
			os.WriteFile(filepath.Join(secret, lock.UpdatesName, "deep", "data"), []byte("precious"), 0o600)
			os.Chmod(secret, 0o700)
			link := filepath.Join(root, "tmp/balena")
			if out, err := exec.Command("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "ln", "-s", secret, link).CombinedOutput(); err != nil {
				t.Fatalf("ln: %v %s", err, out)
			}
			for _, force := range []string{"--force=false", "--force"} {
				_, errs, code := runLatch(t, root, "unlock", force)
				if code != 1 || !strings.Contains(errs, link) || !strings.Contains(errs, "removes nothing through it") {
					t.Errorf("unlock %s: status %d %q; want 1 naming %s and that nothing is removed through it", force, code, errs, link)
				}
			}
			if b, err := os.ReadFile(filepath.Join(secret, lock.UpdatesName, "deep", "data")); err != nil || string(b) != "precious" {
				t.Errorf("the tree behind the symlink: %q %v; want it untouched", b, err)
			}
			es := locksJSON(t, root)
			if len(es) != 1 || es[0].Path != link || es[0].Kind != lock.KindSymlink || es[0].State != lock.StateHeld {
				t.Errorf("latch locks: %+v; want the symlink, held", es)
			}
			if _, errs, code := runLatch(t, root, "lock", "--", "true"); code != 1 || !strings.Contains(errs, "symlink") {
				t.Errorf("latch lock through it: %d %q; want refused naming the symlink", code, errs)
			}
		})
	}
}

// TestLockInodeReuse: CMD removes the lock and makes files at its path,
// trying to get its inode number back; latch lock then leaves the file in
// place and says so. (latch holds the lock open for its flock while CMD
// runs, which keeps the number from being handed out again; should it be,
// the removal's change-time check is what keeps the file.)
func TestLockInodeReuse(t *testing.T) {
	root := lockTestRoot(t)
	p := filepath.Join(root, "x.lock")
	cmd := latchCmd(root, "lock", "--path", p, "--", "sh", "-c", "echo ready; exec cat >/dev/null")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("CMD said %q", line)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	rec, _ := os.ReadFile(p)
	reused := false
	for i := 0; i < 2000 && !reused; i++ {
		os.Remove(p)
		os.WriteFile(p, rec, 0o644) // same type, owner, size and content
		var now syscall.Stat_t
		syscall.Lstat(p, &now)
		if reused = now.Ino == st.Ino; !reused {
			os.Rename(p, fmt.Sprintf("%s.aside%d", p, i))
		}
	}
	if !reused {
		os.WriteFile(p, rec, 0o644) // the replacement CMD leaves
	}
	stdin.Close()
	io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("latch lock: %v %s", err, errb.String())
	}
	t.Logf("inode number reused while latch held the lock: %v", reused)
	if !lockTestExists(p) || !strings.Contains(errb.String(), "replaced") {
		t.Errorf("the new file with the old inode number: exists=%v, stderr %q; want kept and reported", lockTestExists(p), errb.String())
	}
}

// latch locks prints a holder's command line, which a user chooses, escaped:
// it cannot clear root's terminal or forge a row of the listing.
func TestLocksEscapesText(t *testing.T) {
	dir := t.TempDir()
	l := lock.Layout{Dir: filepath.Join(dir, "locks"), Global: []string{filepath.Join(dir, "balena", "updates.lock")}}
	sdir, err := l.EnsureServiceDir(lock.Service{App: "kiosk", Service: "ui"})
	if err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("flock", filepath.Join(sdir, lock.UpdatesName), "sh", "-c", "sleep 60", evil)
	holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-holder.Process.Pid, syscall.SIGKILL)
		holder.Wait()
	})
	var out []byte
	waitUntil(t, "flock to hold the lock", func() bool {
		out, err = exec.Command(testLatchBin, "locks", "--lock-dir", l.Dir, "--global-lock", l.Global[0]).CombinedOutput()
		return err == nil && strings.Contains(string(out), "<forged row>")
	})
	checkNoRaw(t, "latch locks", string(out))
	if !strings.Contains(string(out), evilEscaped) {
		t.Errorf("latch locks does not show the holder's command escaped (%s):\n%s", evilEscaped, out)
	}
	js, err := exec.Command(testLatchBin, "locks", "--json", "--lock-dir", l.Dir, "--global-lock", l.Global[0]).Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(string(js), "\x1b\r\u202e") {
		t.Errorf("latch locks --json carries raw control or bidi characters:\n%s", js)
	}
}
