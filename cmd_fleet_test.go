package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"latch/agent/fleet"
)

// testBroker starts a mosquitto of the test's own on a free loopback port,
// stopped by its pid at the end.
func testBroker(t *testing.T) string {
	t.Helper()
	if os.Getenv("LATCH_EMULATED") == "1" {
		t.Skip("under qemu-user (LATCH_EMULATED=1): latch fleet against a real broker runs in the native suite and on 386")
	}
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, err := os.Stat("/usr/sbin/mosquitto"); err != nil {
			t.Skip("mosquitto is not installed: latch fleet against a real broker was not tested")
		}
		bin = "/usr/sbin/mosquitto"
	}
	dir := t.TempDir()
	for try := 0; try < 5; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		port := addr[strings.LastIndex(addr, ":")+1:]
		conf := filepath.Join(dir, "mosquitto.conf")
		os.WriteFile(conf, []byte("listener "+port+" 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"), 0o600)
		cmd := exec.Command(bin, "-c", conf)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				t.Cleanup(func() { cmd.Process.Signal(syscall.SIGKILL); <-exited })
				return "mqtt://" + addr
			}
			select {
			case <-exited:
			default:
				continue
			}
			break
		}
		cmd.Process.Kill()
		<-exited
	}
	t.Fatal("mosquitto did not start")
	return ""
}

// fakeBoard is a device side of the fleet channel in the test process: it
// publishes the state the test gives it, and answers commands.
type fakeBoard struct {
	dev     *fleet.Device
	mu      sync.Mutex
	targets []string
	cmds    []fleet.Command
}

