package api

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"latch/agent"
	"latch/agent/lock"
	"latch/store"
)

const testKey = "s3cret-key"

// recDriver is a service driver that records what the agent asks of it: the
// one fake of these tests, at the boundary of the real services.
type recDriver struct {
	mu    sync.Mutex
	calls []string // guarded by mu

	failHealth atomic.Bool // Health fails: the service did not stay up
}

func (d *recDriver) record(s string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, s)
	return nil
}

func (d *recDriver) Calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...)
}

func (d *recDriver) Stop(ctx context.Context, s agent.Service) error {
	return d.record("stop " + s.App + "/" + s.Name)
}
func (d *recDriver) Start(ctx context.Context, s agent.Service) error {
	return d.record("start " + s.App + "/" + s.Name)
}
func (d *recDriver) Health(ctx context.Context, s agent.Service) error {
	if d.failHealth.Load() {
		return errors.New("exited at once (the test's failing health check)")
	}
	return nil
}
func (d *recDriver) Reboot(ctx context.Context) error   { return d.record("reboot") }
func (d *recDriver) Shutdown(ctx context.Context) error { return d.record("shutdown") }

// env is a real agent with its journal, lock directories and API server.
type env struct {
	dir    string
	a      *agent.Agent
	srv    *Server
	drv    *recDriver
	layout lock.Layout
	socket string
	tcpURL string

	trOnce sync.Once
	trs    []transport
}

type envOpts struct {
	trust ed25519.PublicKey
	tune  func(*Server)
	quiet bool // no agent log (benchmarks)
	// socketGID gives the socket to a group, and opens the run dir (0755)
	// so that its members, other uids, can reach it.
	socketGID   int
	maxAttempts int // agent.Config.MaxAttempts; 0 is the agent's default
	// driver, when set, wraps the recording driver (to add what a real
	// driver has, such as shutdown inhibitors).
	driver func(*recDriver) agent.Driver
}

// newEnv starts an agent and serves the API on a unix socket and on
// 127.0.0.1 with testKey; both stop when the test ends.
func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	dir := t.TempDir()
	// A short run dir: unix socket paths are limited to 108 bytes.
	run, err := os.MkdirTemp("", "latchapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	e := &env{dir: dir, drv: &recDriver{}, socket: filepath.Join(run, "api.sock")}
	e.layout = lock.Layout{Dir: filepath.Join(dir, "locks"), Global: []string{filepath.Join(dir, "balena", "updates.lock")}}
	if err := os.MkdirAll(filepath.Join(dir, "balena"), 0o1777); err != nil {
		t.Fatal(err)
	}
	logf := t.Logf
	if o.quiet {
		logf = func(string, ...any) {}
	}
	j, err := store.Open(filepath.Join(dir, "journal.db"), nil)
	if err != nil {
		t.Fatalf("open journal: %v", err)
	}
	var drv agent.Driver = e.drv
	if o.driver != nil {
		drv = o.driver(e.drv)
	}
	a, err := agent.New(agent.Config{
		StateDir: filepath.Join(dir, "state"),
		Layout:   e.layout,
		LockUID:  os.Getuid(), LockGID: os.Getgid(),
		Driver:      drv,
		TrustKey:    o.trust,
		HealthWait:  0,
		MaxAttempts: o.maxAttempts,
		Tick:        50 * time.Millisecond,
		Logf:        logf,
	}, j)
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	e.a = a
	ctx, cancel := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(ctx) }()
	select {
	case <-a.Ready():
	case err := <-agentDone:
		cancel()
		t.Fatalf("agent stopped before ready: %v", err)
	}
	if o.socketGID > 0 {
		if err := os.Chmod(run, 0o755); err != nil {
			cancel()
			t.Fatal(err)
		}
	}
	srv, err := Listen(Config{Socket: e.socket, SocketGID: o.socketGID, Listen: "127.0.0.1:0", APIKey: testKey, Logf: logf})
	if err != nil {
		cancel()
		t.Fatalf("Listen: %v", err)
	}
	if o.tune != nil {
		o.tune(srv)
	}
	e.srv = srv
	e.tcpURL = "http://" + srv.Addr().String()
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ctx, a) }()
	t.Cleanup(func() {
		for _, tr := range e.transports() {
			tr.hc.CloseIdleConnections()
		}
		cancel()
		if err := <-serveDone; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if err := <-agentDone; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("agent Run: %v", err)
		}
		j.Close()
	})
	return e
}

// transport is one way to reach the API: the unix socket or TCP with the key.
type transport struct {
	name string
	hc   *http.Client
	base string
	key  string // added as Bearer unless the request sets its own auth
}

// transports returns the env's two clients, made once: a client per call
// would leave its idle connections open and run into the server's caps.
func (e *env) transports() []transport {
	e.trOnce.Do(func() {
		unixHC := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.socket)
		}}}
		e.trs = []transport{
			{name: "unix", hc: unixHC, base: "http://latch"},
			{name: "tcp", hc: &http.Client{Transport: &http.Transport{}}, base: e.tcpURL, key: testKey},
		}
	})
	return slices.Clone(e.trs)
}

type answer struct {
	code   int
	body   []byte
	header http.Header
}

func (a answer) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(a.body, v); err != nil {
		t.Fatalf("decode %q: %v", a.body, err)
	}
}

// call sends one request; hdr may set Authorization ("" removes the key).
func (tr transport) call(t *testing.T, method, path string, body io.Reader, hdr map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(method, tr.base+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if tr.key != "" {
		req.Header.Set("Authorization", "Bearer "+tr.key)
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := tr.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", method, path, tr.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return answer{code: resp.StatusCode, body: b, header: resp.Header}
}

func str(s string) io.Reader { return bytes.NewReader([]byte(s)) }

// waitFor polls cond until it holds: the agent's apply runs beside its loop
// and has no event a client can wait on but its status.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settled returns the agent's status once the loop has published what the
// requests answered so far did: the loop answers a request before it
// publishes, so a request through it (Override) is the barrier.
func settled(t *testing.T, e *env) agent.Status {
	t.Helper()
	if _, err := e.a.Override(t.Context()); err != nil {
		t.Fatal(err)
	}
	return e.a.Status()
}

// targetDoc is a target state with one app and service at release rel.
func targetDoc(rel string) string {
	return `{"apps":{"kiosk":{"release":"` + rel + `","services":{"ui":{"unit":"kiosk-ui.service"}}}}}`
}
