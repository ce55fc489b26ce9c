package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"latch/store"
)

// TestRandomCrashes kills the real agent with SIGKILL at random moments:
// inside downloads (a slowly served file), applies, rollbacks (a release
// whose health check fails), removals (a target that drops a service) and
// restart-service requests, with users' locks (as other users, with
// lockfile(1), O_EXCL, a directory, a dangling symlink) and holds appearing
// and disappearing, and restarts it after a crash (lock directories kept)
// or a reboot (cleared). After every restart: the interrupted apply's locks
// and every hold's entry are back at READY=1. After every round, once the
// users' locks and holds are gone: the agent is idle on the newest target,
// no step ran outside the agent's locks (the oracle), every service was
// stopped and started exactly once per release transition (a step repeated
// only across a kill, when the killed agent could not know it had run, is
// counted once), every service of an app runs the same release, and no
// user's lock was removed.
//
// LATCH_CRASH_SEED replays a run, LATCH_CRASH_KILLS sets the number of
// kills (default 300; 20 under LATCH_EMULATED, 40 under LATCH_CROSS).
func TestRandomCrashes(t *testing.T) {
	t.Parallel() // its own device; it runs beside the other long sweeps
	seed := time.Now().UnixNano()
	if v := os.Getenv("LATCH_CRASH_SEED"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("LATCH_CRASH_SEED=%q: %v (want an integer, as printed by a failed run)", v, err)
		}
		seed = n
	}
	emulated := os.Getenv("LATCH_EMULATED") != ""
	kills := 300
	budget := 150 * time.Second
	switch {
	case emulated:
		kills, budget = 20, 240*time.Second
	case os.Getenv("LATCH_CROSS") != "":
		// Another CPU run natively (386): the amd64 suite runs the long sweep.
		kills, budget = 40, 60*time.Second
	}
	if v := os.Getenv("LATCH_CRASH_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			t.Fatalf("LATCH_CRASH_KILLS=%q: want a count of kills, 0 or more", v)
		}
		kills = n
	}
	t.Logf("seed %d (replay: LATCH_CRASH_SEED=%d), %d kills", seed, seed, kills)

	r := newCrashRun(t, seed)
	defer func() {
		if t.Failed() {
			t.Logf("replay: LATCH_CRASH_SEED=%d LATCH_CRASH_KILLS=%d\nschedule:\n%s", seed, kills, strings.Join(r.schedule, "\n"))
		}
	}()
	deadline := time.Now().Add(budget)
	for round := 1; r.kills < kills; round++ {
		if time.Now().After(deadline) {
			t.Logf("time budget of %s spent after %d kills in %d rounds", budget, r.kills, round-1)
			break
		}
		r.round(round, kills)
		if r.failedRounds >= 25 {
			t.Logf("stopping after %d failed rounds", r.failedRounds)
			break
		}
	}
	t.Logf("%d kills in all (%d after a reboot)", r.kills, r.reboots)
	r.d.stop()
}

// crashRun is the state of one randomized run: what the test believes runs.
type crashRun struct {
	t     *testing.T
	d     *device
	rng   *rand.Rand
	lf    string // lockfile(1), "" when missing
	rel   int    // the last release number used
	kiosk app    // kiosk as it runs
	other app    // other as it runs

	kills, reboots int
	failedRounds   int
	errs           int  // errors reported so far
	failed         bool // the newest target failed (and was rolled back)
	schedule       []string
	users          []userEntry // users' locks in place
	dead           map[int]int // pid of a killed agent -> the kill
	holds          map[string]bool
}

// userEntry is a user's lock the test made: it must stay until the test
// removes it (nothing is forced in this test).
type userEntry struct {
	path, how string
	ino       uint64
}

var crashServices = []string{"ui", "backend", "worker"}

// crashAttempts is the agent's --max-attempts in the test.
const crashAttempts = 5

