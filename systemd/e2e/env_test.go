package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"latch/systemd/internal/nspawn"
)

// archSpec is one rootfs architecture the test can boot (LATCH_NSPAWN_ARCH); foreign ones run
// through qemu-user and binfmt_misc, several times slower, hence scale for the time limits.
type archSpec struct {
	debian        string // rootfs architecture
	goarch, goarm string
	deb           string // build/deb.sh's name for it
	scale         time.Duration
}

var archs = map[string]archSpec{
	"":      {"amd64", "amd64", "", "amd64", 1},
	"amd64": {"amd64", "amd64", "", "amd64", 1},
	"arm64": {"arm64", "arm64", "", "arm64", 4},
	"armhf": {"armhf", "arm", "7", "armv7", 5},
}

// The demo application as the target state names it, and where things are in the container.
const (
	targetFile = "/etc/latch/target.json"
	uiLockDir  = "/tmp/latch/services/demo/ui"
	apiLockDir = "/tmp/latch/services/demo/api"
	uiLock     = uiLockDir + "/updates.lock"
	uiHold     = uiLockDir + "/latch-hold.lock"
	latchUnit  = "latch.service"
	uiUnit     = "demo-ui.service"
	apiUnit    = "demo-api.service"
)

// env is the booted container and what the steps share.
type env struct {
	t     *testing.T
	c     *nspawn.Container
	root  string // the module's folder on the host
	scale time.Duration
}

// moduleRoot finds the folder of go.mod above the test's folder.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's folder")
		}
		dir = parent
	}
}

// buildDeb builds latch from the current tree for a (CGO_ENABLED=0) and packages it with
// build/deb.sh; it returns the .deb and deb.sh's size table.
func buildDeb(t *testing.T, root string, a archSpec) (deb, sizes string) {
	t.Helper()
	for _, tool := range []string{"go", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("real-systemd end-to-end test not run: %s is not installed (apt-get install -y dpkg-dev; Go on PATH)", tool)
		}
	}
	dist := t.TempDir()
	bin := filepath.Join(dist, "latch-linux-"+a.deb)
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+a.goarch, "GOARM="+a.goarm)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build latch for %s: %v\n%s", a.deb, err, out)
	}
	pkg := exec.Command("sh", filepath.Join(root, "build", "deb.sh"), a.deb)
	pkg.Env = append(os.Environ(), "DIST="+dist)
	var stderr bytes.Buffer
	pkg.Stderr = &stderr
	if err := pkg.Run(); err != nil {
		t.Fatalf("build/deb.sh %s: %v\n%s", a.deb, err, stderr.String())
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "latch_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("build/deb.sh %s: got %q, want one latch_*.deb", a.deb, debs)
	}
	return debs[0], stderr.String()
}

// exec runs args in the container and fails the test when they fail.
func (e *env) exec(ctx context.Context, args ...string) string {
	e.t.Helper()
	out, err := e.c.Exec(ctx, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// run runs args in the container and returns the output and exit status (-1: it did not exit).
func (e *env) run(ctx context.Context, args ...string) (string, int) {
	e.t.Helper()
	cmd, err := e.c.Command(ctx, nil, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	default:
		e.t.Fatalf("%s: %v", strings.Join(args, " "), err)
		return "", -1
	}
}

// show returns the named properties of a unit (systemctl show).
func (e *env) show(ctx context.Context, unit string, props ...string) map[string]string {
	e.t.Helper()
	out := e.exec(ctx, "systemctl", "show", "-p", strings.Join(props, ","), unit)
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m
}

// showUint returns one numeric property of a unit.
func (e *env) showUint(ctx context.Context, unit, prop string) uint64 {
	e.t.Helper()
	v := e.show(ctx, unit, prop)[prop]
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		e.t.Fatalf("systemctl show -p %s %s: got %q, want a number", prop, unit, v)
	}
	return n
}

// hostPath is where a path of the container's mount namespace (its /tmp and /run are its own
// tmpfs) is seen from the host: through its PID 1's root.
func (e *env) hostPath(p string) string {
	e.t.Helper()
	pid, err := e.c.PID1()
	if err != nil {
		e.t.Fatal(err)
	}
	return fmt.Sprintf("/proc/%d/root%s", pid, p)
}

// exists reports whether path exists in the container (lstat: a lock entry is never followed).
func (e *env) exists(p string) bool {
	e.t.Helper()
	_, err := os.Lstat(e.hostPath(p))
	return err == nil
}

// readFile returns a file of the container, "" when it is missing.
func (e *env) readFile(p string) string {
	e.t.Helper()
	b, _ := os.ReadFile(e.hostPath(p))
	return string(b)
}

// writeFile writes a file into the container's root, atomically (a rename in its folder), so
// that latch's target-file watcher never reads half of it.
func (e *env) writeFile(p string, data []byte, mode os.FileMode) {
	e.t.Helper()
	tmp := filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".tmp")
	if err := e.c.WriteFile(tmp, data, mode); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(e.c.Root, tmp), filepath.Join(e.c.Root, p)); err != nil {
		e.t.Fatal(err)
	}
}

// waitLimit bounds one waitFor (scaled for emulated architectures); the steps' contexts are
// longer, so that a wait that never ends fails with its own message, not in a command it runs.
const waitLimit = 45 * time.Second

