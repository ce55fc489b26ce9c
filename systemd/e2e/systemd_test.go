package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"latch/systemd/internal/nspawn"
)

// TestSystemdEndToEnd installs the .deb built from this tree in a container with a real systemd
// and walks through latch's life on a board, one step after the other on the same container:
//
//  1. install: latch.service is active once READY=1 arrived, with its STATUS= line; the first
//     release of the demo application is installed and started through D-Bus.
//  2. watchdog: a stalled event loop gets latch killed and restarted by systemd; the journal is
//     intact afterwards.
//  3. update: the application locks itself (/tmp/balena/updates.lock inside its unit, which is
//     the service's lock directory through latch's drop-in); release 2 downloads and waits without
//     stopping anything; once the application releases, both units are updated and restarted.
//  4. hold across a reboot: the hold's lock entry exists before the application's unit starts.
//  5. latch reboot: refused (73, API 423) under a lock, done once the lock is gone.
//
// LATCH_NSPAWN_ARCH=arm64 (or armhf) runs it in that architecture's rootfs through qemu-user.
func TestSystemdEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("real-systemd end-to-end test not run in -short mode")
	}
	a, ok := archs[os.Getenv("LATCH_NSPAWN_ARCH")]
	if !ok {
		t.Fatalf("LATCH_NSPAWN_ARCH=%q: want one of amd64 (default), arm64, armhf", os.Getenv("LATCH_NSPAWN_ARCH"))
	}
	if err := nspawn.Available(); err != nil {
		t.Skipf("real-systemd end-to-end test not run: %v", err)
	}
	root := moduleRoot(t)
	deb, sizes := buildDeb(t, root, a)
	t.Logf("build/deb.sh %s:\n%s", a.deb, sizes)
	booted := time.Now()
	c := nspawn.ForTest(t, a.debian)
	t.Logf("container (%s) booted to running in %v", a.debian, time.Since(booted).Round(time.Millisecond))
	e := &env{t: t, c: c, root: root, scale: a.scale}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, _ := c.Exec(ctx, "journalctl", "--no-pager", "-n", "150", "-u", latchUnit, "-u", uiUnit, "-u", apiUnit)
		t.Logf("container journal (latch and the demo units):\n%s", out)
	})

	steps := []struct {
		name string
		fn   func(*testing.T, *env)
	}{
		{"install", func(t *testing.T, e *env) { e.t = t; stepInstall(e, deb) }},
		{"watchdog", func(t *testing.T, e *env) { e.t = t; stepWatchdog(e) }},
		{"update", func(t *testing.T, e *env) { e.t = t; stepUpdate(e) }},
		{"hold-reboot", func(t *testing.T, e *env) { e.t = t; stepHoldReboot(e) }},
		{"reboot-locked", func(t *testing.T, e *env) { e.t = t; stepRebootLocked(e) }},
	}
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) { s.fn(t, e) }) {
			t.Fatalf("step %s failed; the later steps build on it", s.name)
		}
	}
}

