package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var kiosk1 = app{name: "kiosk", release: "2026.11.1", services: []svc{{name: "ui"}, {name: "backend"}}}
var kiosk2 = app{name: "kiosk", release: "2026.11.2", services: []svc{{name: "ui"}, {name: "backend"}}}

// firstRelease starts the agent on kiosk1 and waits until it runs.
func firstRelease(t *testing.T, d *device) {
	t.Helper()
	d.setTarget(d.targetDoc(nil, kiosk1))
	d.start()
	d.waitFor("kiosk 2026.11.1 running", func() bool { return d.releaseOf("kiosk") == "2026.11.1" })
}

func lockfileTool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("lockfile")
	if err != nil {
		t.Skip("lockfile(1) (Debian package procmail) is not installed: the user-lock tests did not run")
	}
	return p
}

// A user lock taken with lockfile(1) defers the update: it downloads, but no
// stop runs in any service of the app until the lock goes; then every
// service ends on the new release exactly once.
func TestUpdateWaitsForUserLock(t *testing.T) {
	lf := lockfileTool(t)
	d := newDevice(t)
	firstRelease(t, d)
	userLock := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
	if out, err := exec.Command(lf, "-r0", userLock).CombinedOutput(); err != nil {
		t.Fatalf("lockfile: %v %s", err, out)
	}
	stopsBefore := d.count("stop ")
	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("update downloaded and blocked", func() bool {
		s := d.status()
		return s.UpdateDownloaded && len(s.BlockedBy) > 0
	})
	s := d.status()
	if s.BlockedBy[0].Path != userLock {
		t.Errorf("blocked_by[0] = %s, want %s", s.BlockedBy[0].Path, userLock)
	}
	if s.Status != "waiting" {
		t.Errorf("status = %q, want waiting", s.Status)
	}
	if got := d.count("stop "); got != stopsBefore {
		t.Fatalf("%d stop commands ran while the lock was held", got-stopsBefore)
	}
	if err := os.Remove(userLock); err != nil {
		t.Fatal(err)
	}
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.releaseOf("kiosk") == "2026.11.2" })
	for _, name := range []string{"ui", "backend"} {
		want := fmt.Sprintf("start kiosk/%s kiosk/%s 2026.11.2", name, name)
		if n := d.count(want); n != 1 {
			t.Errorf("%q ran %d times, want once", want, n)
		}
		if got := readFile(t, d.installed("kiosk", name)); got != "kiosk/"+name+" 2026.11.2" {
			t.Errorf("installed %s = %q", name, got)
		}
	}
	d.noViolations()
	// The staged downloads are gone once the apply is done.
	if left, _ := os.ReadDir(filepath.Join(d.stateDir, "downloads")); len(left) != 0 {
		t.Errorf("%d staged downloads left after the apply", len(left))
	}
	// The agent's own locks are gone once the apply is done.
	for _, n := range []string{"updates.lock", "resin-updates.lock"} {
		if _, err := os.Lstat(filepath.Join(d.serviceDir("kiosk", "ui"), n)); !os.IsNotExist(err) {
			t.Errorf("%s still exists after the apply (err %v)", n, err)
		}
	}
	d.stop()
}

// Force while the update waits applies at once: it removes the user's lock
// and passes the agent's hold (which stays: a hold ends only when released).
func TestForceWhileWaiting(t *testing.T) {
	lf := lockfileTool(t)
	d := newDevice(t)
	firstRelease(t, d)
	userLock := filepath.Join(d.serviceDir("kiosk", "backend"), "updates.lock")
	exec.Command(lf, "-r0", userLock).Run()
	if code := d.api("POST", "/v2/locks", map[string]any{"app": "kiosk", "service": "ui"}, nil); code != 201 {
		t.Fatalf("hold: %d", code)
	}
	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("update blocked", func() bool { return len(d.status().BlockedBy) > 0 })
	if code := d.api("POST", "/v1/update", map[string]bool{"force": true}, nil); code != 204 {
		t.Fatalf("POST /v1/update force: %d, want 204", code)
	}
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.releaseOf("kiosk") == "2026.11.2" })
	if _, err := os.Lstat(userLock); !os.IsNotExist(err) {
		t.Errorf("the forced update left the user lock in place (err %v)", err)
	}
	if _, err := os.Lstat(filepath.Join(d.serviceDir("kiosk", "ui"), "latch-hold.lock")); err != nil {
		t.Errorf("the hold's entry is gone after the forced update: %v", err)
	}
	d.noViolations()
	d.stop()
}

