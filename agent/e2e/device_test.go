// Package e2e holds the agent's end-to-end tests: the real latch binary, the
// exec driver running shell commands, real lock tools, a real HTTP server for
// the releases, and SIGKILL at every journalled step.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var latchBin string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		if b := os.Getenv("LATCH_BIN"); b != "" {
			latchBin = b
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "latch-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		latchBin = filepath.Join(dir, "latch")
		cmd := exec.Command("go", "build", "-o", latchBin, "latch")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build latch: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}())
}

// device is one simulated board: everything under root, an HTTP server for
// the releases, a target file, and the agent as a child process.
type device struct {
	t        testing.TB
	root     string
	lockDir  string
	stateDir string
	runDir   string
	target   string // the target file
	log      string // every stop/start command appends a line here
	srv      *httptest.Server

	mu     sync.Mutex
	blobs  map[string][]byte // served path -> content
	served map[string]int64  // served path -> bytes sent
	hook   func(w http.ResponseWriter, r *http.Request) bool

	cmd       *exec.Cmd
	stderr    *bytes.Buffer
	notify    *net.UnixConn
	waitErr   chan error
	args      []string // extra agent flags
	targetURL string   // poll this instead of watching the target file
	wrap      []string // command prefix (e.g. unshare)
}

func newDevice(t testing.TB) *device {
	t.Helper()
	root := t.TempDir()
	d := &device{
		t:        t,
		root:     root,
		lockDir:  filepath.Join(root, "tmp/latch"),
		stateDir: filepath.Join(root, "var/lib/latch"),
		runDir:   filepath.Join(root, "run/latch"),
		target:   filepath.Join(root, "target.json"),
		log:      filepath.Join(root, "commands.log"),
		blobs:    map[string][]byte{},
		served:   map[string]int64{},
	}
	if err := os.MkdirAll(d.oracleDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	d.srv = httptest.NewServer(http.HandlerFunc(d.serve))
	t.Cleanup(d.srv.Close)
	t.Cleanup(func() {
		if d.cmd != nil && d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			<-d.waitErr
		}
	})
	return d
}

func (d *device) serve(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	hook := d.hook
	d.mu.Unlock()
	if hook != nil && hook(w, r) {
		return
	}
	d.mu.Lock()
	b, ok := d.blobs[r.URL.Path]
	d.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, "", time.Time{}, bytes.NewReader(b))
	d.mu.Lock()
	d.served[r.URL.Path] += cw.n
	d.mu.Unlock()
}

// countingWriter counts the bytes of file content sent (the bodies of 200
// and 206 answers; an error page is not a download).
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(code int) {
	c.status = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	if c.status == 0 || c.status == http.StatusOK || c.status == http.StatusPartialContent {
		c.n += int64(n)
	}
	return n, err
}

// svc describes one service of a release for the target.
type svc struct {
	name    string
	content string // installed file's content; default "<app>/<svc> <release>"
	extra   int    // when > 0, a second file of this many bytes (<installed>.data)
}

// app is one app of a target.
type app struct {
	name, release string
	services      []svc
}

func (d *device) installed(appName, svcName string) string {
	return filepath.Join(d.root, "opt", appName, svcName, "bin")
}

