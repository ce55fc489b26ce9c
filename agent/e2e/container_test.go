package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"latch/agent/docker"
	"latch/store"
)

// The container tests (spec section 9) run the real latch binary against a
// dockerd and a docker-registry of their own, each under the test's temp
// dir with its own socket and port, stopped by its pid.

// containerNeeds skips a test that cannot run here, naming what was not
// tested.
func containerNeeds(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("LATCH_EMULATED") == "1" {
		t.Skipf("emulated run (qemu-user cannot run dockerd): %s not tested", what)
	}
	if runtime.GOARCH != hostArch() {
		t.Skipf("a %s agent on a %s host: the test images are the host's busybox, another platform to this agent; %s tested by the native suite only", runtime.GOARCH, hostArch(), what)
	}
	if os.Geteuid() != 0 {
		t.Skipf("needs root to run dockerd: %s not tested", what)
	}
	for _, bin := range []string{"dockerd", "docker-registry"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed: %s not tested", bin, what)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skipf("/bin/busybox (busybox-static) is not installed: %s not tested", what)
	}
}

// containerEngine is a dockerd of one test.
type containerEngine struct {
	host   string // unix://...
	client *docker.Client
}

// containerStartEngine starts dockerd with its socket, data and exec roots
// in a folder of its own, without iptables or a bridge, and stops it (by
// its pid) and removes the folder when the test ends.
func containerStartEngine(t *testing.T) *containerEngine {
	t.Helper()
	dir, err := os.MkdirTemp("", "latch-e2e-dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "docker.sock")
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("dockerd", "-H", "unix://"+sock,
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	c, err := docker.NewClient("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if list, err := c.ListContainers(ctx); err == nil {
			for _, ct := range list {
				c.RemoveContainer(ctx, ct.ID, true)
			}
		}
		cancel()
		c.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		logf.Close()
		os.RemoveAll(dir)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		if err = c.Ping(ctx); err == nil {
			return &containerEngine{host: "unix://" + sock, client: c}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("dockerd exited: %s", b)
		case <-ctx.Done():
			t.Fatalf("dockerd did not answer: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// containerStartRegistry runs docker-registry on a free port under the
// test's temp dir and returns its HOST:PORT.
func containerStartRegistry(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for try := 0; try < 5; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		cfg := fmt.Sprintf("version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}, maintenance: {uploadpurging: {enabled: false}}}\nhttp: {addr: %s}\n", filepath.Join(dir, "data"), addr)
		cfgPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("registry-%d.log", try)))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("docker-registry", "serve", cfgPath)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop := func() { cmd.Process.Kill(); <-exited; logf.Close() }
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			select {
			case <-exited:
				deadline = time.Time{}
				continue
			default:
			}
			if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
				resp.Body.Close()
				t.Cleanup(stop)
				return addr
			}
		}
		stop()
	}
	t.Fatal("docker-registry did not start on any port")
	return ""
}

func containerSHA(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// containerPush uploads a blob or a manifest with the registry's API.
func containerPush(t *testing.T, reg, repo string, data []byte, manifestType string) string {
	t.Helper()
	d := containerSHA(data)
	do := func(method, u, ctype string, body []byte) (*http.Response, []byte) {
		req, err := http.NewRequest(method, u, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, b
	}
	base := "http://" + reg
	if manifestType != "" {
		if resp, b := do("PUT", base+"/v2/"+repo+"/manifests/"+d, manifestType, data); resp.StatusCode != http.StatusCreated {
			t.Fatalf("put manifest to %s: %s %s", repo, resp.Status, b)
		}
		return d
	}
	resp, b := do("POST", base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload to %s: %s %s", repo, resp.Status, b)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	bu, _ := url.Parse(base)
	loc = bu.ResolveReference(loc)
	q := loc.Query()
	q.Set("digest", d)
	loc.RawQuery = q.Encode()
	if resp, b := do("PUT", loc.String(), "application/octet-stream", data); resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload blob to %s: %s %s", repo, resp.Status, b)
	}
	return d
}

// containerLayer is a gzip tar layer of files (name -> content; a name
// ending in "/" is a directory, an "@target" content a symlink).
func containerLayer(t *testing.T, files map[string][]byte) (blob []byte, diffID string) {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	mtime := time.Unix(1700000000, 0)
	for _, n := range names {
		data := files[n]
		var h tar.Header
		switch {
		case strings.HasSuffix(n, "/"):
			h = tar.Header{Typeflag: tar.TypeDir, Name: n, Mode: 0o755, ModTime: mtime}
			if n == "tmp/" {
				h.Mode = 0o1777
			}
		case bytes.HasPrefix(data, []byte("@")):
			h = tar.Header{Typeflag: tar.TypeSymlink, Name: n, Linkname: string(data[1:]), Mode: 0o777, ModTime: mtime}
		default:
			h = tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o755, Size: int64(len(data)), ModTime: mtime}
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write(data)
		}
	}
	tw.Close()
	var gb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gb, gzip.BestSpeed)
	zw.Write(tb.Bytes())
	zw.Close()
	return gb.Bytes(), containerSHA(tb.Bytes())
}

var (
	containerBaseOnce sync.Once
	containerBase     map[string][]byte
)

// containerBusybox is the files of a busybox-static root: /bin with every
// applet, /etc/passwd, /tmp.
func containerBusybox(t *testing.T) map[string][]byte {
	t.Helper()
	containerBaseOnce.Do(func() {
		bb, err := os.ReadFile("/bin/busybox")
		if err != nil {
			return
		}
		out, err := exec.Command("/bin/busybox", "--list").Output()
		if err != nil {
			return
		}
		m := map[string][]byte{"bin/": nil, "etc/": nil, "tmp/": nil, "bin/busybox": bb,
			"etc/passwd": []byte("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"),
			"etc/group":  []byte("root:x:0:\nnogroup:x:65534:\n")}
		for _, a := range strings.Fields(string(out)) {
			if a != "busybox" {
				m["bin/"+a] = []byte("@busybox")
			}
		}
		containerBase = m
	})
	if containerBase == nil {
		t.Fatal("cannot read /bin/busybox")
	}
	return containerBase
}

// containerImage is an image pushed to the test's registry.
type containerImage struct {
	Ref    string // HOST:PORT/repo@sha256:... (what a target names)
	ID     string // the engine's image ID: the config's digest
	Layers []int64
}