// Override on applies and removes user locks; off respects locks again.
func TestOverride(t *testing.T) {
	lf := lockfileTool(t)
	d := newDevice(t)
	firstRelease(t, d)
	userLock := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
	exec.Command(lf, "-r0", userLock).Run()
	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("update blocked", func() bool { return len(d.status().BlockedBy) > 0 })

	if code := d.api("PUT", "/v2/device/override", map[string]bool{"enabled": true}, nil); code != 200 {
		t.Fatalf("PUT override on: %d", code)
	}
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.releaseOf("kiosk") == "2026.11.2" })
	if _, err := os.Lstat(userLock); !os.IsNotExist(err) {
		t.Errorf("override on left the user lock in place (err %v)", err)
	}
	if code := d.api("PUT", "/v2/device/override", map[string]bool{"enabled": false}, nil); code != 200 {
		t.Fatalf("PUT override off: %d", code)
	}
	exec.Command(lf, "-r0", userLock).Run()
	kiosk3 := app{name: "kiosk", release: "2026.11.3", services: kiosk2.services}
	stops := d.count("stop ")
	d.setTarget(d.targetDoc(nil, kiosk3))
	d.waitFor("update blocked again", func() bool { return len(d.status().BlockedBy) > 0 })
	if got := d.count("stop "); got != stops {
		t.Fatalf("override off: %d stops ran under a held lock", got-stops)
	}
	os.Remove(userLock)
	d.waitFor("kiosk 2026.11.3 running", func() bool { return d.releaseOf("kiosk") == "2026.11.3" })
	d.noViolations()
	d.stop()
}

// A wrong checksum, a bad signature and a malformed target are rejected and
// change nothing.
func TestBadInputChangesNothing(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	d := newDevice(t)
	keyFile := filepath.Join(d.root, "trust.pub")
	os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(pub)), 0o644)
	d.args = []string{"--trust-key", keyFile}
	doc := d.targetDoc(nil, kiosk1)
	d.setTarget(doc)
	os.WriteFile(d.target+".sig", []byte(base64.StdEncoding.EncodeToString(ed25519.Sign(priv, doc))), 0o644)
	d.start()
	d.waitFor("kiosk 2026.11.1 running", func() bool { return d.releaseOf("kiosk") == "2026.11.1" })
	before := d.commands()

	// 1. Signed by someone else: 403 on the API, nothing changes.
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	doc2 := d.targetDoc(nil, kiosk2)
	if code := d.push(doc2, ed25519.Sign(other, doc2)); code != 403 {
		t.Errorf("push with a bad signature: %d, want 403", code)
	}
	if code := d.push(doc2, nil); code != 403 {
		t.Errorf("push without a signature: %d, want 403", code)
	}
	// 2. Malformed: 400.
	bad := []byte(`{"apps": {"kiosk": {"release": "", "services": {}}}}`)
	if code := d.push(bad, ed25519.Sign(priv, bad)); code != 400 {
		t.Errorf("push of an invalid target: %d, want 400", code)
	}
	if code := d.push([]byte(`{"apps":`), nil); code != 400 && code != 403 {
		t.Errorf("push of malformed JSON: %d, want 400 or 403", code)
	}
	// 3. Properly signed, but a file's content does not match its sha256.
	kiosk2bad := d.targetDoc(nil, kiosk2)
	for p := range d.blobs {
		if strings.Contains(p, "2026.11.2/ui") {
			d.mu.Lock()
			d.blobs[p] = []byte("tampered\n")
			d.mu.Unlock()
		}
	}
	if code := d.push(kiosk2bad, ed25519.Sign(priv, kiosk2bad)); code != 202 {
		t.Fatalf("push of a signed target: %d, want 202", code)
	}
	d.waitFor("update failed", func() bool { return d.status().UpdateFailed })
	if s := d.status(); !strings.Contains(s.Reason, "checksum") {
		t.Errorf("reason = %q, want a checksum mismatch", s.Reason)
	}
	if got := d.releaseOf("kiosk"); got != "2026.11.1" {
		t.Errorf("release = %q after rejected updates, want 2026.11.1", got)
	}
	if after := d.commands(); len(after) != len(before) {
		t.Errorf("rejected updates ran commands: %v", after[len(before):])
	}
	if got := readFile(t, d.installed("kiosk", "ui")); got != "kiosk/ui 2026.11.1" {
		t.Errorf("installed file = %q, want the running release untouched", got)
	}
	d.stop()
}

