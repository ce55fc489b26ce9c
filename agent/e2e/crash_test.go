package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var other1 = app{name: "other", release: "1", services: []svc{{name: "svc"}}}

// Kill the agent with SIGKILL at every journalled step of an update, one run
// per step, and restart it (half the runs after a simulated reboot that
// clears the touched app's lock directories): the agent's locks are back
// before READY=1, the apply completes, no step ran on a service without the
// agent holding its lock, the user's lock on another app was never removed,
// and nothing was downloaded twice.
func TestKillAtEveryStep(t *testing.T) {
	lf := lockfileTool(t)
	steps := []string{
		"accepted", "file-staged", "downloaded", "locks-taken",
		"stopping", "stopped", "installing", "installed", "starting", "started",
		"stopping:kiosk/ui", "installed:kiosk/ui", "started:kiosk/ui",
		"healthy", "finished",
	}
	applyPhase := map[string]bool{"locks-taken": true, "stopping": true, "stopped": true, "installing": true,
		"installed": true, "starting": true, "started": true, "healthy": true}
	for i, step := range steps {
		reboot := i%2 == 1
		name := step
		if reboot {
			name += "+reboot"
		}
		t.Run(strings.ReplaceAll(name, "/", "-"), func(t *testing.T) {
			d := newDevice(t)
			d.setTarget(d.targetDoc(nil, kiosk1, other1))
			d.start()
			d.waitFor("first release", func() bool { return d.releaseOf("kiosk") == "2026.11.1" && d.releaseOf("other") == "1" })
			userLock := filepath.Join(d.serviceDir("other", "svc"), "updates.lock")
			if out, err := exec.Command(lf, "-r0", userLock).CombinedOutput(); err != nil {
				t.Fatalf("lockfile: %v %s", err, out)
			}
			d.stop()
			d.mu.Lock()
			for k := range d.served {
				delete(d.served, k)
			}
			d.mu.Unlock()

			d.start("LATCH_FAILPOINT=" + step)
			d.setTarget(d.targetDoc(nil, kiosk2, other1))
			st := d.waitExit()
			if ws, ok := st.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("agent did not die at failpoint %s: %v\n%s", step, st, d.output())
			}
			if reboot {
				os.RemoveAll(filepath.Join(d.lockDir, "services", "kiosk"))
			}
			// What was staged whole at the kill must never be fetched again; a
			// file in flight may be fetched again, from where its partial stops.
			d.mu.Lock()
			staged := map[string]bool{}
			for p, b := range d.blobs {
				if n := d.served[p]; n > int64(len(b)) {
					t.Errorf("%s: served %d bytes before the kill, want at most %d", p, n, len(b))
				}
				sum := sha256.Sum256(b)
				if _, err := os.Stat(filepath.Join(d.stateDir, "downloads", hex.EncodeToString(sum[:]))); err == nil {
					staged[p] = true
				}
				delete(d.served, p)
			}
			d.mu.Unlock()
			ready := d.start()
			base := strings.Split(step, ":")[0]
			if applyPhase[base] {
				for _, s := range []string{"backend", "ui"} {
					p := filepath.Join(d.serviceDir("kiosk", s), "updates.lock")
					rec := agentRecord(t, p)
					if rec == nil {
						t.Fatalf("at READY=1 after dying at %s, %s is not the agent's lock", step, p)
					}
					if rec.Created.After(ready) {
						t.Errorf("%s re-taken at %s, after READY=1 at %s", p, rec.Created, ready)
					}
				}
			}
			d.waitFor("kiosk 2026.11.2 running", func() bool {
				s := d.status()
				return d.releaseOf("kiosk") == "2026.11.2" && !s.UpdatePending
			})
			d.noViolations()
			for _, s := range []string{"backend", "ui"} {
				for _, verb := range []string{"stop kiosk/" + s + " kiosk/" + s + " 2026.11.1", "start kiosk/" + s + " kiosk/" + s + " 2026.11.2"} {
					if n := d.count(verb); n != 1 {
						t.Errorf("%q ran %d times, want once", verb, n)
					}
				}
				if got := readFile(t, d.installed("kiosk", s)); got != "kiosk/"+s+" 2026.11.2" {
					t.Errorf("installed %s = %q", s, got)
				}
			}
			if _, err := os.Lstat(userLock); err != nil {
				t.Errorf("the user's lock on another app is gone: %v", err)
			}
			d.mu.Lock()
			for p, n := range d.served {
				if staged[p] && n > 0 {
					t.Errorf("%s: staged whole before the kill, then fetched again (%d bytes)", p, n)
				}
				if want := int64(len(d.blobs[p])); n > want {
					t.Errorf("%s: served %d bytes after the restart, want at most %d (a resume, never twice)", p, n, want)
				}
			}
			d.mu.Unlock()
			d.stop()
		})
	}
}

// Killed in the middle of a rollback, the agent finishes the rollback.
func TestKillDuringRollback(t *testing.T) {
	d := newDevice(t)
	d.args = []string{"--max-attempts", "1"}
	firstRelease(t, d)
	d.stop()
	broken := app{name: "kiosk", release: "2026.11.2", services: []svc{{name: "ui", content: "kiosk/ui 2026.11.2 broken"}, {name: "backend"}}}
	d.start("LATCH_FAILPOINT=restoring:kiosk/ui")
	d.setTarget(d.targetDoc(nil, broken))
	d.waitExit()
	d.start()
	d.waitFor("update failed", func() bool { return d.status().UpdateFailed })
	for _, s := range []string{"ui", "backend"} {
		if got := readFile(t, d.installed("kiosk", s)); got != "kiosk/"+s+" 2026.11.1" {
			t.Errorf("%s = %q after the resumed rollback, want the previous release", s, got)
		}
	}
	if got := d.releaseOf("kiosk"); got != "2026.11.1" {
		t.Errorf("release = %q, want 2026.11.1", got)
	}
	d.noViolations()
	d.stop()
}