func newCrashRun(t *testing.T, seed int64) *crashRun {
	d := newDevice(t)
	// Every kill during an apply costs an attempt: with at most 3 kills a
	// round, 5 attempts always leave one to end on the newest target.
	d.args = []string{"--max-attempts", strconv.Itoa(crashAttempts)}
	// Other users reach the lock directories (t.TempDir is 0700).
	for _, p := range []string{filepath.Dir(d.root), d.root} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r := &crashRun{t: t, d: d, rng: rand.New(rand.NewSource(seed)), holds: map[string]bool{}, dead: map[int]int{}}
	r.lf, _ = exec.LookPath("lockfile")
	// A release's .data files are served slowly, so that kills land inside
	// downloads (Range requests are served too: a resume).
	d.hook = func(w http.ResponseWriter, req *http.Request) bool {
		if !strings.HasSuffix(req.URL.Path, "/data") {
			return false
		}
		d.mu.Lock()
		b, ok := d.blobs[req.URL.Path]
		d.mu.Unlock()
		if !ok {
			return false
		}
		http.ServeContent(&slowWriter{ResponseWriter: w}, req, "", time.Time{}, bytes.NewReader(b))
		return true
	}
	r.kiosk = app{name: "kiosk", release: "k0", services: []svc{{name: "ui"}, {name: "backend"}}}
	r.other = app{name: "other", release: "o0", services: []svc{{name: "svc"}}}
	d.setTarget(d.targetDoc(nil, r.kiosk, r.other))
	d.start()
	r.waitIdle("the first release", r.kiosk.release, r.other.release, false)
	return r
}

// slowWriter sends a body in small pieces with a pause between them.
type slowWriter struct{ http.ResponseWriter }

func (s *slowWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := min(len(p), 16<<10)
		m, err := s.ResponseWriter.Write(p[:c])
		n += m
		if err != nil {
			return n, err
		}
		s.ResponseWriter.(http.Flusher).Flush()
		p = p[c:]
		time.Sleep(3 * time.Millisecond)
	}
	return n, nil
}

func (r *crashRun) logf(format string, args ...any) {
	r.schedule = append(r.schedule, fmt.Sprintf(format, args...))
}

func (r *crashRun) errorf(format string, args ...any) {
	r.t.Helper()
	r.errs++
	r.t.Errorf(format, args...)
}

