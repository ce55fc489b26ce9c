package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"latch/agent/target"
)

// TestAgentFlagsRefused: every flag value that would turn the agent against
// its board is refused with exit status 2 and a message naming the flag, the
// value and what is allowed, before anything is created under --root.
func TestAgentFlagsRefused(t *testing.T) {
	big := strconv.FormatInt(int64(maxID)+1, 10)
	tests := []struct {
		args []string
		want []string // substrings of stderr
	}{
		{[]string{"--lock-uid", "4294967296"}, []string{"--lock-uid 4294967296", "from 0 to " + strconv.Itoa(maxID), "0 makes the agent's lock entries root's"}},
		{[]string{"--lock-uid", "4294967295"}, []string{"--lock-uid 4294967295", "from 0 to"}},
		{[]string{"--lock-uid", big}, []string{"--lock-uid " + big, "from 0 to"}},
		{[]string{"--lock-uid", "-1"}, []string{"--lock-uid -1", "from 0 to"}},
		{[]string{"--lock-uid", "99999999999999999999"}, []string{"--lock-uid 99999999999999999999", "from 0 to"}},
		{[]string{"--lock-uid", "nobody"}, []string{`--lock-uid "nobody"`, "not a number"}},
		{[]string{"--api-group", "4294967296"}, []string{"--api-group 4294967296", "from 0 to"}},
		{[]string{"--api-group", "-1"}, []string{"--api-group -1", "from 0 to"}},
		{[]string{"--retry-delay", "1ns"}, []string{"--retry-delay 1ns", "from 100ms to 24h"}},
		{[]string{"--retry-delay", "0"}, []string{"--retry-delay 0s", "from 100ms"}},
		{[]string{"--retry-delay", "-5s"}, []string{"--retry-delay -5s", "from 100ms"}},
		{[]string{"--retry-delay", "100000h"}, []string{"--retry-delay 100000h0m0s", "to 24h"}},
		{[]string{"--poll", "0"}, []string{"--poll 0s", "from 1s to 24h"}},
		{[]string{"--poll", "-1m"}, []string{"--poll -1m0s", "from 1s"}},
		{[]string{"--poll", "999ms"}, []string{"--poll 999ms", "from 1s"}},
		{[]string{"--poll", "2000000h"}, []string{"--poll 2000000h0m0s", "to 24h"}},
		{[]string{"--health-wait", "-1s"}, []string{"--health-wait -1s", "from 0s to 1h"}},
		{[]string{"--lock-dir", "/"}, []string{"--lock-dir /", "system directory"}},
		{[]string{"--lock-dir", "/etc"}, []string{"--lock-dir /etc", "system directory"}},
		{[]string{"--lock-dir", "/var"}, []string{"--lock-dir /var", "system directory"}},
		{[]string{"--lock-dir", "/run"}, []string{"--lock-dir /run", "system directory"}},
		{[]string{"--lock-dir", "/tmp"}, []string{"--lock-dir /tmp", "system directory"}},
		{[]string{"--lock-dir", "/home"}, []string{"--lock-dir /home", "system directory"}},
		{[]string{"--lock-dir", "/usr/local/latch"}, []string{"--lock-dir /usr/local/latch", "inside /usr"}},
		{[]string{"--lock-dir", "/etc/latch"}, []string{"--lock-dir /etc/latch", "inside /etc"}},
		{[]string{"--lock-dir", "/lib64/latch"}, []string{"--lock-dir /lib64/latch", "inside /lib64"}},
		{[]string{"--lock-dir", "/proc/self"}, []string{"--lock-dir /proc/self", "inside /proc"}},
		{[]string{"--lock-dir", "/root/locks"}, []string{"--lock-dir /root/locks", "inside /root"}},
		{[]string{"--lock-dir", "/tmp/../etc"}, []string{"--lock-dir /tmp/../etc", "not a clean path", "/etc"}},
		{[]string{"--lock-dir", "/tmp/latch/"}, []string{"--lock-dir /tmp/latch/", "not a clean path", "/tmp/latch"}},
		{[]string{"--lock-dir", "tmp/latch"}, []string{"--lock-dir tmp/latch", "not an absolute path"}},
		{[]string{"--lock-dir", "/tmp/latch\n/x"}, []string{`--lock-dir "/tmp/latch\n/x"`, "control characters"}},
		{[]string{"--global-lock", "/"}, []string{"--global-lock /", "system directory"}},
		{[]string{"--global-lock", "/etc/passwd"}, []string{"--global-lock /etc/passwd", "inside /etc"}},
		{[]string{"--global-lock", "/boot/vmlinuz"}, []string{"--global-lock /boot/vmlinuz", "inside /boot"}},
		{[]string{"--global-lock", "/vmlinuz"}, []string{"--global-lock /vmlinuz", "directly in /"}},
		{[]string{"--global-lock", "/var/lib"}, []string{"--global-lock /var/lib", "system directory"}},
		{[]string{"--global-lock", "/tmp/balena/./updates.lock"}, []string{"--global-lock /tmp/balena/./updates.lock", "not a clean path"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, "="), func(t *testing.T) {
			root := t.TempDir()
			args := append([]string{"agent", "--root", root, "--driver", "exec"}, tt.args...)
			checkRefused(t, root, args, tt.want)
		})
	}
}

