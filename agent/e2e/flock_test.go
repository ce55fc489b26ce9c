package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// An agent killed in the middle of an apply leaves its lock entries; the
// next one re-takes them (anew, or the dead ones taken over) and must hold a
// flock on each, as on the entries
// it creates, so that flock-based checkers (balenaOS's reboot script,
// `flock -n`) see them held while it resumes.
func TestReclaimedEntriesAreFlocked(t *testing.T) {
	flockBin, err := exec.LookPath("flock")
	if err != nil {
		t.Skip("flock(1) is not installed: the flock on taken-over entries was not tested")
	}
	d := newDevice(t)
	d.setTarget(d.targetDoc(nil, kiosk1))
	d.start()
	d.waitFor("first release", func() bool { return d.releaseOf("kiosk") == "2026.11.1" })
	d.stop()

	d.start("LATCH_FAILPOINT=stopped")
	d.setTarget(d.targetDoc(nil, kiosk2))
	st := d.waitExit()
	if ws, ok := st.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("agent did not die at the failpoint: %v\n%s", st, d.output())
	}
	// The resumed apply waits in kiosk/ui's start while the test looks.
	d.writeOracle("gate.start.kiosk.ui", "x")
	d.start()
	d.waitFor("the resumed apply in kiosk/ui's start", func() bool {
		return d.count("stop kiosk/ui kiosk/ui 2026.11.1") >= 1 && d.status().Status == "applying"
	})
	for _, s := range []string{"ui", "backend"} {
		p := filepath.Join(d.serviceDir("kiosk", s), "updates.lock")
		if agentRecord(t, p) == nil {
			t.Fatalf("%s is not the agent's entry during the resumed apply", p)
		}
		if out, err := exec.Command(flockBin, "-n", p, "true").CombinedOutput(); err == nil {
			t.Errorf("flock -n %s succeeded while the resumed agent holds it: the taken-over entry carries no flock (%s)", p, out)
		}
	}
	d.writeOracle("gate.start.kiosk.ui", "")
	d.waitFor("kiosk 2026.11.2", func() bool { return d.releaseOf("kiosk") == "2026.11.2" && !d.status().UpdatePending })
	for _, s := range []string{"ui", "backend"} {
		if p := filepath.Join(d.serviceDir("kiosk", s), "updates.lock"); agentRecord(t, p) != nil {
			t.Errorf("%s is still the agent's after the apply", p)
		}
	}
	d.noViolations()
	d.stop()
}

// A hold's entry taken over by the agent after a crash carries a flock too.
func TestReclaimedHoldIsFlocked(t *testing.T) {
	flockBin, err := exec.LookPath("flock")
	if err != nil {
		t.Skip("flock(1) is not installed: the flock on a taken-over hold entry was not tested")
	}
	d := newDevice(t)
	d.setTarget(d.targetDoc(nil, kiosk1))
	d.start()
	d.waitFor("first release", func() bool { return d.releaseOf("kiosk") == "2026.11.1" })
	if code := d.api("POST", "/v2/locks", map[string]any{"app": "kiosk", "service": "ui", "reason": "flashing"}, nil); code != 201 {
		t.Fatalf("POST /v2/locks: %d", code)
	}
	entry := filepath.Join(d.serviceDir("kiosk", "ui"), "latch-hold.lock")
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.waitExit()
	if out, err := exec.Command(flockBin, "-n", entry, "true").CombinedOutput(); err != nil {
		t.Fatalf("flock -n %s with the agent dead: %v %s (its flock must die with it)", entry, err, out)
	}
	d.start()
	if _, err := os.Lstat(entry); err != nil {
		t.Fatalf("the hold's entry after the restart: %v", err)
	}
	if out, err := exec.Command(flockBin, "-n", entry, "true").CombinedOutput(); err == nil {
		t.Errorf("flock -n %s succeeded while the restarted agent holds the hold: the taken-over entry carries no flock (%s)", entry, out)
	}
	d.stop()
}