// round does one action, kills the agent 0 to 3 times during it, then
// releases every user lock and hold and checks the outcome.
func (r *crashRun) round(n, maxKills int) {
	t, d := r.t, r.d
	t.Helper()
	errsBefore := r.errs
	start := len(d.rawCommands())
	oldKiosk, oldOther := r.kiosk, r.other
	kind := []string{"upgrade", "upgrade", "upgrade", "drop", "broken", "restart", "download"}[r.rng.Intn(7)]
	if (kind == "drop" && len(oldKiosk.services) == 1) || (kind == "broken" && !hasService(oldKiosk, "ui")) {
		kind = "upgrade"
	}
	slow := []string{"", "", "0.02", "0.05"}[r.rng.Intn(4)]
	d.setSlow(slow)
	r.logf("round %d: %s (commands sleep %q)", n, kind, slow)

	// Users lock, and hold, before the action.
	for i := r.rng.Intn(3); i > 0; i-- {
		r.userLock()
	}
	if r.rng.Intn(5) == 0 {
		r.hold()
	}

	newKiosk, newOther := oldKiosk, oldOther
	var restarted string
	var restartDone chan struct{}
	var brokenID string // the update id (sha256 of the document) of a broken round
	switch kind {
	case "upgrade", "drop", "download":
		r.rel++
		newKiosk = app{name: "kiosk", release: fmt.Sprintf("k%d", r.rel)}
		victim := oldKiosk.services[r.rng.Intn(len(oldKiosk.services))].name
		for _, s := range crashServices {
			keep := s == "ui" || (s == "backend" && r.rng.Intn(5) != 0) || (s == "worker" && r.rng.Intn(3) == 0)
			if kind == "drop" {
				keep = hasService(oldKiosk, s) && s != victim
			}
			if keep {
				sv := svc{name: s}
				if kind == "download" && s == "ui" {
					sv.extra = 256<<10 + r.rng.Intn(256<<10)
				}
				newKiosk.services = append(newKiosk.services, sv)
			}
		}
		if len(newKiosk.services) == 0 {
			newKiosk.services = []svc{{name: "ui"}}
		}
		if r.rng.Intn(3) == 0 {
			newOther = app{name: "other", release: fmt.Sprintf("o%d", r.rel), services: oldOther.services}
		}
		r.logf("  target kiosk=%s %v, other=%s", newKiosk.release, names(newKiosk), newOther.release)
		d.setTarget(d.targetDoc(nil, newKiosk, newOther))
	case "broken":
		r.rel++
		newKiosk = app{name: "kiosk", release: fmt.Sprintf("k%d", r.rel)}
		for _, s := range oldKiosk.services {
			sv := svc{name: s.name}
			if s.name == "ui" {
				sv.content = fmt.Sprintf("kiosk/ui k%d broken", r.rel)
			}
			newKiosk.services = append(newKiosk.services, sv)
		}
		r.logf("  target kiosk=%s %v (ui fails its health check)", newKiosk.release, names(newKiosk))
		doc := d.targetDoc(nil, newKiosk, oldOther)
		sum := sha256.Sum256(doc)
		brokenID = hex.EncodeToString(sum[:])
		d.setTarget(doc)
	case "restart":
		all := append(append([]string{}, prefixed(oldKiosk)...), prefixed(oldOther)...)
		restarted = all[r.rng.Intn(len(all))]
		r.logf("  restart-service %s", restarted)
		app, service, _ := strings.Cut(restarted, "/")
		restartDone = make(chan struct{})
		go func() {
			defer close(restartDone)
			r.post("/v2/applications/"+app+"/restart-service", `{"serviceName":"`+service+`"}`)
		}()
	}

	// Kills at random moments, users' locks coming and going.
	for k := r.rng.Intn(4); k > 0 && r.kills < maxKills; k-- {
		delay := time.Duration(r.rng.Intn(250)) * time.Millisecond
		if kind != "restart" && kind != "broken" && len(r.users) == 0 && len(r.holds) == 0 && r.rng.Intn(2) == 0 {
			// Around the end of the apply: once every new service has
			// started, past the health wait (50ms), in the health checks and
			// the journalling of the outcome.
			delay = 45*time.Millisecond + time.Duration(r.rng.Intn(70))*time.Millisecond/2
			changed := []app{newKiosk}
			if newOther.release != oldOther.release {
				changed = append(changed, newOther)
			}
			r.logf("  next kill %s after every new service started", delay)
			r.waitStarted(start, changed...)
		}
		time.Sleep(delay)
		switch r.rng.Intn(4) {
		case 0:
			r.userUnlock()
		case 1:
			r.userLock()
		}
		reboot := r.rng.Intn(3) == 0
		r.kill(delay, reboot)
	}
	if restartDone != nil {
		select {
		case <-restartDone:
		case <-time.After(30 * time.Second):
			r.errorf("round %d: the restart-service request did not end within 30s", n)
		}
	}
	// The last users' locks go at a random moment.
	time.Sleep(time.Duration(r.rng.Intn(100)) * time.Millisecond)
	for len(r.users) > 0 {
		r.userUnlock()
	}
	for h := range r.holds {
		app, service, _ := strings.Cut(h, "/")
		if code := d.api("DELETE", "/v2/locks/"+app+"/"+service, nil, nil); code != 200 && code != 404 {
			r.errorf("round %d: DELETE hold %s: %d, want 200 or 404", n, h, code)
		}
		delete(r.holds, h)
	}

	// The outcome.
	switch kind {
	case "broken":
		r.failed = true
		// The failed state must be this round's: after a broken round the
		// status is "failed" already, for the previous document.
		r.waitFailed(fmt.Sprintf("round %d: the broken release rolled back", n), brokenID, oldKiosk.release, oldOther.release)
	case "restart":
		r.waitIdle(fmt.Sprintf("round %d: idle after the restart", n), oldKiosk.release, oldOther.release, r.failed)
	default:
		r.failed = false
		r.waitIdle(fmt.Sprintf("round %d: the new release", n), newKiosk.release, newOther.release, false)
		r.kiosk, r.other = newKiosk, newOther
	}
	lines := d.rawCommands()[start:]
	lines = r.orphans(n, lines)
	for _, v := range d.stepViolations(stepsOf(lines)) {
		r.errorf("round %d: %s", n, v)
	}
	r.checkTransitions(n, kind, lines, oldKiosk, newKiosk, oldOther, newOther, restarted)
	r.checkRunning(n)
	if r.errs > errsBefore {
		r.failedRounds++
		t.Logf("round %d commands:\n%s", n, strings.Join(lines, "\n"))
	}
}