// TestAgentLockPathsApart: a lock directory or device-wide lock on the
// agent's own files (the journal, the state dir, the API socket's run dir,
// each other), or a lock directory, which every user may write to, holding
// the target file or a key, is refused.
func TestAgentLockPathsApart(t *testing.T) {
	root := t.TempDir()
	state := filepath.Join(root, "var/lib/latch")
	run := filepath.Join(root, "run/latch")
	locks := filepath.Join(root, "tmp/latch")
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"--global-lock", filepath.Join(state, "journal.db")}, []string{"--global-lock " + filepath.Join(state, "journal.db"), "is the journal"}},
		{[]string{"--global-lock", state}, []string{"--global-lock " + state, "the state dir"}},
		{[]string{"--global-lock", filepath.Join(root, "var")}, []string{"--global-lock " + filepath.Join(root, "var"), "contains the journal"}},
		{[]string{"--global-lock", filepath.Join(run, "api.sock")}, []string{"--global-lock " + filepath.Join(run, "api.sock"), "inside the run dir"}},
		{[]string{"--global-lock", locks}, []string{"--global-lock " + locks, "is the lock directory"}},
		{[]string{"--global-lock", filepath.Join(locks, "services/a/b/updates.lock")}, []string{"inside the lock directory"}},
		{[]string{"--lock-dir", state}, []string{"--lock-dir " + state, "the state dir"}},
		{[]string{"--lock-dir", filepath.Join(state, "locks")}, []string{"--lock-dir " + filepath.Join(state, "locks"), "inside the state dir"}},
		{[]string{"--lock-dir", root}, []string{"--lock-dir " + root, "contains the journal"}},
		{[]string{"--lock-dir", run}, []string{"--lock-dir " + run, "the run dir"}},
		{[]string{"--state-dir", filepath.Join(locks, "state")}, []string{"contains the journal"}},
		{[]string{"--target-file", filepath.Join(locks, "target.json")}, []string{"--target-file " + filepath.Join(locks, "target.json"), "inside the lock directory"}},
		{[]string{"--target-url", "file://" + filepath.Join(locks, "t.json")}, []string{"--target-url", "inside the lock directory"}},
		{[]string{"--trust-key", filepath.Join(locks, "key.pub")}, []string{"--trust-key", "inside the lock directory"}},
		{[]string{"--global-lock", filepath.Join(root, "target.json"), "--target-file", filepath.Join(root, "target.json")}, []string{"is --target-file"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, "="), func(t *testing.T) {
			args := append([]string{"agent", "--root", root, "--driver", "exec"}, tt.args...)
			checkRefused(t, root, args, tt.want)
		})
	}
	// --root itself on a system directory puts the defaults there.
	checkRefused(t, root, []string{"agent", "--root", "/etc", "--driver", "exec"}, []string{"--lock-dir (the default under --root /etc) /etc/tmp/latch", "inside /etc"})
	// The environment is checked like the flags.
	cmd := exec.Command(testLatchBin, "agent", "--root", root, "--driver", "exec")
	cmd.Env = append(os.Environ(), "LATCH_GLOBAL_LOCKS=/tmp/balena/updates.lock:/etc/shadow")
	out, err := cmd.CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), "LATCH_GLOBAL_LOCKS /etc/shadow") {
		t.Errorf("LATCH_GLOBAL_LOCKS=...:/etc/shadow: got %d %q, want 2 and a message naming LATCH_GLOBAL_LOCKS and /etc/shadow", code, out)
	}
	checkEmpty(t, root)
}

// checkRefused runs latch with args and wants exit status 2, every want in
// its stderr, and root still empty.
func checkRefused(t *testing.T, root string, args, want []string) {
	t.Helper()
	// An agent that takes the value runs until it is killed.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testLatchBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	code := exitCode(cmd.Run())
	if code != 2 {
		t.Errorf("latch %q: got status %d, want 2 (usage)\nstderr: %s", args, code, stderr.String())
	}
	for _, w := range want {
		if !strings.Contains(stderr.String(), w) {
			t.Errorf("latch %q: stderr %q does not say %q", args, stderr.String(), w)
		}
	}
	checkEmpty(t, root)
}

func checkEmpty(t *testing.T, root string) {
	t.Helper()
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("a refused agent left %d entries in --root %s (%s...), want none", len(ents), root, ents[0].Name())
	}
}

