package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"latch/agent"
	"latch/agent/api"
	"latch/agent/lock"
	"latch/store"
)

// clientDriver records what the agent asks of the services: the fake at the
// boundary of real services and power.
type clientDriver struct {
	mu    sync.Mutex
	calls []string // guarded by mu
}

func (d *clientDriver) rec(s string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, s)
	return nil
}
func (d *clientDriver) Stop(ctx context.Context, s agent.Service) error {
	return d.rec("stop " + s.App)
}
func (d *clientDriver) Start(ctx context.Context, s agent.Service) error {
	return d.rec("start " + s.App)
}
func (d *clientDriver) Health(ctx context.Context, s agent.Service) error { return nil }
func (d *clientDriver) Reboot(ctx context.Context) error                  { return d.rec("reboot") }
func (d *clientDriver) Shutdown(ctx context.Context) error                { return d.rec("shutdown") }

// clientEnv is a real agent serving its API on <runDir>/api.sock and TCP.
type clientEnv struct {
	runDir, keyFile, tcpURL string
	a                       *agent.Agent
	layout                  lock.Layout
	c                       *api.Client
}

func newClientEnv(t *testing.T) *clientEnv {
	t.Helper()
	dir := t.TempDir()
	run, err := os.MkdirTemp("", "latchcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	e := &clientEnv{runDir: run, keyFile: filepath.Join(dir, "key")}
	os.WriteFile(e.keyFile, []byte("k3y\n"), 0o600)
	e.layout = lock.Layout{Dir: filepath.Join(dir, "locks"), Global: []string{filepath.Join(dir, "balena", "updates.lock")}}
	j, err := store.Open(filepath.Join(dir, "journal.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{StateDir: filepath.Join(dir, "state"), Layout: e.layout, LockUID: os.Getuid(), LockGID: os.Getgid(),
		Driver: &clientDriver{}, Tick: 50 * time.Millisecond, Logf: t.Logf}, j)
	if err != nil {
		t.Fatal(err)
	}
	e.a = a
	ctx, cancel := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(ctx) }()
	<-a.Ready()
	srv, err := api.Listen(api.Config{Socket: filepath.Join(run, "api.sock"), Listen: "127.0.0.1:0", APIKey: "k3y", Logf: t.Logf})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	e.tcpURL = "http://" + srv.Addr().String()
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ctx, a) }()
	t.Cleanup(func() {
		cancel()
		<-serveDone
		<-agentDone
		j.Close()
	})
	e.c = api.NewClient(filepath.Join(run, "api.sock"))
	return e
}