// waitFor polls cond until it holds (systemd's and latch's state change in another namespace:
// there is nothing to await from here), failing with its last report after waitLimit.
func (e *env) waitFor(ctx context.Context, what string, cond func() (bool, string)) {
	e.t.Helper()
	wctx, cancel := context.WithTimeout(ctx, waitLimit*e.scale)
	defer cancel()
	for {
		ok, last := cond()
		if ok {
			return
		}
		select {
		case <-wctx.Done():
			e.t.Fatalf("waiting for %s: gave up after %v; last seen: %s", what, waitLimit*e.scale, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stepCtx is a context for one step, its limit scaled for emulated architectures.
func (e *env) stepCtx(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d*e.scale)
}

// deviceStatus is the part of `latch status --json` the test reads.
type deviceStatus struct {
	Status           string `json:"status"`
	Release          string `json:"release"`
	UpdateDownloaded bool   `json:"update_downloaded"`
	UpdatePending    bool   `json:"update_pending"`
	BlockedBy        []struct {
		App     string `json:"app"`
		Service string `json:"service"`
		Path    string `json:"path"`
		State   string `json:"state"`
	} `json:"blocked_by"`
	Holds []json.RawMessage `json:"holds"`
}

func (e *env) status(ctx context.Context) (deviceStatus, string) {
	e.t.Helper()
	out, code := e.run(ctx, "latch", "status", "--json")
	var s deviceStatus
	if code != 0 {
		return s, fmt.Sprintf("latch status --json: exit %d: %s", code, out)
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		e.t.Fatalf("latch status --json: %v\n%s", err, out)
	}
	return s, out
}

// event is one entry of `latch journal --json`.
type event struct {
	Seq     uint64 `json:"seq"`
	Kind    string `json:"kind"`
	Release string `json:"release"`
	Message string `json:"message"`
}

func (e *env) journal(ctx context.Context) []event {
	e.t.Helper()
	out := e.exec(ctx, "latch", "journal", "--json", "--limit", "0")
	var evs []event
	if err := json.Unmarshal([]byte(out), &evs); err != nil {
		e.t.Fatalf("latch journal --json: %v\n%s", err, out)
	}
	return evs
}

// waitRelease waits until latch is idle on release rel of app demo.
func (e *env) waitRelease(ctx context.Context, rel string) {
	e.t.Helper()
	e.waitFor(ctx, "latch idle on demo="+rel, func() (bool, string) {
		s, raw := e.status(ctx)
		return s.Status == "idle" && s.Release == "demo="+rel, raw
	})
}

// signal sends sig to a unit's main process.
func (e *env) signal(ctx context.Context, unit, sig string) {
	e.t.Helper()
	pid := e.show(ctx, unit, "MainPID")["MainPID"]
	if pid == "" || pid == "0" {
		e.t.Fatalf("%s has no main process to signal", unit)
	}
	// kill(1) is the shell's: the minimal rootfs has no procps.
	e.exec(ctx, "sh", "-c", `kill -s "$1" "$2"`, "sh", sig, pid)
}

// waitApp waits until the demo service of unit runs release rel and is ready for signals (its
// script wrote "<release> <pid>" with the unit's MainPID), and returns that pid.
func (e *env) waitApp(ctx context.Context, svc, rel string) string {
	e.t.Helper()
	unit := "demo-" + svc + ".service"
	var pid string
	e.waitFor(ctx, unit+" running release "+rel, func() (bool, string) {
		got := strings.TrimSpace(e.readFile("/run/demo-" + svc + ".running"))
		st := e.show(ctx, unit, "ActiveState", "MainPID")
		pid = st["MainPID"]
		return st["ActiveState"] == "active" && got == rel+" "+pid, fmt.Sprintf("/run/demo-%s.running %q, %v", svc, got, st)
	})
	return pid
}

// demoRelease renders the file of service svc in release rel from build/systemd/demo/demo-app.sh.
func (e *env) demoRelease(svc, rel string) []byte {
	e.t.Helper()
	tmpl, err := os.ReadFile(filepath.Join(e.root, "build", "systemd", "demo", "demo-app.sh"))
	if err != nil {
		e.t.Fatal(err)
	}
	s := strings.ReplaceAll(string(tmpl), "@RELEASE@", rel)
	return []byte(strings.ReplaceAll(s, "@SERVICE@", svc))
}

// publishRelease puts release rel's files under /srv/releases/<rel>/ in the container and
// returns the target state that names them.
func (e *env) publishRelease(rel string) []byte {
	e.t.Helper()
	svcs := map[string]any{}
	for _, svc := range []string{"ui", "api"} {
		data := e.demoRelease(svc, rel)
		src := "/srv/releases/" + rel + "/" + svc
		if err := e.c.WriteFile(src, data, 0o644); err != nil {
			e.t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		svcs[svc] = map[string]any{
			"unit": "demo-" + svc + ".service",
			"files": []any{map[string]any{
				"source": "file://" + src, "sha256": hex.EncodeToString(sum[:]),
				"path": "/opt/demo/" + svc, "mode": "0755",
			}},
		}
	}
	doc, err := json.MarshalIndent(map[string]any{
		"apps": map[string]any{"demo": map[string]any{"release": rel, "services": svcs}},
	}, "", "  ")
	if err != nil {
		e.t.Fatal(err)
	}
	return doc
}

// apiPost sends a POST to latch's API socket from the host, through the container's root.
func (e *env) apiPost(ctx context.Context, path, body string) (int, []byte) {
	e.t.Helper()
	sock := e.hostPath("/run/latch/api.sock")
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, "POST", "http://latch"+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		e.t.Fatalf("POST %s through %s: %v", path, sock, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.Bytes()
}
