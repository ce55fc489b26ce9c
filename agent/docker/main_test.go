package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The engine of the tests: a dockerd of their own, started by TestMain
// under a temporary folder with its own socket, and stopped by its pid.
var (
	engine     *Client // nil: no engine (see skipWhy)
	skipWhy    string
	baseImage  testImage // no HEALTHCHECK
	checkImage testImage // HEALTHCHECK test -e /tmp/ok
)

type testImage struct {
	ID, Tag string
	Digest  string // the name@sha256 a spec gives
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	fuzz, worker := flag.Lookup("test.fuzz"), flag.Lookup("test.fuzzworker")
	if fuzz != nil && fuzz.Value.String() != "" || worker != nil && worker.Value.String() == "true" {
		skipWhy = "fuzzing"
		return m.Run() // fuzzing needs no engine, nor one per worker
	}
	stop, err := startEngine()
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent/docker tests: start dockerd:", err)
		return 1
	}
	code := m.Run()
	stop()
	return code
}

// startEngine starts dockerd when the tests run as root and it is
// installed; otherwise it sets skipWhy.
func startEngine() (stop func(), err error) {
	stop = func() {}
	if os.Getenv("LATCH_EMULATED") == "1" {
		skipWhy = "under qemu-user (LATCH_EMULATED=1) the engine would be the host's: the driver against a real dockerd runs in the native suite"
		return stop, nil
	}
	if os.Geteuid() != 0 {
		skipWhy = "needs root to run dockerd"
		return stop, nil
	}
	if _, err := exec.LookPath("dockerd"); err != nil {
		skipWhy = "dockerd is not installed"
		return stop, nil
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		skipWhy = "/bin/busybox (busybox-static) is not installed"
		return stop, nil
	}
	dir, err := os.MkdirTemp("", "latch-docker-")
	if err != nil {
		return stop, err
	}
	dd, err := startDockerd(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return stop, err
	}
	c := dd.client
	stop = func() {
		// Remove what the tests left, then stop the daemon.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if list, err := c.ListContainers(ctx); err == nil {
			for _, ct := range list {
				_ = c.RemoveContainer(ctx, ct.ID, true)
			}
		}
		cancel()
		dd.stop()
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintln(os.Stderr, "agent/docker tests: clean up:", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	engine = c
	for _, im := range []struct {
		dst   *testImage
		tag   string
		check *Healthcheck
	}{
		{&baseImage, "latch-test/base:1", nil},
		{&checkImage, "latch-test/check:1", &Healthcheck{Test: []string{"CMD-SHELL", "test -e /tmp/ok"},
			Interval: 200 * time.Millisecond, Timeout: 5 * time.Second, Retries: 5}},
	} {
		tarball, id, err := buildImage(im.tag, im.check)
		if err != nil {
			stop()
			return func() {}, err
		}
		loaded, err := c.LoadImage(ctx, bytes.NewReader(tarball))
		if err != nil {
			stop()
			return func() {}, err
		}
		if !contains(loaded, im.tag) {
			stop()
			return func() {}, fmt.Errorf("load image %s: engine reported %q", im.tag, loaded)
		}
		name, _, _ := strings.Cut(im.tag, ":")
		*im.dst = testImage{ID: id, Tag: im.tag, Digest: name + "@" + id}
	}
	return stop, nil
}

// dockerd is a daemon of the tests, with all its state under one folder.
type dockerd struct {
	client *Client
	cmd    *exec.Cmd
	exited chan struct{}
	log    *os.File
}

// startDockerd starts dockerd with its socket, data and exec roots under
// dir (which may already hold the data of an earlier run), without
// iptables or a bridge, and waits until it answers.
func startDockerd(dir string) (*dockerd, error) {
	sock := filepath.Join(dir, "docker.sock")
	logf, err := os.OpenFile(filepath.Join(dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("dockerd",
		"-H", "unix://"+sock,
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	d := &dockerd{cmd: cmd, exited: make(chan struct{}), log: logf}
	go func() { _ = cmd.Wait(); close(d.exited) }()
	c, err := NewClient("unix://" + sock)
	if err != nil {
		d.stop()
		return nil, err
	}
	d.client = c
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		if err = c.Ping(ctx); err == nil {
			return d, nil
		}
		select {
		case <-d.exited:
			log, _ := os.ReadFile(logf.Name())
			d.stop()
			return nil, fmt.Errorf("dockerd exited: %s", tailOf(string(log)))
		case <-ctx.Done():
			d.stop()
			return nil, fmt.Errorf("dockerd did not answer: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop stops the daemon by its pid (SIGTERM, SIGKILL after 30s).
func (d *dockerd) stop() {
	if d.client != nil {
		d.client.Close()
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	d.log.Close()
}

func tailOf(s string) string {
	if len(s) > 2000 {
		return s[len(s)-2000:]
	}
	return s
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// needEngine skips a test when no engine runs, naming what it did not test.
func needEngine(t *testing.T, what string) *Driver {
	t.Helper()
	if engine == nil {
		t.Skipf("%s: %s not tested", skipWhy, what)
	}
	return &Driver{Client: engine, Logf: t.Logf}
}

// buildImage makes a docker-archive tarball (docker save's format) of a
// one-layer image: busybox-static with its applets in /bin, /etc/passwd,
// /tmp; the default command sleeps. It returns the tarball and the image
// ID (the config's digest).
func buildImage(tag string, check *Healthcheck) ([]byte, string, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, "", err
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return nil, "", fmt.Errorf("busybox --list: %w", err)
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	mtime := time.Unix(1700000000, 0)
	dir := func(name string, mode int64) {
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: mtime})
	}
	file := func(name string, mode int64, data []byte) {
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: mtime})
		_, _ = tw.Write(data)
	}
	dir("bin/", 0o755)
	dir("etc/", 0o755)
	dir("tmp/", 0o1777)
	dir("data/", 0o755)
	file("bin/busybox", 0o755, bb)
	for _, a := range strings.Fields(string(out)) {
		if a == "busybox" {
			continue
		}
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: mtime})
	}
	file("etc/passwd", 0o644, []byte("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"))
	file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	diff := sha256.Sum256(layer.Bytes())
	diffID := "sha256:" + hex.EncodeToString(diff[:])
	cfg := map[string]any{
		"architecture": "amd64", "os": "linux", "created": mtime.UTC().Format(time.RFC3339),
		"config": map[string]any{
			"Env":    []string{"PATH=/bin"},
			"Cmd":    []string{"/bin/sleep", "1000"},
			"Labels": map[string]string{"org.example.test": tag},
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]string{{"created": mtime.UTC().Format(time.RFC3339), "created_by": "latch test"}},
	}
	if check != nil {
		cfg["config"].(map[string]any)["Healthcheck"] = check
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, "", err
	}
	cs := sha256.Sum256(cfgJSON)
	cfgHex := hex.EncodeToString(cs[:])
	layerDir := hex.EncodeToString(diff[:])
	manifest, _ := json.Marshal([]map[string]any{{
		"Config": cfgHex + ".json", "RepoTags": []string{tag}, "Layers": []string{layerDir + "/layer.tar"},
	}})
	var arch bytes.Buffer
	aw := tar.NewWriter(&arch)
	add := func(name string, data []byte) {
		_ = aw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime})
		_, _ = aw.Write(data)
	}
	_ = aw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: layerDir + "/", Mode: 0o755, ModTime: mtime})
	add(layerDir+"/layer.tar", layer.Bytes())
	add(cfgHex+".json", cfgJSON)
	add("manifest.json", manifest)
	if err := aw.Close(); err != nil {
		return nil, "", err
	}
	return arch.Bytes(), "sha256:" + cfgHex, nil
}

