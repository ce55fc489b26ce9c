package systemd

// Tests that run inside a container booted by TestNspawn, against its real systemd. They skip
// unless LATCH_SYSTEMD_INCONTAINER=1, which only TestNspawn sets.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const envInContainer = "LATCH_SYSTEMD_INCONTAINER"

// inContainer skips t outside the container and returns a connection to its systemd with the
// given units written into /etc/systemd/system.
func inContainer(t *testing.T, units map[string]string) (context.Context, *Units) {
	t.Helper()
	if os.Getenv(envInContainer) != "1" {
		t.Skipf("runs only inside the container of TestNspawn (%s=1)", envInContainer)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	for name, text := range units {
		if err := os.WriteFile(filepath.Join("/etc/systemd/system", name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	u, err := Connect(ctx)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(u.Close)
	if err := u.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	return ctx, u
}

// waitState polls the unit until ok accepts its state: systemd's restarts are not something a
// D-Bus client can await without a subscription, and polling keeps the test simple.
func waitState(ctx context.Context, t *testing.T, u *Units, unit string, ok func(UnitState) bool) UnitState {
	t.Helper()
	for {
		s, err := u.State(ctx, unit)
		if err != nil {
			t.Fatal(err)
		}
		if ok(s) {
			return s
		}
		select {
		case <-ctx.Done():
			t.Fatalf("unit %s: last state %+v: %v", unit, s, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestInContainerStartStopRestart(t *testing.T) {
	const unit = "latch-t-sleep.service"
	ctx, u := inContainer(t, map[string]string{unit: "[Service]\nExecStart=/bin/sleep infinity\n"})

	if err := u.Start(ctx, unit); err != nil {
		t.Fatal(err)
	}
	s1, err := u.State(ctx, unit)
	if err != nil {
		t.Fatal(err)
	}
	if s1.LoadState != "loaded" || s1.ActiveState != "active" || s1.SubState != "running" || s1.MainPID == 0 {
		t.Fatalf("after Start: got %+v, want active/running with a MainPID", s1)
	}
	if err := u.Restart(ctx, unit); err != nil {
		t.Fatal(err)
	}
	s2, _ := u.State(ctx, unit)
	if s2.ActiveState != "active" || s2.MainPID == s1.MainPID || s2.MainPID == 0 {
		t.Errorf("after Restart: got %+v, want active with a new MainPID (was %d)", s2, s1.MainPID)
	}
	if err := u.Stop(ctx, unit); err != nil {
		t.Fatal(err)
	}
	s3, _ := u.State(ctx, unit)
	if s3.ActiveState != "inactive" || s3.MainPID != 0 {
		t.Errorf("after Stop: got %+v, want inactive without MainPID", s3)
	}
	// Stopping a stopped unit is a job that is done at once.
	if err := u.Stop(ctx, unit); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	// A unit systemd does not know is not running: stopping it succeeds,
	// starting it does not.
	const gone = "latch-t-no-such-unit.service"
	if err := u.Stop(ctx, gone); err != nil {
		t.Errorf("Stop of a unit without a unit file: %v, want nil", err)
	}
	if err := u.Start(ctx, gone); err == nil {
		t.Errorf("Start of a unit without a unit file: nil, want an error")
	} else {
		t.Logf("Start of a unit without a unit file: %v", err)
	}
}

func TestInContainerJobFailure(t *testing.T) {
	const unit = "latch-t-fail.service"
	ctx, u := inContainer(t, map[string]string{unit: "[Service]\nType=oneshot\nExecStart=/bin/false\n"})
	err := u.Start(ctx, unit)
	if !errors.Is(err, ErrJobFailed) || !strings.Contains(err.Error(), unit) || !strings.Contains(err.Error(), `"failed"`) {
		t.Errorf("Start of a failing unit: got %v, want ErrJobFailed naming %s and result \"failed\"", err, unit)
	}
	if err := u.Start(ctx, "latch-t-missing.service"); err == nil || !strings.Contains(err.Error(), "latch-t-missing.service") {
		t.Errorf("Start of a missing unit: got %v, want an error naming it", err)
	}
	for _, bad := range []string{"../x.service", "x", "a\x00.service"} {
		if err := u.Start(ctx, bad); !errors.Is(err, ErrBadUnit) {
			t.Errorf("Start(%q): got %v, want ErrBadUnit", bad, err)
		}
	}
}

// TestInContainerCanceledJobDrained cancels a Stop while its job runs, lets the job finish, and
// checks that the connection still completes jobs: the result was delivered into a buffer
// instead of blocking go-systemd's dispatch.
func TestInContainerCanceledJobDrained(t *testing.T) {
	const unit, gate = "latch-t-slowstop.service", "/run/latch-t-go"
	ctx, u := inContainer(t, map[string]string{unit: "[Service]\nExecStart=/bin/sleep infinity\n" +
		"ExecStop=/bin/sh -c 'while [ ! -e " + gate + " ]; do sleep 0.05; done'\n"})
	os.Remove(gate)
	if err := u.Start(ctx, unit); err != nil {
		t.Fatal(err)
	}
	stopCtx, cancel := context.WithCancel(ctx)
	go func() {
		waitState(ctx, t, u, unit, func(s UnitState) bool { return s.ActiveState == "deactivating" })
		cancel()
	}()
	if err := u.Stop(stopCtx, unit); !errors.Is(err, context.Canceled) {
		t.Fatalf("Stop with a canceled context: got %v, want context.Canceled", err)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitState(ctx, t, u, unit, func(s UnitState) bool { return s.ActiveState == "inactive" })
	// The finished job's result went to the abandoned channel; later jobs must still complete.
	// An undrained result blocks go-systemd's job lock, which no context can interrupt: run the
	// calls aside and fail cleanly instead of hanging.
	done := make(chan error, 1)
	go func() {
		for i := 0; i < 3; i++ {
			if err := u.Start(ctx, unit); err != nil {
				done <- fmt.Errorf("Start %d after an abandoned job: %w", i, err)
				return
			}
			if err := u.Stop(ctx, unit); err != nil {
				done <- fmt.Errorf("Stop %d after an abandoned job: %w", i, err)
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("jobs after an abandoned job did not complete in 20s: the abandoned result was not drained")
	}
}

func TestInContainerHealth(t *testing.T) {
	const unit = "latch-t-crash.service"
	ctx, u := inContainer(t, map[string]string{unit: "[Service]\nExecStart=/bin/sleep infinity\n" +
		"Restart=always\nRestartSec=100ms\n"})
	if err := u.Start(ctx, unit); err != nil {
		t.Fatal(err)
	}
	before, err := u.State(ctx, unit)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Health(ctx, unit, before.NRestarts); err != nil {
		t.Fatalf("Health of a running unit: %v", err)
	}
	if err := syscall.Kill(int(before.MainPID), syscall.SIGKILL); err != nil {
		t.Fatalf("kill main pid %d: %v", before.MainPID, err)
	}
	waitState(ctx, t, u, unit, func(s UnitState) bool { return s.NRestarts > before.NRestarts && s.ActiveState == "active" })
	if err := u.Health(ctx, unit, before.NRestarts); !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "restarted") {
		t.Errorf("Health after a crash-restart: got %v, want ErrUnhealthy saying it restarted", err)
	}
	if err := u.Stop(ctx, unit); err != nil {
		t.Fatal(err)
	}
	if err := u.Health(ctx, unit, before.NRestarts+1); !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "inactive") {
		t.Errorf("Health of a stopped unit: got %v, want ErrUnhealthy saying inactive", err)
	}
	if err := u.Health(ctx, "latch-t-missing.service", 0); !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "not-found") {
		t.Errorf("Health of a missing unit: got %v, want ErrUnhealthy saying not-found", err)
	}
}

func TestInContainerDropIn(t *testing.T) {
	const unit, out, lockDir = "latch-t-dropin.service", "/run/latch-t-dropin.out", "/run/latch-t-locks/kiosk/ui"
	ctx, u := inContainer(t, map[string]string{unit: "[Service]\nType=oneshot\n" +
		"ExecStart=/bin/sh -c 'test -e /tmp/balena/marker && test -e /tmp/resin/marker && echo \"$$BALENA_APP_LOCK_PATH\" > " + out + "'\n"})
	if err := os.MkdirAll(lockDir, 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lockDir, "marker"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(out)
	// Without the drop-in the unit fails: it proves the test can see the difference.
	if err := u.Start(ctx, unit); !errors.Is(err, ErrJobFailed) {
		t.Fatalf("Start without the drop-in: got %v, want ErrJobFailed", err)
	}
	if err := u.WriteDropIn(ctx, unit, lockDir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(DefaultDropInRoot, unit+".d", DropInName)
	fi1, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Start(ctx, unit); err != nil {
		t.Fatalf("Start with the drop-in: %v", err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "/tmp/balena/updates.lock\n" {
		t.Errorf("unit saw BALENA_APP_LOCK_PATH=%q, want /tmp/balena/updates.lock", got)
	}
	if err := u.WriteDropIn(ctx, unit, lockDir); err != nil {
		t.Fatal(err)
	}
	if fi2, _ := os.Stat(path); !os.SameFile(fi1, fi2) {
		t.Error("WriteDropIn with the same content rewrote the drop-in")
	}
}

// TestInContainerReconnect drops the connection under Units and checks that the next calls
// dial again; then re-executes systemd and checks the same.
func TestInContainerReconnect(t *testing.T) {
	const unit = "latch-t-reconnect.service"
	ctx, u := inContainer(t, map[string]string{unit: "[Service]\nExecStart=/bin/sleep infinity\n"})
	u.mu.Lock()
	u.conn.Close() // what a bus that went away looks like to the client
	u.mu.Unlock()
	if err := u.Start(ctx, unit); err != nil {
		t.Fatalf("Start after the connection dropped: %v", err)
	}
	// The bus drops while a Stop job runs: the wait notices, dials again and re-issues the job.
	const slow, gate = "latch-t-reconnect-slow.service", "/run/latch-t-reconnect-go"
	if err := os.WriteFile("/etc/systemd/system/"+slow, []byte("[Service]\nExecStart=/bin/sleep infinity\n"+
		"ExecStop=/bin/sh -c 'while [ ! -e "+gate+" ]; do sleep 0.05; done'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(gate)
	if err := u.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := u.Start(ctx, slow); err != nil {
		t.Fatal(err)
	}
	go func() {
		waitState(ctx, t, u, slow, func(s UnitState) bool { return s.ActiveState == "deactivating" })
		u.mu.Lock()
		u.conn.Close()
		u.mu.Unlock()
		os.WriteFile(gate, nil, 0o644)
	}()
	stopCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := u.Stop(stopCtx, slow); err != nil {
		t.Fatalf("Stop while the bus dropped: %v", err)
	}
	if s, _ := u.State(ctx, slow); s.ActiveState != "inactive" {
		t.Errorf("after Stop across a dropped bus: got %+v, want inactive", s)
	}

	if out, err := exec.Command("systemctl", "daemon-reexec").CombinedOutput(); err != nil {
		t.Fatalf("daemon-reexec: %v %s", err, out)
	}
	if err := u.Stop(ctx, unit); err != nil {
		t.Fatalf("Stop after daemon-reexec: %v", err)
	}
	u.Close()
	if _, err := u.State(ctx, unit); err == nil {
		t.Error("State after Close: got nil error, want one")
	}
}

// TestInContainerWatchdog runs the watchdog helper as a Type=notify unit with WatchdogSec=2:
// it stays up while alive() is true; when alive() turns false systemd kills and restarts it.
func TestInContainerWatchdog(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const unit = "latch-t-watchdog.service"
	ctx, u := inContainer(t, map[string]string{unit: "[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=notify\nNotifyAccess=main\n" +
		"WatchdogSec=2\nRestart=on-watchdog\nRestartSec=100ms\n" +
		"Environment=" + envHelper + "=watchdog\nExecStart=" + self + "\n"})
	os.Remove(stallFile)
	if err := u.Start(ctx, unit); err != nil { // Type=notify: done only after READY=1
		t.Fatal(err)
	}
	s0, err := u.State(ctx, unit)
	if err != nil {
		t.Fatal(err)
	}
	if s0.ActiveState != "active" {
		t.Fatalf("after Start: got %+v, want active", s0)
	}
	status, _ := exec.Command("systemctl", "show", "-p", "StatusText", "--value", unit).Output()
	if got := strings.TrimSpace(string(status)); got != "watchdog helper: alive" {
		t.Errorf("StatusText: got %q, want %q", got, "watchdog helper: alive")
	}
	// Alive for longer than the watchdog period: pings keep it up. Waiting here is the point of
	// the check (nothing happens to await), so it is a fixed span, not a synchronisation.
	time.Sleep(3 * time.Second)
	if err := u.Health(ctx, unit, s0.NRestarts); err != nil {
		t.Fatalf("while alive: %v", err)
	}
	stalled := time.Now()
	if err := os.WriteFile(stallFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s1 := waitState(ctx, t, u, unit, func(s UnitState) bool { return s.NRestarts > s0.NRestarts && s.ActiveState == "active" })
	t.Logf("watchdog restart: %v from stall to active again (WatchdogSec=2, RestartSec=100ms); NRestarts %d -> %d",
		time.Since(stalled).Round(time.Millisecond), s0.NRestarts, s1.NRestarts)
	journal, _ := exec.Command("journalctl", "-u", unit, "--no-pager", "-o", "cat").Output()
	if !strings.Contains(string(journal), "watchdog") {
		t.Errorf("journal of %s does not mention the watchdog:\n%s", unit, journal)
	}
	if err := u.Stop(ctx, unit); err != nil {
		t.Fatal(err)
	}
}

// envInContainerPower enables the tests that reboot or power off the container; TestNspawn sets it
// for one test at a time.
const envInContainerPower = "LATCH_SYSTEMD_INCONTAINER_POWER"

func TestInContainerReboot(t *testing.T) {
	if os.Getenv(envInContainerPower) != "1" {
		t.Skipf("reboots the container: runs only when TestNspawn sets %s=1", envInContainerPower)
	}
	ctx, u := inContainer(t, nil)
	if err := u.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestInContainerPowerOff(t *testing.T) {
	if os.Getenv(envInContainerPower) != "1" {
		t.Skipf("powers the container off: runs only when TestNspawn sets %s=1", envInContainerPower)
	}
	ctx, u := inContainer(t, nil)
	if err := u.PowerOff(ctx); err != nil {
		t.Fatal(err)
	}
}