type record struct {
	PID     int       `json:"pid"`
	Role    string    `json:"role"`
	Created time.Time `json:"created"`
}

// agentRecord reads latch's record from a lock file, nil when it is not the
// agent's.
func agentRecord(t *testing.T, path string) *record {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var r record
	if json.Unmarshal(b, &r) != nil || r.Role != "agent" {
		return nil
	}
	return &r
}

// A hold survives a reboot: the lock directory lives on a private tmpfs; the
// agent stops, a fresh tmpfs replaces it (the reboot), and when the agent
// says READY=1 the hold's entry is already there.
func TestHoldSurvivesReboot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a private tmpfs (unshare -m): the hold-across-reboot test did not run")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare(1) missing: the hold-across-reboot test did not run")
	}
	d := newDevice(t)
	tmp := filepath.Join(d.root, "tmp")
	os.MkdirAll(tmp, 0o755)
	d.wrap = []string{"unshare", "-m", "--propagation", "private", "sh", "-c", `mount -t tmpfs tmpfs "$0" && exec "$@"`, tmp}
	firstRelease(t, d)
	var hold map[string]any
	if code := d.api("POST", "/v2/locks", map[string]any{"app": "kiosk", "service": "ui", "reason": "flashing"}, &hold); code != 201 {
		t.Fatalf("POST /v2/locks: %d %v", code, hold)
	}
	entry := filepath.Join(d.serviceDir("kiosk", "ui"), "latch-hold.lock")
	if !d.inNS(entry) {
		t.Fatalf("%s missing after the hold", entry)
	}
	d.stop() // the mount namespace, and its tmpfs, die with the agent

	ready := d.start()
	b, err := exec.Command("nsenter", "-t", itoa(d.cmd.Process.Pid), "-m", "cat", entry).Output()
	if err != nil {
		t.Fatalf("after the reboot, at READY=1, %s is missing: %v", entry, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil || r.Role != "hold" {
		t.Fatalf("hold entry record = %q (%v), want role hold", b, err)
	}
	if r.Created.After(ready) {
		t.Errorf("hold entry created at %s, after READY=1 at %s", r.Created, ready)
	}
	// The hold blocks an update until released.
	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("update blocked by the hold", func() bool {
		s := d.status()
		return len(s.BlockedBy) > 0 && s.BlockedBy[0].Path == entry
	})
	if code := d.api("DELETE", "/v2/locks/kiosk/ui", nil, nil); code != 200 {
		t.Fatalf("DELETE hold: %d", code)
	}
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.releaseOf("kiosk") == "2026.11.2" })
	d.stop()
}

// inNS reports whether path exists in the agent's mount namespace.
func (d *device) inNS(path string) bool {
	return exec.Command("nsenter", "-t", itoa(d.cmd.Process.Pid), "-m", "test", "-e", path).Run() == nil
}

func itoa(i int) string { return strconv.Itoa(i) }

// After a reboot the services of the last accepted target have their lock
// directories (mode 1777) when READY=1 arrives, even when no target source
// answers yet: applications ordered after latch can lock at once.
func TestLockDirsBeforeReady(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	d.stop()
	os.RemoveAll(d.lockDir) // /tmp is cleared at boot
	os.Remove(d.target)     // and the source has nothing to say yet
	d.start()
	for _, s := range []string{"ui", "backend"} {
		fi, err := os.Lstat(d.serviceDir("kiosk", s))
		if err != nil {
			t.Fatalf("at READY=1, the lock directory of kiosk/%s is missing: %v", s, err)
		}
		if fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
			t.Errorf("kiosk/%s lock directory mode = %v, want drwxrwxrwt", s, fi.Mode())
		}
	}
	d.stop()
}

// A corrupt journal is moved aside and replaced: the agent starts, says so,
// and works; it never crash-loops on it.
func TestCorruptJournal(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	d.stop()
	journal := filepath.Join(d.stateDir, "journal.db")
	garbage := []byte(strings.Repeat("not a bbolt journal\n", 1000))
	if err := os.WriteFile(journal, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	d.start()
	aside, _ := filepath.Glob(journal + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("moved-aside journals: %v, want one", aside)
	}
	if b, _ := os.ReadFile(aside[0]); string(b) != string(garbage) {
		t.Errorf("the moved-aside journal does not hold the old bytes")
	}
	var evs []struct{ Kind, Message string }
	d.api("GET", "/v2/journal", nil, &evs)
	if len(evs) == 0 || !strings.Contains(evs[len(evs)-1].Message, "corrupt") {
		t.Errorf("journal events %+v, want the first to say the old journal was corrupt", evs)
	}
	// The fresh journal knows no release: the target is applied again, and
	// the agent goes on working.
	d.waitFor("kiosk 2026.11.1 running again", func() bool { return d.releaseOf("kiosk") == "2026.11.1" })
	d.stop()
}