// latch runs the built binary against the env's socket.
func (e *clientEnv) latch(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	a := append([]string{args[0], "--run-dir", e.runDir}, args[1:]...)
	cmd := exec.Command(testLatchBin, a...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run latch %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func clientTarget(rel string) []byte {
	return []byte(`{"apps":{"kiosk":{"release":"` + rel + `","services":{"ui":{"unit":"kiosk-ui.service"}}}}}`)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestClientCommands(t *testing.T) {
	e := newClientEnv(t)
	ctx := t.Context()
	holdPath := filepath.Join(e.layout.Dir, "services", "kiosk", "ui", lock.HoldName)
	type step struct {
		args     []string
		code     int
		out, err string // substrings of stdout, stderr
		json     func(t *testing.T, b []byte)
	}
	run := func(t *testing.T, steps []step) {
		t.Helper()
		for _, s := range steps {
			out, errs, code := e.latch(t, s.args...)
			if code != s.code || !strings.Contains(out, s.out) || !strings.Contains(errs, s.err) {
				t.Errorf("latch %s: got status %d, stdout %q, stderr %q; want %d, stdout with %q, stderr with %q",
					strings.Join(s.args, " "), code, out, errs, s.code, s.out, s.err)
				continue
			}
			if s.json != nil {
				s.json(t, []byte(out))
			}
		}
	}
	decode := func(v any) func(t *testing.T, b []byte) {
		return func(t *testing.T, b []byte) {
			if err := json.Unmarshal(b, v); err != nil {
				t.Errorf("decode %q: %v", b, err)
			}
		}
	}
	var st struct {
		Status string        `json:"status"`
		Events []store.Event `json:"events"`
	}
	var h store.Hold
	var o store.Override
	var evs []store.Event
	var refusal struct {
		Message   string       `json:"message"`
		BlockedBy []lock.Entry `json:"blocked_by"`
	}
	run(t, []step{
		{args: []string{"status"}, out: "none pending"},
		{args: []string{"status", "--json"}, json: decode(&st)},
		{args: []string{"update"}, out: "nothing to do"},
		{args: []string{"hold", "kiosk/ui", "--reason", "trade show", "--for", "1h"}, out: "holding kiosk/ui until"},
		{args: []string{"hold", "kiosk/ui", "--json"}, json: decode(&h)},
		{args: []string{"hold"}, code: 2, err: "give one APP/SERVICE or --all"},
		{args: []string{"hold", "kiosk"}, code: 2, err: "APP/SERVICE"},
	})
	if st.Status != "idle" || st.Events == nil {
		t.Errorf("status --json: got %+v, want idle with an events array", st)
	}
	if h.App != "kiosk" || h.Service != "ui" || !strings.HasPrefix(h.By, "api:unix uid=") {
		t.Errorf("hold --json: got %+v, want kiosk/ui by api:unix uid=...", h)
	}
	if err := e.c.PushTarget(ctx, clientTarget("1"), nil); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the update to wait", func() bool { return e.a.Status().State == agent.StateWaiting })
	run(t, []step{
		{args: []string{"status"}, out: "kiosk/ui: " + holdPath + ", held by pid"},
		{args: []string{"status"}, out: "runs - -> 1 pending"},
		{args: []string{"reboot"}, code: 73, err: holdPath},
		{args: []string{"shutdown"}, code: 73, err: holdPath},
		{args: []string{"reboot", "--json"}, code: 73, json: decode(&refusal)},
		{args: []string{"update", "--no-wait"}, out: "requested"},
		{args: []string{"override"}, out: "lock override off"},
		{args: []string{"override", "bogus"}, code: 2, err: "unknown action"},
		{args: []string{"journal", "--limit", "2", "--json"}, json: decode(&evs)},
		{args: []string{"journal"}, out: "hold on kiosk/ui"},
	})
	if len(refusal.BlockedBy) != 1 || refusal.BlockedBy[0].Path != holdPath {
		t.Errorf("reboot --json: got %+v, want blocked_by %s", refusal, holdPath)
	}
	if len(evs) != 2 || evs[0].Seq < evs[1].Seq {
		t.Errorf("journal --limit 2 --json: got %+v, want 2 events newest first", evs)
	}
	run(t, []step{
		{args: []string{"release", "kiosk/ui"}, out: "released the hold on kiosk/ui"},
		{args: []string{"release", "kiosk/ui"}, code: 1, err: "no hold on kiosk/ui"},
	})
	waitUntil(t, "the update to apply", func() bool { return e.a.Status().Release == "kiosk=1" })
	run(t, []step{
		{args: []string{"override", "on", "--json"}, json: decode(&o)},
		{args: []string{"override", "status"}, out: "lock override ON"},
		{args: []string{"override", "off"}, out: "lock override off"},
		{args: []string{"status"}, out: "runs 1"},
	})
	if !o.Enabled {
		t.Errorf("override on --json: got %+v, want enabled", o)
	}
	// Over TCP with the key; without the right key the server's message.
	run(t, []step{
		{args: []string{"status", "--api", e.tcpURL, "--api-key-file", e.keyFile}, out: "runs 1"},
		{args: []string{"status", "--api", e.tcpURL}, code: 2, err: "--api-key-file"},
	})
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, []byte("nope"), 0o600)
	run(t, []step{{args: []string{"journal", "--api", e.tcpURL, "--api-key-file", bad}, code: 1, err: "API key"}})
}

// TestClientUpdateWaits: `latch update` waits for the lock in its way,
// saying which it is, and returns once the update is applied.
func TestClientUpdateWaits(t *testing.T) {
	e := newClientEnv(t)
	dir, err := e.layout.EnsureServiceDir(lock.Service{App: "kiosk", Service: "ui"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := lock.Create(filepath.Join(dir, lock.UpdatesName), lock.NewRecord(lock.RoleUser), os.Getuid(), os.Getgid())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.c.PushTarget(t.Context(), clientTarget("2"), nil); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the update to wait", func() bool { return e.a.Status().State == agent.StateWaiting })
	cmd := exec.Command(testLatchBin, "update", "--run-dir", e.runDir)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if strings.Contains(sc.Text(), "waiting for lock "+l.Path) {
			break
		}
	}
	if len(lines) == 0 || !strings.Contains(lines[len(lines)-1], "held by pid") {
		t.Fatalf("latch update: got stderr %q, want a line naming %s and its holder", lines, l.Path)
	}
	if err := l.Remove(); err != nil {
		t.Fatal(err)
	}
	for sc.Scan() {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("latch update: %v (stdout %q)", err, out.String())
	}
	if !strings.Contains(out.String(), "update applied: kiosk=2") {
		t.Errorf("latch update: got %q, want update applied: kiosk=2", out.String())
	}
}

func TestClientNotRunning(t *testing.T) {
	run := t.TempDir()
	for _, c := range []string{"status", "hold", "release", "update", "reboot", "shutdown", "override", "journal"} {
		args := []string{c, "--run-dir", run}
		if c == "hold" || c == "release" {
			args = append(args, "--all")
		}
		out, err := exec.Command(testLatchBin, args...).CombinedOutput()
		if code := exitCode(err); code != 1 || !strings.Contains(string(out), "agent is not running") || !strings.Contains(string(out), "latch agent") {
			t.Errorf("latch %s with no agent: got %d %q, want 1 and a message saying it is not running and how to start it", c, code, out)
		}
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestClientHelp(t *testing.T) {
	for _, c := range []string{"hold", "release", "status", "update", "reboot", "shutdown", "override", "journal"} {
		out, err := exec.Command(testLatchBin, c, "-h").Output()
		s := string(out)
		if exitCode(err) != 0 || !strings.Contains(s, "Usage:\n  latch "+c) || !strings.Contains(s, "Example:") || !strings.Contains(s, "-api-key-file") || !strings.Contains(s, "-json") {
			t.Errorf("latch %s -h: got %d %q, want usage, description, flags and an example", c, exitCode(err), s)
		}
	}
}

// TestAgentAPIGroup: --api-group gives the socket to a group (name or
// number); an unknown group is a usage error that creates nothing.
func TestAgentAPIGroup(t *testing.T) {
	root := t.TempDir()
	out, err := exec.Command(testLatchBin, "agent", "--root", root, "--driver", "exec", "--api-group", "no-such-group-latch").CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), "no-such-group-latch") {
		t.Errorf("unknown --api-group: got %d %q, want 2 (usage) and a message naming the group", code, out)
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("a refused --api-group left %d entries in --root, want none", len(ents))
	}
	out, err = exec.Command(testLatchBin, "agent", "--root", root, "--driver", "exec", "--api-group", "-5").CombinedOutput()
	if code := exitCode(err); code != 2 {
		t.Errorf("--api-group -5: got %d %q, want 2 (usage)", code, out)
	}
	if os.Getuid() != 0 {
		t.Skip("not root: giving the socket to another group was not tested")
	}
	for _, g := range []struct {
		arg string
		gid uint32
	}{{"4242", 4242}, {"daemon", 1}} {
		dir := t.TempDir()
		cmd := exec.Command(testLatchBin, "agent", "--root", dir, "--driver", "exec", "--api-group", g.arg)
		var buf bytes.Buffer
		cmd.Stderr = &buf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(dir, "run/latch/api.sock")
		var st syscall.Stat_t
		waitUntil(t, "the API socket", func() bool { return syscall.Lstat(sock, &st) == nil })
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if st.Gid != g.gid || st.Mode&0o777 != 0o660 {
			t.Errorf("--api-group %s: socket gid %d mode %o, want gid %d mode 660\n%s", g.arg, st.Gid, st.Mode&0o777, g.gid, buf.String())
		}
	}
}

// evil is text another user controls (a hold reason, a holder's command
// line) that would clear the operator's screen, forge a row of the table
// and reverse what follows, if printed raw.
const evil = "x\x1b[2J\r\n<forged row>\u202eevil"

// evilEscaped is how the human output must show evil.
const evilEscaped = `x\x1b[2J\x0d\x0a<forged row>\u202eevil`

// checkNoRaw fails when out carries a raw terminal control, or a line that
// starts with the forged row.
func checkNoRaw(t *testing.T, what, out string) {
	t.Helper()
	for _, bad := range []string{"\x1b", "\r", "\u202e", "\x9b"} {
		if strings.Contains(out, bad) {
			t.Errorf("%s: output carries a raw %q:\n%q", what, bad, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "<forged row>") {
			t.Errorf("%s: a field's text began a line of its own: %q", what, line)
		}
	}
}

// TestClientEscapesText: hold reasons and holder command lines reach root's
// terminal escaped in latch status and latch journal; --json escapes them
// too and decodes back to the same text.
func TestClientEscapesText(t *testing.T) {
	e := newClientEnv(t)
	ctx := t.Context()
	if _, err := exec.LookPath("flock"); err != nil {
		t.Fatalf("flock(1) missing (util-linux): %v", err)
	}
	if _, err := e.c.Hold(ctx, api.HoldRequest{App: "kiosk", Service: "other", Reason: evil}); err != nil {
		t.Fatal(err)
	}
	dir, err := e.layout.EnsureServiceDir(lock.Service{App: "kiosk", Service: "ui"})
	if err != nil {
		t.Fatal(err)
	}
	// A real holder whose command line is the attacker's text.
	holder := exec.Command("flock", filepath.Join(dir, lock.UpdatesName), "sh", "-c", "sleep 60", evil)
	holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-holder.Process.Pid, syscall.SIGKILL)
		holder.Wait()
	})
	if err := e.c.PushTarget(ctx, clientTarget("1"), nil); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the update to wait for the flock holder", func() bool {
		st := e.a.Status()
		for _, b := range st.BlockedBy {
			if b.Holder != nil && strings.Contains(b.Holder.Command, "<forged row>") {
				return true
			}
		}
		return false
	})
	out, errs, code := e.latch(t, "status")
	if code != 0 {
		t.Fatalf("latch status: status %d, stderr %q", code, errs)
	}
	checkNoRaw(t, "latch status", out)
	for _, want := range []string{"kiosk/other (" + evilEscaped + ")", "(flock " + filepath.Join(dir, lock.UpdatesName) + " sh -c sleep 60 " + evilEscaped + ")"} {
		if !strings.Contains(out, want) {
			t.Errorf("latch status: got\n%s\nwant it to show %q", out, want)
		}
	}
	out, _, _ = e.latch(t, "journal")
	checkNoRaw(t, "latch journal", out)
	if !strings.Contains(out, "hold on kiosk/other: "+evilEscaped) {
		t.Errorf("latch journal: got\n%s\nwant the hold's reason shown as %q", out, evilEscaped)
	}
	out, _, _ = e.latch(t, "status", "--json")
	checkNoRaw(t, "latch status --json", out)
	var st agent.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("latch status --json: %v\n%s", err, out)
	}
	if len(st.Holds) != 1 || st.Holds[0].Reason != evil {
		t.Errorf("latch status --json: holds %+v, want the reason %q as it was given", st.Holds, evil)
	}
	out, _, _ = e.latch(t, "journal", "--json")
	checkNoRaw(t, "latch journal --json", out)
}