func (d *device) push(doc, sig []byte) int {
	d.t.Helper()
	req, _ := http.NewRequest("POST", "http://latch/v2/local/target-state", strings.NewReader(string(doc)))
	if sig != nil {
		req.Header.Set("X-Latch-Signature", base64.StdEncoding.EncodeToString(sig))
	}
	resp, err := d.client().Do(req)
	if err != nil {
		d.t.Fatalf("push: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A release whose service fails its health check is rolled back: previous
// files restored, the service restarted on them, the release marked failed
// after a bounded number of attempts.
func TestHealthFailureRollsBack(t *testing.T) {
	d := newDevice(t)
	d.args = []string{"--max-attempts", "2"}
	firstRelease(t, d)
	broken := app{name: "kiosk", release: "2026.11.2", services: []svc{{name: "ui", content: "kiosk/ui 2026.11.2 broken"}, {name: "backend"}}}
	d.setTarget(d.targetDoc(nil, broken))
	d.waitFor("update failed", func() bool { return d.status().UpdateFailed })
	s := d.status()
	if !strings.Contains(s.Reason, "health") {
		t.Errorf("reason = %q, want a failed health check", s.Reason)
	}
	if got := d.releaseOf("kiosk"); got != "2026.11.1" {
		t.Errorf("release = %q, want 2026.11.1", got)
	}
	for _, name := range []string{"ui", "backend"} {
		if got := readFile(t, d.installed("kiosk", name)); got != "kiosk/"+name+" 2026.11.1" {
			t.Errorf("%s = %q after rollback, want the previous release", name, got)
		}
	}
	// Two attempts, each ending with the service restarted on the old files.
	if n := d.count("start kiosk/ui kiosk/ui 2026.11.2 broken"); n != 2 {
		t.Errorf("broken release started %d times, want 2 (max attempts)", n)
	}
	// The rollback starts the previous release with its own start command.
	if n := d.count("start kiosk/ui kiosk/ui 2026.11.1 [by 2026.11.1]"); n != 3 {
		t.Errorf("previous release started %d times by its own command, want 3 (first install + 2 rollbacks)", n)
	}
	d.noViolations()
	d.stop()
}

// A configuration change that needs a reboot waits while any lock is held
// and reboots when none is; one that does not applies at once.
func TestConfigReboot(t *testing.T) {
	lf := lockfileTool(t)
	d := newDevice(t)
	rebooted := filepath.Join(d.root, "rebooted")
	d.args = []string{"--reboot-command", "echo reboot >> " + rebooted}
	firstRelease(t, d)
	d.setTarget(d.targetDoc(map[string]any{"KIOSK_URL": "http://localhost:8080"}, kiosk1))
	env := filepath.Join(d.stateDir, "config.env")
	d.waitFor("config.env written", func() bool {
		b, _ := os.ReadFile(env)
		return strings.Contains(string(b), `KIOSK_URL="http://localhost:8080"`)
	})
	if _, err := os.Stat(rebooted); err == nil {
		t.Fatal("a change without reboot: true rebooted")
	}

	userLock := filepath.Join(d.serviceDir("kiosk", "backend"), "updates.lock")
	exec.Command(lf, "-r0", userLock).Run()
	d.setTarget(d.targetDoc(map[string]any{"KIOSK_URL": "http://localhost:8080", "GPU_MEM": map[string]any{"value": "128", "reboot": true}}, kiosk1))
	d.waitFor("config.env has GPU_MEM", func() bool {
		b, _ := os.ReadFile(env)
		return strings.Contains(string(b), `GPU_MEM="128"`)
	})
	var dev map[string]any
	d.waitFor("reboot pending and blocked", func() bool {
		d.api("GET", "/v1/device", nil, &dev)
		return dev["pending_reboot"] != nil
	})
	if _, err := os.Stat(rebooted); err == nil {
		t.Fatal("rebooted while a lock was held")
	}
	os.Remove(userLock)
	d.waitFor("reboot command ran and the pending reboot cleared", func() bool {
		b, _ := os.ReadFile(rebooted)
		dev = nil
		d.api("GET", "/v1/device", nil, &dev)
		return strings.HasSuffix(string(b), "\n") && dev["pending_reboot"] == nil
	})
	if got := readFile(t, rebooted); got != "reboot" {
		t.Errorf("reboot command ran %q, want once", got)
	}
	d.stop()
}

// A download interrupted half-way (the server closes the connection)
// resumes from where it stopped.
func TestDownloadResumes(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	big := strings.Repeat("0123456789abcdef", 64*1024) // 1 MiB
	k2 := app{name: "kiosk", release: "2026.11.2", services: []svc{{name: "ui", content: big}, {name: "backend"}}}
	doc := d.targetDoc(nil, k2)
	var ranges []string
	cut := true
	d.mu.Lock()
	d.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "2026.11.2/ui/bin") {
			return false
		}
		d.mu.Lock()
		ranges = append(ranges, r.Header.Get("Range"))
		first := cut
		cut = false
		d.mu.Unlock()
		if !first {
			return false
		}
		// Send half, then drop the connection.
		w.Header().Set("Content-Length", fmt.Sprint(len(big)+1))
		w.WriteHeader(200)
		w.Write([]byte(big[:len(big)/2]))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	d.mu.Unlock()
	d.setTarget(doc)
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.releaseOf("kiosk") == "2026.11.2" })
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(ranges) != 2 {
		t.Fatalf("requests for the file: %q, want 2 (the cut one and the resume)", ranges)
	}
	if ranges[0] != "" || !strings.HasPrefix(ranges[1], "bytes=") || ranges[1] == "bytes=0-" {
		t.Errorf("Range headers = %q, want none then a resume from the partial size", ranges)
	}
	var served int64
	for p, n := range d.served {
		if strings.HasSuffix(p, "2026.11.2/ui/bin") {
			served = n
		}
	}
	if served >= int64(len(big)) {
		t.Errorf("the resume sent %d bytes, want less than the whole file (%d)", served, len(big))
	}
}

