package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests run a fleet of real agents (the latch binary, the exec
// driver, each device under its own --root with its own client
// certificate) on one real mosquitto, and drive it the way an operator
// does: latch release build and latch fleet publish for the targets,
// latch fleet status for the picture, latch fleet cmd for the one device
// that must not wait. The applications holding their locks are real
// processes of another user that create the lock file with O_EXCL and keep
// a flock(2) on it.

// fleetScaleNeeds skips where a fleet of agents cannot run as it would on
// boards: not root, no mosquitto, or an emulated or cross-built agent.
func fleetScaleNeeds(t *testing.T) {
	t.Helper()
	if os.Getenv("LATCH_CROSS") != "" {
		t.Skip("LATCH_CROSS: a fleet of agents (tens of processes on one broker) runs in the native suite only; the agent's fleet channel is tested on every architecture by agent/fleet")
	}
	fleetNeeds(t) // root, mosquitto, LATCH_EMULATED
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv(1) missing: the fleet's applications holding locks as another user were not tested")
	}
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("flock(1) missing: the fleet's applications holding locks were not tested")
	}
}

// scaleFleet is a fleet under test: the broker, the publisher's folder (keys,
// root of trust, releases) and the agents.
type scaleFleet struct {
	t      *testing.T
	b      *fleetBroker
	name   string // the fleet's name, also the root of trust's
	base   string // every device's --root is a folder of it (mode 0755: the apps run as uid 1000)
	pub    string // the publisher's folder
	opCert string
	opKey  string

	mu     sync.Mutex
	agents []*scaleAgent
}

// scaleAgent is one device of the fleet.
type scaleAgent struct {
	id   string
	root string
	cmd  *exec.Cmd
	done chan struct{}
	log  string // the agent's output
}