func TestTermSafe(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"kiosk/ui", "kiosk/ui"},
		{"café ✓ 日本 😀", "café ✓ 日本 😀"},
		{"a\tb", `a\x09b`},
		{"a\x7fb", `a\x7fb`},
		{"a\u009b2Jb", `a\u009b2Jb`},
		{"a\xffb\xc3", `a\xffb\xc3`},
		{`C:\x1b`, `C:\\x1b`},
		{"\u202a\u2066\u200f\u2028\ufeff", `\u202a\u2066\u200f\u2028\ufeff`},
	} {
		if got := termSafe(tt.in); got != tt.want {
			t.Errorf("termSafe(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestJSONSafe(t *testing.T) {
	in := map[string]string{"reason": "a\x1b\x7f\u009b\u202e\U000e0001é\"\\b"}
	var buf bytes.Buffer
	if err := writeJSON(&buf, in); err != nil {
		t.Fatal(err)
	}
	for _, r := range buf.String() {
		if r != '\n' && unsafeRune(r) {
			t.Errorf("writeJSON: raw %U in %q, want every control and format character escaped", r, buf.String())
		}
	}
	if !strings.Contains(buf.String(), "é") {
		t.Errorf("writeJSON: %q: ordinary UTF-8 (é) was escaped, want it kept", buf.String())
	}
	var back map[string]string
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || back["reason"] != in["reason"] {
		t.Errorf("writeJSON: %q decodes to %q (%v), want %q", buf.String(), back["reason"], err, in["reason"])
	}
}

// latch status shows, app by app, what holds an update back: the lock, the
// window or lateness, and the max-defer deadline.
func TestPrintStatusPerApp(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	st := agent.Status{State: agent.StateWaiting, UpdatePending: true, UpdateDownloaded: true, Apps: []agent.AppStatus{
		{Name: "alpha", Current: "a1", Target: "a2", BlockedBy: []lock.Entry{{Path: "/tmp/latch/services/alpha/ui/updates.lock"}}, Deadline: now.Add(90 * time.Second)},
		{Name: "bravo", Current: "b1", Target: "b2", Reason: "waiting for its maintenance window (02:00-04:00 UTC), which opens at 2026-12-02T02:00:00Z"},
		{Name: "charlie", Current: "c1", Target: "c2", Deadline: now.Add(-time.Minute)},
	}}
	var b strings.Builder
	printStatus(&b, st, nil, now)
	out := b.String()
	for _, want := range []string{
		"alpha  runs a1 -> a2 pending, waiting for /tmp/latch/services/alpha/ui/updates.lock; max-defer deadline in 1m30s",
		"bravo  runs b1 -> b2 pending; waiting for its maintenance window",
		"charlie  runs c1 -> c2 pending; 1m0s past its max-defer deadline",
	} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}

func TestPrintStatusRefused(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	st := agent.Status{State: agent.StateIdle, Refused: &store.Refusal{At: now.Add(-time.Minute), Source: "https://updates.example/t.json",
		Reason: "target version 41 is older than 42: refusing a rollback\x1b[2J", SHA256: strings.Repeat("a", 64)}}
	var b strings.Builder
	printStatus(&b, st, nil, now)
	out := b.String()
	if !strings.Contains(out, "Refused:") || !strings.Contains(out, "from https://updates.example/t.json: target version 41 is older than 42: refusing a rollback") {
		t.Errorf("status does not show the refusal:\n%s", out)
	}
	if strings.Contains(out, "\x1b") {
		t.Errorf("status prints a refusal's terminal escape as it came:\n%q", out)
	}
}

// latch status lists the container services: app/service, release, image
// short digest, state, and the pull while it is under way.
func TestPrintStatusContainers(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	st := agent.Status{State: agent.StateDownloading, UpdatePending: true, Containers: []agent.ContainerStatus{
		{App: "kiosk", Service: "ui", Release: "r2", Image: "0123456789ab", PullDone: 3 << 20, PullTotal: 12 << 20,
			Pull: &agent.PullStatus{Layers: 4, LayersDone: 1, Done: 3 << 20, Total: 12 << 20}},
		{App: "kiosk", Service: "backend", Release: "r1", Image: "ba5eba11cafe", State: "running", PullDone: 5 << 20, PullTotal: 5 << 20},
		{App: "kiosk\x1b[2J", Service: "x", Release: "r1", Image: "ba5eba11cafe", State: "exited"},
	}}
	var b strings.Builder
	printStatus(&b, st, nil, now)
	out := b.String()
	flat := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{
		"Containers: kiosk/ui r2, image 0123456789ab, -, pulling 25% (3.0 MiB of 12.0 MiB), 1 of 4 layers",
		"kiosk/backend r1, image ba5eba11cafe, running",
	} {
		if !strings.Contains(flat, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "backend r1, image ba5eba11cafe, running, pulling") {
		t.Errorf("a pulled image is shown as pulling:\n%s", out)
	}
	if strings.Contains(out, "\x1b") {
		t.Errorf("status prints a name's terminal escape as it came:\n%q", out)
	}
}