// targetDoc renders a target state whose files are served by d.srv. The
// exec commands log what runs, with the content of the installed file and
// the oracle's snapshot of every lock entry the step could run under.
func (d *device) targetDoc(config map[string]any, apps ...app) []byte {
	doc := map[string]any{}
	apm := map[string]any{}
	for _, a := range apps {
		svcs := map[string]any{}
		for _, s := range a.services {
			content := s.content
			if content == "" {
				content = fmt.Sprintf("%s/%s %s", a.name, s.name, a.release)
			}
			p := fmt.Sprintf("/%s/%s/%s/bin", a.name, a.release, s.name)
			d.mu.Lock()
			d.blobs[p] = []byte(content + "\n")
			d.mu.Unlock()
			sum := sha256.Sum256([]byte(content + "\n"))
			file := d.installed(a.name, s.name)
			// "[by R]": the command is release R's. After a tab, the oracle's
			// snapshot of every lock entry at that moment (see oracle_test.go).
			step := func(verb, cat string) string {
				return d.slowSnippet(verb) + fmt.Sprintf(`l="%s $LATCH_APP/$LATCH_SERVICE $(%s) [by %s]"; `, verb, cat, a.release) +
					d.snapshotSnippet() + fmt.Sprintf(`printf '%%s\t%%s\n' "$l" "$o" >> %s`, d.log)
			}
			files := []any{map[string]any{
				"source": d.srv.URL + p, "sha256": hex.EncodeToString(sum[:]),
				"path": file, "mode": "0644",
			}}
			if s.extra > 0 {
				data := bytes.Repeat([]byte(content+"\n"), s.extra/(len(content)+1)+1)[:s.extra]
				dp := fmt.Sprintf("/%s/%s/%s/data", a.name, a.release, s.name)
				d.mu.Lock()
				d.blobs[dp] = data
				d.mu.Unlock()
				dsum := sha256.Sum256(data)
				files = append(files, map[string]any{
					"source": d.srv.URL + dp, "sha256": hex.EncodeToString(dsum[:]),
					"path": file + ".data", "mode": "0644",
				})
			}
			svcs[s.name] = map[string]any{
				"files":  files,
				"stop":   step("stop", "cat "+file+" 2>/dev/null"),
				"start":  step("start", "cat "+file),
				"health": fmt.Sprintf(`! grep -q broken %s`, file),
			}
		}
		apm[a.name] = map[string]any{"release": a.release, "services": svcs}
	}
	doc["apps"] = apm
	if config != nil {
		doc["config"] = config
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		d.t.Fatal(err)
	}
	return b
}

// setTarget writes the target file atomically (the agent re-reads it). A
// new target is a new update: a past allowForced does not cover it.
func (d *device) setTarget(doc []byte) {
	d.t.Helper()
	d.endForcedOnce()
	tmp := d.target + ".tmp"
	if err := os.WriteFile(tmp, doc, 0o644); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, d.target); err != nil {
		d.t.Fatal(err)
	}
}

// start runs the agent and waits for READY=1. It returns the time READY
// arrived.
func (d *device) start(env ...string) time.Time {
	d.t.Helper()
	sock := filepath.Join(d.t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		d.t.Fatal(err)
	}
	d.notify = conn
	args := append([]string{}, d.wrap...)
	source := []string{"--target-file", d.target}
	if d.targetURL != "" {
		source = []string{"--target-url", d.targetURL, "--poll", "1s"}
	}
	args = append(args, latchBin, "agent", "--root", d.root, "--driver", "exec", "--health-wait", "50ms", "--retry-delay", "100ms")
	args = append(args, source...)
	args = append(args, d.args...)
	d.writeAgentOracle(env)
	d.cmd = exec.Command(args[0], args[1:]...)
	d.stderr = &bytes.Buffer{}
	d.cmd.Stderr = &lockedWriter{w: d.stderr}
	d.cmd.Stdout = d.cmd.Stderr
	// Once the agent has exited, stop copying its output within 5s: a child
	// that holds the pipe (under qemu-user, a forked copy that hung before
	// exec) must not hang the test.
	d.cmd.WaitDelay = 5 * time.Second
	d.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "LATCH_FAILPOINT=")
	d.cmd.Env = append(d.cmd.Env, env...)
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.waitErr = make(chan error, 1)
	go func() { d.waitErr <- d.cmd.Wait() }()
	ready := make(chan time.Time, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			if bytes.Contains(buf[:n], []byte("READY=1")) {
				ready <- time.Now()
			}
		}
	}()
	select {
	case at := <-ready:
		return at
	case err := <-d.waitErr:
		d.waitErr <- err
		d.t.Fatalf("agent exited before READY=1: %v\n%s", err, d.output())
	case <-time.After(30 * time.Second):
		d.t.Fatalf("no READY=1 within 30s\n%s", d.output())
	}
	return time.Time{}
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (d *device) output() string {
	if d.cmd == nil {
		return ""
	}
	lw := d.cmd.Stderr.(*lockedWriter)
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.w.String()
}