func newScaleFleet(t *testing.T, name string) *scaleFleet {
	t.Helper()
	b := startFleetBroker(t)
	base, err := os.MkdirTemp("", "latch-fleetscale-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	f := &scaleFleet{t: t, b: b, name: name, base: base, pub: filepath.Join(base, "publisher")}
	if err := os.Mkdir(f.pub, 0o700); err != nil {
		t.Fatal(err)
	}
	f.opCert, f.opKey = b.OperatorCert(t)
	f.latch("key", "gen", "root1")
	f.latch("key", "gen", "ci")
	f.latch("root", "init", "--root-key", "root1.pub", "--root-threshold", "1", "--targets-key", "ci.pub",
		"--targets-threshold", "1", "--fleet", name, "--expires", "30d", "-o", "root.json")
	f.latch("root", "sign", "--key", "root1.key", "root.json")
	t.Cleanup(f.stopAll)
	return f
}

// latch runs the latch binary in the publisher's folder; it must succeed.
func (f *scaleFleet) latch(args ...string) string {
	f.t.Helper()
	out, err := f.try(args...)
	if err != nil {
		f.t.Fatalf("latch %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (f *scaleFleet) try(args ...string) (string, error) {
	cmd := exec.Command(latchBin, args...)
	cmd.Dir = f.pub
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// op is the broker flags of latch fleet, as the operator.
func (f *scaleFleet) op() []string {
	return []string{"--broker", f.b.URL(), "--mqtt-ca", f.b.CAFile, "--mqtt-cert", f.opCert, "--mqtt-key", f.opKey}
}

// start starts n agents named <prefix>-000... at once, each with its own
// root, state, certificate and marker file; it does not wait for them.
func (f *scaleFleet) start(prefix string, n int) []*scaleAgent {
	f.t.Helper()
	var out []*scaleAgent
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s-%03d", prefix, i)
		root := filepath.Join(f.base, id)
		if err := os.Mkdir(root, 0o755); err != nil {
			f.t.Fatal(err)
		}
		cert, key := f.b.DeviceCert(f.t, id)
		a := &scaleAgent{id: id, root: root, log: filepath.Join(root, "agent.log"), done: make(chan struct{})}
		logf, err := os.Create(a.log)
		if err != nil {
			f.t.Fatal(err)
		}
		a.cmd = exec.Command(latchBin, "agent", "--root", root, "--driver", "exec", "--health-wait", "50ms", "--retry-delay", "100ms",
			"--trust-root", filepath.Join(f.pub, "root.json"), "--device-id", id,
			"--fleet", f.b.URL(), "--fleet-name", f.name, "--mqtt-ca", f.b.CAFile, "--mqtt-cert", cert, "--mqtt-key", key)
		a.cmd.Stdout, a.cmd.Stderr = logf, logf
		a.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=", "LATCH_FAILPOINT=", "FLEETSCALE_DEV="+root)
		// An agent dies with the test binary, whatever ends it.
		a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := a.cmd.Start(); err != nil {
			logf.Close()
			f.t.Fatalf("start agent %s: %v", id, err)
		}
		logf.Close()
		go func() { a.cmd.Wait(); close(a.done) }()
		f.mu.Lock()
		f.agents = append(f.agents, a)
		f.mu.Unlock()
		out = append(out, a)
	}
	return out
}

// stopAll ends every agent with SIGTERM (SIGKILL after 20s) and waits.
func (f *scaleFleet) stopAll() {
	f.mu.Lock()
	agents := f.agents
	f.agents = nil
	f.mu.Unlock()
	for _, a := range agents {
		a.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(20 * time.Second)
	for _, a := range agents {
		select {
		case <-a.done:
		case <-deadline:
			a.cmd.Process.Kill()
			<-a.done
		}
	}
}

// output is the tail of an agent's output, for a failure message.
func (a *scaleAgent) output() string {
	b, _ := os.ReadFile(a.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// lockPath is the update lock of the fleet's one service on this device.
func (a *scaleAgent) lockPath() string {
	return filepath.Join(a.root, "tmp", "latch", "services", "kiosk", "ui", "updates.lock")
}

// marks counts the lines of the device's marker file equal to line (its
// start commands append to it).
func (a *scaleAgent) marks(line string) int {
	b, _ := os.ReadFile(filepath.Join(a.root, "starts"))
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if l == line {
			n++
		}
	}
	return n
}

// release builds and signs release r of the fleet's kiosk app with the real
// binary (latch release build, signed by the targets key) and returns the
// target's path; its .sig is beside it. start is the service's start
// command; it runs with FLEETSCALE_DEV set to the device's root.
func (f *scaleFleet) release(r, start string) string {
	f.t.Helper()
	draft := map[string]any{"apps": map[string]any{"kiosk": map[string]any{"release": r, "services": map[string]any{
		"ui": map[string]any{"start": start, "stop": "true"}}}}}
	b, _ := json.MarshalIndent(draft, "", "  ")
	name := "draft-" + r + ".json"
	if err := os.WriteFile(filepath.Join(f.pub, name), b, 0o644); err != nil {
		f.t.Fatal(err)
	}
	f.latch("release", "build", "--out", "build", "--base-url", "http://127.0.0.1:1/unused", "--root", "root.json", "--key", "ci.key", name)
	return filepath.Join(f.pub, "build", "target.json")
}

// publish makes target the fleet's retained target with latch fleet publish.
func (f *scaleFleet) publish(target string) {
	f.t.Helper()
	out := f.latch(append(append([]string{"fleet", "publish"}, f.op()...), "--fleet", f.name, target)...)
	if !strings.Contains(out, "signed") || strings.Contains(out, "unsigned") {
		f.t.Fatalf("latch fleet publish did not publish a signed target:\n%s", out)
	}
}

// scaleRow is one device of latch fleet status --json.
type scaleRow struct {
	Device    string `json:"device"`
	Fleet     string `json:"fleet"`
	Online    *bool  `json:"online"`
	State     string `json:"state"`
	Release   string `json:"release"`
	BlockedBy []struct {
		App     string `json:"app"`
		Service string `json:"service"`
		Path    string `json:"path"`
		State   string `json:"state"`
		PID     int    `json:"pid"`
		Command string `json:"command"`
		UID     *int   `json:"uid"`
	} `json:"blocked_by"`
	Error string `json:"error"`
}

func (r scaleRow) online() bool { return r.Online != nil && *r.Online }

// settled: online, idle, running release r, blocked by nothing.
func (r scaleRow) settled(release string) bool {
	return r.online() && r.State == "idle" && r.Release == release && len(r.BlockedBy) == 0 && r.Error == ""
}

// status is latch fleet status --json, by device.
func (f *scaleFleet) status() (map[string]scaleRow, string) {
	f.t.Helper()
	out, err := f.try(append(append([]string{"fleet", "status"}, f.op()...), "--fleet", f.name, "--json", "--wait", "1s")...)
	if err != nil {
		f.t.Fatalf("latch fleet status --json: %v\n%s\nbroker log tail:\n%s", err, out, tail(f.b.Log(), 2000))
	}
	var rows []scaleRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		f.t.Fatalf("latch fleet status --json is not a JSON array of devices: %v\n%s", err, out)
	}
	m := map[string]scaleRow{}
	for _, r := range rows {
		if _, dup := m[r.Device]; dup {
			f.t.Fatalf("latch fleet status --json names %s twice:\n%s", r.Device, out)
		}
		m[r.Device] = r
	}
	return m, out
}

// waitStatus polls latch fleet status until ok holds for the fleet (the
// broker's retained states: nothing to sleep on), or fails after limit with
// what is still wrong.
func (f *scaleFleet) waitStatus(what string, limit time.Duration, ok func(map[string]scaleRow) []string) map[string]scaleRow {
	f.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		rows, _ := f.status()
		wrong := ok(rows)
		if len(wrong) == 0 {
			return rows
		}
		if time.Now().After(deadline) {
			sort.Strings(wrong)
			if len(wrong) > 15 {
				wrong = append(wrong[:15], fmt.Sprintf("... and %d more", len(wrong)-15))
			}
			msg := fmt.Sprintf("timed out (%v) waiting for %s; still wrong:\n  %s", limit, what, strings.Join(wrong, "\n  "))
			id, _, _ := strings.Cut(wrong[0], ":")
			f.mu.Lock()
			for _, a := range f.agents {
				if a.id == id {
					msg += fmt.Sprintf("\nagent %s output (tail):\n%s", a.id, a.output())
				}
			}
			f.mu.Unlock()
			f.t.Fatal(msg)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// every checks cond for each agent, naming those for which it fails.
func every(agents []*scaleAgent, rows map[string]scaleRow, cond func(a *scaleAgent, r scaleRow, ok bool) string) []string {
	var wrong []string
	for _, a := range agents {
		r, ok := rows[a.id]
		if why := cond(a, r, ok); why != "" {
			wrong = append(wrong, a.id+": "+why)
		}
	}
	return wrong
}

func describe(r scaleRow, ok bool) string {
	if !ok {
		return "not in latch fleet status"
	}
	b, _ := json.Marshal(r)
	return string(b)
}

// settledOn: every agent online, idle, on release.
func settledOn(agents []*scaleAgent, release string) func(map[string]scaleRow) []string {
	return func(rows map[string]scaleRow) []string {
		return every(agents, rows, func(a *scaleAgent, r scaleRow, ok bool) string {
			if ok && r.settled(release) {
				return ""
			}
			return describe(r, ok)
		})
	}
}

// holder is an application of uid 1000 in its critical section: it creates
// the lock file with O_EXCL (set -C) and keeps a flock(2) on it, so the
// agent can name it (pid from /proc/locks, uid from the file).
type holder struct {
	cmd  *exec.Cmd
	done chan struct{}
	path string
}

func holdLock(t *testing.T, path string) *holder {
	t.Helper()
	// The lock directory is the agent's (mode 1777), made when it applied the first release.
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode()&os.ModeSticky == 0 {
		t.Fatalf("lock directory %s: %v (want the agent's mode 1777 directory)", filepath.Dir(path), err)
	}
	cmd := exec.Command("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
		"sh", "-c", `set -C; echo "kiosk $$" > "$0" || exit 3; exec flock "$0" sleep 1000`, path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{cmd: cmd, done: make(chan struct{}), path: path}
	go func() { cmd.Wait(); close(h.done) }()
	t.Cleanup(h.kill)
	// Held once the flock is in /proc/locks under the holder's pid.
	deadline := time.Now().Add(10 * time.Second)
	for !flockHeldBy(path, cmd.Process.Pid) {
		select {
		case <-h.done:
			t.Fatalf("the lock holder of %s exited: %v", path, cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lock holder of %s did not take its flock within 10s", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return h
}

// flockHeldBy: /proc/locks has a FLOCK of pid on path's inode.
func flockHeldBy(path string, pid int) bool {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return false
	}
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		// 1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF
		if len(f) < 6 || f[1] != "FLOCK" {
			continue
		}
		parts := strings.Split(f[5], ":")
		if f[4] == strconv.Itoa(pid) && len(parts) == 3 && parts[2] == strconv.FormatUint(st.Ino, 10) {
			return true
		}
	}
	return false
}

// release ends the application's critical section: the lock file goes,
// then the process.
func (h *holder) release() {
	os.Remove(h.path)
	h.kill()
}

func (h *holder) kill() {
	syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
	<-h.done
}

// connects reads every device's retained state from the broker and returns
// what its "fleet" object says: connected, and the connections made.
func (f *scaleFleet) connects() map[string]struct {
	Connected bool
	Connects  int
} {
	f.t.Helper()
	out, _ := exec.Command("mosquitto_sub", "-h", "127.0.0.1", "-p", strconv.Itoa(f.b.Port()), "--cafile", f.b.CAFile,
		"--cert", f.opCert, "--key", f.opKey, "-t", "latch/devices/+/state", "-v", "--retained-only", "-W", "1").Output()
	m := map[string]struct {
		Connected bool
		Connects  int
	}{}
	for _, l := range strings.Split(string(out), "\n") {
		topic, payload, ok := strings.Cut(l, " ")
		if !ok {
			continue
		}
		var st struct {
			Fleet *struct {
				Connected bool `json:"connected"`
				Connects  int  `json:"connects"`
			} `json:"fleet"`
		}
		if json.Unmarshal([]byte(payload), &st) != nil || st.Fleet == nil {
			continue
		}
		id := strings.TrimSuffix(strings.TrimPrefix(topic, "latch/devices/"), "/state")
		m[id] = struct {
			Connected bool
			Connects  int
		}{st.Fleet.Connected, st.Fleet.Connects}
	}
	return m
}

// reconnected: every agent settled on release, and its retained state
// published over its connection number min or later.
func reconnected(f *scaleFleet, agents []*scaleAgent, release string, min int) func(map[string]scaleRow) []string {
	return func(rows map[string]scaleRow) []string {
		wrong := settledOn(agents, release)(rows)
		if len(wrong) > 0 {
			return wrong
		}
		c := f.connects()
		for _, a := range agents {
			if st, ok := c[a.id]; !ok || !st.Connected || st.Connects < min {
				wrong = append(wrong, fmt.Sprintf("%s: its retained state says connected=%v after %d connection(s), want connection %d or later", a.id, st.Connected, st.Connects, min))
			}
		}
		return wrong
	}
}

// answerAll sends each agent a command that changes nothing (release every
// hold: there is none) and requires its result: only an agent connected to
// the broker as it is now can answer.
func (f *scaleFleet) answerAll(agents []*scaleAgent) {
	f.t.Helper()
	for _, a := range agents {
		out, err := f.try(append(append([]string{"fleet", "cmd"}, f.op()...), a.id, "release", "--all", "--wait", "60s")...)
		if !strings.HasPrefix(out, a.id+": cmd-") {
			f.t.Fatalf("%s did not answer a command after the broker's restart: %v\n%s\nagent output (tail):\n%s", a.id, err, out, a.output())
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// A fleet of 100 agents under a root of trust. The first signed target
// reaches every one of them through latch fleet publish; with 10 of them
// held by a kiosk in its critical section, the second is applied by the 90
// others, latch fleet status names exactly those 10 (the lock, the holder's
// pid and uid), first in its table; a force command must be signed, and
// moves exactly the one device it names.
func TestFleetHundredAgents(t *testing.T) {
	fleetScaleNeeds(t)
	const n = 100
	inotifyRoom(t, 8*n) // an agent takes an inotify instance or two; the default is 128 a user
	f := newScaleFleet(t, "scale")
	agents := f.start("dev", n)
	f.waitStatus("100 agents online", 90*time.Second, func(rows map[string]scaleRow) []string {
		return every(agents, rows, func(a *scaleAgent, r scaleRow, ok bool) string {
			select {
			case <-a.done:
				return "the agent exited: " + a.output()
			default:
			}
			if ok && r.online() && r.Fleet == f.name {
				return ""
			}
			return describe(r, ok)
		})
	})
	if rows, out := f.status(); len(rows) != n {
		t.Fatalf("latch fleet status names %d devices, want %d:\n%s", len(rows), n, out)
	}

	// Release 1 reaches every device from one publish.
	f.publish(f.release("1", `echo "start 1" >> "$FLEETSCALE_DEV/starts"`))
	f.waitStatus("every agent on kiosk=1", 90*time.Second, settledOn(agents, "kiosk=1"))
	for _, a := range agents {
		if got := a.marks("start 1"); got != 1 {
			t.Errorf("%s started release 1 %d times, want once", a.id, got)
		}
	}

	// Ten kiosks enter their critical section.
	stuck := map[string]*holder{}
	var stuckAgents, freeAgents []*scaleAgent
	for i, a := range agents {
		if i%10 == 3 {
			stuck[a.id] = holdLock(t, a.lockPath())
			stuckAgents = append(stuckAgents, a)
		} else {
			freeAgents = append(freeAgents, a)
		}
	}

	f.publish(f.release("2", `echo "start 2" >> "$FLEETSCALE_DEV/starts"`))
	blockedByHolder := func(a *scaleAgent, r scaleRow, ok bool) string {
		h := stuck[a.id]
		if !ok || !r.online() || r.Release != "kiosk=1" || r.State == "idle" || len(r.BlockedBy) != 1 {
			return "not blocked on kiosk=1 by one lock: " + describe(r, ok)
		}
		bl := r.BlockedBy[0]
		if bl.Path != h.path || bl.App != "kiosk" || bl.Service != "ui" || bl.PID != h.cmd.Process.Pid || !strings.HasPrefix(bl.Command, "flock ") ||
			bl.UID == nil || *bl.UID != 1000 {
			return fmt.Sprintf("blocked_by does not name %s held by pid %d (flock ...) of uid 1000: %s", h.path, h.cmd.Process.Pid, describe(r, ok))
		}
		return ""
	}
	rows := f.waitStatus("90 on kiosk=2, the 10 held ones blocked by their kiosk", 90*time.Second, func(rows map[string]scaleRow) []string {
		return append(settledOn(freeAgents, "kiosk=2")(rows), every(stuckAgents, rows, blockedByHolder)...)
	})
	var blocked []string
	for id, r := range rows {
		if len(r.BlockedBy) > 0 {
			blocked = append(blocked, id)
		}
	}
	if len(blocked) != len(stuck) {
		t.Errorf("latch fleet status names %d devices blocked, want exactly the %d held: %v", len(blocked), len(stuck), blocked)
	}

	// The human table: the stuck ones first, each naming its holder.
	out := f.latch(append(append([]string{"fleet", "status"}, f.op()...), "--fleet", f.name, "--wait", "1s")...)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != n+2 || !strings.HasPrefix(lines[0], "DEVICE") {
		t.Fatalf("latch fleet status: want a header, %d devices and a summary line, got:\n%s", n, out)
	}
	for i, l := range lines[1 : 1+len(stuck)] {
		fields := strings.Fields(l)
		h, ok := stuck[fields[0]]
		if !ok {
			t.Errorf("latch fleet status line %d is %q: the %d blocked devices must come first\n%s", i+2, l, len(stuck), out)
			continue
		}
		if want := fmt.Sprintf("held by pid %d", h.cmd.Process.Pid); !strings.Contains(l, want) || !strings.Contains(l, "kiosk/ui") {
			t.Errorf("latch fleet status line of %s does not say kiosk/ui %s: %q", fields[0], want, l)
		}
	}
	for _, l := range lines[1+len(stuck) : 1+n] {
		if strings.Contains(l, "held by") || !strings.Contains(l, "kiosk=2") {
			t.Errorf("latch fleet status: after the blocked devices, a device not on kiosk=2 or blocked: %q", l)
		}
	}
	if want := fmt.Sprintf("%d device(s), %d blocked by a lock", n, len(stuck)); lines[n+1] != want {
		t.Errorf("latch fleet status summary %q, want %q", lines[n+1], want)
	}

	// A force command under the root of trust must be signed: unsigned, it is refused
	// and the device stays blocked; signed by the targets key, it moves that device alone.
	target := stuckAgents[0]
	cmdArgs := append(append([]string{"fleet", "cmd"}, f.op()...), target.id, "update", "--force")
	out, err := f.try(cmdArgs...)
	if err == nil || !strings.Contains(out, " refused: ") || !strings.Contains(out, "must be signed") {
		t.Fatalf("an unsigned force command under --trust-root: %v\n%s\nwant it refused as unsigned", err, out)
	}
	if r, _ := f.status(); blockedByHolder(target, r[target.id], true) != "" {
		t.Fatalf("an unsigned force command moved %s: %s", target.id, blockedByHolder(target, r[target.id], true))
	}
	f.latch("key", "gen", "intruder")
	out, err = f.try(append(cmdArgs, "--sign-key", "intruder.key")...)
	if err == nil || !strings.Contains(out, " refused: ") {
		t.Fatalf("a force command signed by a key the root does not trust: %v\n%s\nwant it refused", err, out)
	}
	out, err = f.try(append(cmdArgs, "--sign-key", "ci.key")...)
	if err != nil || !strings.Contains(out, " ok") {
		t.Fatalf("a force command signed by the targets key: %v\n%s\nwant ok", err, out)
	}
	f.waitStatus(target.id+" forced onto kiosk=2, the 9 others still blocked", 60*time.Second, func(rows map[string]scaleRow) []string {
		return append(settledOn(append([]*scaleAgent{target}, freeAgents...), "kiosk=2")(rows),
			every(stuckAgents[1:], rows, blockedByHolder)...)
	})
	// The 9 stay blocked: a second look after the forced one settled.
	rows, out = f.status()
	if wrong := every(stuckAgents[1:], rows, blockedByHolder); len(wrong) != 0 {
		t.Errorf("after the force of %s, others moved too:\n%s\nlatch fleet status:\n%s", target.id, strings.Join(wrong, "\n"), out)
	}
	for _, a := range agents {
		want := 1
		if a != target && stuck[a.id] != nil {
			want = 0
		}
		if got := a.marks("start 2"); got != want {
			t.Errorf("%s started release 2 %d times, want %d", a.id, got, want)
		}
		if got := a.marks("start 1"); got != 1 {
			t.Errorf("%s started release 1 %d times, want once", a.id, got)
		}
	}
}

// A broker SIGKILLed in the middle of a rollout and started again on the
// same port, with its persistence: every agent reconnects and publishes
// its state again, none applies the release twice (the start command of the
// new release appends to a marker file: exactly one line each), and the
// fleet converges, also after the operator publishes the same target again.
func TestFleetBrokerKilledMidRollout(t *testing.T) {
	fleetScaleNeeds(t)
	const n = 20
	inotifyRoom(t, 8*n)
	f := newScaleFleet(t, "chaos")
	agents := f.start("edge", n)
	f.publish(f.release("1", `echo "start 1" >> "$FLEETSCALE_DEV/starts"`))
	f.waitStatus("every agent on kiosk=1", 60*time.Second, settledOn(agents, "kiosk=1"))

	// Every kiosk is in its critical section when release 2 arrives; its start is slow.
	holders := map[string]*holder{}
	for _, a := range agents {
		holders[a.id] = holdLock(t, a.lockPath())
	}
	target2 := f.release("2", `echo "begin 2" >> "$FLEETSCALE_DEV/starts"; sleep 2; echo "start 2" >> "$FLEETSCALE_DEV/starts"`)
	f.publish(target2)
	f.waitStatus("every agent blocked on kiosk=1", 60*time.Second, func(rows map[string]scaleRow) []string {
		return every(agents, rows, func(a *scaleAgent, r scaleRow, ok bool) string {
			if ok && r.online() && r.Release == "kiosk=1" && len(r.BlockedBy) == 1 && r.BlockedBy[0].Path == a.lockPath() {
				return ""
			}
			return describe(r, ok)
		})
	})

	// Half the kiosks leave their critical section; the broker dies while their
	// slow starts run.
	first, second := agents[:n/2], agents[n/2:]
	for _, a := range first {
		holders[a.id].release()
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, a := range first {
		for a.marks("begin 2") == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not begin starting release 2 within 60s after its lock went:\n%s", a.id, a.output())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	f.b.Stop()

	// While the broker is away the other half is released: the agents apply what
	// they already have.
	for _, a := range second {
		holders[a.id].release()
	}
	deadline = time.Now().Add(60 * time.Second)
	for _, a := range agents {
		for a.marks("start 2") == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not start release 2 within 60s with the broker away:\n%s", a.id, a.output())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	f.b.Start()

	// Every agent reconnects (its retained state says so: connected, a second
	// connection) and the fleet settles on kiosk=2 (for the second half, a state
	// that could only be published after the broker came back).
	f.waitStatus("every agent back online, settled on kiosk=2", 90*time.Second, reconnected(f, agents, "kiosk=2", 2))
	f.answerAll(agents)

	// The operator, unsure what the broker kept, publishes the same target again.
	f.publish(target2)
	// And once more a broker restart: the retained target comes again on connect.
	f.b.Stop()
	f.b.Start()
	f.waitStatus("every agent back online after a second restart", 90*time.Second, reconnected(f, agents, "kiosk=2", 3))
	f.answerAll(agents)
	for _, a := range agents {
		select {
		case <-a.done:
			t.Errorf("agent %s exited: %v\n%s", a.id, a.cmd.ProcessState, a.output())
		default:
		}
		if b, s := a.marks("begin 2"), a.marks("start 2"); b != 1 || s != 1 {
			t.Errorf("%s began release 2 %d times and finished %d times, want once each\n%s", a.id, b, s, a.output())
		}
		if got := a.marks("start 1"); got != 1 {
			t.Errorf("%s started release 1 %d times, want once", a.id, got)
		}
	}
}

// inotifyRoom makes sure root may have at least n inotify instances
// (fs.inotify.max_user_instances) for as long as the test runs: many agents
// on one machine, beside the other tests, need more than the default 128.
// The old limit is put back at the end.
func inotifyRoom(t *testing.T, n int) {
	t.Helper()
	const path = "/proc/sys/fs/inotify/max_user_instances"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	old, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %q: %v", path, b, err)
	}
	if old >= n {
		return
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(n)), 0o644); err != nil {
		t.Fatalf("raise %s from %d to %d for %d agents: %v", path, old, n, n/8, err)
	}
	t.Cleanup(func() { os.WriteFile(path, []byte(strconv.Itoa(old)), 0o644) })
}
