package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Three apps of one device for the update-policy tests (spec section 12).
func policyApps(release string) []app {
	return []app{
		{name: "alpha", release: "a" + release, services: []svc{{name: "ui"}, {name: "db"}}},
		{name: "bravo", release: "b" + release, services: []svc{{name: "svc"}}},
		{name: "charlie", release: "c" + release, services: []svc{{name: "svc"}}},
	}
}

// policyStart starts the agent on release 1 of the three apps and waits
// until all three run it.
func policyStart(t *testing.T, d *device) {
	t.Helper()
	d.setTarget(d.targetDoc(nil, policyApps("1")...))
	d.start()
	d.waitFor("release 1 of every app", func() bool {
		return d.releaseOf("alpha") == "a1" && d.releaseOf("bravo") == "b1" && d.releaseOf("charlie") == "c1"
	})
}

// appStatus is one entry of the status's "apps".
type appStatus struct {
	Name      string `json:"name"`
	Current   string `json:"current"`
	Target    string `json:"target"`
	Deadline  string `json:"deadline"`
	BlockedBy []struct {
		Path    string `json:"path"`
		App     string `json:"app"`
		Service string `json:"service"`
	} `json:"blocked_by"`
}

func (d *device) appStatuses() map[string]appStatus {
	d.t.Helper()
	var s struct {
		Apps []appStatus `json:"apps"`
	}
	if code := d.api("GET", "/v1/device", nil, &s); code != 200 {
		d.t.Fatalf("GET /v1/device: status %d", code)
	}
	out := map[string]appStatus{}
	for _, a := range s.Apps {
		out[a.Name] = a
	}
	return out
}