// stop ends the agent with SIGTERM and waits for it.
func (d *device) stop() {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.waitErr:
		if err != nil {
			d.t.Fatalf("agent exit: %v\n%s", err, d.output())
		}
	case <-time.After(30 * time.Second):
		d.t.Fatalf("agent did not stop within 30s\n%s", d.output())
	}
	d.notify.Close()
}

// waitExit waits for the agent to die (a failpoint) and returns its status.
func (d *device) waitExit() *os.ProcessState {
	d.t.Helper()
	select {
	case <-d.waitErr:
	case <-time.After(60 * time.Second):
		d.t.Fatalf("agent did not exit within 60s\n%s", d.output())
	}
	d.notify.Close()
	return d.cmd.ProcessState
}

// api does one request on the agent's unix socket and decodes the answer.
func (d *device) api(method, path string, body any, out any) int {
	d.t.Helper()
	d.noteRequest(method, path, body)
	c := d.client()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://latch"+path, rd)
	resp, err := c.Do(req)
	if err != nil {
		d.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			d.t.Fatalf("%s %s: decode %q: %v", method, path, b, err)
		}
	}
	return resp.StatusCode
}

// client talks HTTP over the agent's unix socket, one connection per
// request: a kept-alive connection of every client made would pile up idle
// and count against the API's cap of connections per uid.
func (d *device) client() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(d.runDir, "api.sock"))
	}}, Timeout: 10 * time.Second}
}

// deviceStatus is the part of GET /v1/device the tests read.
type deviceStatus struct {
	Status           string `json:"status"`
	Release          string `json:"release"`
	UpdatePending    bool   `json:"update_pending"`
	UpdateDownloaded bool   `json:"update_downloaded"`
	UpdateFailed     bool   `json:"update_failed"`
	UpdateID         string `json:"update_id"`
	OverrideLock     bool   `json:"override_lock"`
	Reason           string `json:"reason"`
	BlockedBy        []struct {
		Path string `json:"path"`
	} `json:"blocked_by"`
}

func (d *device) status() deviceStatus {
	d.t.Helper()
	var s deviceStatus
	if code := d.api("GET", "/v1/device", nil, &s); code != 200 {
		d.t.Fatalf("GET /v1/device: status %d", code)
	}
	return s
}

// waitFor polls cond until it holds. Nothing in the agent's output can be
// awaited directly, so the tests poll its API and its command log.
func (d *device) waitFor(what string, cond func() bool) {
	d.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			d.t.Fatalf("timed out waiting for %s\nstatus: %+v\ncommands:\n%s\nagent output:\n%s", what, d.statusOrNil(), strings.Join(d.commands(), "\n"), d.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *device) statusOrNil() any {
	if d.cmd == nil || d.cmd.ProcessState != nil {
		return nil
	}
	return d.status()
}

// commands returns the lines the exec commands logged, without the
// oracle's snapshots.
func (d *device) commands() []string {
	var out []string
	for _, l := range d.rawCommands() {
		head, _, _ := strings.Cut(l, "\t")
		out = append(out, head)
	}
	return out
}

// rawCommands returns the lines the exec commands logged, with the oracle's
// snapshots.
func (d *device) rawCommands() []string {
	f, err := os.Open(d.log)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

func (d *device) count(prefix string) int {
	n := 0
	for _, l := range d.commands() {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// noViolations fails if a step ever ran without both of the agent's entries
// in the service's lock directory, or under any other entry: a user's lock,
// a device-wide lock, a hold (allowed only in a step declared forced). See
// oracle_test.go.
func (d *device) noViolations() {
	d.t.Helper()
	for _, v := range d.stepViolations(d.steps()) {
		d.t.Errorf("a step ran outside the agent's locks: %s", v)
	}
}

func (d *device) serviceDir(appName, svcName string) string {
	return filepath.Join(d.lockDir, "services", appName, svcName)
}

func (d *device) releaseOf(appName string) string {
	s := d.status()
	for _, kv := range strings.Split(s.Release, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == appName {
			return v
		}
	}
	return ""
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