// stepInstall installs the .deb and the demo units, configures latch and starts it.
func stepInstall(e *env, deb string) {
	t := e.t
	ctx, cancel := e.stepCtx(150 * time.Second)
	defer cancel()
	if err := e.c.CopyIn(deb, "/root/latch.deb"); err != nil {
		t.Fatal(err)
	}
	e.exec(ctx, "dpkg", "-i", "/root/latch.deb")
	// The package starts latch with its default (empty) options: configure it, then start it.
	e.exec(ctx, "systemctl", "stop", latchUnit)

	for _, unit := range []string{uiUnit, apiUnit} {
		if err := e.c.CopyIn(filepath.Join(e.root, "build", "systemd", "demo", unit), "/etc/systemd/system/"+unit); err != nil {
			t.Fatal(err)
		}
	}
	e.publishRelease("2") // served from the start; named by the target only in step "update"
	e.writeFile(targetFile, e.publishRelease("1"), 0o644)
	e.writeFile("/etc/default/latch", []byte("LATCH_ARGS=\"--target-file "+targetFile+" --health-wait 2s\"\n"), 0o644)
	e.exec(ctx, "systemctl", "daemon-reload")
	e.exec(ctx, "systemctl", "enable", uiUnit, apiUnit)

	if st := e.show(ctx, latchUnit, "ActiveState")["ActiveState"]; st != "inactive" {
		t.Fatalf("latch.service before start: got ActiveState=%s, want inactive", st)
	}
	start := time.Now()
	e.exec(ctx, "systemctl", "start", latchUnit)
	took := time.Since(start)
	t.Logf("measured: systemctl start latch.service to active: %v", took.Round(time.Millisecond))

	// A Type=notify unit is "activating" until READY=1: systemctl start returns once it is active,
	// and only latch itself (NotifyAccess=main) can have sent it.
	st := e.show(ctx, latchUnit, "Type", "NotifyAccess", "ActiveState", "SubState", "StatusText", "Result")
	for k, want := range map[string]string{"Type": "notify", "NotifyAccess": "main", "ActiveState": "active", "SubState": "running", "Result": "success"} {
		if st[k] != want {
			t.Errorf("latch.service after systemctl start: got %s=%q, want %q", k, st[k], want)
		}
	}
	// STATUS= follows the status model: right after the start, idle or already on release 1.
	if s := st["StatusText"]; !strings.HasPrefix(s, "idle") && !strings.HasPrefix(s, "downloading") && !strings.HasPrefix(s, "applying") {
		t.Errorf("latch.service StatusText: got %q, want latch's STATUS= line (idle, downloading or applying)", s)
	}
	e.waitRelease(ctx, "1")
	// systemctl status shows latch's own STATUS= line.
	e.waitFor(ctx, "systemctl status latch showing the STATUS= line", func() (bool, string) {
		out, _ := e.run(ctx, "systemctl", "status", "--no-pager", latchUnit)
		return strings.Contains(out, `Status: "idle, running demo=1"`), out
	})

	// Release 1 runs in both units, started by latch over D-Bus with the drop-in in place.
	for _, svc := range []string{"ui", "api"} {
		unit := "demo-" + svc + ".service"
		e.waitApp(ctx, svc, "1")
		dropIn := "/run/systemd/system/" + unit + ".d/50-latch-lock.conf"
		if got := e.readFile(dropIn); !strings.Contains(got, "BindPaths=/tmp/latch/services/demo/"+svc+":/tmp/balena") {
			t.Errorf("%s: got %q, want a BindPaths= of the service's lock directory onto /tmp/balena", dropIn, got)
		}
		if env := e.show(ctx, unit, "Environment")["Environment"]; !strings.Contains(env, "BALENA_APP_LOCK_PATH=/tmp/balena/updates.lock") {
			t.Errorf("%s Environment: got %q, want BALENA_APP_LOCK_PATH=/tmp/balena/updates.lock", unit, env)
		}
	}
}