// waitStarted waits (at most 2s: a lock may hold the apply back) until the
// commands log, from line from on, has a start of every service of the new
// releases.
func (r *crashRun) waitStarted(from int, apps ...app) {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		lines := r.d.rawCommands()
		if from > len(lines) {
			from = len(lines)
		}
		seen := map[string]bool{}
		for _, l := range lines[from:] {
			if st, ok := parseStep(l); ok && st.Verb == "start" {
				seen[st.App+"/"+st.Service+" "+st.Content] = true
			}
		}
		all := true
		for _, a := range apps {
			for _, sv := range a.services {
				all = all && seen[fmt.Sprintf("%s/%s %s/%s %s", a.name, sv.name, a.name, sv.name, a.release)]
			}
		}
		if all {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// orphans reports every step that a killed agent's command logged after the
// agent died (an orphaned command: its stop or start lands while another
// agent, or none, owns the service), and returns the lines without them.
func (r *crashRun) orphans(n int, lines []string) []string {
	r.t.Helper()
	var out []string
	gone := map[int]bool{}
	for _, l := range lines {
		var k, pid int
		if _, err := fmt.Sscanf(l, "KILL %d %d", &k, &pid); err == nil {
			gone[pid] = true
			out = append(out, l)
			continue
		}
		if st, ok := parseStep(l); ok && gone[st.PID] {
			r.errorf("round %d: a command of the agent killed at kill %d (pid %d) ran after the agent died: %q", n, r.dead[st.PID], st.PID, l)
			continue
		}
		out = append(out, l)
	}
	return out
}

func hasService(a app, name string) bool {
	for _, s := range a.services {
		if s.name == name {
			return true
		}
	}
	return false
}

func names(a app) []string {
	var out []string
	for _, s := range a.services {
		out = append(out, s.name)
	}
	return out
}

func prefixed(a app) []string {
	var out []string
	for _, s := range a.services {
		out = append(out, a.name+"/"+s.name)
	}
	return out
}

func stepsOf(lines []string) []step {
	var out []step
	for _, l := range lines {
		if st, ok := parseStep(l); ok {
			out = append(out, st)
		}
	}
	return out
}

// post sends one API request that the agent may not live to answer.
func (r *crashRun) post(path, body string) {
	req, _ := http.NewRequest("POST", "http://latch"+path, strings.NewReader(body))
	if resp, err := r.d.client().Do(req); err == nil {
		resp.Body.Close()
	}
}

// hold asks the agent to hold a random service; a hold asked for just
// before a kill may or may not be kept (the journal says).
func (r *crashRun) hold() {
	all := append(prefixed(r.kiosk), prefixed(r.other)...)
	h := all[r.rng.Intn(len(all))]
	app, service, _ := strings.Cut(h, "/")
	r.logf("  hold %s", h)
	r.holds[h] = true
	r.post("/v2/locks", fmt.Sprintf(`{"app":%q,"service":%q,"reason":"random crash test"}`, app, service))
}

// userLock makes a user's lock on a random service (or, rarely, a
// device-wide one) as uid 1000 or 65534 (the agent's lock uid), in one of
// the ways applications do. A name already taken is left alone.
func (r *crashRun) userLock() {
	d := r.d
	var path string
	if r.rng.Intn(8) == 0 {
		path = d.globalLocks(nil)[r.rng.Intn(2)]
	} else {
		all := append(prefixed(r.kiosk), prefixed(r.other)...)
		app, service, _ := strings.Cut(all[r.rng.Intn(len(all))], "/")
		path = filepath.Join(d.serviceDir(app, service), []string{"updates.lock", "resin-updates.lock"}[r.rng.Intn(2)])
	}
	uid := []int{1000, 65534}[r.rng.Intn(2)]
	how := []string{"lockfile", "excl", "excl", "mkdir", "symlink"}[r.rng.Intn(5)]
	if how == "lockfile" && r.lf == "" {
		how = "excl"
	}
	dir := filepath.Dir(path)
	if _, err := os.Lstat(dir); err != nil {
		// An application's lock directory exists before latch makes it, as
		// after a reboot where the app starts first.
		os.MkdirAll(dir, 0o755)
		os.Chmod(dir, 0o1777)
	}
	var script string
	switch how {
	case "lockfile":
		script = `exec "$1" -r0 "$0"`
	case "excl":
		script = `set -C; echo "user $$" > "$0"`
	case "mkdir":
		script = `mkdir "$0"`
	case "symlink":
		script = `ln -sT /nonexistent/holder "$0"`
	}
	args := []string{"sh", "-c", script, path, r.lf}
	if os.Geteuid() == 0 {
		args = append([]string{"setpriv", "--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(uid), "--clear-groups"}, args...)
	}
	if err := exec.Command(args[0], args[1:]...).Run(); err != nil {
		r.logf("  user %d could not lock %s (%s): taken", uid, path, how)
		return
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		r.errorf("user lock %s (%s) made, then gone at once: %v", path, how, err)
		return
	}
	r.users = append(r.users, userEntry{path: path, how: fmt.Sprintf("%s as uid %d", how, uid), ino: st.Ino})
	r.logf("  user %d locks %s (%s)", uid, path, how)
}

// userUnlock removes one of the users' locks, first checking that it is
// still the one the user made.
func (r *crashRun) userUnlock() {
	if len(r.users) == 0 {
		return
	}
	i := r.rng.Intn(len(r.users))
	u := r.users[i]
	r.users = append(r.users[:i], r.users[i+1:]...)
	var st syscall.Stat_t
	if err := syscall.Lstat(u.path, &st); err != nil || st.Ino != u.ino {
		r.errorf("the user's lock %s (%s) was removed or replaced without force or override (lstat: %v)", u.path, u.how, err)
		return
	}
	if err := os.Remove(u.path); err != nil {
		r.errorf("remove the user's lock %s: %v", u.path, err)
		return
	}
	r.logf("  user unlocks %s", u.path)
}

// kill sends SIGKILL, reads what the journal promises (the interrupted
// apply, the holds), maybe reboots (clears /tmp) and lets users lock before
// the agent is back, restarts the agent and checks that at READY=1 the
// locks the journal promises are in place.
func (r *crashRun) kill(after time.Duration, reboot bool) {
	t, d := r.t, r.d
	t.Helper()
	r.kills++
	pid := d.cmd.Process.Pid
	d.cmd.Process.Kill()
	d.waitExit()
	r.dead[pid] = r.kills
	f, err := os.OpenFile(d.log, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "KILL %d %d\n", r.kills, pid)
	f.Close()
	ap, holds := r.journal()
	how := "crash"
	if reboot {
		how = "reboot"
		r.reboots++
		os.RemoveAll(filepath.Join(d.root, "tmp"))
		r.users = nil
	}
	var steps []string
	if ap != nil {
		for _, s := range ap.Steps {
			steps = append(steps, s.App+"/"+s.Service+":"+s.Phase)
		}
	}
	r.logf("  kill %d after %s (%s); journal: apply %v, holds %v", r.kills, after, how, steps, holdNames(holds))
	// Applications that start before the agent lock at once.
	blocked := map[string]bool{}
	for i := r.rng.Intn(2); i > 0; i-- {
		before := len(r.users)
		r.userLock()
		if len(r.users) > before {
			blocked[filepath.Dir(r.users[len(r.users)-1].path)] = true
		}
	}
	ready := d.start()
	uid := d.lockUID()
	// The interrupted apply's locks, unless a user took one of them first
	// (then the agent must wait, which the oracle checks).
	if ap != nil {
		// Every user's lock in place, made now or before, and every hold.
		for _, u := range r.users {
			blocked[filepath.Dir(u.path)] = true
		}
		for _, h := range holds {
			blocked[d.serviceDir(h.App, h.Service)] = true
		}
		contested := false
		for _, s := range ap.Steps {
			contested = contested || blocked[d.serviceDir(s.App, s.Service)]
		}
		for dir := range blocked {
			contested = contested || !strings.HasPrefix(dir, d.lockDir)
		}
		for _, s := range ap.Steps {
			if contested {
				break
			}
			for _, name := range []string{"updates.lock", "resin-updates.lock"} {
				r.checkEntry(filepath.Join(d.serviceDir(s.App, s.Service), name), "agent", uid, ready, after, how)
			}
		}
	}
	for _, h := range holds {
		if h.All {
			continue
		}
		r.checkEntry(filepath.Join(d.serviceDir(h.App, h.Service), "latch-hold.lock"), "hold", uid, ready, after, how)
	}
}

// checkEntry checks that path is latch's entry with the role, owned by uid,
// made no later than READY=1.
func (r *crashRun) checkEntry(path, role string, uid int, ready time.Time, after time.Duration, how string) {
	r.t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		r.errorf("kill %d (%s after %s): at READY=1 %s is missing: %v", r.kills, how, after, path, err)
		return
	}
	rec := readRecord(path)
	switch {
	case rec == nil || rec.Role != role:
		r.errorf("kill %d (%s after %s): at READY=1 %s does not carry latch's %q record (%+v)", r.kills, how, after, path, role, rec)
	case int(st.Uid) != uid:
		r.errorf("kill %d (%s after %s): at READY=1 %s is owned by uid %d, want %d", r.kills, how, after, path, st.Uid, uid)
	case rec.Created.After(ready):
		r.errorf("kill %d (%s after %s): %s made at %s, after READY=1 at %s", r.kills, how, after, path, rec.Created, ready)
	}
}

func readRecord(path string) *record {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	var rec record
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &rec) != nil {
		return nil
	}
	return &rec
}

func holdNames(hs []store.Hold) []string {
	var out []string
	for _, h := range hs {
		if h.All {
			out = append(out, "all")
		} else {
			out = append(out, h.App+"/"+h.Service)
		}
	}
	return out
}

// journal reads the dead agent's journal: the apply in progress (nil when
// none) and the holds.
func (r *crashRun) journal() (*store.Apply, []store.Hold) {
	r.t.Helper()
	j, err := store.Open(filepath.Join(r.d.stateDir, "journal.db"), &store.Options{Timeout: 5 * time.Second})
	if err != nil {
		r.t.Fatalf("open the killed agent's journal: %v", err)
	}
	defer j.Close()
	var ap *store.Apply
	var holds []store.Hold
	err = j.View(func(tx *store.Tx) error {
		a, err := tx.Apply()
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		ap = a
		holds, err = tx.Holds()
		return err
	})
	if err != nil {
		r.t.Fatalf("read the killed agent's journal: %v", err)
	}
	return ap, holds
}

// waitIdle waits until the agent has nothing left to do, with kiosk and
// other on the given releases (status "failed" when the newest target
// failed, else "idle").
// waitFailed waits until the update with id failed and was rolled back.
func (r *crashRun) waitFailed(what, id, kiosk, other string) {
	d := r.d
	r.t.Helper()
	d.waitFor(what, func() bool {
		s := d.status()
		return s.Status == "failed" && s.UpdateFailed && s.UpdateID == id &&
			d.releaseOf("kiosk") == kiosk && d.releaseOf("other") == other
	})
}

func (r *crashRun) waitIdle(what, kiosk, other string, failed bool) {
	d := r.d
	r.t.Helper()
	d.waitFor(what, func() bool {
		s := d.status()
		want := "idle"
		if failed {
			want = "failed"
		}
		return s.Status == want && !s.UpdatePending && s.UpdateFailed == failed &&
			d.releaseOf("kiosk") == kiosk && d.releaseOf("other") == other
	})
}

// checkTransitions checks that each service went through exactly the
// steps of the round's release transition. A step repeated right after a
// kill counts once: the killed agent could not know that it had run.
func (r *crashRun) checkTransitions(n int, kind string, lines []string, oldK, newK, oldO, newO app, restarted string) {
	r.t.Helper()
	type entry struct {
		key   string
		epoch int
	}
	got := map[string][]string{}
	last := map[string]entry{}
	epoch := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "KILL ") {
			epoch++
			continue
		}
		st, ok := parseStep(l)
		if !ok {
			continue
		}
		name := st.App + "/" + st.Service
		key := st.Verb + "|" + st.Content + "|" + st.By
		if e, ok := last[name]; ok && e.key == key && e.epoch < epoch {
			continue
		}
		last[name] = entry{key, epoch}
		got[name] = append(got[name], key)
	}
	want := map[string][][]string{} // alternatives
	content := func(a app, s string) string {
		for _, sv := range a.services {
			if sv.name == s && sv.content != "" {
				return sv.content
			}
		}
		return fmt.Sprintf("%s/%s %s", a.name, s, a.release)
	}
	transition := func(old, nw app) {
		if old.release == nw.release {
			return
		}
		seen := map[string]bool{}
		for _, sv := range append(append([]svc{}, old.services...), nw.services...) {
			s := sv.name
			if seen[s] {
				continue
			}
			seen[s] = true
			name := nw.name + "/" + s
			inOld, inNew := hasService(old, s), hasService(nw, s)
			switch {
			case inOld && inNew:
				want[name] = [][]string{{"stop|" + content(old, s) + "|" + old.release, "start|" + content(nw, s) + "|" + nw.release}}
			case inOld:
				want[name] = [][]string{{"stop|" + content(old, s) + "|" + old.release}}
			case inNew:
				// A new service is stopped by the new release's command first,
				// whatever its file holds (nothing, or a release that dropped it).
				want[name] = [][]string{{"stop|*|" + nw.release, "start|" + content(nw, s) + "|" + nw.release}}
			}
		}
	}
	switch kind {
	case "broken":
		r.checkBroken(n, got, oldK, newK)
		delete(got, "kiosk/ui")
		for _, sv := range oldK.services {
			delete(got, "kiosk/"+sv.name)
		}
	case "restart":
		a := oldK
		if strings.HasPrefix(restarted, "other/") {
			a = oldO
		}
		_, s, _ := strings.Cut(restarted, "/")
		// Refused (a lock, a hold) or lost with a kill before it began: nothing.
		want[restarted] = [][]string{{}, {"stop|" + content(a, s) + "|" + a.release, "start|" + content(a, s) + "|" + a.release}}
	default:
		transition(oldK, newK)
		transition(oldO, newO)
	}
	all := map[string]bool{}
	for k := range got {
		all[k] = true
	}
	for k := range want {
		all[k] = true
	}
	var keys []string
	for k := range all {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, name := range keys {
		alts := want[name]
		if alts == nil {
			alts = [][]string{{}}
		}
		ok := false
		for _, w := range alts {
			ok = ok || matchSeq(got[name], w)
		}
		if !ok {
			r.errorf("round %d (%s): %s ran %q, want %q (each step once per release transition)", n, kind, name, got[name], alts)
		}
	}
}

// checkBroken checks the services of a release that fails its health check:
// each attempt stops the running release by its own command, starts the new
// one, and rolls back (stop, start the old release by its own command); a
// kill may cut an attempt short, and costs one. Never two stops or two
// starts in a row, at most crashAttempts starts of the new release, and in
// the end the old release runs.
func (r *crashRun) checkBroken(n int, got map[string][]string, oldK, newK app) {
	r.t.Helper()
	content := func(a app, s string) string {
		for _, sv := range a.services {
			if sv.name == s && sv.content != "" {
				return sv.content
			}
		}
		return fmt.Sprintf("%s/%s %s", a.name, s, a.release)
	}
	for _, sv := range oldK.services {
		name := "kiosk/" + sv.name
		running, runRel, runContent := true, oldK.release, content(oldK, sv.name)
		starts := 0
		for _, e := range got[name] {
			verb, rest, _ := strings.Cut(e, "|")
			c, by, _ := strings.Cut(rest, "|")
			switch {
			case verb == "stop" && !running:
				r.errorf("round %d (broken): %s stopped again while stopped: %q in %q", n, name, e, got[name])
			case verb == "stop" && (by != runRel || c != runContent):
				r.errorf("round %d (broken): %s runs %q of %s but was stopped by %s's command: %q in %q", n, name, runContent, runRel, by, e, got[name])
			case verb == "start" && running:
				r.errorf("round %d (broken): %s started again while running: %q in %q", n, name, e, got[name])
			case verb == "start" && !(by == newK.release && c == content(newK, sv.name)) && !(by == oldK.release && c == content(oldK, sv.name)):
				r.errorf("round %d (broken): %s started on %q by %s's command: %q in %q", n, name, c, by, e, got[name])
			}
			if verb == "stop" {
				running = false
			} else {
				running, runRel, runContent = true, by, c
				if by == newK.release {
					starts++
				}
			}
		}
		if !running || runRel != oldK.release {
			r.errorf("round %d (broken): %s ends %v on %s, want running %s: %q", n, name, map[bool]string{true: "running", false: "stopped"}[running], runRel, oldK.release, got[name])
		}
		if starts < 1 || starts > crashAttempts {
			r.errorf("round %d (broken): %s started the failing release %d times, want 1 to %d (--max-attempts): %q", n, name, starts, crashAttempts, got[name])
		}
	}
}

func matchSeq(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		w := want[i]
		if strings.Contains(w, "|*|") {
			verb, rest, _ := strings.Cut(w, "|*|")
			if strings.HasPrefix(got[i], verb+"|") && strings.HasSuffix(got[i], "|"+rest) {
				continue
			}
			return false
		}
		if got[i] != w {
			return false
		}
	}
	return true
}