// The target state polled from a URL: ETag and If-None-Match keep unchanged
// polls cheap, and a new document is applied.
func TestTargetURL(t *testing.T) {
	d := newDevice(t)
	var mu sync.Mutex
	doc := d.targetDoc(nil, kiosk1)
	var full, notModified int
	d.mu.Lock()
	d.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/target.json" {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		etag := fmt.Sprintf(`"%x"`, sha256.Sum256(doc))
		if r.Header.Get("If-None-Match") == etag {
			notModified++
			w.WriteHeader(http.StatusNotModified)
			return true
		}
		full++
		w.Header().Set("ETag", etag)
		w.Write(doc)
		return true
	}
	d.mu.Unlock()
	d.targetURL = d.srv.URL + "/target.json"
	d.start()
	d.waitFor("kiosk 2026.11.1 running", func() bool { return d.releaseOf("kiosk") == "2026.11.1" })
	d.waitFor("unchanged polls answered 304", func() bool { mu.Lock(); defer mu.Unlock(); return notModified >= 3 })
	mu.Lock()
	doc = d.targetDoc(nil, kiosk2)
	mu.Unlock()
	d.waitFor("kiosk 2026.11.2 running", func() bool { return d.releaseOf("kiosk") == "2026.11.2" })
	mu.Lock()
	defer mu.Unlock()
	if full != 2 {
		t.Errorf("full answers = %d, want 2 (one per document; every other poll a 304)", full)
	}
	d.noViolations()
}