func startBoard(t *testing.T, broker, id, fleetName string, state string) *fakeBoard {
	t.Helper()
	u, _ := url.Parse(broker)
	b := &fakeBoard{}
	var dev *fleet.Device
	h := fleet.Handlers{
		OnTarget: func(source string, payload []byte) {
			b.mu.Lock()
			b.targets = append(b.targets, source+":"+string(payload))
			b.mu.Unlock()
		},
		OnCommand: func(c fleet.Command) {
			b.mu.Lock()
			b.cmds = append(b.cmds, c)
			b.mu.Unlock()
			go dev.PublishResult(context.Background(), c.ID, fleet.StatusOK, "did "+c.Action)
		},
	}
	dev, err := fleet.Start(context.Background(), fleet.Config{Broker: u, DeviceID: id, Fleet: fleetName,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}, h)
	if err != nil {
		t.Fatal(err)
	}
	b.dev = dev
	t.Cleanup(func() { dev.Close(context.Background()) })
	if err := dev.PublishState([]byte(state)); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFleetStatusPublishCmd(t *testing.T) {
	broker := testBroker(t)
	since := time.Now().Add(-90 * time.Minute).UTC().Format(time.RFC3339)
	later := time.Now().Add(-5 * time.Minute).UTC().Format(time.RFC3339)
	idle := `{"status":"idle","release":"kiosk=r2","blocked_by":[]}`
	blocked := func(since string, pid int) string {
		return fmt.Sprintf(`{"status":"waiting","release":"kiosk=r1","blocked_since":%q,"blocked_by":[{"app":"kiosk","service":"ui","path":"/tmp/latch/services/kiosk/ui/updates.lock","state":"held","uid":1000,"holder":{"pid":%d,"command":"payment --card"}}]}`, since, pid)
	}
	boards := map[string]*fakeBoard{}
	for i := 0; i < 6; i++ {
		id := fmt.Sprintf("board-%02d", i)
		st := idle
		switch i {
		case 2:
			st = blocked(later, 222)
		case 4:
			st = blocked(since, 444)
		}
		boards[id] = startBoard(t, broker, id, "kiosk-prod", st)
	}
	startBoard(t, broker, "other-01", "elsewhere", idle)
	e := newTrustEnv(t)

	var rows []fleetRow
	deadline := time.Now().Add(20 * time.Second)
	for {
		out := e.ok("fleet", "status", "--broker", broker, "--fleet", "kiosk-prod", "--json", "--wait", "500ms")
		rows = nil
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("fleet status --json: %v\n%s", err, out)
		}
		if len(rows) == 6 || time.Now().After(deadline) {
			break
		}
	}
	if len(rows) != 6 {
		t.Fatalf("fleet status names %d devices of kiosk-prod, want 6: %+v", len(rows), rows)
	}
	// The stuck first, longest blocked first; exactly the two blocked.
	if rows[0].Device != "board-04" || rows[1].Device != "board-02" {
		t.Fatalf("order %s, %s first; want board-04 (blocked 90m), board-02 (5m)", rows[0].Device, rows[1].Device)
	}
	for i, r := range rows {
		if (i < 2) != (len(r.BlockedBy) == 1) {
			t.Fatalf("%s blocked by %+v", r.Device, r.BlockedBy)
		}
		if r.Online == nil || !*r.Online {
			t.Fatalf("%s not online: %+v", r.Device, r)
		}
	}
	if b := rows[0].BlockedBy[0]; b.App != "kiosk" || b.Service != "ui" || b.PID != 444 || b.Command != "payment --card" {
		t.Fatalf("board-04 blocked by %+v", b)
	}
	table := e.ok("fleet", "status", "--broker", broker, "--fleet", "kiosk-prod", "--wait", "500ms")
	t.Logf("latch fleet status:\n%s", table)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if !strings.HasPrefix(lines[1], "board-04") || !strings.Contains(lines[1], "kiosk/ui held by pid 444 (payment --card), for 1h30m") ||
		!strings.Contains(table, "6 device(s), 2 blocked by a lock") {
		t.Fatalf("table:\n%s", table)
	}

	// publish: every board of the fleet gets the target and its signature.
	e.write("target.json", `{"apps":{"kiosk":{"release":"r3","services":{}}}}`)
	e.write("target.json.sig", `{"signatures":[],"roots":[]}`)
	e.ok("fleet", "publish", "--broker", broker, "--fleet", "kiosk-prod", "target.json")
	for id, b := range boards {
		waitUntil(t, id+" gets the target", func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return len(b.targets) > 0 && strings.Contains(b.targets[len(b.targets)-1], `"r3"`) &&
				strings.HasPrefix(b.targets[len(b.targets)-1], fleet.SourceFleet+":")
		})
	}

	// cmd: one board runs it and answers; the answer is printed.
	out := e.ok("fleet", "cmd", "--broker", broker, "board-04", "update", "--force")
	if !strings.Contains(out, "board-04: ") || !strings.Contains(out, "ok: did update") {
		t.Fatalf("fleet cmd said %q", out)
	}
	b := boards["board-04"]
	b.mu.Lock()
	if len(b.cmds) != 1 || b.cmds[0].Action != "update" || !b.cmds[0].Force {
		t.Fatalf("board-04 got %+v", b.cmds)
	}
	b.mu.Unlock()
	for id, o := range boards {
		if id != "board-04" && len(o.cmds) != 0 {
			t.Fatalf("%s got a command meant for board-04", id)
		}
	}
}

func TestFleetBadInput(t *testing.T) {
	broker := testBroker(t)
	e := newTrustEnv(t)
	e.write("target.json", `{"apps":{}}`)
	e.write("bad.json", `{"apps":`)
	for _, c := range []struct {
		want string
		code int
		args []string
	}{
		{"give --broker", 2, []string{"fleet", "status"}},
		{"--broker", 2, []string{"fleet", "status", "--broker", "http://x"}},
		{"unknown subcommand", 2, []string{"fleet", "launch"}},
		{"one of them", 2, []string{"fleet", "publish", "--broker", broker, "target.json"}},
		{"not JSON", 1, []string{"fleet", "publish", "--broker", broker, "--fleet", "f", "bad.json"}},
		{"fleet", 1, []string{"fleet", "publish", "--broker", broker, "--fleet", "a/b", "target.json"}},
		{"action", 2, []string{"fleet", "cmd", "--broker", broker, "board-1", "explode"}},
		{"give DEVICE and ACTION", 2, []string{"fleet", "cmd", "--broker", broker, "board-1"}},
		{"did not answer", 1, []string{"fleet", "cmd", "--broker", broker, "--wait", "300ms", "nobody", "cancel"}},
	} {
		e.fails(c.code, c.want, c.args...)
	}
}