// containerPushImage pushes a busybox image whose second layer holds
// /release (content release) and any extra files, with arch as its
// config's architecture ("" for this machine's).
func containerPushImage(t *testing.T, reg, repo, release, arch string, extra map[string][]byte) containerImage {
	t.Helper()
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	img := containerImage{}
	var diffIDs []string
	var layers []desc
	top := map[string][]byte{"release": []byte(release + "\n")}
	for k, v := range extra {
		top[k] = v
	}
	for _, files := range []map[string][]byte{containerBusybox(t), top} {
		b, diff := containerLayer(t, files)
		diffIDs = append(diffIDs, diff)
		layers = append(layers, desc{"application/vnd.docker.image.rootfs.diff.tar.gzip", containerPush(t, reg, repo, b, ""), int64(len(b))})
		img.Layers = append(img.Layers, int64(len(b)))
	}
	if arch == "" {
		arch = "amd64"
		if out, err := exec.Command("uname", "-m").Output(); err == nil && strings.TrimSpace(string(out)) == "aarch64" {
			arch = "arm64"
		}
	}
	cfg, _ := json.Marshal(map[string]any{
		"architecture": arch, "os": "linux",
		"config": map[string]any{"Env": []string{"PATH=/bin"}, "Cmd": []string{"/bin/sleep", "1000"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	img.ID = containerPush(t, reg, repo, cfg, "")
	m, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
		"config": desc{"application/vnd.docker.container.image.v1+json", img.ID, int64(len(cfg))},
		"layers": layers,
	})
	img.Ref = reg + "/" + repo + "@" + containerPush(t, reg, repo, m, "application/vnd.docker.distribution.manifest.v2+json")
	return img
}

// containerApp is one app of a container target: each service runs img with
// the shell script given.
type containerSvc struct {
	name, script string
	img          containerImage
}

func containerTarget(t *testing.T, appName, release string, svcs ...containerSvc) []byte {
	t.Helper()
	services := map[string]any{}
	for _, s := range svcs {
		services[s.name] = map[string]any{
			"image": s.img.Ref, "command": []string{"/bin/sh", "-c", s.script},
			"network_mode": "none", "stop_grace_period": "1s", "restart": "no",
		}
	}
	b, err := json.MarshalIndent(map[string]any{"apps": map[string]any{appName: map[string]any{"release": release, "services": services}}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// containerDevice is a device whose agent uses eng and trusts reg over
// plain HTTP.
func containerDevice(t *testing.T, eng *containerEngine, reg string) *device {
	t.Helper()
	d := newDevice(t)
	d.args = append(d.args, "--docker-host", eng.host, "--insecure-registry", reg)
	return d
}

// containerState is the engine's view of latch's container of a service and
// release: "" when there is none.
func (e *containerEngine) state(t *testing.T, app, svc, release string) (state string, c docker.Container) {
	t.Helper()
	name, err := docker.ContainerName(app, svc, release)
	if err != nil {
		t.Fatal(err)
	}
	c, err = e.client.InspectContainer(context.Background(), name)
	if err != nil {
		return "", c
	}
	return c.State.Status, c
}

func (e *containerEngine) waitState(t *testing.T, d *device, app, svc, release, want string) docker.Container {
	t.Helper()
	var c docker.Container
	d.waitFor(fmt.Sprintf("container of %s/%s %s %s", app, svc, release, want), func() bool {
		var st string
		st, c = e.state(t, app, svc, release)
		return st == want
	})
	return c
}

// The script of a service whose process takes the lock (balena's O_EXCL
// lockfile, retried while the agent holds it) once /tmp/balena/hold exists,
// and removes it once hold is gone.
const containerHolder = `while [ ! -e /tmp/balena/hold ]; do sleep 0.1; done; until (set -C; : > /tmp/balena/updates.lock) 2>/dev/null; do sleep 0.1; done; while [ -e /tmp/balena/hold ]; do sleep 0.1; done; rm -f /tmp/balena/updates.lock; exec sleep 1000`

// (a) A process in the container holds /tmp/balena/updates.lock: the new
// release downloads and loads, nothing of the app is stopped while the lock
// is held, and once it is released the update is applied.
func TestContainerLockDefersUpdate(t *testing.T) {
	containerNeeds(t, "a container holding its lock defers an update")
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	v1 := containerPushImage(t, reg, "kiosk/ui", "r1", "", nil)
	v2 := containerPushImage(t, reg, "kiosk/ui", "r2", "", nil)
	d := containerDevice(t, eng, reg)
	d.setTarget(containerTarget(t, "kiosk", "r1", containerSvc{"ui", containerHolder, v1}))
	d.start()
	old := eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	d.waitFor("r1 applied", func() bool { return d.releaseOf("kiosk") == "r1" && d.status().Status == "idle" })

	lockDir := d.serviceDir("kiosk", "ui")
	if err := os.WriteFile(filepath.Join(lockDir, "hold"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d.waitFor("the container's lock", func() bool { return exists(filepath.Join(lockDir, "updates.lock")) })

	d.setTarget(containerTarget(t, "kiosk", "r2", containerSvc{"ui", containerHolder, v2}))
	d.waitFor("r2 downloaded and blocked", func() bool {
		s := d.status()
		return s.UpdateDownloaded && len(s.BlockedBy) > 0
	})
	if _, err := eng.client.InspectImage(context.Background(), v2.ID); err != nil {
		t.Fatalf("the new image is not loaded while the update waits: %v", err)
	}
	if cs := containerStatus(d); len(cs) != 1 || cs[0].Release != "r2" || cs[0].PullTotal <= 0 || cs[0].PullDone != cs[0].PullTotal ||
		!strings.Contains(v2.Ref, "@sha256:"+cs[0].Image) {
		t.Fatalf("containers in the status while r2 waits: %+v, want r2's image %s pulled whole", cs, v2.Ref)
	}
	time.Sleep(500 * time.Millisecond) // give a wrong agent time to act
	st, c := eng.state(t, "kiosk", "ui", "r1")
	if st != "running" || c.State.StartedAt != old.State.StartedAt || c.ID != old.ID {
		t.Fatalf("the old container was touched while its lock was held: %s, started %s (was %s)", st, c.State.StartedAt, old.State.StartedAt)
	}
	if st, _ := eng.state(t, "kiosk", "ui", "r2"); st == "running" {
		t.Fatal("the new container runs while the old one holds the lock")
	}

	os.Remove(filepath.Join(lockDir, "hold"))
	eng.waitState(t, d, "kiosk", "ui", "r2", "running")
	d.waitFor("r2 applied", func() bool { return d.releaseOf("kiosk") == "r2" && d.status().Status == "idle" })
	if st, _ := eng.state(t, "kiosk", "ui", "r1"); st == "running" {
		t.Fatal("the old container still runs after the update")
	}
	if cs := containerStatus(d); len(cs) != 1 || cs[0].Release != "r2" || cs[0].State != "running" {
		t.Fatalf("containers in the status after r2: %+v, want r2 running", cs)
	}
	if m := containerMetrics(d); !strings.Contains(m, `latch_container_state{app="kiosk",service="ui",release="r2",state="running"} 1`) {
		t.Fatalf("metrics lack r2's running container:\n%s", m)
	}
	// The blobs kept are r2's (config, base layer, top layer): r1's own are gone.
	var blobs []string
	entries, _ := os.ReadDir(filepath.Join(d.stateDir, "blobs"))
	for _, e := range entries {
		blobs = append(blobs, e.Name())
	}
	if len(blobs) != 3 || !slices.Contains(blobs, strings.TrimPrefix(v2.ID, "sha256:")) || slices.Contains(blobs, strings.TrimPrefix(v1.ID, "sha256:")) {
		t.Fatalf("blobs kept after r2: %v, want r2's config %s and its two layers", blobs, v2.ID)
	}
	d.stop()
}

// (d) A new container that does not stay up is rolled back: the old one
// runs again and the update is marked failed.
func TestContainerUnhealthyRollsBack(t *testing.T) {
	containerNeeds(t, "rollback of an unhealthy container")
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	v1 := containerPushImage(t, reg, "kiosk/ui", "r1", "", nil)
	v2 := containerPushImage(t, reg, "kiosk/ui", "r2", "", nil)
	d := containerDevice(t, eng, reg)
	d.args = append(d.args, "--health-wait", "1s", "--max-attempts", "1")
	d.setTarget(containerTarget(t, "kiosk", "r1", containerSvc{"ui", "exec sleep 1000", v1}))
	d.start()
	eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	d.waitFor("r1 applied", func() bool { return d.releaseOf("kiosk") == "r1" && d.status().Status == "idle" })

	d.setTarget(containerTarget(t, "kiosk", "r2", containerSvc{"ui", "echo broken; exit 3", v2}))
	d.waitFor("r2 failed", func() bool { return d.status().UpdateFailed })
	eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	if st, _ := eng.state(t, "kiosk", "ui", "r2"); st != "" {
		t.Fatalf("the failed release's container is left %s", st)
	}
	if r := d.releaseOf("kiosk"); r != "r1" {
		t.Fatalf("release after the rollback: %q, want r1", r)
	}
	d.stop()
}

// containerStatus is the "containers" list of GET /v1/device.
type containerStat struct {
	App, Service, Release, Image, State string
	PullDone                            int64 `json:"pull_done"`
	PullTotal                           int64 `json:"pull_total"`
}

func containerStatus(d *device) []containerStat {
	d.t.Helper()
	var s struct {
		Containers []containerStat `json:"containers"`
	}
	if code := d.api("GET", "/v1/device", nil, &s); code != 200 {
		d.t.Fatalf("GET /v1/device: status %d", code)
	}
	return s.Containers
}

func containerMetrics(d *device) string {
	d.t.Helper()
	resp, err := d.client().Get("http://latch/metrics")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// containerProxy stands in front of a registry: it counts the blob bytes it
// sends, can slow them down, and can answer with a status of its own or cut
// the connection in the middle of a blob.
type containerProxy struct {
	srv      *httptest.Server
	upstream string

	mu        sync.Mutex
	blobBytes int64
	blobGets  map[string]int // GETs of each blob digest
	inflight  int            // blob GETs being answered now
	most      int            // the most inflight there ever were
	delay     time.Duration  // per 32 KiB of a blob
	status    int            // answer every request with this status (0: pass)
	cut       bool           // close the connection after half of each blob
	corrupt   bool           // flip the first byte of each blob
}

func containerNewProxy(t *testing.T, upstream string) *containerProxy {
	p := &containerProxy{upstream: upstream}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *containerProxy) addr() string { return strings.TrimPrefix(p.srv.URL, "http://") }

func (p *containerProxy) sent() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blobBytes
}

func (p *containerProxy) set(f func(p *containerProxy)) {
	p.mu.Lock()
	f(p)
	p.mu.Unlock()
}

func (p *containerProxy) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	status, delay, cut, corrupt := p.status, p.delay, p.cut, p.corrupt
	p.mu.Unlock()
	if status != 0 {
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Basic realm="latch-test"`)
		}
		http.Error(w, http.StatusText(status), status)
		return
	}
	req, err := http.NewRequest(r.Method, "http://"+p.upstream+r.URL.RequestURI(), nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	for k, v := range r.Header {
		req.Header[k] = v
	}
	resp, err := (&http.Transport{}).RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusTemporaryRedirect || resp.StatusCode == http.StatusFound {
		// The registry serves blobs itself; a redirect would bypass us.
		http.Error(w, "redirect", http.StatusInternalServerError)
		return
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	isBlob := strings.Contains(r.URL.Path, "/blobs/") && r.Method == "GET"
	if isBlob {
		p.mu.Lock()
		if p.blobGets == nil {
			p.blobGets = map[string]int{}
		}
		p.blobGets[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]++
		p.inflight++
		p.most = max(p.most, p.inflight)
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			p.inflight--
			p.mu.Unlock()
		}()
	}
	buf := make([]byte, 32<<10)
	var n int64
	for {
		k, err := resp.Body.Read(buf)
		if k > 0 {
			if isBlob && cut && n+int64(k) > resp.ContentLength/2 {
				if hj, ok := w.(http.Hijacker); ok {
					if c, _, err := hj.Hijack(); err == nil {
						c.Close()
					}
				}
				return
			}
			if isBlob && corrupt && n == 0 {
				buf[0] ^= 0xff
			}
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n += int64(k)
			if isBlob {
				p.mu.Lock()
				p.blobBytes += int64(k)
				p.mu.Unlock()
				if f, ok := w.(http.Flusher); ok {
					f.Flush()
				}
				if delay > 0 {
					time.Sleep(delay)
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// containerVia names img through another registry address.
func containerVia(img containerImage, reg, via string) containerImage {
	img.Ref = via + strings.TrimPrefix(img.Ref, reg)
	return img
}

func containerRandom(n int, seed byte) []byte {
	b := make([]byte, n)
	s := sha256.Sum256([]byte{seed})
	for i := 0; i < n; i += len(s) {
		copy(b[i:], s[:])
		s = sha256.Sum256(s[:])
	}
	return b
}

// (b) SIGKILL of the agent in the middle of a layer download: the next
// start resumes the blob where it stopped.
func TestContainerKilledDownloadResumes(t *testing.T) {
	containerNeeds(t, "resume of a layer download after SIGKILL")
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	proxy := containerNewProxy(t, reg)
	const big = 4 << 20
	v1 := containerVia(containerPushImage(t, reg, "kiosk/ui", "r1", "", nil), reg, proxy.addr())
	v2 := containerVia(containerPushImage(t, reg, "kiosk/ui", "r2", "", map[string][]byte{"data": containerRandom(big, 2)}), reg, proxy.addr())
	d := newDevice(t)
	d.args = append(d.args, "--docker-host", eng.host, "--insecure-registry", proxy.addr())
	d.setTarget(containerTarget(t, "kiosk", "r1", containerSvc{"ui", "exec sleep 1000", v1}))
	d.start()
	eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	d.waitFor("r1 applied", func() bool { return d.releaseOf("kiosk") == "r1" && d.status().Status == "idle" })

	proxy.set(func(p *containerProxy) { p.blobBytes, p.delay = 0, 20*time.Millisecond }) // ~1.6 MB/s
	d.setTarget(containerTarget(t, "kiosk", "r2", containerSvc{"ui", "exec sleep 1000", v2}))
	d.waitFor("a third of the big layer sent", func() bool { return proxy.sent() > big/3 })
	d.kill()
	before := proxy.sent()
	proxy.set(func(p *containerProxy) { p.delay = 0 })
	d.start()
	eng.waitState(t, d, "kiosk", "ui", "r2", "running")
	d.waitFor("r2 applied", func() bool { return d.releaseOf("kiosk") == "r2" && d.status().Status == "idle" })
	var total int64
	for _, l := range v2.Layers[1:] { // the base layer was there from r1
		total += l
	}
	again := proxy.sent() - total
	t.Logf("killed after %d blob bytes sent; %d bytes of r2's new layer, %d sent in all: %d sent twice", before, total, proxy.sent(), again)
	if again > 1<<20 {
		t.Fatalf("the restarted agent fetched %d bytes again (of %d sent before the kill): the download did not resume", again, before)
	}
	d.stop()
}

// (e) Bad references and registry failures: a clear error, nothing applied,
// the running release keeps running.
func TestContainerRegistryErrors(t *testing.T) {
	containerNeeds(t, "registry errors during an update")
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	proxy := containerNewProxy(t, reg)
	v1 := containerVia(containerPushImage(t, reg, "kiosk/ui", "r1", "", nil), reg, proxy.addr())
	v2 := containerVia(containerPushImage(t, reg, "kiosk/ui", "r2", "", nil), reg, proxy.addr())
	arm := containerVia(containerPushImage(t, reg, "kiosk/ui", "arm", "riscv64", nil), reg, proxy.addr())
	d := newDevice(t)
	d.args = append(d.args, "--docker-host", eng.host, "--insecure-registry", proxy.addr(), "--retry-delay", "200ms")
	d.setTarget(containerTarget(t, "kiosk", "r1", containerSvc{"ui", "exec sleep 1000", v1}))
	d.start()
	old := eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	d.waitFor("r1 applied", func() bool { return d.releaseOf("kiosk") == "r1" && d.status().Status == "idle" })

	missing := v2
	missing.Ref = proxy.addr() + "/kiosk/ui@sha256:" + strings.Repeat("ab", 32)
	unknownRepo := v2
	unknownRepo.Ref = proxy.addr() + "/kiosk/nothing@" + strings.SplitN(v2.Ref, "@", 2)[1]
	for _, c := range []struct {
		name    string
		img     containerImage
		proxy   func(p *containerProxy)
		release string
		want    string // in the reason
		failed  bool   // rejected for good (else retried)
	}{
		{"unknown digest", missing, nil, "r2a", "404 not found", false},
		{"unknown repository", unknownRepo, nil, "r2b", "404 not found", false},
		{"another platform", arm, nil, "r2c", "platform", true},
		{"401", v2, func(p *containerProxy) { p.status = 401 }, "r2d", "authentication required", false},
		{"500", v2, func(p *containerProxy) { p.status = 500 }, "r2e", "500 internal server error", false},
		{"cut connection", v2, func(p *containerProxy) { p.cut = true }, "r2f", "connection broke", false},
		{"corrupt blob", v2, func(p *containerProxy) { p.corrupt = true }, "r2g", "does not match its digest", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			proxy.set(func(p *containerProxy) { p.status, p.cut, p.corrupt = 0, false, false })
			if c.proxy != nil {
				proxy.set(c.proxy)
			}
			d.t = t
			d.setTarget(containerTarget(t, "kiosk", c.release, containerSvc{"ui", "exec sleep 1000", c.img}))
			var s deviceStatus
			d.waitFor("the error in the status", func() bool {
				s = d.status()
				return strings.Contains(strings.ToLower(s.Reason), c.want) && (!c.failed || s.UpdateFailed) && strings.Contains(s.Reason, "image "+c.img.Ref)
			})
			t.Logf("reason: %s", s.Reason)
			time.Sleep(300 * time.Millisecond)
			st, now := eng.state(t, "kiosk", "ui", "r1")
			if st != "running" || now.ID != old.ID || now.State.StartedAt != old.State.StartedAt {
				t.Fatalf("the running release was touched: %s, started %s (was %s)", st, now.State.StartedAt, old.State.StartedAt)
			}
			if st, _ := eng.state(t, "kiosk", "ui", c.release); st != "" {
				t.Fatalf("a container of the failed release exists: %s", st)
			}
			if r := d.releaseOf("kiosk"); r != "r1" {
				t.Fatalf("release %q, want r1", r)
			}
		})
	}
	d.t = t
	proxy.set(func(p *containerProxy) { p.status, p.cut, p.corrupt = 0, false, false })
	d.setTarget(containerTarget(t, "kiosk", "r3", containerSvc{"ui", "exec sleep 1000", v2}))
	eng.waitState(t, d, "kiosk", "ui", "r3", "running")
	d.waitFor("r3 applied after the errors", func() bool { return d.releaseOf("kiosk") == "r3" && d.status().Status == "idle" })
	d.stop()
}

// (f) A container of latch's name that latch did not create, and an image
// that latch did not load, are never touched: the update fails and rolls
// back, the foreign container stays as it was.
func TestContainerForeignUntouched(t *testing.T) {
	containerNeeds(t, "foreign containers and images")
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	v1 := containerPushImage(t, reg, "kiosk/ui", "r1", "", nil)
	v2 := containerPushImage(t, reg, "kiosk/ui", "r2", "", nil)
	d := containerDevice(t, eng, reg)
	d.args = append(d.args, "--max-attempts", "1")
	d.setTarget(containerTarget(t, "kiosk", "r1", containerSvc{"ui", "exec sleep 1000", v1}))
	d.start()
	eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	d.waitFor("r1 applied", func() bool { return d.releaseOf("kiosk") == "r1" && d.status().Status == "idle" })

	ctx := context.Background()
	name, _ := docker.ContainerName("kiosk", "ui", "r2")
	foreign, err := eng.client.CreateContainer(ctx, name, docker.CreateConfig{Image: v1.ID, Cmd: []string{"/bin/sleep", "1000"}, HostConfig: docker.HostConfig{NetworkMode: "none"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.client.StartContainer(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	before, _ := eng.client.InspectContainer(ctx, foreign)
	d.setTarget(containerTarget(t, "kiosk", "r2", containerSvc{"ui", "exec sleep 1000", v2}))
	d.waitFor("r2 failed", func() bool { return d.status().UpdateFailed })
	if s := d.status(); !strings.Contains(s.Reason, "not created by latch") {
		t.Fatalf("reason %q does not say the container is not latch's", s.Reason)
	}
	after, err := eng.client.InspectContainer(ctx, foreign)
	if err != nil || !after.State.Running || after.State.StartedAt != before.State.StartedAt || len(after.Config.Labels) != 0 {
		t.Fatalf("the foreign container was touched: %v, running %v, started %s (was %s), labels %v", err, after.State.Running, after.State.StartedAt, before.State.StartedAt, after.Config.Labels)
	}
	eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	if _, err := eng.client.InspectImage(ctx, v1.ID); err != nil {
		t.Fatalf("an image was removed: %v", err)
	}
	d.stop()
}

// containerMixedTarget is app kiosk at release: containers ui and backend,
// and an exec service "log" whose commands append to the device's log.
func containerMixedTarget(t *testing.T, d *device, release string, img containerImage) []byte {
	return containerMixedApp(t, d, "kiosk", release, img)
}

// containerMixedApp is containerMixedTarget with another app's name.
func containerMixedApp(t *testing.T, d *device, appName, release string, img containerImage) []byte {
	t.Helper()
	services := map[string]any{
		"log": map[string]any{
			"start":  fmt.Sprintf(`echo "start log %s" >> %s`, release, d.log),
			"stop":   fmt.Sprintf(`echo "stop log %s" >> %s`, release, d.log),
			"health": "true",
		},
	}
	for _, name := range []string{"backend", "ui"} {
		services[name] = map[string]any{
			"image": img.Ref, "command": []string{"/bin/sh", "-c", "exec sleep 1000"},
			"network_mode": "none", "stop_grace_period": "1s",
		}
	}
	b, err := json.Marshal(map[string]any{"apps": map[string]any{appName: map[string]any{"release": release, "services": services}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sweepBatch is how many commit points of TestContainerKillAtEveryCommit
// run at once (the update takes about 27 commits): each has its own device (state, lock and run dirs) and its
// own app, so its own containers; the engine and the registry are shared.
const sweepBatch = 9

// (c) SIGKILL after every journal commit of an update of an app that mixes
// containers and an exec service: the restarted agent ends on the new
// release whole, never a mix, each exec command run once, each container
// started once. The commit points run sweepBatch at a time, until one
// where the update finishes before the failpoint.
func TestContainerKillAtEveryCommit(t *testing.T) {
	containerNeeds(t, "SIGKILL at every journal commit of a container update")
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("the docker CLI is not installed (it reads the engine's events): SIGKILL at every journal commit of a container update not tested")
	}
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	v1 := containerPushImage(t, reg, "kiosk/ui", "r1", "", nil)
	v2 := containerPushImage(t, reg, "kiosk/ui", "r2", "", nil)
	starts := eng.watchStarts(t)
	var (
		mu       sync.Mutex
		survived []int // the commit points the update finished before
		relocked int   // the points that interrupted an apply holding locks
	)
	point := func(t *testing.T, n int) {
		app := fmt.Sprintf("kiosk%d", n)
		defer func() {
			ctx := context.Background()
			list, _ := eng.client.ListContainers(ctx, docker.LabelApp+"="+app)
			for _, c := range list {
				eng.client.RemoveContainer(ctx, c.ID, true)
			}
		}()
		d := containerDevice(t, eng, reg)
		d.setTarget(containerMixedApp(t, d, app, "r1", v1))
		d.start()
		d.waitFor("r1 applied", func() bool { return d.releaseOf(app) == "r1" && d.status().Status == "idle" })
		d.stop()
		os.Remove(d.log)
		since := time.Now()
		d.start(fmt.Sprintf("LATCH_FAILPOINT=commit:%d", n))
		d.setTarget(containerMixedApp(t, d, app, "r2", v2))
		deadline := time.After(90 * time.Second)
	wait:
		for {
			select {
			case <-d.waitErr:
				d.notify.Close()
				break wait
			case <-deadline:
				t.Fatalf("commit:%d: the agent neither died nor finished\n%s", n, d.output())
			case <-time.After(50 * time.Millisecond):
				if s, ok := d.statusOK(); ok && releaseIn(s, app) == "r2" && !s.UpdatePending {
					mu.Lock()
					survived = append(survived, n)
					mu.Unlock()
					d.stop()
					return
				}
			}
		}
		// The apply the kill interrupted, and its lock entries: they are
		// removed, as a reboot clears /tmp, and must be back at READY.
		var held []string
		j, err := store.Open(filepath.Join(d.stateDir, "journal.db"), nil)
		if err != nil {
			t.Fatalf("killed after commit %d: open the journal: %v", n, err)
		}
		j.View(func(tx *store.Tx) error {
			if ap, err := tx.Apply(); err == nil && !strings.HasPrefix(ap.UpdateID, "restart:") {
				for _, l := range ap.Locks {
					held = append(held, l.Path)
				}
			}
			return nil
		})
		j.Close()
		for _, p := range held {
			os.Remove(p)
		}
		d.start()
		var missing []string
		for _, p := range held {
			if !exists(p) {
				missing = append(missing, p)
			}
		}
		if s, ok := d.statusOK(); len(missing) > 0 && (!ok || s.UpdatePending) {
			// Still applying (the locks go only once it is done): they
			// were not re-taken before READY.
			t.Errorf("killed after commit %d: at READY the interrupted apply's locks %v are missing", n, missing)
		}
		if len(held) > 0 {
			mu.Lock()
			relocked++
			mu.Unlock()
		}
		if !within(90*time.Second, func() bool {
			s, ok := d.statusOK()
			return ok && releaseIn(s, app) == "r2" && !s.UpdatePending && s.Status == "idle"
		}) {
			s, _ := d.statusOK()
			t.Fatalf("killed after commit %d, the agent never ends idle on r2: %q %q\n%s", n, s.Status, s.Reason, d.output())
		}
		for _, svc := range []string{"backend", "ui"} {
			if st, c := eng.state(t, app, svc, "r2"); st != "running" || c.RestartCount != 0 {
				t.Errorf("killed after commit %d: %s/%s r2 is %q (restarts %d), want running", n, app, svc, st, c.RestartCount)
			}
			if st, _ := eng.state(t, app, svc, "r1"); st == "running" {
				t.Errorf("killed after commit %d: %s/%s r1 still runs beside r2", n, app, svc)
			}
		}
		for _, c := range []struct {
			release string
			want    int
		}{{"r1", 0}, {"r2", 1}} {
			for _, svc := range []string{"backend", "ui"} {
				if got := starts.count(t, since, app, svc, c.release); got != c.want {
					t.Errorf("killed after commit %d: %s/%s %s was started %d times, want %d", n, app, svc, c.release, got, c.want)
				}
			}
		}
		for _, line := range []string{"stop log r1", "start log r2"} {
			if c := d.count(line); c != 1 {
				t.Errorf("killed after commit %d: %q ran %d times, want once\n%s", n, line, c, strings.Join(d.commands(), "\n"))
			}
		}
		d.stop()
	}
	for first := 1; first <= 200; first += sweepBatch {
		t.Run(fmt.Sprintf("commits-%d-%d", first, first+sweepBatch-1), func(t *testing.T) {
			// Run from goroutines rather than t.Parallel: -parallel (the
			// CPUs by default) would cap them, and they mostly wait.
			var wg sync.WaitGroup
			for n := first; n < first+sweepBatch; n++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					t.Run(fmt.Sprintf("commit-%d", n), func(t *testing.T) { point(t, n) })
				}()
			}
			wg.Wait()
		})
		mu.Lock()
		done := slices.Min(append([]int{1 << 30}, survived...))
		mu.Unlock()
		if t.Failed() {
			return
		}
		if done < 1<<30 {
			// Every point below the first survivor was killed and checked.
			t.Logf("swept %d commits; %d of them interrupted an apply, whose locks were back at READY", done, relocked)
			return
		}
	}
	t.Fatal("the update took more than 200 journal commits")
}

// depends_on: a service starts after the services it depends on, whatever
// their names.
func TestContainerDependsOnOrder(t *testing.T) {
	containerNeeds(t, "the depends_on order of an apply")
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	v1 := containerPushImage(t, reg, "kiosk/ui", "r1", "", nil)
	d := containerDevice(t, eng, reg)
	svc := func(deps ...string) map[string]any {
		return map[string]any{"image": v1.Ref, "command": []string{"/bin/sleep", "1000"}, "network_mode": "none",
			"stop_grace_period": "1s", "depends_on": deps}
	}
	doc, _ := json.Marshal(map[string]any{"apps": map[string]any{"kiosk": map[string]any{"release": "r1", "services": map[string]any{
		"a": svc("b"), "b": svc("c"), "c": svc(),
	}}}})
	d.setTarget(doc)
	d.start()
	d.waitFor("r1 applied", func() bool { return d.releaseOf("kiosk") == "r1" && d.status().Status == "idle" })
	var started []time.Time
	for _, s := range []string{"c", "b", "a"} {
		st, c := eng.state(t, "kiosk", s, "r1")
		if st != "running" {
			t.Fatalf("kiosk/%s is %q", s, st)
		}
		started = append(started, c.State.Started())
	}
	if !started[0].Before(started[1]) || !started[1].Before(started[2]) {
		t.Fatalf("start times c %s, b %s, a %s: want c, then b (depends on c), then a (depends on b)", started[0], started[1], started[2])
	}
	d.stop()
}

// A container field that the driver refuses fails the update with an error
// naming the app, the service and the field; what runs is not touched.
func TestContainerBadFieldRefused(t *testing.T) {
	containerNeeds(t, "a bad container field in a target")
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	v1 := containerPushImage(t, reg, "kiosk/ui", "r1", "", nil)
	d := containerDevice(t, eng, reg)
	d.setTarget(containerTarget(t, "kiosk", "r1", containerSvc{"ui", "exec sleep 1000", v1}))
	d.start()
	old := eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	d.waitFor("r1 applied", func() bool { return d.releaseOf("kiosk") == "r1" && d.status().Status == "idle" })
	prevID := d.status().UpdateID
	for _, c := range []struct{ name, field, value string }{
		{"privileged not a boolean", "privileged", `"yes"`},
		{"image by tag", "image", `"` + strings.SplitN(v1.Ref, "@", 2)[0] + `:latest"`},
		{"unknown field", "hostname", `"x"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			d.t = t
			doc := string(containerTarget(t, "kiosk", "r2-"+c.field, containerSvc{"ui", "exec sleep 1000", v1}))
			doc = strings.Replace(doc, `"network_mode"`, `"`+c.field+`": `+c.value+`, "network_mode"`, 1)
			if c.field == "image" {
				doc = strings.Replace(doc, `"image": "`+v1.Ref+`",`, "", 1)
			}
			d.setTarget([]byte(doc))
			// Refused when it arrives, as any invalid target: journalled, no update.
			var msg string
			d.waitFor("the target refused", func() bool {
				for _, e := range d.journalEvents() {
					if e.Kind == "rejected" && strings.Contains(e.Message, "apps.kiosk.services.ui") && strings.Contains(e.Message, c.field) {
						msg = e.Message
						return true
					}
				}
				return false
			})
			t.Logf("refused: %s", msg)
			if s := d.status(); s.UpdatePending || s.UpdateID != prevID {
				t.Fatalf("a refused target became an update: pending %v, id %s (was %s)", s.UpdatePending, s.UpdateID, prevID)
			}
			st, now := eng.state(t, "kiosk", "ui", "r1")
			if st != "running" || now.State.StartedAt != old.State.StartedAt || d.releaseOf("kiosk") != "r1" {
				t.Fatalf("the running release was touched: %s, release %q", st, d.releaseOf("kiosk"))
			}
		})
	}
	d.t = t
	d.stop()
}

// startLog follows the engine's start events for as long as a test runs:
// unlike a later `docker events --since`, it cannot miss those that fell
// out of the engine's bounded event buffer (busy parallel tests overflow it).
type startLog struct {
	mu     sync.Mutex
	starts map[string][]time.Time // container name -> start times
}

// watchStarts subscribes to the engine's events and returns once the
// subscription is seen to work (a volume created for the purpose shows up).
func (e *containerEngine) watchStarts(t *testing.T) *startLog {
	t.Helper()
	l := &startLog{starts: map[string][]time.Time{}}
	cmd := exec.Command("docker", "-H", e.host, "events", "--filter", "event=start", "--filter", "event=create",
		"--format", "{{.Type}}|{{.Action}}|{{.Actor.ID}}|{{.Actor.Attributes.name}}|{{.TimeNano}}")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Volumes made to see the subscription work, one a try (creating one
	// that exists sends no event).
	prefix := fmt.Sprintf("latch-e2e-events-%d-", time.Now().UnixNano())
	seen := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		once := sync.Once{}
		for sc.Scan() {
			f := strings.Split(sc.Text(), "|")
			if len(f) == 5 && f[0] == "volume" && strings.HasPrefix(f[2], prefix) {
				once.Do(func() { close(seen) })
				continue
			}
			if len(f) != 5 || f[0] != "container" || f[1] != "start" {
				continue
			}
			ns, err := strconv.ParseInt(f[4], 10, 64)
			if err != nil {
				continue
			}
			l.mu.Lock()
			l.starts[f[3]] = append(l.starts[f[3]], time.Unix(0, ns))
			l.mu.Unlock()
		}
	}()
	var made []string
	defer func() {
		exec.Command("docker", append([]string{"-H", e.host, "volume", "rm"}, made...)...).Run()
	}()
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		name := prefix + strconv.Itoa(i)
		if err := exec.Command("docker", "-H", e.host, "volume", "create", name).Run(); err != nil {
			t.Fatalf("docker volume create: %v", err)
		}
		made = append(made, name)
		select {
		case <-seen:
			return l
		case <-tick.C:
		case <-deadline:
			t.Fatal("docker events never showed the volumes created to test it")
		}
	}
}

// count is the number of starts of latch's container of a service and
// release since a time.
func (l *startLog) count(t *testing.T, since time.Time, app, svc, release string) int {
	t.Helper()
	name, err := docker.ContainerName(app, svc, release)
	if err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, at := range l.starts[name] {
		if !at.Before(since) {
			n++
		}
	}
	return n
}

// hostArch is the machine's architecture in Go's names (amd64 or arm64).
func hostArch() string {
	if out, err := exec.Command("uname", "-m").Output(); err == nil && strings.TrimSpace(string(out)) == "aarch64" {
		return "arm64"
	}
	return "amd64"
}

// restart-service of a container service restarts its container through
// the engine, under the service's lock like any other restart: refused
// while a device-wide lock is held, then done once it is gone, journalled;
// the app's other services (a container and an exec service) are left alone.
func TestContainerRestartService(t *testing.T) {
	containerNeeds(t, "restart-service of a container service")
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	v1 := containerPushImage(t, reg, "kiosk/ui", "r1", "", nil)
	d := containerDevice(t, eng, reg)
	d.setTarget(containerMixedTarget(t, d, "r1", v1))
	d.start()
	d.waitFor("r1 applied", func() bool { return d.releaseOf("kiosk") == "r1" && d.status().Status == "idle" })
	ui := eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	backend := eng.waitState(t, d, "kiosk", "backend", "r1", "running")
	execLines := len(d.commands())

	// A device-wide lock of another user (uid 1000) refuses the restart.
	global := filepath.Join(d.root, "tmp/balena/updates.lock")
	if err := os.MkdirAll(filepath.Dir(global), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(global, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(global, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	code, body, err := d.request("POST", "/v2/applications/kiosk/restart-service", map[string]any{"serviceName": "ui"})
	if err != nil || code != http.StatusLocked || !strings.Contains(body, global) {
		t.Fatalf("restart under %s: %d %s (%v), want 423 naming the lock", global, code, body, err)
	}
	time.Sleep(300 * time.Millisecond) // give a wrong agent time to act
	if _, c := eng.state(t, "kiosk", "ui", "r1"); c.State.StartedAt != ui.State.StartedAt || c.ID != ui.ID {
		t.Fatalf("the container was touched under a held lock: started %s (was %s)", c.State.StartedAt, ui.State.StartedAt)
	}
	if !exists(global) {
		t.Fatal("the user's lock was removed by a refused restart")
	}

	os.Remove(global)
	code, body, err = d.request("POST", "/v2/applications/kiosk/restart-service", map[string]any{"serviceName": "ui"})
	if err != nil || code != http.StatusOK {
		t.Fatalf("restart after the lock is gone: %d %s (%v), want 200", code, body, err)
	}
	st, c := eng.state(t, "kiosk", "ui", "r1")
	if st != "running" || c.ID != ui.ID || !c.State.Started().After(ui.State.Started()) {
		t.Fatalf("after restart-service kiosk/ui r1 is %q, id %.12s (was %.12s), started %s (was %s): want the same container started again",
			st, c.ID, ui.ID, c.State.StartedAt, ui.State.StartedAt)
	}
	if _, b := eng.state(t, "kiosk", "backend", "r1"); b.State.StartedAt != backend.State.StartedAt {
		t.Fatalf("restart of kiosk/ui restarted kiosk/backend (started %s, was %s)", b.State.StartedAt, backend.State.StartedAt)
	}
	if got := d.commands(); len(got) != execLines {
		t.Fatalf("restart of a container ran exec commands: %v", got[execLines:])
	}
	restarted := false
	for _, e := range d.journalEvents() {
		restarted = restarted || e.Kind == "restart" && strings.Contains(e.Message, "restarted kiosk/ui")
	}
	if !restarted {
		t.Fatalf("the journal has no restart of kiosk/ui: %+v", d.journalEvents())
	}
	for _, name := range []string{"updates.lock", "resin-updates.lock"} {
		if p := filepath.Join(d.serviceDir("kiosk", "ui"), name); exists(p) {
			t.Fatalf("the restart's lock %s is left behind", p)
		}
	}
	d.stop()

	// Killed once the container is stopped, the agent starts it again
	// when it comes back.
	d.start("LATCH_FAILPOINT=restart-stopped:kiosk/ui")
	go d.request("POST", "/v2/applications/kiosk/restart-service", map[string]any{"serviceName": "ui"})
	if st := d.waitExit(); st.Success() {
		t.Fatal("the agent did not die at the restart-stopped failpoint")
	}
	if st, _ := eng.state(t, "kiosk", "ui", "r1"); st != "exited" {
		t.Fatalf("at the failpoint kiosk/ui r1 is %q, want exited (stopped by the restart)", st)
	}
	d.start()
	eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	d.waitFor("the interrupted restart finished", func() bool { return d.status().Status == "idle" })
	if got := d.commands(); len(got) != execLines {
		t.Fatalf("the resumed restart of a container ran exec commands: %v", got[execLines:])
	}
	d.stop()
}

// App "a_b" service "c" and app "a" service "b_c" are two containers of
// their own; and a container named by older versions of latch
// (latch_<app>_<service>_<release> unescaped) is found by its labels and
// replaced cleanly by the next release.
func TestContainerNamesDoNotCollide(t *testing.T) {
	containerNeeds(t, "container names of apps and services holding '_'")
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("the docker CLI is not installed (it renames a container to an older name): container names not tested")
	}
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	v1 := containerPushImage(t, reg, "kiosk/ui", "r1", "", nil)
	pairs := [][2]string{{"a_b", "c"}, {"a", "b_c"}}
	doc := func(release string) []byte {
		apps := map[string]any{}
		for _, p := range pairs {
			apps[p[0]] = map[string]any{"release": release, "services": map[string]any{p[1]: map[string]any{
				"image": v1.Ref, "command": []string{"/bin/sh", "-c", "exec sleep 1000"}, "network_mode": "none", "stop_grace_period": "1s",
			}}}
		}
		b, err := json.Marshal(map[string]any{"apps": apps})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ctx := context.Background()
	// labelled lists the containers carrying the labels of app/svc.
	labelled := func(app, svc string) []docker.ContainerSummary {
		list, err := eng.client.ListContainers(ctx, docker.LabelApp+"="+app, docker.LabelService+"="+svc)
		if err != nil {
			t.Fatal(err)
		}
		return list
	}
	d := containerDevice(t, eng, reg)
	d.setTarget(doc("r1"))
	d.start()
	d.waitFor("r1 applied to both apps", func() bool {
		return d.releaseOf("a_b") == "r1" && d.releaseOf("a") == "r1" && d.status().Status == "idle"
	})
	ids := map[string]bool{}
	for _, p := range pairs {
		list := labelled(p[0], p[1])
		if len(list) != 1 || list[0].State != "running" {
			t.Fatalf("%s/%s: %d containers %+v, want one running (reason %q)", p[0], p[1], len(list), list, d.status().Reason)
		}
		ids[list[0].ID] = true
		t.Logf("%s/%s runs as %s", p[0], p[1], list[0].Name())
	}
	if len(ids) != 2 {
		t.Fatalf("a_b/c and a/b_c share a container: %v", ids)
	}

	// The older name of a_b/c's container: what a device updated from an
	// older latch has.
	old := labelled("a_b", "c")[0]
	if out, err := exec.Command("docker", "-H", eng.host, "rename", old.ID, "latch_a_b_c_r1").CombinedOutput(); err != nil {
		t.Fatalf("docker rename: %v %s", err, out)
	}
	d.setTarget(doc("r2"))
	d.waitFor("r2 applied to both apps", func() bool {
		return d.releaseOf("a_b") == "r2" && d.releaseOf("a") == "r2" && d.status().Status == "idle"
	})
	for _, p := range pairs {
		list := labelled(p[0], p[1])
		if len(list) != 1 || list[0].State != "running" || list[0].Labels[docker.LabelRelease] != "r2" {
			t.Fatalf("%s/%s after r2: %+v, want r2's container alone, running", p[0], p[1], list)
		}
	}
	if _, err := eng.client.InspectContainer(ctx, old.ID); err == nil {
		t.Fatalf("the r1 container of the older name %s is left behind", "latch_a_b_c_r1")
	}
	d.stop()
}

// containerPushStack pushes an image of this machine's architecture whose
// layers hold the files given, bottom first, running /bin/sleep; it
// returns the image and each layer's blob digest.
func containerPushStack(t *testing.T, reg, repo string, stack ...map[string][]byte) (containerImage, []string) {
	t.Helper()
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	img := containerImage{}
	var diffIDs, digests []string
	var layers []desc
	for _, files := range stack {
		b, diff := containerLayer(t, files)
		diffIDs = append(diffIDs, diff)
		d := containerPush(t, reg, repo, b, "")
		digests = append(digests, d)
		layers = append(layers, desc{"application/vnd.docker.image.rootfs.diff.tar.gzip", d, int64(len(b))})
		img.Layers = append(img.Layers, int64(len(b)))
	}
	cfg, _ := json.Marshal(map[string]any{
		"architecture": hostArch(), "os": "linux",
		"config": map[string]any{"Env": []string{"PATH=/bin"}, "Cmd": []string{"/bin/sleep", "1000"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	img.ID = containerPush(t, reg, repo, cfg, "")
	m, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
		"config": desc{"application/vnd.docker.container.image.v1+json", img.ID, int64(len(cfg))},
		"layers": layers,
	})
	img.Ref = reg + "/" + repo + "@" + containerPush(t, reg, repo, m, "application/vnd.docker.distribution.manifest.v2+json")
	return img, digests
}

// A layer the engine has from another image is not fetched again, even
// when the state dir's blobs are gone: image B shares its two bottom
// layers with image A, which the engine has; the pull of B fetches B's
// config and its own layer only, and B runs with all three layers.
func TestContainerEngineLayersReused(t *testing.T) {
	containerNeeds(t, "reuse of the engine's layers by a pull")
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	proxy := containerNewProxy(t, reg)
	base, top := containerBusybox(t), map[string][]byte{"release": []byte("a\n")}
	a, _ := containerPushStack(t, reg, "kiosk/a", base, top)
	b, bLayers := containerPushStack(t, reg, "kiosk/b", base, top, map[string][]byte{"b-only": containerRandom(256<<10, 7)})
	a, b = containerVia(a, reg, proxy.addr()), containerVia(b, reg, proxy.addr())
	d := newDevice(t)
	d.args = append(d.args, "--docker-host", eng.host, "--insecure-registry", proxy.addr())
	d.setTarget(containerTarget(t, "kiosk", "r1", containerSvc{"ui", "exec sleep 1000", a}))
	d.start()
	eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	d.waitFor("r1 applied", func() bool { return d.releaseOf("kiosk") == "r1" && d.status().Status == "idle" })
	d.stop()
	// The blobs are gone (a wiped or replaced state dir): only the engine
	// has A's layers now.
	if err := os.RemoveAll(filepath.Join(d.stateDir, "blobs")); err != nil {
		t.Fatal(err)
	}
	proxy.set(func(p *containerProxy) { p.blobGets, p.blobBytes = map[string]int{}, 0 })
	d.start()
	d.setTarget(containerTarget(t, "kiosk", "r2", containerSvc{"ui", "test -f /b-only && test -f /release && exec sleep 1000", b}))
	eng.waitState(t, d, "kiosk", "ui", "r2", "running")
	d.waitFor("r2 applied", func() bool { return d.releaseOf("kiosk") == "r2" && d.status().Status == "idle" })
	proxy.mu.Lock()
	gets := maps.Clone(proxy.blobGets)
	proxy.mu.Unlock()
	want := map[string]int{b.ID: 1, bLayers[2]: 1}
	if !maps.Equal(gets, want) {
		t.Fatalf("blob GETs of the pull of B: %v, want B's config %s and its own layer %s once each (the bottom two %v are the engine's)",
			gets, b.ID, bLayers[2], bLayers[:2])
	}
	time.Sleep(300 * time.Millisecond)
	if st, c := eng.state(t, "kiosk", "ui", "r2"); st != "running" || c.RestartCount != 0 {
		t.Fatalf("B's container is %q (restarts %d): its layers are not whole", st, c.RestartCount)
	}
	d.stop()
}

// The layers of an image download three at a time (as dockerd's do), no
// more, each once, and the image runs whole.
func TestContainerLayersFetchedInParallel(t *testing.T) {
	containerNeeds(t, "parallel layer downloads")
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	proxy := containerNewProxy(t, reg)
	stack := []map[string][]byte{containerBusybox(t)}
	for i := 0; i < 4; i++ {
		stack = append(stack, map[string][]byte{fmt.Sprintf("l%d", i): containerRandom(1<<20, byte(10+i))})
	}
	img, layers := containerPushStack(t, reg, "kiosk/ui", stack...)
	img = containerVia(img, reg, proxy.addr())
	proxy.set(func(p *containerProxy) { p.delay = 20 * time.Millisecond }) // each layer takes about a second
	d := newDevice(t)
	d.args = append(d.args, "--docker-host", eng.host, "--insecure-registry", proxy.addr())
	d.setTarget(containerTarget(t, "kiosk", "r1", containerSvc{"ui", "test -f /l0 && test -f /l3 && exec sleep 1000", img}))
	d.start()
	eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	d.waitFor("r1 applied", func() bool { return d.releaseOf("kiosk") == "r1" && d.status().Status == "idle" })
	proxy.mu.Lock()
	most, gets := proxy.most, maps.Clone(proxy.blobGets)
	proxy.mu.Unlock()
	if most != 3 {
		t.Errorf("at most %d blob downloads ran at once, want 3", most)
	}
	for _, l := range layers {
		if gets[l] != 1 {
			t.Errorf("layer %s was fetched %d times, want once (all GETs: %v)", l, gets[l], gets)
		}
	}
	d.stop()
}

// The pull's progress is journalled (every few MB or seconds): killed in
// the middle of a pull and started again while the registry refuses, the
// agent shows the journalled progress in the status and the metrics before
// the pull resumes; once the update is applied no record is left.
func TestContainerPullProgressJournalled(t *testing.T) {
	containerNeeds(t, "the journalled progress of a pull across a restart")
	eng, reg := containerStartEngine(t), containerStartRegistry(t)
	proxy := containerNewProxy(t, reg)
	const big = 8 << 20
	v1 := containerVia(containerPushImage(t, reg, "kiosk/ui", "r1", "", nil), reg, proxy.addr())
	v2 := containerVia(containerPushImage(t, reg, "kiosk/ui", "r2", "", map[string][]byte{"data": containerRandom(big, 3)}), reg, proxy.addr())
	d := newDevice(t)
	d.args = append(d.args, "--docker-host", eng.host, "--insecure-registry", proxy.addr(), "--retry-delay", "200ms")
	d.setTarget(containerTarget(t, "kiosk", "r1", containerSvc{"ui", "exec sleep 1000", v1}))
	d.start()
	eng.waitState(t, d, "kiosk", "ui", "r1", "running")
	d.waitFor("r1 applied", func() bool { return d.releaseOf("kiosk") == "r1" && d.status().Status == "idle" })

	proxy.set(func(p *containerProxy) { p.blobBytes, p.delay = 0, 20*time.Millisecond }) // ~1.6 MB/s
	d.setTarget(containerTarget(t, "kiosk", "r2", containerSvc{"ui", "exec sleep 1000", v2}))
	// A record is written every 4 MiB, or 2 s, at the latest: 5 MiB at
	// the proxy's pace is past both.
	d.waitFor("5 MiB of the big layer sent", func() bool { return proxy.sent() > 5<<20 })
	d.kill()
	sent := proxy.sent()
	proxy.set(func(p *containerProxy) { p.status, p.delay = http.StatusServiceUnavailable, 0 })
	d.start()
	var pull struct {
		Layers     int       `json:"layers"`
		LayersDone int       `json:"layers_done"`
		Done       int64     `json:"done"`
		Total      int64     `json:"total"`
		Updated    time.Time `json:"updated"`
	}
	var s struct {
		Containers []struct {
			Release string          `json:"release"`
			Pull    json.RawMessage `json:"pull"`
		} `json:"containers"`
	}
	if code := d.api("GET", "/v1/device", nil, &s); code != 200 || len(s.Containers) != 1 || s.Containers[0].Pull == nil {
		t.Fatalf("status after the restart: %d %+v, want r2's pull", code, s)
	}
	if err := json.Unmarshal(s.Containers[0].Pull, &pull); err != nil {
		t.Fatal(err)
	}
	var total int64 = v2.Layers[0] + v2.Layers[1]
	t.Logf("journalled pull after the restart: %+v (%d blob bytes sent before the kill)", pull, sent)
	if s.Containers[0].Release != "r2" || pull.Layers != 2 || pull.LayersDone != 1 || pull.Done < 4<<20 || pull.Done > v2.Layers[0]+sent+8<<10 ||
		pull.Total < total || pull.Updated.IsZero() {
		t.Fatalf("pull in the status after the restart: %+v, want 1 of 2 layers, at least 4 MiB and at most the base layer and the %d bytes sent, of at least %d", pull, sent, total)
	}
	if m := containerMetrics(d); !strings.Contains(m, `latch_image_pull_ratio{app="kiosk",service="ui"} 0.`) ||
		!strings.Contains(m, `latch_image_pull_layers_done{app="kiosk",service="ui"} 1`+"\n") || !strings.Contains(m, `latch_image_pull_layers{app="kiosk",service="ui"} 2`+"\n") {
		t.Fatalf("metrics lack the journalled pull (ratio, 1 of 2 layers):\n%s", m)
	}
	out, err := exec.Command(latchBin, "status", "--root", d.root).CombinedOutput()
	if err != nil || !regexp.MustCompile(`Containers:\s+kiosk/ui r2, image [0-9a-f]{12}, \S+, pulling \d+% \(.* of .*\), 1 of 2 layers`).Match(out) {
		t.Fatalf("latch status after the restart (%v) does not show r2's pull:\n%s", err, out)
	}
	proxy.set(func(p *containerProxy) { p.status = 0 })
	eng.waitState(t, d, "kiosk", "ui", "r2", "running")
	d.waitFor("r2 applied", func() bool { return d.releaseOf("kiosk") == "r2" && d.status().Status == "idle" })
	d.stop()
	j, err := store.Open(filepath.Join(d.stateDir, "journal.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var recs []store.ImagePull
	if err := j.View(func(tx *store.Tx) (err error) { recs, err = tx.ImagePulls(); return err }); err != nil || len(recs) != 0 {
		t.Fatalf("image pull records after the update: %+v, %v; want none", recs, err)
	}
}