// A lock whose latch record names a dead process is stale: it blocks like
// any other lock, and --break-stale removes it.
func TestBreakStale(t *testing.T) {
	for _, breakStale := range []bool{false, true} {
		t.Run(fmt.Sprintf("break-stale=%v", breakStale), func(t *testing.T) {
			d := newDevice(t)
			if breakStale {
				d.args = []string{"--break-stale"}
			}
			firstRelease(t, d)
			// The detached lock's record names the shell, which exits at once.
			cmd := exec.Command("sh", "-c", latchBin+" lock --service kiosk/ui --detach")
			cmd.Env = append(os.Environ(), "LATCH_ROOT="+d.root)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("latch lock --detach: %v %s", err, out)
			}
			stale := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
			d.setTarget(d.targetDoc(nil, kiosk2))
			if !breakStale {
				d.waitFor("update blocked by the stale lock", func() bool {
					s := d.status()
					return len(s.BlockedBy) > 0 && s.BlockedBy[0].Path == stale
				})
				if _, err := os.Lstat(stale); err != nil {
					t.Fatalf("the stale lock was removed without --break-stale: %v", err)
				}
				return
			}
			d.waitFor("kiosk 2026.11.2 running", func() bool { return d.releaseOf("kiosk") == "2026.11.2" })
			var evs []struct{ Kind, Message string }
			d.api("GET", "/v2/journal", nil, &evs)
			found := false
			for _, e := range evs {
				found = found || (e.Kind == "lock-removed" && strings.Contains(e.Message, stale))
			}
			if !found {
				t.Errorf("no lock-removed event names %s: %+v", stale, evs)
			}
			d.noViolations()
		})
	}
}

// A hold with --for expires by itself: its entry goes, the expiry is
// journalled, and the update it blocked is applied.
func TestHoldExpires(t *testing.T) {
	d := newDevice(t)
	firstRelease(t, d)
	if code := d.api("POST", "/v2/locks", map[string]any{"app": "kiosk", "service": "ui", "reason": "calibration", "for": "1s"}, nil); code != 201 {
		t.Fatalf("hold: %d", code)
	}
	entry := filepath.Join(d.serviceDir("kiosk", "ui"), "latch-hold.lock")
	if _, err := os.Lstat(entry); err != nil {
		t.Fatalf("hold entry missing: %v", err)
	}
	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("update blocked by the hold", func() bool {
		s := d.status()
		return len(s.BlockedBy) > 0 && s.BlockedBy[0].Path == entry
	})
	d.waitFor("kiosk 2026.11.2 running after the hold expired", func() bool { return d.releaseOf("kiosk") == "2026.11.2" })
	if _, err := os.Lstat(entry); !os.IsNotExist(err) {
		t.Errorf("expired hold's entry still there (err %v)", err)
	}
	var evs []struct{ Kind, Message string }
	d.api("GET", "/v2/journal", nil, &evs)
	found := false
	for _, e := range evs {
		found = found || (e.Kind == "release" && strings.Contains(e.Message, "expired"))
	}
	if !found {
		t.Errorf("no expiry event in the journal: %+v", evs)
	}
	d.noViolations()
}