// stepWatchdog stalls latch's event loop (LATCH_TEST_STALL=1 and SIGUSR2) and waits for systemd's
// watchdog to kill and restart it.
func stepWatchdog(e *env) {
	t := e.t
	ctx, cancel := e.stepCtx(150 * time.Second)
	defer cancel()
	const dropIn = "/etc/systemd/system/latch.service.d/50-e2e-stall.conf"
	if err := e.c.WriteFile(dropIn, []byte("[Service]\nEnvironment=LATCH_TEST_STALL=1\nWatchdogSec=3s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.exec(ctx, "systemctl", "daemon-reload")
	e.exec(ctx, "systemctl", "restart", latchUnit)
	e.waitRelease(ctx, "1")
	before := e.journal(ctx)
	if len(before) == 0 {
		t.Fatal("latch journal --json is empty after release 1 was applied")
	}
	restarts := e.showUint(ctx, latchUnit, "NRestarts")
	oldPID := e.show(ctx, latchUnit, "MainPID")["MainPID"]

	e.signal(ctx, latchUnit, "USR2")
	stalled := time.Now()
	e.waitFor(ctx, "systemd to restart latch after its watchdog expired", func() (bool, string) {
		st := e.show(ctx, latchUnit, "NRestarts", "ActiveState", "MainPID")
		n, _ := strconv.ParseUint(st["NRestarts"], 10, 64)
		return n > restarts && st["ActiveState"] == "active" && st["MainPID"] != oldPID, st["NRestarts"] + " " + st["ActiveState"] + " " + st["MainPID"]
	})
	t.Logf("measured: stall (SIGUSR2) to latch active again after the watchdog restart: %v (WatchdogSec=3s, RestartSec=2s)",
		time.Since(stalled).Round(time.Millisecond))
	if n := e.showUint(ctx, latchUnit, "NRestarts"); n != restarts+1 {
		t.Errorf("NRestarts: got %d, want %d (one watchdog restart)", n, restarts+1)
	}
	log := e.exec(ctx, "journalctl", "--no-pager", "-u", latchUnit)
	for _, want := range []string{"LATCH_TEST_STALL: stalling the event loop", "Watchdog timeout", "Failed with result 'watchdog'"} {
		if !strings.Contains(log, want) {
			t.Errorf("journalctl -u latch: no %q in\n%s", want, log)
		}
	}

	// Back with its journal intact: every earlier event is still there, and the client works.
	after := map[uint64]event{}
	for _, ev := range e.journal(ctx) {
		after[ev.Seq] = ev
	}
	for _, ev := range before {
		if got, ok := after[ev.Seq]; !ok || got.Message != ev.Message {
			t.Errorf("journal event %d (%s %q) after the watchdog restart: got %+v (present %v)", ev.Seq, ev.Kind, ev.Message, got, ok)
		}
	}
	if out, code := e.run(ctx, "latch", "status"); code != 0 || !strings.Contains(out, "demo=1") {
		t.Errorf("latch status after the watchdog restart: exit %d, got %q, want demo=1 in it", code, out)
	}
	e.waitRelease(ctx, "1")

	// Back to the shipped unit for the rest.
	if err := os.Remove(filepath.Join(e.c.Root, dropIn)); err != nil {
		t.Fatal(err)
	}
	e.exec(ctx, "systemctl", "daemon-reload")
	e.exec(ctx, "systemctl", "restart", latchUnit)
	if w := e.show(ctx, latchUnit, "WatchdogUSec")["WatchdogUSec"]; w != "10s" {
		t.Errorf("WatchdogUSec after removing the test drop-in: got %q, want 10s", w)
	}
}

// stepUpdate: release 2 waits for the application's own lock, then updates both units.
func stepUpdate(e *env) {
	t := e.t
	ctx, cancel := e.stepCtx(150 * time.Second)
	defer cancel()
	e.waitRelease(ctx, "1")
	e.waitApp(ctx, "ui", "1")
	e.waitApp(ctx, "api", "1")
	props := []string{"ActiveState", "ExecMainPID", "ExecMainStartTimestamp"}
	ui1, api1 := e.show(ctx, uiUnit, props...), e.show(ctx, apiUnit, props...)

	// The application enters its critical section: it creates /tmp/balena/updates.lock inside its
	// unit, which must be the service's lock directory on the other side of the bind mount.
	e.signal(ctx, uiUnit, "USR1")
	e.waitFor(ctx, "the ui's lock at "+uiLock, func() (bool, string) {
		return e.exists(uiLock), e.readFile("/run/demo-ui.running")
	})
	if got := e.readFile(uiLock); !strings.HasPrefix(got, "demo-ui pid "+ui1["ExecMainPID"]) {
		t.Errorf("%s: got %q, want the record of the ui's process %s", uiLock, got, ui1["ExecMainPID"])
	}
	if e.exists("/tmp/balena/updates.lock") {
		t.Error("the ui's lock appeared at the device-wide /tmp/balena/updates.lock, want it only in its service directory")
	}

	e.writeFile(targetFile, e.publishRelease("2"), 0o644)
	var s deviceStatus
	e.waitFor(ctx, "release 2 downloaded and waiting for a lock", func() (bool, string) {
		var raw string
		s, raw = e.status(ctx)
		if s.Release == "demo=2" || s.Status == "applying" {
			t.Fatalf("release 2 is applied while the ui holds %s: %s", uiLock, raw)
		}
		return s.UpdateDownloaded && len(s.BlockedBy) > 0, raw
	})
	if s.Status != "waiting" || s.BlockedBy[0].Path != uiLock {
		t.Errorf("latch status: got status %q blocked by %+v, want waiting, blocked by %s", s.Status, s.BlockedBy, uiLock)
	}
	// The application is told: update-pending, inside its own unit's view of /tmp/balena.
	e.waitFor(ctx, "/tmp/balena/update-pending inside demo-ui.service naming demo 1 -> 2", func() (bool, string) {
		// Through /proc/PID/root, the unit's own mount namespace (no setns, which qemu-user lacks).
		notice, code := e.run(ctx, "cat", "/proc/"+ui1["ExecMainPID"]+"/root/tmp/balena/update-pending")
		var pending struct{ App, From, To string }
		err := json.Unmarshal([]byte(notice), &pending)
		return code == 0 && err == nil && pending.App == "demo" && pending.From == "1" && pending.To == "2", notice
	})
	if st := e.show(ctx, latchUnit, "StatusText")["StatusText"]; !strings.Contains(st, "update waiting for lock "+uiLock) {
		t.Errorf("latch.service StatusText while blocked: got %q, want it to name %s", st, uiLock)
	}
	// Nothing was stopped or replaced under the application's lock.
	for unit, was := range map[string]map[string]string{uiUnit: ui1, apiUnit: api1} {
		if now := e.show(ctx, unit, props...); now["ExecMainPID"] != was["ExecMainPID"] || now["ExecMainStartTimestamp"] != was["ExecMainStartTimestamp"] || now["ActiveState"] != "active" {
			t.Errorf("%s while the ui's lock is held: got %v, want unchanged %v", unit, now, was)
		}
	}
	if got := e.readFile("/opt/demo/ui"); !strings.Contains(got, "release=1\n") {
		t.Errorf("/opt/demo/ui was replaced while the ui's lock was held: %q", got)
	}
	if t.Failed() {
		t.FailNow()
	}

	// The application leaves its critical section: latch applies release 2 at once.
	e.signal(ctx, uiUnit, "USR2")
	released := time.Now()
	e.waitRelease(ctx, "2")
	t.Logf("measured: lock released to release 2 applied (--health-wait 2s): %v", time.Since(released).Round(time.Millisecond))
	if e.exists(uiLock) {
		t.Errorf("%s still exists after the application released it and the update was applied", uiLock)
	}
	if e.exists(uiLockDir + "/update-pending") {
		t.Errorf("%s/update-pending still exists after the update was applied", uiLockDir)
	}
	for unit, was := range map[string]map[string]string{uiUnit: ui1, apiUnit: api1} {
		svc := strings.TrimSuffix(strings.TrimPrefix(unit, "demo-"), ".service")
		pid := e.waitApp(ctx, svc, "2")
		now := e.show(ctx, unit, props...)
		if now["ActiveState"] != "active" || pid == was["ExecMainPID"] || now["ExecMainStartTimestamp"] == was["ExecMainStartTimestamp"] {
			t.Errorf("%s after the update: got %v, want active with a new main process (was %v)", unit, now, was)
		}
		if got := e.readFile("/opt/demo/" + svc); !strings.Contains(got, "release=2\n") {
			t.Errorf("/opt/demo/%s after the update: got %q, want release 2", svc, got)
		}
		out := e.exec(ctx, "journalctl", "--no-pager", "-u", unit)
		for _, want := range []string{"Stopped " + unit, "demo-" + svc + ": release 2 running as pid " + pid} {
			if !strings.Contains(out, want) {
				t.Errorf("journalctl -u %s: no %q in\n%s", unit, want, out)
			}
		}
	}
}

// stepHoldReboot reboots the container with a hold on demo/ui and checks that the hold's entry
// was there before demo-ui.service started.
func stepHoldReboot(e *env) {
	t := e.t
	ctx, cancel := e.stepCtx(150 * time.Second)
	defer cancel()
	e.exec(ctx, "latch", "hold", "demo/ui", "--reason", "end-to-end test")
	if !e.exists(uiHold) {
		t.Fatalf("%s missing after latch hold demo/ui", uiHold)
	}
	rebooted := time.Now()
	if err := e.c.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("measured: systemctl reboot to the container running again: %v", time.Since(rebooted).Round(time.Millisecond))
	// "Running" is systemd's word for its boot jobs being done; on a loaded
	// machine demo-ui may still be activating: wait for it (nothing to await).
	for ctx.Err() == nil {
		if e.show(ctx, uiUnit, "ActiveState")["ActiveState"] == "active" && strings.TrimSpace(e.readFile("/run/demo-ui-saw-hold")) != "" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	if got := strings.TrimSpace(e.readFile("/run/demo-ui-saw-hold")); got != "seen" {
		t.Errorf("demo-ui.service's ExecStartPre after the reboot: got %q, want \"seen\" (the hold's entry %s at /tmp/balena/latch-hold.lock before the unit started)", got, uiHold)
	}
	fi, err := os.Lstat(e.hostPath(uiHold))
	if err != nil {
		t.Fatalf("the hold's entry after the reboot: %v", err)
	}
	t.Logf("measured: systemctl reboot to the hold's entry re-created: %v", fi.ModTime().Sub(rebooted).Round(time.Millisecond))
	lt := e.show(ctx, latchUnit, "ActiveState", "ActiveEnterTimestampMonotonic")
	ui := e.show(ctx, uiUnit, "ActiveState", "InactiveExitTimestampMonotonic")
	if lt["ActiveState"] != "active" || ui["ActiveState"] != "active" {
		t.Errorf("after the reboot: latch %s, demo-ui %s, want both active", lt["ActiveState"], ui["ActiveState"])
	}
	ready, _ := strconv.ParseUint(lt["ActiveEnterTimestampMonotonic"], 10, 64)
	uiStart, _ := strconv.ParseUint(ui["InactiveExitTimestampMonotonic"], 10, 64)
	if ready == 0 || uiStart < ready {
		t.Errorf("after the reboot: demo-ui started at %d µs, latch was ready at %d µs: want demo-ui after latch's READY=1", uiStart, ready)
	} else {
		t.Logf("measured: latch READY=1 to demo-ui.service starting, after the reboot: %v", time.Duration(uiStart-ready)*time.Microsecond)
	}
	e.waitRelease(ctx, "2")
	e.waitApp(ctx, "ui", "2")
	e.waitApp(ctx, "api", "2")

	e.exec(ctx, "latch", "release", "demo/ui")
	if e.exists(uiHold) {
		t.Errorf("%s still exists after latch release demo/ui", uiHold)
	}
}

// stepRebootLocked: latch reboot is refused while the application holds its lock, and reboots the
// container once it is gone.
func stepRebootLocked(e *env) {
	t := e.t
	ctx, cancel := e.stepCtx(150 * time.Second)
	defer cancel()
	e.waitApp(ctx, "ui", "2")
	pid1, err := e.c.PID1()
	if err != nil {
		t.Fatal(err)
	}

	// A program that holds logind's shutdown block inhibitor holds a reboot back like a lock.
	e.exec(ctx, "systemd-run", "--unit", "e2e-inhibit", "systemd-inhibit", "--what=shutdown", "--mode=block",
		"--who=flasher", "--why=flashing the modem", "sleep", "600")
	e.waitFor(ctx, "the inhibitor listed by logind", func() (bool, string) {
		out, _ := e.run(ctx, "systemd-inhibit", "--list", "--no-pager")
		return strings.Contains(out, "flasher"), out
	})
	out, code := e.run(ctx, "latch", "reboot")
	if code != 73 || !strings.Contains(out, "flasher") || !strings.Contains(out, "flashing the modem") {
		t.Errorf("latch reboot under a shutdown inhibitor: got exit %d, output %q; want 73 and a message naming flasher and why", code, out)
	}
	if now, err := e.c.PID1(); err != nil || now != pid1 {
		t.Fatalf("the container rebooted (PID 1 %d, was %d; %v) under a shutdown inhibitor", now, pid1, err)
	}
	e.exec(ctx, "systemctl", "stop", "e2e-inhibit.service")

	e.signal(ctx, uiUnit, "USR1")
	e.waitFor(ctx, "the ui's lock at "+uiLock, func() (bool, string) { return e.exists(uiLock), "" })

	out, code = e.run(ctx, "latch", "reboot")
	if code != 73 || !strings.Contains(out, uiLock) {
		t.Errorf("latch reboot under the ui's lock: got exit %d, output %q; want 73 and a message naming %s", code, out, uiLock)
	}
	status, body := e.apiPost(ctx, "/v1/reboot", "{}")
	var answer struct {
		Data  string
		Error *string
	}
	if err := json.Unmarshal(body, &answer); status != 423 || err != nil || answer.Error == nil || !strings.Contains(*answer.Error, uiLock) {
		t.Errorf("POST /v1/reboot under the ui's lock: got %d %s, want 423 {\"Data\":\"\",\"Error\":...naming %s}", status, body, uiLock)
	}
	if now, err := e.c.PID1(); err != nil || now != pid1 {
		t.Fatalf("the container rebooted (PID 1 %d, was %d; %v) although the reboot was refused", now, pid1, err)
	}
	seqBefore := uint64(0)
	for _, ev := range e.journal(ctx) {
		seqBefore = max(seqBefore, ev.Seq)
		if ev.Kind == "reboot" && strings.Contains(ev.Message, "reboot issued") {
			t.Errorf("journal after a refused reboot has a reboot event: %+v", ev)
		}
	}

	e.signal(ctx, uiUnit, "USR2")
	e.waitFor(ctx, uiLock+" removed by the application", func() (bool, string) { return !e.exists(uiLock), "" })
	rebooted := time.Now()
	out, code = e.run(ctx, "latch", "reboot")
	if code != 0 && !strings.Contains(out, "reboot issued") {
		// The reboot may cut the client off after the agent answered: only a refusal is an error.
		t.Errorf("latch reboot without locks: got exit %d, output %q, want \"reboot issued\"", code, out)
	}
	if err := e.c.WaitRebooted(ctx, pid1); err != nil {
		t.Fatal(err)
	}
	t.Logf("measured: latch reboot to the container running again: %v", time.Since(rebooted).Round(time.Millisecond))
	if st := e.show(ctx, latchUnit, "ActiveState")["ActiveState"]; st != "active" {
		t.Errorf("latch.service after latch reboot: got %s, want active", st)
	}
	found := false
	for _, ev := range e.journal(ctx) {
		if ev.Seq > seqBefore && ev.Kind == "reboot" && strings.Contains(ev.Message, "reboot issued") {
			found = true
		}
	}
	if !found {
		t.Errorf("latch journal after latch reboot: no new event of kind reboot (\"reboot issued\")")
	}
	e.waitRelease(ctx, "2")
	e.waitApp(ctx, "ui", "2")
}