// A user's lock in one app holds back that app alone: the other two apps of
// the same target are applied (their new content runs) while the locked one
// keeps running its old release, and the status names what blocks which app.
// Once the lock goes, the locked app is applied. A reboot needs every lock:
// it is refused while the lock is held.
func TestPolicyAppsIndependent(t *testing.T) {
	d := newDevice(t)
	d.args = append(d.args, "--reboot-command", "echo reboot >> "+filepath.Join(d.root, "reboots.log"))
	policyStart(t, d)
	lockPath := filepath.Join(d.serviceDir("alpha", "ui"), "updates.lock")
	userLock(t, d, lockPath)
	stops := d.count("stop alpha/")

	d.setTarget(d.targetDoc(nil, policyApps("2")...))
	d.waitFor("bravo and charlie on release 2", func() bool {
		return d.releaseOf("bravo") == "b2" && d.releaseOf("charlie") == "c2"
	})
	for _, a := range []string{"bravo", "charlie"} {
		if got, want := readFile(t, d.installed(a, "svc")), a+"/svc "+a[:1]+"2"; got != want {
			t.Errorf("installed %s/svc = %q, want %q", a, got, want)
		}
		if n := d.count(fmt.Sprintf("start %s/svc %s/svc %s2", a, a, a[:1])); n != 1 {
			t.Errorf("%s/svc release 2 started %d times, want once", a, n)
		}
	}
	d.waitFor("alpha blocked by the user's lock", func() bool {
		return len(d.appStatuses()["alpha"].BlockedBy) > 0
	})
	if got := d.releaseOf("alpha"); got != "a1" {
		t.Fatalf("alpha runs %q while its lock is held, want a1", got)
	}
	for _, s := range []string{"ui", "db"} {
		if got, want := readFile(t, d.installed("alpha", s)), "alpha/"+s+" a1"; got != want {
			t.Errorf("installed alpha/%s = %q while locked, want %q", s, got, want)
		}
	}
	if n := d.count("stop alpha/"); n != stops {
		t.Errorf("alpha stopped %d times while alpha/ui's lock is held", n-stops)
	}
	apps := d.appStatuses()
	if b := apps["alpha"].BlockedBy; len(b) == 0 || b[0].Path != lockPath || b[0].App != "alpha" {
		t.Errorf("apps[alpha].blocked_by = %+v, want %s first", b, lockPath)
	}
	for _, a := range []string{"bravo", "charlie"} {
		if b := apps[a].BlockedBy; len(b) != 0 {
			t.Errorf("apps[%s].blocked_by = %+v, want none", a, b)
		}
	}
	s := d.status()
	if !s.UpdatePending || len(s.BlockedBy) == 0 || s.BlockedBy[0].Path != lockPath {
		t.Errorf("status %+v: want the update pending, blocked by %s", s, lockPath)
	}

	// A reboot waits for every lock, the user's in alpha included.
	var rb struct {
		Data  string `json:"Data"`
		Error string `json:"Error"`
	}
	if code := d.api("POST", "/v1/reboot", map[string]any{}, &rb); code != 423 || !strings.Contains(rb.Error, lockPath) {
		t.Errorf("POST /v1/reboot with alpha/ui locked: %d %+v, want 423 naming %s", code, rb, lockPath)
	}
	if _, err := os.Stat(filepath.Join(d.root, "reboots.log")); err == nil {
		t.Errorf("the reboot command ran while a lock was held")
	}

	// What runs is recorded app by app: a new target that changes bravo
	// again, while alpha still waits, stops bravo with the command of the
	// release it runs now (b2's), not b1's or b3's.
	next := policyApps("2")
	next[1].release = "b3"
	d.setTarget(d.targetDoc(nil, next...))
	d.waitFor("bravo on release 3", func() bool { return d.releaseOf("bravo") == "b3" })
	if n := d.count("stop bravo/svc bravo/svc b2 [by b2]"); n != 1 {
		t.Errorf("bravo/svc on b2 stopped %d times by b2's command, want once\n%s", n, strings.Join(d.commands(), "\n"))
	}
	if got := d.releaseOf("alpha"); got != "a1" {
		t.Fatalf("alpha runs %q while its lock is held, want a1", got)
	}

	if err := os.Remove(lockPath); err != nil {
		t.Fatal(err)
	}
	d.waitFor("alpha on release 2 after the unlock", func() bool {
		s := d.status()
		return d.releaseOf("alpha") == "a2" && !s.UpdatePending
	})
	for _, s := range []string{"ui", "db"} {
		if got, want := readFile(t, d.installed("alpha", s)), "alpha/"+s+" a2"; got != want {
			t.Errorf("installed alpha/%s = %q, want %q", s, got, want)
		}
	}
	if n := d.count("start charlie/svc charlie/svc c2"); n != 1 {
		t.Errorf("charlie/svc release 2 started %d times in all, want once", n)
	}
	d.noViolations()
	var evs []struct {
		Kind    string `json:"kind"`
		Message string `json:"message"`
	}
	d.api("GET", "/v2/journal?limit=100", nil, &evs)
	applied := map[string]int{}
	for _, e := range evs {
		if e.Kind == "applied" {
			for _, r := range []string{"alpha=a2", "bravo=b2", "bravo=b3", "charlie=c2"} {
				if strings.Contains(e.Message, r) {
					applied[r]++
				}
			}
		}
	}
	for _, r := range []string{"alpha=a2", "bravo=b2", "bravo=b3", "charlie=c2"} {
		if applied[r] != 1 {
			b, _ := json.Marshal(evs)
			t.Errorf("%s named by %d applied events, want 1: %s", r, applied[r], b)
		}
	}
}

// notice reads dir/update-pending; ok is false when it is missing.
func readNotice(t *testing.T, dir string) (n struct {
	App      string  `json:"app"`
	From     string  `json:"from"`
	To       string  `json:"to"`
	Since    string  `json:"since"`
	Deadline *string `json:"deadline"`
}, ok bool) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "update-pending"))
	if os.IsNotExist(err) {
		return n, false
	}
	if err != nil {
		t.Fatalf("read update-pending: %v", err)
	}
	if err := json.Unmarshal(b, &n); err != nil {
		t.Fatalf("update-pending in %s: %q: %v", dir, b, err)
	}
	return n, true
}

