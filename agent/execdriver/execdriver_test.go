package execdriver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestEnvironment(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	// The agent's own environment and config values cannot point a service
	// at another lock.
	t.Setenv("RESIN_APP_LOCK_PATH", "/tmp/from-the-agent")
	t.Setenv("BALENA_APP_LOCK_PATH", "/tmp/from-the-agent")
	d := &Driver{Env: []string{"KIOSK_URL=http://x", "RESIN_APP_LOCK_PATH=/tmp/from-config"}}
	s := Service{
		App: "kiosk", Service: "ui", LockPath: "/tmp/latch/services/kiosk/ui/updates.lock",
		Start: `printf '%s\n' "$BALENA_APP_LOCK_PATH" "$RESIN_APP_LOCK_PATH" "$LATCH_APP" "$LATCH_SERVICE" "$KIOSK_URL" "$PATH" > ` + out,
	}
	if err := d.Start(context.Background(), s); err != nil {
		t.Fatalf("Start: %v", err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	want := []string{s.LockPath, s.LockPath, "kiosk", "ui", "http://x", os.Getenv("PATH")}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("command saw %q, want %q", got, want)
	}
}

func TestSteps(t *testing.T) {
	dir := t.TempDir()
	d := &Driver{}
	s := Service{App: "a", Service: "s",
		Stop:   "echo stop >> " + filepath.Join(dir, "log"),
		Start:  "echo start >> " + filepath.Join(dir, "log"),
		Health: "echo health >> " + filepath.Join(dir, "log"),
	}
	ctx := context.Background()
	for _, f := range []func(context.Context, Service) error{d.Stop, d.Start, d.Health} {
		if err := f(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// Empty commands do nothing and succeed (an empty health is healthy).
	for _, f := range []func(context.Context, Service) error{d.Stop, d.Start, d.Health} {
		if err := f(ctx, Service{App: "a", Service: "s"}); err != nil {
			t.Errorf("empty command: got %v, want nil", err)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "log"))
	if got, want := string(b), "stop\nstart\nhealth\n"; got != want {
		t.Errorf("steps ran: got %q, want %q", got, want)
	}
}

func TestFailureMessage(t *testing.T) {
	var mu sync.Mutex
	var logged []string
	d := &Driver{Log: func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		logged = append(logged, strings.TrimSpace(strings.ReplaceAll(format, "%s", "")+strings.Join(toStrings(args), " ")))
	}}
	cmd := `for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line$i; done; echo oops >&2; exit 3`
	err := d.Health(context.Background(), Service{App: "kiosk", Service: "ui", Health: cmd})
	if err == nil {
		t.Fatal("Health of a failing command: got nil, want an error")
	}
	msg := err.Error()
	for _, want := range []string{"health kiosk/ui", strconv.Quote(cmd), "exit status 3", "line12", "oops"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "line1\n") {
		t.Errorf("error %q quotes line1, want only the last %d lines", msg, tailLines)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logged) != 13 {
		t.Errorf("Log got %d lines, want 13: %q", len(logged), logged)
	}
}

func toStrings(args []any) []string {
	var s []string
	for _, a := range args {
		s = append(s, a.(string))
	}
	return s
}

func alive(pid int) bool {
	// Signal 0 checks existence; a zombie would still count, but our
	// children are reaped by the shell's group kill and the test's init.
	err := syscall.Kill(pid, 0)
	if err != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

// waitGone polls (nothing to await for another process's death) until pid is gone.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive 10s after the kill", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestTimeoutKillsGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	d := &Driver{Timeout: 300 * time.Millisecond}
	// The grandchild is in the shell's process group: the kill must reach it.
	cmd := `sleep 1000 & echo $! > ` + pidFile + `; wait`
	err := d.Stop(context.Background(), Service{App: "a", Service: "s", Stop: cmd})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Stop of a hanging command: got %v, want ErrTimeout", err)
	}
	if !strings.Contains(err.Error(), "stop a/s") {
		t.Errorf("error %q does not name the service", err)
	}
	waitGone(t, readPID(t, pidFile))
}

func TestContextCancelKills(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&Driver{}).Stop(ctx, Service{App: "a", Service: "s", Stop: `sleep 1000 & echo $! > ` + pidFile + `.tmp; mv ` + pidFile + `.tmp ` + pidFile + `; wait`})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for _, err := os.Stat(pidFile); err != nil; _, err = os.Stat(pidFile) {
		if time.Now().After(deadline) {
			t.Fatal("command did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Stop after cancel: got %v, want context.Canceled", err)
	}
	waitGone(t, readPID(t, pidFile))
}

func TestStartLeavesBackgroundChild(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	d := &Driver{Timeout: time.Minute}
	// The daemon keeps stdout and stderr open and writes to them forever.
	cmd := `(while :; do echo tick; sleep 0.01; done) & echo $! > ` + pidFile
	if err := d.Start(context.Background(), Service{App: "a", Service: "s", Start: cmd}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := readPID(t, pidFile)
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL); syscall.Kill(pid, syscall.SIGKILL) })
	if !alive(pid) {
		t.Fatalf("background child %d is not running after Start returned", pid)
	}
}

func TestRebootShutdown(t *testing.T) {
	d := &Driver{}
	if err := d.Reboot(context.Background()); !errors.Is(err, ErrNoCommand) {
		t.Errorf("Reboot without a command: got %v, want ErrNoCommand", err)
	}
	if err := d.Shutdown(context.Background()); !errors.Is(err, ErrNoCommand) {
		t.Errorf("Shutdown without a command: got %v, want ErrNoCommand", err)
	}
	dir := t.TempDir()
	d = &Driver{RebootCommand: "touch " + filepath.Join(dir, "rebooted"), ShutdownCommand: "exit 7"}
	if err := d.Reboot(context.Background()); err != nil {
		t.Errorf("Reboot: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "rebooted")); err != nil {
		t.Errorf("reboot command did not run: %v", err)
	}
	if err := d.Shutdown(context.Background()); err == nil || !strings.Contains(err.Error(), "exit status 7") {
		t.Errorf("Shutdown with a failing command: got %v, want exit status 7", err)
	}
}

func TestShell(t *testing.T) {
	d := &Driver{Shell: "/nonexistent/sh"}
	err := d.Start(context.Background(), Service{App: "a", Service: "s", Start: "true"})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/sh") {
		t.Errorf("Start with a missing shell: got %v, want an error naming it", err)
	}
}
