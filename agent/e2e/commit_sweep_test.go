package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKillAtEveryCommit kills the agent right after each of its journal
// commits in turn (LATCH_FAILPOINT=commit:N), from the arrival of a new
// target to the end of its apply, and restarts it. Whatever a step's
// transactions are, a kill between any two of them must leave a journal the
// next start recovers from: the update ends applied, each stop and start of
// the release change ran exactly once, and no step ran outside the agent's
// locks. (A journal step split in two transactions, such as the "applied"
// step, leaves the agent applying for good after a kill between the halves:
// this test fails on it.)
func TestKillAtEveryCommit(t *testing.T) {
	step := 1
	if os.Getenv("LATCH_EMULATED") != "" {
		step = 5 // every fifth commit under qemu-user: the native run sweeps them all
		t.Logf("emulated: killing at every %dth commit only", step)
	}
	for n := 1; ; n += step {
		survived := false
		t.Run("commit-"+strconv.Itoa(n), func(t *testing.T) {
			d := newDevice(t)
			firstRelease(t, d)
			d.stop()
			d.start(fmt.Sprintf("LATCH_FAILPOINT=commit:%d", n))
			d.setTarget(d.targetDoc(nil, kiosk2))
			deadline := time.After(30 * time.Second)
		wait:
			for {
				select {
				case <-d.waitErr:
					d.notify.Close()
					break wait
				case <-deadline:
					t.Fatalf("commit:%d: the agent neither died nor finished in 30s\n%s", n, d.output())
				case <-time.After(50 * time.Millisecond):
					if s, ok := d.statusOK(); ok && releaseIn(s, "kiosk") == "2026.11.2" && !s.UpdatePending {
						survived = true // fewer commits than n: the sweep is over
						d.stop()
						return
					}
				}
			}
			st := d.cmd.ProcessState
			if ws, ok := st.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("commit:%d: the agent did not die at the failpoint: %v\n%s", n, st, d.output())
			}
			d.start()
			if !within(30*time.Second, func() bool {
				s, ok := d.statusOK()
				return ok && releaseIn(s, "kiosk") == "2026.11.2" && !s.UpdatePending && s.Status == "idle"
			}) {
				s, _ := d.statusOK()
				t.Fatalf("killed after commit %d, the restarted agent never ends idle on 2026.11.2: status %q reason %q release %q\n%s",
					n, s.Status, s.Reason, s.Release, d.output())
			}
			d.noViolations()
			for _, s := range []string{"backend", "ui"} {
				for _, verb := range []string{"stop kiosk/" + s + " kiosk/" + s + " 2026.11.1", "start kiosk/" + s + " kiosk/" + s + " 2026.11.2"} {
					if c := d.count(verb); c != 1 {
						t.Errorf("killed after commit %d: %q ran %d times, want once", n, verb, c)
					}
				}
			}
			d.stop()
		})
		if survived || t.Failed() || n > 200 {
			if n > 200 {
				t.Fatalf("the update took more than 200 journal commits")
			}
			return
		}
	}
}

// statusOK reads the agent's status without failing the test when the agent
// is gone (it may die at a failpoint at any moment).
func (d *device) statusOK() (deviceStatus, bool) {
	code, body, err := d.request("GET", "/v1/device", nil)
	var s deviceStatus
	if err != nil || code != 200 || json.Unmarshal([]byte(body), &s) != nil {
		return deviceStatus{}, false
	}
	return s, true
}

// releaseIn is the release of appName in a status's "app=release" list.
func releaseIn(s deviceStatus, appName string) string {
	for _, kv := range strings.Split(s.Release, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == appName {
			return v
		}
	}
	return ""
}

// The agent's log escapes what its commands print (and every other text it
// quotes): a command's output cannot clear or drive the terminal of whoever
// reads the log, nor forge a log line.
func TestLogIsEscaped(t *testing.T) {
	d := newDevice(t)
	doc := patch(t, d.targetDoc(nil, kiosk1), "kiosk", "ui", "start", `printf 'x\033[2J\r\nforged line\n'; `)
	d.setTarget(doc)
	d.start()
	d.waitFor("kiosk 2026.11.1 applied", func() bool { return d.releaseOf("kiosk") == "2026.11.1" })
	d.stop()
	out := d.output()
	if strings.ContainsAny(out, "\x1b\r") {
		t.Errorf("the agent's log carries a raw escape or carriage return:\n%q", out)
	}
	if !strings.Contains(out, `x\x1b[2J`) {
		t.Errorf("the agent's log does not show the command's output escaped (x\\x1b[2J):\n%s", out)
	}
}