// While an app's update waits, every service of that app (and no other)
// finds update-pending in its lock directory, naming the app, both
// releases and since when; it goes once the app is updated, or when the
// update is cancelled. A symlink that a user planted at that name is
// replaced, never written through; a directory planted there is left alone
// and reported.
func TestPolicyUpdatePendingNotice(t *testing.T) {
	d := newDevice(t)
	policyStart(t, d)
	openRoot(t, d)
	victim := filepath.Join(d.root, "etc", "somefile")
	if err := os.MkdirAll(filepath.Dir(victim), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	planted := filepath.Join(d.serviceDir("alpha", "db"), "update-pending")
	if out, err := asUser("ln", "-s", victim, planted).CombinedOutput(); err != nil {
		t.Fatalf("plant a symlink as another user: %v %s", err, out)
	}
	plantedDir := filepath.Join(d.serviceDir("bravo", "svc"), "update-pending")
	if out, err := asUser("mkdir", plantedDir).CombinedOutput(); err != nil {
		t.Fatalf("plant a directory as another user: %v %s", err, out)
	}
	lockPath := filepath.Join(d.serviceDir("alpha", "ui"), "updates.lock")
	userLock(t, d, lockPath)

	d.setTarget(d.targetDoc(nil, policyApps("2")...))
	d.waitFor("bravo and charlie on release 2", func() bool {
		return d.releaseOf("bravo") == "b2" && d.releaseOf("charlie") == "c2"
	})
	for _, s := range []string{"ui", "db"} {
		dir := d.serviceDir("alpha", s)
		d.waitFor("update-pending in "+dir, func() bool { _, ok := readNotice(t, dir); return ok })
		n, _ := readNotice(t, dir)
		if n.App != "alpha" || n.From != "a1" || n.To != "a2" || n.Deadline != nil {
			t.Errorf("update-pending in alpha/%s = %+v, want app alpha, from a1, to a2, deadline null", s, n)
		}
		if _, err := time.Parse(time.RFC3339, n.Since); err != nil {
			t.Errorf("update-pending in alpha/%s: since %q: %v", s, n.Since, err)
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, "update-pending"), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFREG || st.Mode&0o7777 != 0o644 || (os.Geteuid() == 0 && st.Uid != 0) {
			t.Errorf("update-pending in alpha/%s: mode %o uid %d, want a regular file, 0644, root's", s, st.Mode, st.Uid)
		}
	}
	if got := readFile(t, victim); got != "precious" {
		t.Errorf("the planted symlink's target now holds %q: the agent wrote through it", got)
	}
	if fi, err := os.Lstat(plantedDir); err != nil || !fi.IsDir() {
		t.Errorf("the directory planted at %s: %v, want it left alone", plantedDir, err)
	} else if ents, _ := os.ReadDir(plantedDir); len(ents) != 0 {
		t.Errorf("the agent wrote into the planted directory %s: %v", plantedDir, ents)
	}
	if _, ok := readNotice(t, d.serviceDir("charlie", "svc")); ok {
		t.Errorf("update-pending left in charlie/svc, whose update is done")
	}
	// The lock core does not count update-pending as a lock.
	if out, err := exec.Command(latchBin, "locks", "--json", "--root", d.root).CombinedOutput(); err != nil || strings.Contains(string(out), "update-pending") || !strings.Contains(string(out), lockPath) {
		t.Errorf("latch locks: %v\n%s\nwant %s listed and update-pending not listed as a lock", err, out, lockPath)
	}

	if err := os.Remove(lockPath); err != nil {
		t.Fatal(err)
	}
	d.waitFor("alpha on release 2", func() bool { return d.releaseOf("alpha") == "a2" && !d.status().UpdatePending })
	for _, s := range []string{"ui", "db"} {
		d.waitFor("update-pending gone from alpha/"+s, func() bool {
			_, ok := readNotice(t, d.serviceDir("alpha", s))
			return !ok
		})
	}

	// A cancelled update takes its notice away.
	userLock(t, d, lockPath)
	next := policyApps("2")
	next[0].release = "a3"
	d.setTarget(d.targetDoc(nil, next...))
	d.waitFor("update-pending for a3", func() bool {
		n, ok := readNotice(t, d.serviceDir("alpha", "ui"))
		return ok && n.To == "a3"
	})
	if code := d.api("POST", "/v1/update", map[string]any{"cancel": true}, nil); code != 204 {
		t.Fatalf("cancel: %d, want 204", code)
	}
	d.waitFor("update-pending gone after the cancel", func() bool {
		_, ok := readNotice(t, d.serviceDir("alpha", "ui"))
		return !ok
	})
	if got := readFile(t, victim); got != "precious" {
		t.Errorf("the planted symlink's target now holds %q", got)
	}
	d.noViolations()
}

// followEvents runs `latch events --json` and returns the events it prints.
// It returns once the stream is known to be followed: an event logged after
// the start (an override request) has come through.
func followEvents(t *testing.T, d *device) <-chan map[string]any {
	t.Helper()
	cmd := exec.Command(latchBin, "events", "--json", "--run-dir", d.runDir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	evs := make(chan map[string]any, 1024)
	go func() {
		defer close(evs)
		dec := json.NewDecoder(out)
		for {
			var e map[string]any
			if err := dec.Decode(&e); err != nil {
				return
			}
			evs <- e
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		d.api("PUT", "/v2/device/override", map[string]any{"enabled": false}, nil)
		select {
		case e, ok := <-evs:
			if !ok {
				t.Fatalf("latch events ended: %s", stderr.String())
			}
			if e["kind"] == "override" {
				return evs
			}
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Fatalf("latch events printed no event within 20s: %s", stderr.String())
	return nil
}

// `latch events --json` follows the agent as it acts: for the update of an
// app held back by a user's lock it shows the update accepted, deferred,
// the lock taken once the user unlocks, and the app applied, in that order
// and with rising seqs.
func TestPolicyEventsFollowLockedUpdate(t *testing.T) {
	d := newDevice(t)
	policyStart(t, d)
	evs := followEvents(t, d)
	lockPath := filepath.Join(d.serviceDir("alpha", "ui"), "updates.lock")
	userLock(t, d, lockPath)
	next := policyApps("1")
	next[0].release = "a2"
	d.setTarget(d.targetDoc(nil, next...))
	want := []struct{ kind, has string }{
		{"update", "alpha a1 -> a2"},
		{"deferred", lockPath},
		{"lock-taken", "alpha/ui"},
		{"applied", "alpha=a2"},
	}
	var lastSeq float64
	var seen []string
	for i, w := range want {
		for {
			var e map[string]any
			var ok bool
			select {
			case e, ok = <-evs:
			case <-time.After(30 * time.Second):
				t.Fatalf("no %s event naming %q within 30s; seen: %v", w.kind, w.has, seen)
			}
			if !ok {
				t.Fatalf("latch events ended; seen: %v", seen)
			}
			msg, _ := e["message"].(string)
			seq, _ := e["seq"].(float64)
			seen = append(seen, fmt.Sprintf("%v %v: %s", seq, e["kind"], msg))
			if seq <= lastSeq {
				t.Errorf("event seq %v after %v: the stream went back", seq, lastSeq)
			}
			lastSeq = seq
			if e["kind"] == w.kind && strings.Contains(msg, w.has) {
				break
			}
			if e["kind"] == "applied" || (i < 2 && e["kind"] == "lock-taken") {
				t.Fatalf("%v %s came before the %s event naming %q; seen: %v", e["kind"], msg, w.kind, w.has, seen)
			}
		}
		if i == 1 {
			if got := d.releaseOf("alpha"); got != "a1" {
				t.Fatalf("alpha runs %q while its update is deferred", got)
			}
			if err := os.Remove(lockPath); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// withField sets key to value in the object at path (keys from the top)
// of a target document.
func withField(t *testing.T, doc []byte, value any, path ...string) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	cur := m
	for _, k := range path[:len(path)-1] {
		cur = cur[k].(map[string]any)
	}
	cur[path[len(path)-1]] = value
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// appStatusOf is one app's entry of the status, with its reason.
func (d *device) appReason(name string) (string, string) {
	d.t.Helper()
	var s struct {
		Apps []struct {
			Name     string `json:"name"`
			Reason   string `json:"reason"`
			Deadline string `json:"deadline"`
		} `json:"apps"`
	}
	d.api("GET", "/v1/device", nil, &s)
	for _, a := range s.Apps {
		if a.Name == name {
			return a.Reason, a.Deadline
		}
	}
	return "", ""
}

func (d *device) metrics() string {
	d.t.Helper()
	resp, err := d.client().Get("http://latch/metrics")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 64<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}

// --max-defer with the default policy (wait): past the deadline the app's
// update keeps waiting for its lock, and the status, update-pending and
// /metrics say when the deadline was and how late it is; the other apps are
// not held back.
func TestPolicyMaxDeferWait(t *testing.T) {
	d := newDevice(t)
	d.args = append(d.args, "--max-defer", "1s")
	policyStart(t, d)
	lockPath := filepath.Join(d.serviceDir("alpha", "ui"), "updates.lock")
	userLock(t, d, lockPath)
	d.setTarget(d.targetDoc(nil, policyApps("2")...))
	d.waitFor("alpha past its deadline", func() bool {
		r, _ := d.appReason("alpha")
		return strings.Contains(r, "past its max-defer deadline")
	})
	_, deadline := d.appReason("alpha")
	dl, err := time.Parse(time.RFC3339Nano, deadline)
	if err != nil {
		t.Fatalf("apps[alpha].deadline %q: %v", deadline, err)
	}
	if got := d.releaseOf("alpha"); got != "a1" {
		t.Errorf("alpha runs %q past its deadline under --on-max-defer wait, want a1", got)
	}
	if d.releaseOf("bravo") != "b2" || d.releaseOf("charlie") != "c2" {
		t.Errorf("bravo, charlie run %q, %q: want b2, c2", d.releaseOf("bravo"), d.releaseOf("charlie"))
	}
	n, ok := readNotice(t, d.serviceDir("alpha", "ui"))
	if !ok || n.Deadline == nil {
		t.Fatalf("update-pending of alpha/ui: %+v (present %v), want a deadline", n, ok)
	}
	if nd, err := time.Parse(time.RFC3339Nano, *n.Deadline); err != nil || !nd.Equal(dl) {
		t.Errorf("update-pending deadline %q, status deadline %s: want the same", *n.Deadline, deadline)
	}
	m := d.metrics()
	found := false
	for _, l := range strings.Split(m, "\n") {
		if strings.HasPrefix(l, `latch_update_deadline_seconds{app="alpha"} -`) {
			found = true
		}
	}
	if !found {
		t.Errorf("/metrics has no negative latch_update_deadline_seconds for alpha:\n%s", m)
	}
	if err := os.Remove(lockPath); err != nil {
		t.Fatal(err)
	}
	d.waitFor("alpha on a2 after the unlock", func() bool { return d.releaseOf("alpha") == "a2" && !d.status().UpdatePending })
	d.noViolations()
}

// "max_defer" on an app with --on-max-defer fail: past the deadline that
// app's update is given up with a reason that names it, while the others
// are applied; the locked app keeps running its release.
func TestPolicyMaxDeferFail(t *testing.T) {
	d := newDevice(t)
	d.args = append(d.args, "--on-max-defer", "fail")
	policyStart(t, d)
	lockPath := filepath.Join(d.serviceDir("alpha", "ui"), "updates.lock")
	userLock(t, d, lockPath)
	d.setTarget(withField(t, d.targetDoc(nil, policyApps("2")...), "1s", "apps", "alpha", "max_defer"))
	d.waitFor("the update failed", func() bool { return d.status().UpdateFailed })
	s := d.status()
	if !strings.Contains(s.Reason, "alpha") || !strings.Contains(s.Reason, "max-defer") || !strings.Contains(s.Reason, lockPath) {
		t.Errorf("reason %q: want it to name alpha, the max-defer deadline and the lock", s.Reason)
	}
	if d.releaseOf("alpha") != "a1" || d.releaseOf("bravo") != "b2" || d.releaseOf("charlie") != "c2" {
		t.Errorf("releases %q: want alpha a1 (given up), bravo b2, charlie c2", s.Release)
	}
	if r, _ := d.appReason("alpha"); !strings.Contains(r, "failed") {
		t.Errorf("apps[alpha].reason %q, want it failed", r)
	}
	d.waitFor("update-pending gone from alpha/ui", func() bool {
		_, ok := readNotice(t, d.serviceDir("alpha", "ui"))
		return !ok
	})
	if _, err := os.Lstat(lockPath); err != nil {
		t.Errorf("the user's lock is gone (%v): fail must not force", err)
	}
	d.noViolations()
}

// --on-max-defer force: past the deadline the app's update is forced
// (journalled as forced by max-defer). The deadline is journalled: an agent
// killed and restarted while the app waits keeps it, and forces on time.
func TestPolicyMaxDeferForceAcrossRestart(t *testing.T) {
	d := newDevice(t)
	d.args = append(d.args, "--max-defer", "4s", "--on-max-defer", "force")
	policyStart(t, d)
	lockPath := filepath.Join(d.serviceDir("alpha", "ui"), "updates.lock")
	userLock(t, d, lockPath)
	d.setTarget(d.targetDoc(nil, policyApps("2")...))
	var before string
	d.waitFor("alpha's deadline", func() bool { _, before = d.appReason("alpha"); return before != "" })
	d.kill()
	d.start()
	d.waitFor("alpha's deadline after the restart", func() bool {
		_, after := d.appReason("alpha")
		return after != "" || d.releaseOf("alpha") == "a2"
	})
	if _, after := d.appReason("alpha"); after != "" && after != before {
		t.Errorf("deadline %s before the restart, %s after: want it kept", before, after)
	}
	d.waitFor("alpha forced onto a2", func() bool { return d.releaseOf("alpha") == "a2" })
	dl, _ := time.Parse(time.RFC3339Nano, before)
	var evs []struct {
		Kind, By, Message string
		Time              time.Time
	}
	d.api("GET", "/v2/journal?limit=200", nil, &evs)
	forced := false
	for _, e := range evs {
		if e.Kind == "forced" && strings.Contains(e.Message, "forced by max-defer") && strings.Contains(e.Message, "alpha") {
			forced = true
			if e.Time.Before(dl) {
				t.Errorf("forced at %s, before the deadline %s", e.Time, dl)
			}
		}
	}
	if !forced {
		t.Errorf("no forced-by-max-defer event for alpha in the journal: %+v", evs)
	}
	if _, err := os.Lstat(lockPath); !os.IsNotExist(err) {
		t.Errorf("the user's lock is still there after the forced update (%v)", err)
	}
	d.noViolations()
}

// windowFromNow is a maintenance window that opens in `in` and lasts an
// hour, on the day it opens, in UTC; and the time it opens.
func windowFromNow(in time.Duration) (map[string]any, time.Time) {
	opens := time.Now().UTC().Add(in).Truncate(time.Second)
	closes := opens.Add(time.Hour)
	return map[string]any{
		"days":  []string{strings.ToLower(opens.Weekday().String()[:3])},
		"start": opens.Format("15:04:05"),
		"end":   closes.Format("15:04:05"),
		"tz":    "UTC",
	}, opens
}

// A maintenance window on one app: the update downloads at once, the other
// apps are applied at once, and that app is applied only once its window
// opens (the journal's applied event is not earlier).
func TestPolicyWindowOnOneApp(t *testing.T) {
	d := newDevice(t)
	policyStart(t, d)
	win, opens := windowFromNow(3 * time.Second)
	d.setTarget(withField(t, d.targetDoc(nil, policyApps("2")...), win, "apps", "alpha", "window"))
	d.waitFor("bravo and charlie on release 2", func() bool { return d.releaseOf("bravo") == "b2" && d.releaseOf("charlie") == "c2" })
	if time.Now().Before(opens) {
		s := d.status()
		if got := d.releaseOf("alpha"); got != "a1" {
			t.Errorf("alpha runs %q before its window opens", got)
		}
		if !s.UpdateDownloaded {
			t.Errorf("status %+v: want the update downloaded before the window opens", s)
		}
		if r, _ := d.appReason("alpha"); !strings.Contains(r, "maintenance window") {
			t.Errorf("apps[alpha].reason %q: want it waiting for its window", r)
		}
		if _, ok := readNotice(t, d.serviceDir("alpha", "ui")); !ok {
			t.Errorf("no update-pending for alpha while it waits for its window")
		}
	} else {
		t.Logf("the window opened before the first check: the before-window checks did not run")
	}
	d.waitFor("alpha on a2 in its window", func() bool { return d.releaseOf("alpha") == "a2" })
	var evs []struct {
		Kind, Message string
		Time          time.Time
	}
	d.api("GET", "/v2/journal?limit=100", nil, &evs)
	for _, e := range evs {
		if e.Kind == "applied" && strings.Contains(e.Message, "alpha=a2") && e.Time.Before(opens) {
			t.Errorf("alpha applied at %s, before its window opened at %s", e.Time, opens)
		}
		if e.Kind == "applied" && strings.Contains(e.Message, "bravo=b2") && !e.Time.Before(opens) {
			t.Logf("bravo applied at %s, not before alpha's window opened: the machine is slow", e.Time)
		}
	}
	d.noViolations()
}

// A window at the top of the target holds back every app until it opens,
// and a force ignores it.
func TestPolicyWindowTopAndForce(t *testing.T) {
	d := newDevice(t)
	policyStart(t, d)
	win, _ := windowFromNow(2 * time.Hour)
	d.setTarget(withField(t, d.targetDoc(nil, policyApps("2")...), win, "window"))
	d.waitFor("the update waiting for its window", func() bool {
		s := d.status()
		return s.UpdateDownloaded && strings.Contains(s.Reason, "maintenance window")
	})
	for _, a := range []string{"alpha", "bravo", "charlie"} {
		if got := d.releaseOf(a); got != a[:1]+"1" {
			t.Errorf("%s runs %q outside the window", a, got)
		}
	}
	if code := d.api("POST", "/v1/update", map[string]any{"force": true}, nil); code != 204 {
		t.Fatalf("forced update: %d, want 204", code)
	}
	d.waitFor("every app on release 2 after the force", func() bool {
		return d.releaseOf("alpha") == "a2" && d.releaseOf("bravo") == "b2" && d.releaseOf("charlie") == "c2"
	})
	d.noViolations()
}

// A bad window or max_defer is refused with an error naming the field, and
// changes nothing: no update, the releases that run stay.
func TestPolicyBadInputRejected(t *testing.T) {
	d := newDevice(t)
	policyStart(t, d)
	before := d.status()
	good := d.targetDoc(nil, policyApps("2")...)
	for _, c := range []struct {
		value any
		path  []string
		field string
	}{
		{map[string]any{"days": []string{"mon", "someday"}, "start": "02:00", "end": "04:00"}, []string{"apps", "alpha", "window"}, "apps.alpha.window.days[1]"},
		{map[string]any{"start": "25:00", "end": "04:00"}, []string{"window"}, "window.start"},
		{map[string]any{"start": "02:00", "end": "02:00"}, []string{"window"}, "window.end"},
		{map[string]any{"start": "02:00", "end": "04:00", "tz": "Nowhere/Town"}, []string{"apps", "bravo", "window"}, "apps.bravo.window.tz"},
		{"-5m", []string{"apps", "alpha", "max_defer"}, "apps.alpha.max_defer"},
		{"whenever", []string{"apps", "charlie", "max_defer"}, "apps.charlie.max_defer"},
	} {
		doc := withField(t, good, c.value, c.path...)
		code, body := d.pushBody(doc)
		if code != 400 || !strings.Contains(body, c.field) {
			t.Errorf("push with %s = %v: %d %s, want 400 naming %s", strings.Join(c.path, "."), c.value, code, body, c.field)
		}
	}
	// Through the target file too: refused, nothing applied.
	d.setTarget(withField(t, good, "-5m", "apps", "alpha", "max_defer"))
	d.waitFor("the bad target file refused", func() bool { return strings.Contains(d.output(), "apps.alpha.max_defer") })
	s := d.status()
	if s.UpdatePending || s.Release != before.Release {
		t.Errorf("after bad targets: status %+v, want nothing pending and %q running", s, before.Release)
	}
}

// TestPolicyKillAtEveryCommit kills the agent right after each of its
// journal commits in turn while one target updates three apps, app by app,
// and restarts it: every app ends on its new release, each stop and start
// of the change ran once, and no step ran outside the agent's locks. An app
// applied before a kill stays applied; the others finish after it.
func TestPolicyKillAtEveryCommit(t *testing.T) {
	t.Parallel() // a device of its own at every point; it runs beside the other long sweeps
	step := 1
	if os.Getenv("LATCH_EMULATED") != "" {
		step = 5
	}
	for n := 1; ; n += step {
		survived := false
		t.Run(fmt.Sprintf("commit-%d", n), func(t *testing.T) {
			d := newDevice(t)
			policyStart(t, d)
			d.stop()
			d.start(fmt.Sprintf("LATCH_FAILPOINT=commit:%d", n))
			d.setTarget(d.targetDoc(nil, policyApps("2")...))
			done := func(s deviceStatus) bool {
				return releaseIn(s, "alpha") == "a2" && releaseIn(s, "bravo") == "b2" && releaseIn(s, "charlie") == "c2" && !s.UpdatePending && s.Status == "idle"
			}
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
					if s, ok := d.statusOK(); ok && done(s) {
						survived = true
						d.stop()
						return
					}
				}
			}
			if ws, ok := d.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("commit:%d: the agent did not die at the failpoint: %v\n%s", n, d.cmd.ProcessState, d.output())
			}
			d.start()
			if !within(30*time.Second, func() bool { s, ok := d.statusOK(); return ok && done(s) }) {
				s, _ := d.statusOK()
				t.Fatalf("killed after commit %d, the restarted agent never ends idle on release 2: %+v\n%s", n, s, d.output())
			}
			d.noViolations()
			for _, a := range policyApps("1") {
				for _, sv := range a.services {
					name := a.name + "/" + sv.name
					for _, verb := range []string{"stop " + name + " " + name + " " + a.release, "start " + name + " " + name + " " + a.name[:1] + "2"} {
						if c := d.count(verb); c != 1 {
							t.Errorf("killed after commit %d: %q ran %d times, want once", n, verb, c)
						}
					}
				}
			}
			d.stop()
		})
		if survived || t.Failed() || n > 400 {
			if n > 400 {
				t.Fatalf("the update took more than 400 journal commits")
			}
			return
		}
	}
}

// BenchmarkPolicyReleaseToStop measures, with three apps of which one is
// locked, the latency from the release of that app's lock to the first stop
// command of its services, once the other two apps of the same target are applied:
// one trial per iteration (run with -benchtime=50x); reports the median and
// the 99th percentile. The stop command's own start-up is included.
func BenchmarkPolicyReleaseToStop(b *testing.B) {
	d := newDevice(b)
	stamp := filepath.Join(d.root, "stop.stamp")
	doc := func(i int) []byte {
		raw := d.targetDoc(nil, policyApps(strconv.Itoa(i))...)
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			b.Fatal(err)
		}
		for _, sv := range m["apps"].(map[string]any)["alpha"].(map[string]any)["services"].(map[string]any) {
			sv := sv.(map[string]any)
			sv["stop"] = "date +%s%N >> " + stamp + "; " + sv["stop"].(string)
		}
		out, _ := json.Marshal(m)
		return out
	}
	d.setTarget(doc(0))
	d.start()
	d.waitFor("first release", func() bool { return d.releaseOf("alpha") == "a0" && d.releaseOf("charlie") == "c0" })
	lockPath := filepath.Join(d.serviceDir("alpha", "ui"), "updates.lock")
	var lat []time.Duration
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		os.Remove(stamp)
		if err := os.WriteFile(lockPath, nil, 0o644); err != nil {
			b.Fatal(err)
		}
		d.setTarget(doc(i))
		n := strconv.Itoa(i)
		d.waitFor("bravo, charlie applied and alpha blocked", func() bool {
			return d.releaseOf("bravo") == "b"+n && d.releaseOf("charlie") == "c"+n && len(d.appStatuses()["alpha"].BlockedBy) > 0
		})
		released := time.Now()
		os.Remove(lockPath)
		var raw []byte
		d.waitFor("stop ran", func() bool { raw, _ = os.ReadFile(stamp); return strings.Contains(string(raw), "\n") })
		ns, err := strconv.ParseInt(strings.TrimSpace(strings.Split(string(raw), "\n")[0]), 10, 64)
		if err != nil {
			b.Fatalf("stamp %q: %v", raw, err)
		}
		lat = append(lat, time.Unix(0, ns).Sub(released))
		d.waitFor("alpha applied", func() bool { return d.releaseOf("alpha") == "a"+n && !d.status().UpdatePending })
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// An app whose new release fails its health check is rolled back and, once
// its attempts are spent, given up alone: the apps after it in the same
// target are still applied, and the update ends failed naming that app.
func TestPolicyBrokenAppAlone(t *testing.T) {
	d := newDevice(t)
	d.args = append(d.args, "--max-attempts", "2")
	policyStart(t, d)
	next := policyApps("2")
	next[1].services = []svc{{name: "svc", content: "bravo/svc b2 broken"}}
	d.setTarget(d.targetDoc(nil, next...))
	d.waitFor("the update failed", func() bool { return d.status().UpdateFailed })
	s := d.status()
	if d.releaseOf("alpha") != "a2" || d.releaseOf("bravo") != "b1" || d.releaseOf("charlie") != "c2" {
		t.Errorf("releases %q: want alpha a2, bravo b1 (rolled back), charlie c2", s.Release)
	}
	if !strings.Contains(s.Reason, "bravo") || !strings.Contains(s.Reason, "health") {
		t.Errorf("reason %q: want it to name bravo and its health check", s.Reason)
	}
	if got := readFile(t, d.installed("bravo", "svc")); got != "bravo/svc b1" {
		t.Errorf("bravo/svc installed %q after the rollback, want b1's", got)
	}
	if n := d.count("start bravo/svc bravo/svc b2 broken"); n != 2 {
		t.Errorf("bravo's broken release started %d times, want 2 (--max-attempts)", n)
	}
	if n := d.count("start charlie/svc charlie/svc c2"); n != 1 {
		t.Errorf("charlie/svc c2 started %d times, want once", n)
	}
	d.noViolations()
}
