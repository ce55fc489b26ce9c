package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeBlock returns the ```sh block that follows the <!-- NAME comment in
// README.md.
func readmeBlock(t *testing.T, readme, name string) string {
	t.Helper()
	_, rest, ok := strings.Cut(readme, "<!-- "+name)
	if !ok {
		t.Fatalf("README.md has no <!-- %s --> block", name)
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	block, _, ok2 := strings.Cut(rest, "\n```")
	if !ok || !ok2 {
		t.Fatalf("README.md's %s block is not followed by a ```sh block", name)
	}
	return block
}

// readmeScript runs block with /bin/sh -eu in dir, in a process group of its
// own (killed when the test ends), with env added.
type readmeScript struct {
	name string
	cmd  *exec.Cmd
	out  *lockedWriter
	done chan error
}

func runReadmeBlock(t *testing.T, name, block, dir string, env ...string) *readmeScript {
	t.Helper()
	script := filepath.Join(t.TempDir(), name+".sh")
	if err := os.WriteFile(script, []byte("set -eu\n"+block+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := &readmeScript{name: name, out: &lockedWriter{w: &bytesBuffer{}}, done: make(chan error, 1)}
	s.cmd = exec.Command("/bin/sh", script)
	s.cmd.Dir = dir
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case err := <-s.done:
			s.done <- err
		case <-time.After(20 * time.Second):
			syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		}
	})
	return s
}

// finish waits for a block that must end, and succeed.
func (s *readmeScript) finish(t *testing.T) string {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err
		if err != nil {
			t.Fatalf("README.md's %s block failed: %v\n%s", s.name, err, s.out.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("README.md's %s block did not end within 60s:\n%s", s.name, s.out.String())
	}
	return s.out.String()
}

// running fails if a block that must keep running (the broker, the agent) has ended.
func (s *readmeScript) running(t *testing.T) {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err
		t.Fatalf("README.md's %s block ended (%v):\n%s", s.name, err, s.out.String())
	default:
	}
}

