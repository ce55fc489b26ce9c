package e2e

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// apiCounter is a unix-socket proxy in front of an agent's API that counts
// the requests of a client by path: what `latch update` asks while it waits.
type apiCounter struct {
	dir string // the proxy's run dir: its socket is dir/api.sock
	mu  sync.Mutex
	n   map[string]int
	srv *http.Server
}

func newAPICounter(t *testing.T, d *device) *apiCounter {
	t.Helper()
	c := &apiCounter{dir: t.TempDir(), n: map[string]int{}}
	ln, err := net.Listen("unix", filepath.Join(c.dir, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(d.runDir, "api.sock")
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: "http", Host: "agent"})
			r.Out.Host = r.In.Host
		},
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", target)
		}},
		FlushInterval: -1, // the event stream goes through as it comes
	}
	c.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.n[r.Method+" "+r.URL.Path]++
		c.mu.Unlock()
		rp.ServeHTTP(w, r)
	})}
	go c.srv.Serve(ln)
	t.Cleanup(func() { c.srv.Close() })
	return c
}

func (c *apiCounter) count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// `latch update` waits on the event stream (GET /v2/events), not by asking
// for the status every 500 ms: while the update is blocked by a user's lock
// for four seconds it reads the status at most twice (a poller would have
// read it eight times), and it returns once the lock goes and the
// update is applied, having said what it waited for.
func TestUpdateWaitsOnTheEventStream(t *testing.T) {
	lf := lockfileTool(t)
	d := newDevice(t)
	firstRelease(t, d)
	userLock := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
	if out, err := exec.Command(lf, "-r0", userLock).CombinedOutput(); err != nil {
		t.Fatalf("lockfile: %v %s", err, out)
	}
	d.setTarget(d.targetDoc(nil, kiosk2))
	d.waitFor("update downloaded and blocked", func() bool {
		s := d.status()
		return s.UpdateDownloaded && len(s.BlockedBy) > 0
	})

	c := newAPICounter(t, d)
	var stderr bytes.Buffer
	cmd := exec.Command(latchBin, "update", "--root", d.root, "--run-dir", c.dir)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitUntil := time.Now().Add(10 * time.Second)
	for c.count("GET /v2/events") == 0 && time.Now().Before(waitUntil) {
		time.Sleep(20 * time.Millisecond)
	}
	if c.count("GET /v2/events") == 0 {
		cmd.Process.Kill()
		t.Fatalf("latch update never opened the event stream; it asked for %v", c.n)
	}
	time.Sleep(500 * time.Millisecond) // the reads the stream's start wakes
	before := c.count("GET /v1/device")
	time.Sleep(4 * time.Second) // blocked: nothing happens, so nothing should be asked
	select {
	case err := <-exited:
		t.Fatalf("latch update returned while the update was blocked: %v\n%s", err, stderr.String())
	default:
	}
	idle := c.count("GET /v1/device") - before
	if idle > 2 { // one idle refresh (every 5s) may fall in the window
		t.Errorf("latch update read the status %d times in 4s of a blocked update: it polls instead of waiting on the event stream", idle)
	}
	if n := c.count("GET /v2/events"); n != 1 {
		t.Errorf("latch update opened the event stream %d times, want once", n)
	}

	if err := os.Remove(userLock); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("latch update: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("latch update still waiting 30s after the lock went\n%s", stderr.String())
	}
	if got := d.releaseOf("kiosk"); got != "2026.11.2" {
		t.Errorf("latch update returned with kiosk on %q, want 2026.11.2 applied", got)
	}
	if !strings.Contains(stderr.String(), userLock) {
		t.Errorf("latch update did not say what it waited for (%s):\n%s", userLock, stderr.String())
	}
	t.Logf("status reads: %d while blocked, %d in all; event streams: %d", idle, c.count("GET /v1/device"), c.count("GET /v2/events"))
	d.stop()
}