// A service that the new target drops (a whole app, or one service of an
// app) is stopped under its lock, by the stop command of the release that
// runs, and is not started again; what runs is kept in the journal, so the
// same holds after a restart.
func TestRemovedServicesStop(t *testing.T) {
	d := withExtraApp(t)

	// A lock on the app that goes away defers its removal, and its removal
	// only: the other app of the update goes on (apps are independent).
	userLock := filepath.Join(d.serviceDir("extra", "worker"), "updates.lock")
	if err := os.WriteFile(userLock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	kiosk3 := app{name: "kiosk", release: "2026.11.3", services: []svc{{name: "ui"}}}
	workerStops := d.count("stop extra/worker")
	d.setTarget(d.targetDoc(nil, kiosk3))
	d.waitFor("kiosk applied while extra's removal waits for its lock", func() bool {
		s := d.status()
		return d.releaseOf("kiosk") == "2026.11.3" && d.releaseOf("extra") == "r1" && len(s.BlockedBy) > 0
	})
	if s := d.status(); s.BlockedBy[0].Path != userLock {
		t.Errorf("blocked_by[0] = %s, want %s", s.BlockedBy[0].Path, userLock)
	}
	if n := d.count("stop extra/worker") - workerStops; n != 0 {
		t.Fatalf("extra/worker stopped %d times while its lock was held", n)
	}
	if out, err := exec.Command(latchBin, "status", "--run-dir", d.runDir).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "runs r1, to be removed") {
		t.Errorf("latch status while the removal waits: %v\n%s\nwant extra shown as to be removed", err, out)
	}
	if err := os.Remove(userLock); err != nil {
		t.Fatal(err)
	}
	d.waitFor("kiosk 2026.11.3 running and extra gone", func() bool {
		s := d.status()
		return d.releaseOf("kiosk") == "2026.11.3" && !strings.Contains(s.Release, "extra") && !s.UpdatePending
	})
	for _, want := range []string{
		"stop kiosk/ui kiosk/ui 2026.11.1 [by 2026.11.1]", // replaced: stopped by the running release
		"stop kiosk/backend kiosk/backend 2026.11.1 [by 2026.11.1]",
		"stop extra/worker extra/worker r1 [by r1]",
		"start kiosk/ui kiosk/ui 2026.11.3 [by 2026.11.3]",
	} {
		if n := d.count(want); n != 1 {
			t.Errorf("%q ran %d times, want once", want, n)
		}
	}
	if n := d.count("start kiosk/backend"); n != 1 {
		t.Errorf("kiosk/backend started %d times, want once (the first release only)", n)
	}
	// One applied event per app: kiosk's names the service it dropped, then
	// extra's its removal (latch journal prints the newest first).
	out, err := exec.Command(latchBin, "journal", "--run-dir", d.runDir).CombinedOutput()
	k, x := strings.Index(string(out), "kiosk=2026.11.3 (backend removed)"), strings.Index(string(out), "extra removed")
	if err != nil || k < 0 || x < 0 || x > k {
		t.Errorf("latch journal after the removal: %v\n%s\nwant kiosk's applied event naming backend removed, then extra's removal", err, out)
	}
	if n := d.count("start extra/worker"); n != 1 {
		t.Errorf("extra/worker started %d times, want once (the first release only)", n)
	}
	d.noViolations()

	// After a restart the agent still knows what runs: a target that drops
	// ui and brings backend back stops ui by 2026.11.3's command.
	d.stop()
	d.start()
	kiosk4 := app{name: "kiosk", release: "2026.11.4", services: []svc{{name: "backend"}}}
	d.setTarget(d.targetDoc(nil, kiosk4))
	d.waitFor("kiosk 2026.11.4 running", func() bool {
		return d.releaseOf("kiosk") == "2026.11.4" && !d.status().UpdatePending
	})
	if n := d.count("stop kiosk/ui kiosk/ui 2026.11.3 [by 2026.11.3]"); n != 1 {
		t.Errorf("ui stopped %d times by 2026.11.3's command after the restart, want once\n%s", n, strings.Join(d.commands(), "\n"))
	}
	if n := d.count("start kiosk/ui"); n != 2 {
		t.Errorf("kiosk/ui started %d times, want 2 (2026.11.1 and 2026.11.3)", n)
	}
	d.noViolations()
	d.stop()
}

// A target that only drops an app (nothing to download) stops its services
// and leaves the other apps alone.
func TestRemoveOnlyApp(t *testing.T) {
	d := withExtraApp(t)
	before := d.commands()
	d.setTarget(d.targetDoc(nil, kiosk1))
	d.waitFor("extra gone", func() bool {
		s := d.status()
		return !strings.Contains(s.Release, "extra") && !s.UpdatePending
	})
	after := d.commands()[len(before):]
	if len(after) != 1 || after[0] != "stop extra/worker extra/worker r1 [by r1]" {
		t.Errorf("commands run for the removal: %q, want only extra/worker's stop", after)
	}
	if got := d.releaseOf("kiosk"); got != "2026.11.1" {
		t.Errorf("kiosk release = %q, want 2026.11.1 untouched", got)
	}
	d.noViolations()
	d.stop()
}

// withExtraApp starts the agent on kiosk1 and a second app, extra r1 (one
// service, worker), and waits until both run.
func withExtraApp(t *testing.T) *device {
	t.Helper()
	d := newDevice(t)
	extra := app{name: "extra", release: "r1", services: []svc{{name: "worker"}}}
	d.setTarget(d.targetDoc(nil, kiosk1, extra))
	d.start()
	d.waitFor("kiosk and extra running", func() bool {
		return d.releaseOf("kiosk") == "2026.11.1" && d.releaseOf("extra") == "r1"
	})
	return d
}