// lockDir makes a service lock directory as the agent does (mode 1777).
func lockDir(t *testing.T) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "lock")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return d
}

// svc is a service of app running img with command cmd.
func svc(t *testing.T, app, name, release string, img testImage, cmd ...string) Service {
	t.Helper()
	return Service{
		App: app, Service: name, Release: release, Image: img.ID, LockDir: lockDir(t),
		// A grace of 1s: a shell or sleep as PID 1 ignores SIGTERM, and
		// every stop would otherwise wait the default 10s.
		Spec: Spec{Image: img.Digest, Command: cmd, NetworkMode: "none", StopGrace: "1s", StopGracePeriod: time.Second},
	}
}

// cleanApp removes every container of app when the test ends.
func cleanApp(t *testing.T, app string) {
	t.Cleanup(func() {
		ctx := context.Background()
		list, err := engine.ListContainers(ctx, LabelApp+"="+app)
		if err != nil {
			t.Logf("clean up %s: %v", app, err)
			return
		}
		for _, c := range list {
			_ = engine.RemoveContainer(ctx, c.ID, true)
		}
	})
}

// inspect returns the container of s; it fails the test if there is none.
func inspect(t *testing.T, s Service) Container {
	t.Helper()
	name, err := ContainerName(s.App, s.Service, s.Release)
	if err != nil {
		t.Fatal(err)
	}
	c, err := engine.InspectContainer(context.Background(), name)
	if err != nil {
		t.Fatalf("inspect %s: %v", name, err)
	}
	return c
}

// exists reports whether a container of that name exists.
func exists(t *testing.T, name string) bool {
	t.Helper()
	_, err := engine.InspectContainer(context.Background(), name)
	if isNotFound(err) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// waitFile waits (bounded by ctx) until path exists and returns its
// content; when it does not appear, s's container's output is quoted.
func waitFile(ctx context.Context, t *testing.T, path string, s Service) string {
	t.Helper()
	name, _ := ContainerName(s.App, s.Service, s.Release)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if b, err := os.ReadFile(path); err == nil {
			return string(b)
		}
		if c, err := engine.InspectContainer(ctx, name); err == nil && !c.State.Running {
			out, _ := engine.Logs(context.Background(), name, 20)
			t.Fatalf("%s did not appear: container %s is %s (exit %d), its output:\n%s", path, name, c.State.Status, c.State.ExitCode, out)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s did not appear", path)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