// startAgent starts latch agent with args, waits for its API socket, stops
// it with SIGTERM and returns what it logged.
func startAgent(t *testing.T, root string, args ...string) string {
	t.Helper()
	cmd := exec.Command(testLatchBin, append([]string{"agent", "--root", root, "--driver", "exec"}, args...)...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	sock := filepath.Join(root, "run/latch/api.sock")
	waitUntil(t, "the API socket", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("latch agent %q exited before serving its API: %v\n%s", args, err, buf.String())
		default:
		}
		_, err := os.Lstat(sock)
		return err == nil
	})
	cmd.Process.Signal(syscall.SIGTERM)
	if err := <-exited; err != nil {
		t.Errorf("latch agent %q: %v after SIGTERM, want a clean exit\n%s", args, err, buf.String())
	}
	return buf.String()
}

// TestAgentFlagEdges: the ends of every allowed range start the agent.
func TestAgentFlagEdges(t *testing.T) {
	root := t.TempDir()
	uid := strconv.Itoa(maxID)
	if os.Geteuid() != 0 {
		uid = strconv.Itoa(os.Geteuid())
	}
	startAgent(t, root, "--lock-uid", uid, "--retry-delay", "100ms", "--poll", "1s", "--health-wait", "0", "--api-group", "0")
	startAgent(t, t.TempDir(), "--retry-delay", "24h", "--poll", "24h", "--health-wait", "1h", "--lock-dir", filepath.Join(root, "locks"),
		"--global-lock", filepath.Join(root, "balena", "updates.lock"), "--global-lock", filepath.Join(root, "data", "resin-updates.lock"))
}

