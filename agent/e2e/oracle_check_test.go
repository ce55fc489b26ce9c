package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The oracle itself: the stop command of a real target, run by hand under
// every kind of entry, is flagged exactly when a step would break the lock
// rule. Without this a broken snapshot (a typo in the shell, a wrong path)
// would let every e2e test pass.
func TestOracleSeesEveryLock(t *testing.T) {
	d := newDevice(t)
	d.args = []string{"--global-lock", filepath.Join(d.root, "tmp/balena/updates.lock"), "--global-lock=" + filepath.Join(d.root, "data/resin-updates.lock")}
	var doc struct {
		Apps map[string]struct {
			Services map[string]struct {
				Stop string `json:"stop"`
			} `json:"services"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(d.targetDoc(nil, kiosk1), &doc); err != nil {
		t.Fatal(err)
	}
	stop := doc.Apps["kiosk"].Services["ui"].Stop
	d.writeAgentOracle(nil)
	dir := d.serviceDir("kiosk", "ui")
	uid := d.lockUID()
	global := filepath.Join(d.root, "data/resin-updates.lock")
	agentRec := `{"pid":1,"boot_id":"b","command":"latch agent","role":"agent","created":"2026-12-01T00:00:00Z"}`
	holdRec := `{"pid":1,"boot_id":"b","command":"latch agent","role":"hold","created":"2026-12-01T00:00:00Z"}`
	put := func(t *testing.T, path, content string, owner int) {
		t.Helper()
		os.MkdirAll(filepath.Dir(path), 0o1777)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if os.Geteuid() == 0 {
			if err := os.Chown(path, owner, owner); err != nil {
				t.Fatal(err)
			}
		}
	}
	agentOwn := func(t *testing.T) {
		put(t, filepath.Join(dir, "updates.lock"), agentRec, uid)
		put(t, filepath.Join(dir, "resin-updates.lock"), agentRec, uid)
	}
	other := 1000
	if os.Geteuid() != 0 {
		other = os.Geteuid() // the owner cannot differ without root: the role tells them apart
	}
	cases := []struct {
		name   string
		setup  func(t *testing.T)
		forced bool
		want   string // substring of the violation; "" = none
	}{
		{"no entries", func(t *testing.T) {}, false, "without the agent's updates.lock and resin-updates.lock"},
		{"the agent's two entries", agentOwn, false, ""},
		{"only updates.lock", func(t *testing.T) { put(t, filepath.Join(dir, "updates.lock"), agentRec, uid) }, false, "without the agent's resin-updates.lock"},
		{"a user's resin-updates.lock", func(t *testing.T) {
			put(t, filepath.Join(dir, "updates.lock"), agentRec, uid)
			put(t, filepath.Join(dir, "resin-updates.lock"), "", other)
		}, false, "resin-updates.lock (uid"},
		{"a user's file with the agent's record", func(t *testing.T) {
			if os.Geteuid() != 0 {
				t.Skip("needs root: an entry of another owner than the lock uid was not tested")
			}
			put(t, filepath.Join(dir, "updates.lock"), agentRec, other)
			put(t, filepath.Join(dir, "resin-updates.lock"), agentRec, uid)
		}, false, "updates.lock (uid 1000, role agent)"},
		{"a device-wide lock", func(t *testing.T) { agentOwn(t); put(t, filepath.Join(d.root, "tmp/balena/updates.lock"), "", other) }, false, "tmp/balena/updates.lock"},
		{"a named device-wide lock", func(t *testing.T) { agentOwn(t); put(t, global, "", other) }, false, "data/resin-updates.lock"},
		{"a device-wide lock, forced", func(t *testing.T) { agentOwn(t); put(t, global, "", other) }, true, "data/resin-updates.lock"},
		{"the agent's device-wide entries", func(t *testing.T) {
			agentOwn(t)
			put(t, filepath.Join(d.root, "tmp/balena/updates.lock"), agentRec, uid)
			put(t, global, agentRec, uid)
		}, false, ""},
		{"a user's device-wide file with the agent's record", func(t *testing.T) {
			if os.Geteuid() != 0 {
				t.Skip("needs root: a device-wide entry of another owner than the lock uid was not tested")
			}
			agentOwn(t)
			put(t, global, agentRec, other)
		}, false, "data/resin-updates.lock (uid 1000, role agent)"},
		{"a hold", func(t *testing.T) { agentOwn(t); put(t, filepath.Join(dir, "latch-hold.lock"), holdRec, uid) }, false, "under the hold"},
		{"a hold, forced", func(t *testing.T) { agentOwn(t); put(t, filepath.Join(dir, "latch-hold.lock"), holdRec, uid) }, true, ""},
		{"a user's latch-hold.lock, forced", func(t *testing.T) { agentOwn(t); put(t, filepath.Join(dir, "latch-hold.lock"), "", other) }, true, "latch-hold.lock (uid"},
		{"a dangling symlink", func(t *testing.T) {
			put(t, filepath.Join(dir, "updates.lock"), agentRec, uid)
			if err := os.Symlink("/nonexistent", filepath.Join(dir, "resin-updates.lock")); err != nil {
				t.Fatal(err)
			}
		}, false, "resin-updates.lock (uid"},
		{"the agent's entries in another directory", func(t *testing.T) {
			agentOwn(t)
			os.WriteFile(filepath.Join(d.oracleDir(), "lockdir"), []byte(filepath.Join(d.root, "elsewhere")), 0o644)
		}, false, "not the service's lock directory"},
		{"a directory", func(t *testing.T) {
			put(t, filepath.Join(dir, "resin-updates.lock"), agentRec, uid)
			if err := os.Mkdir(filepath.Join(dir, "updates.lock"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, false, "role -"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			os.RemoveAll(filepath.Join(d.root, "tmp"))
			os.RemoveAll(filepath.Join(d.root, "data"))
			os.Remove(d.log)
			d.endForced()
			d.writeAgentOracle(nil)
			os.MkdirAll(dir, 0o1777)
			c.setup(t)
			if c.forced {
				d.allowForced()
			}
			cmd := exec.Command("sh", "-c", stop)
			cmd.Env = append(os.Environ(), "BALENA_APP_LOCK_PATH="+filepath.Join(dir, "updates.lock"), "LATCH_APP=kiosk", "LATCH_SERVICE=ui")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("stop command: %v %s", err, out)
			}
			steps := d.steps()
			if len(steps) != 1 {
				t.Fatalf("steps logged: %+v, want one", steps)
			}
			if got := d.commands(); len(got) != 1 || got[0] != "stop kiosk/ui  [by 2026.11.1]" {
				t.Errorf("commands() = %q, want the step without its snapshot", got)
			}
			v := d.stepViolations(steps)
			switch {
			case c.want == "" && len(v) > 0:
				t.Errorf("violations %q, want none", v)
			case c.want != "" && (len(v) != 1 || !strings.Contains(v[0], c.want)):
				t.Errorf("violations %q, want one naming %q", v, c.want)
			}
		})
	}
}