// The four blocks of README's "Running a fleet", run as written: the broker's
// machine (a CA and certificates made with openssl, a TLS mosquitto with the
// access list, on a free port), a device (the agent with the fleet flags,
// under LATCH_ROOT), the operator publishing a signed release and reading the
// fleet, and a signed force command for the device that a kiosk's lock holds.
// The access list is attacked too: another device's certificate cannot write
// this device's state or the fleet's target.
func TestReadmeFleet(t *testing.T) {
	fleetNeeds(t)
	if os.Getenv("LATCH_CROSS") != "" {
		t.Skip("LATCH_CROSS: README's fleet guide runs in the native suite only")
	}
	for _, tool := range []string{"openssl", "setpriv", "flock", "mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s missing: README's fleet guide was not run", tool)
		}
	}
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	brokerBlock := readmeBlock(t, readme, "fleet-broker")
	deviceBlock := readmeBlock(t, readme, "fleet-device")
	publishBlock := readmeBlock(t, readme, "fleet-publish")
	forceBlock := readmeBlock(t, readme, "fleet-force")
	for name, want := range map[string]string{"fleet-broker": "mosquitto -c", "fleet-device": "latch agent", "fleet-publish": "latch fleet publish", "fleet-force": "--sign-key"} {
		block := map[string]string{"fleet-broker": brokerBlock, "fleet-device": deviceBlock, "fleet-publish": publishBlock, "fleet-force": forceBlock}[name]
		if !strings.Contains(block, want) {
			t.Fatalf("README.md's %s block does not run %s:\n%s", name, want, block)
		}
	}

	// The broker's folder must be readable by the user mosquitto drops to.
	top, err := os.MkdirTemp("", "latch-readme-fleet-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	if err := os.Chmod(top, 0o755); err != nil {
		t.Fatal(err)
	}
	brokerDir := filepath.Join(top, "broker")
	bin := filepath.Join(top, "bin")
	hostDir := filepath.Join(top, "host")
	deviceDir := filepath.Join(top, "device")
	devRoot := filepath.Join(top, "device-root")
	work := filepath.Join(top, "publisher")
	for _, d := range []string{bin, hostDir, deviceDir, devRoot, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(latchBin, filepath.Join(bin, "latch")); err != nil {
		t.Fatal(err)
	}
	path := "PATH=" + bin + ":" + os.Getenv("PATH")

	// The broker: the port is free now; mosquitto listens on every address, as written.
	var broker *readmeScript
	var port int
	for try := 0; ; try++ {
		port = fleetFreePort(t)
		os.RemoveAll(brokerDir)
		broker = runReadmeBlock(t, "fleet-broker", brokerBlock, top, path, "BROKER=localhost", "PORT="+strconv.Itoa(port), "DIR="+brokerDir)
		if waitListening(broker, port) {
			break
		}
		if try == 3 {
			t.Fatalf("the README's broker does not listen on %d:\n%s", port, broker.out.String())
		}
		syscall.Kill(-broker.cmd.Process.Pid, syscall.SIGKILL)
	}
	env := []string{path, "BROKER=localhost", "PORT=" + strconv.Itoa(port)}

	// The publisher's folder of "Publishing a release" (keys, root of fleet kiosk-prod) and
	// its draft; the device and the operator get their files from the broker's folder.
	for _, args := range [][]string{
		{"key", "gen", "root-alice"}, {"key", "gen", "ci"},
		{"root", "init", "--root-key", "root-alice.pub", "--root-threshold", "1", "--targets-key", "ci.pub",
			"--targets-threshold", "1", "--fleet", "kiosk-prod", "--expires", "2y", "-o", "root.json"},
		{"root", "sign", "--key", "root-alice.key", "root.json"},
	} {
		cmd := exec.Command(latchBin, args...)
		cmd.Dir = work
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("latch %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	copyTo := func(dst string, files ...string) {
		t.Helper()
		for _, f := range files {
			src := filepath.Join(brokerDir, f)
			if f == "root.json" {
				src = filepath.Join(work, f)
			}
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dst, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	copyTo(deviceDir, "ca.pem", "pi-0001.pem", "pi-0001.key", "root.json")
	copyTo(work, "ca.pem", "operator.pem", "operator.key")
	draft := func(release string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(work, "payload"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(work, "payload", "hello.txt"), []byte("hello "+release+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		doc := fmt.Sprintf(`{"apps": {"hello": {"release": %q, "services": {"main": {
  "files": [{"source": "payload/hello.txt", "path": %q}],
  "start": "true", "stop": "true"}}}}}`, release, filepath.Join(devRoot, "opt", "hello", "hello.txt"))
		if err := os.WriteFile(filepath.Join(work, "draft.json"), []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptestServer(t, hostDir)

	// The device.
	agent := runReadmeBlock(t, "fleet-device", deviceBlock, deviceDir, append(env, "LATCH_ROOT="+devRoot, "NOTIFY_SOCKET=")...)

	// The operator publishes release 1.0; the device applies it.
	draft("1.0")
	out := runReadmeBlock(t, "fleet-publish", publishBlock, work, append(env, "BASE_URL="+srv, "HOST_DIR="+hostDir)...).finish(t)
	if !strings.Contains(out, "as the target of fleet kiosk-prod") || !strings.Contains(out, "DEVICE") {
		t.Errorf("README's publish block: no publish line or no fleet table:\n%s", out)
	}
	fleetStatus := func() map[string]scaleRow {
		t.Helper()
		cmd := exec.Command(latchBin, "fleet", "status", "--broker", fmt.Sprintf("mqtts://localhost:%d", port), "--mqtt-ca", "ca.pem",
			"--mqtt-cert", "operator.pem", "--mqtt-key", "operator.key", "--fleet", "kiosk-prod", "--json", "--wait", "1s")
		cmd.Dir = work
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("latch fleet status --json: %v\n%s", err, out)
		}
		var rows []scaleRow
		if err := json.Unmarshal(out, &rows); err != nil {
			t.Fatalf("latch fleet status --json: %v\n%s", err, out)
		}
		m := map[string]scaleRow{}
		for _, r := range rows {
			m[r.Device] = r
		}
		return m
	}
	waitRow := func(what string, ok func(r scaleRow) bool) scaleRow {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			broker.running(t)
			agent.running(t)
			r := fleetStatus()["pi-0001"]
			if ok(r) {
				return r
			}
			if time.Now().After(deadline) {
				t.Fatalf("latch fleet status: pi-0001 never %s: %+v\nagent:\n%s\nbroker:\n%s", what, r, agent.out.String(), tail(broker.out.String(), 3000))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitRow("on hello=1.0", func(r scaleRow) bool { return r.settled("hello=1.0") })
	installed := filepath.Join(devRoot, "opt", "hello", "hello.txt")
	if got := readFile(t, installed); got != "hello 1.0" {
		t.Fatalf("%s = %q after hello=1.0, want hello 1.0", installed, got)
	}

	// The access list: pi-0002 cannot write pi-0001's state, nor the fleet's target.
	pub := func(topic, payload string) string {
		cmd := exec.Command("mosquitto_pub", "-V", "5", "-h", "localhost", "-p", strconv.Itoa(port), "--cafile", "ca.pem",
			"--cert", "pi-0002.pem", "--key", "pi-0002.key", "-q", "1", "-r", "-t", topic, "-m", payload)
		cmd.Dir = brokerDir
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	pub("latch/devices/pi-0001/state", `{"status":"idle","release":"hello=forged"}`)
	pub("latch/fleets/kiosk-prod/target", `{"target":{"apps":{}}}`)
	sub := exec.Command("mosquitto_sub", "-h", "localhost", "-p", strconv.Itoa(port), "--cafile", "ca.pem",
		"--cert", "operator.pem", "--key", "operator.key", "-t", "latch/fleets/kiosk-prod/target", "--retained-only", "-C", "1", "-W", "2")
	sub.Dir = work
	if got, err := sub.Output(); err != nil || !strings.Contains(string(got), `"sig"`) || strings.Contains(string(got), `"apps":{}`) {
		t.Errorf("after pi-0002 wrote the fleet's target, the broker's retained target is %q (%v): want the operator's, signed", got, err)
	}
	if r := fleetStatus()["pi-0001"]; r.Release != "hello=1.0" {
		t.Errorf("after pi-0002 wrote pi-0001's state, latch fleet status shows pi-0001 %+v: want its own state, hello=1.0", r)
	}

	// The kiosk enters its critical section (uid 1000, O_EXCL and a flock); release 2.0 waits.
	h := holdLock(t, filepath.Join(devRoot, "tmp", "latch", "services", "hello", "main", "updates.lock"))
	draft("2.0")
	runReadmeBlock(t, "fleet-publish", publishBlock, work, append(env, "BASE_URL="+srv, "HOST_DIR="+hostDir)...).finish(t)
	waitRow("blocked by the kiosk on hello=1.0", func(r scaleRow) bool {
		return r.online() && r.Release == "hello=1.0" && len(r.BlockedBy) == 1 && r.BlockedBy[0].Path == h.path && r.BlockedBy[0].PID == h.cmd.Process.Pid
	})

	// The signed force moves it.
	out = runReadmeBlock(t, "fleet-force", forceBlock, work, env...).finish(t)
	if !strings.Contains(out, "pi-0001: ") || !strings.Contains(out, " ok: ") {
		t.Errorf("README's force block: want pi-0001's result ok, got:\n%s", out)
	}
	waitRow("forced onto hello=2.0", func(r scaleRow) bool { return r.settled("hello=2.0") })
	if got := readFile(t, installed); got != "hello 2.0" {
		t.Errorf("%s = %q after the forced update, want hello 2.0", installed, got)
	}
}

// waitListening waits for the README's broker to listen on port, or to end.
func waitListening(s *readmeScript, port int) bool {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second); err == nil {
			c.Close()
			return true
		}
		select {
		case err := <-s.done:
			s.done <- err
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	return false
}