// TestAgentWarnings: a readable API key file and unverified target states
// are said at start; -h says what not verifying means.
func TestAgentWarnings(t *testing.T) {
	out, err := exec.Command(testLatchBin, "agent", "-h").CombinedOutput()
	note := "Without --trust-root or --trust-key, target states are not verified: only root may push one\nthrough the API socket, and a target file or URL must be writable by root alone."
	if exitCode(err) != 0 || !strings.Contains(string(out), note) || !strings.Contains(string(out), "at least 100ms") {
		t.Errorf("latch agent -h: got %d %q, want the note %q and the retry-delay minimum", exitCode(err), out, note)
	}
	dir := t.TempDir()
	for _, tt := range []struct {
		mode     os.FileMode
		uid, gid int
		warn     string // "" for none
	}{
		{0o600, 0, 0, ""},
		{0o640, 0, 0, ""},
		{0o644, 0, 0, "has mode 0644: every user of the board may read the API key; run chmod 600 "},
		{0o604, 0, 0, "has mode 0604: every user of the board may read the API key; run chmod 600 "},
		{0o640, 0, 4242, "has mode 0640 and group 4242: the group's members may read the API key; run chmod 600 "},
		{0o600, 1000, 0, "is owned by uid 1000, who may change the API key; run chown root "},
	} {
		if (tt.mode&0o070 != 0 || tt.uid != 0) && os.Geteuid() != 0 {
			t.Log("not root: a group-readable key file, and one of another owner, were not tested")
			continue
		}
		key := filepath.Join(dir, fmt.Sprintf("key-%o-%d-%d", tt.mode, tt.uid, tt.gid))
		if err := os.WriteFile(key, []byte("0123456789abcdef0123\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(key, tt.mode)
		if os.Geteuid() == 0 {
			os.Chown(key, tt.uid, tt.gid)
		}
		log := startAgent(t, t.TempDir(), "--listen", "127.0.0.1:0", "--api-key-file", key)
		got := strings.Contains(log, "warning: --api-key-file "+key)
		switch {
		case tt.warn == "" && got:
			t.Errorf("key file mode %o uid %d gid %d: got a warning, want none\n%s", tt.mode, tt.uid, tt.gid, log)
		case tt.warn != "" && !strings.Contains(log, "warning: --api-key-file "+key+" "+tt.warn+key):
			t.Errorf("key file mode %o uid %d gid %d: log %q, want a warning naming the file and %q", tt.mode, tt.uid, tt.gid, log, tt.warn)
		}
		if !strings.Contains(log, "warning: target states are not verified (no --trust-key)") {
			t.Errorf("agent without --trust-key: log %q, want the warning that target states are not verified", log)
		}
	}
}

// TestAgentHelpExample: the example of latch agent -h runs as written from
// latch's source folder: every relative path it names exists, and
// examples/target.json passes the real target parser, is an exec-driver
// target whose commands name only files that exist, and brings the kiosk
// app up under a real agent (with the example's /tmp/dev moved into the
// test's folder).
func TestAgentHelpExample(t *testing.T) {
	out, err := exec.Command(testLatchBin, "agent", "-h").CombinedOutput()
	if exitCode(err) != 0 {
		t.Fatalf("latch agent -h: status %d: %s", exitCode(err), out)
	}
	_, example, ok := strings.Cut(string(out), "\nExample")
	if !ok {
		t.Fatalf("latch agent -h shows no example:\n%s", out)
	}
	example, _, _ = strings.Cut(example, "\n\n")
	var cmdline []string
	for _, line := range strings.Split(example, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == "latch" && f[1] == "agent" {
			cmdline = f[2:]
		}
	}
	if cmdline == nil {
		t.Fatalf("the example of latch agent -h has no latch agent command line:\n%s", example)
	}
	var targetFile, root string
	named := 0
	for i, a := range cmdline {
		if i > 0 && cmdline[i-1] == "--root" {
			root = a
		}
		if i > 0 && cmdline[i-1] == "--target-file" {
			targetFile = a
		}
		if strings.HasPrefix(a, "-") || filepath.IsAbs(a) || !strings.Contains(a, "/") {
			continue
		}
		named++
		if _, err := os.Stat(a); err != nil {
			t.Errorf("the example of latch agent -h names %s, which is not in latch's source folder: %v", a, err)
		}
	}
	if named == 0 || targetFile == "" || root == "" || !slices.Contains(cmdline, "exec") {
		t.Fatalf("the example %q does not name a target file in the source folder, a --root and the exec driver", cmdline)
	}

	data, err := os.ReadFile(targetFile)
	if err != nil {
		t.Fatal(err)
	}
	st, err := target.Parse(data)
	if err != nil {
		t.Fatalf("%s does not parse: %v", targetFile, err)
	}
	if len(st.Apps) == 0 {
		t.Fatalf("%s names no app", targetFile)
	}
	repoPath := regexp.MustCompile(`examples/[^ ;&|>"']+`)
	for app, a := range st.Apps {
		for name, s := range a.Services {
			if s.Unit != "" || s.Start == "" || s.Stop == "" || s.Health == "" {
				t.Errorf("%s: %s/%s is not an exec-driver service with start, stop and health commands: %+v", targetFile, app, name, s)
			}
			for _, p := range repoPath.FindAllString(s.Start+" "+s.Stop+" "+s.Health, -1) {
				if _, err := os.Stat(p); err != nil {
					t.Errorf("%s: %s/%s runs %s, which is not in latch's source folder: %v", targetFile, app, name, p, err)
				}
			}
		}
	}

	// Run it, with the example's --root inside the test's folder.
	dir := t.TempDir()
	dev := filepath.Join(dir, "dev")
	moved := strings.ReplaceAll(string(data), root, dev)
	if _, err := target.Parse([]byte(moved)); err != nil {
		t.Fatalf("%s with %s moved to %s: %v", targetFile, root, dev, err)
	}
	tf := filepath.Join(dir, "target.json")
	if err := os.WriteFile(tf, []byte(moved), 0o644); err != nil {
		t.Fatal(err)
	}
	args := slices.Clone(cmdline)
	for i := range args {
		switch {
		case args[i] == root:
			args[i] = dev
		case args[i] == targetFile:
			args[i] = tf
		}
	}
	agentCmd := exec.Command(testLatchBin, append(append([]string{"agent"}, args...), "--health-wait", "1s")...)
	var log bytes.Buffer
	agentCmd.Stdout, agentCmd.Stderr = &log, &log
	if err := agentCmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agentCmd.Wait() }()
	stopped := false
	stopAll := func() {
		if !stopped {
			stopped = true
			agentCmd.Process.Signal(syscall.SIGTERM)
			<-exited
		}
		// The services outlive the agent (setsid): their own stop commands end them.
		st, _ := target.Parse([]byte(moved))
		for _, a := range st.Apps {
			for _, s := range a.Services {
				exec.Command("/bin/sh", "-c", s.Stop).Run()
			}
		}
	}
	defer stopAll()
	want := map[string]string{}
	for app, a := range st.Apps {
		want[app] = a.Release
	}
	waitUntil(t, "the example's apps to run", func() bool {
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("latch agent %q exited: %v\n%s", args, err, log.String())
		default:
		}
		out, err := exec.Command(testLatchBin, "status", "--root", dev, "--json").Output()
		if err != nil {
			return false
		}
		for app, rel := range want {
			if !regexp.MustCompile(`"release": *"[^"]*\b` + regexp.QuoteMeta(app+"="+rel)).Match(out) {
				return false
			}
		}
		return true
	})
	for app, a := range st.Apps {
		for name, s := range a.Services {
			moved := strings.ReplaceAll(s.Health, root, dev)
			if out, err := exec.Command("/bin/sh", "-c", moved).CombinedOutput(); err != nil {
				t.Errorf("%s/%s of the example is not healthy once applied: %v %s\nagent log:\n%s", app, name, err, out, log.String())
			}
		}
	}
}