// checkRunning checks, with the agent idle, that every service of every app
// last ran its release's start command on that release's file (never a
// mixed release, never a service left stopped), and that a dropped service
// was last stopped.
func (r *crashRun) checkRunning(n int) {
	r.t.Helper()
	last := map[string]step{}
	for _, st := range r.d.steps() {
		last[st.App+"/"+st.Service] = st
	}
	for _, a := range []app{r.kiosk, r.other} {
		for _, s := range a.services {
			name := a.name + "/" + s.name
			want := fmt.Sprintf("%s/%s %s", a.name, s.name, a.release)
			st, ok := last[name]
			if !ok || st.Verb != "start" || st.Content != want || st.By != a.release {
				r.errorf("round %d: idle on %s=%s, but %s last ran %q, want its start on %q", n, a.name, a.release, name, st.Line, want)
			}
			b, err := os.ReadFile(r.d.installed(a.name, s.name))
			if got := strings.TrimSpace(string(b)); err != nil || got != want {
				r.errorf("round %d: idle on %s=%s, but %s's file holds %q (%v): a mixed release", n, a.name, a.release, name, got, err)
			}
		}
	}
	for _, s := range crashServices {
		if hasService(r.kiosk, s) {
			continue
		}
		if st, ok := last["kiosk/"+s]; ok && st.Verb != "stop" {
			r.errorf("round %d: kiosk/%s is not in the target, but its last step was %q", n, s, st.Line)
		}
	}
}
