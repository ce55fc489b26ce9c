package systemd

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// privateBus starts a dbus-daemon of the test's own on a socket in a temp
// dir and returns its address; it is killed when the test ends.
func privateBus(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon is not installed: the logind inhibitor query was not tested")
	}
	dir, err := os.MkdirTemp("", "latchbus") // a short path: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The stock session configuration, on a socket of the test's own.
	cmd := exec.Command(bin, "--session", "--address=unix:path="+filepath.Join(dir, "bus"), "--nofork", "--print-address")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			addr <- strings.TrimSpace(sc.Text())
		}
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("dbus-daemon printed no address within 10s")
	}
	return ""
}

type inhibitorRow struct {
	What, Who, Why, Mode string
	UID, PID             uint32
}

// fakeLogind answers ListInhibitors as logind does (a(ssssuu)).
type fakeLogind struct{ rows []inhibitorRow }

func (f *fakeLogind) ListInhibitors() ([]inhibitorRow, *dbus.Error) { return f.rows, nil }

func busConn(t *testing.T, addr string) *dbus.Conn {
	t.Helper()
	c, err := dbus.Connect(addr)
	if err != nil {
		t.Fatalf("connect to the test bus: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ShutdownBlockers reports the inhibitors that block a shutdown (mode
// block, "shutdown" among what), and none of the others, from a service that
// answers logind's ListInhibitors on a real D-Bus daemon.
func TestShutdownBlockers(t *testing.T) {
	addr := privateBus(t)
	srv := busConn(t, addr)
	fake := &fakeLogind{rows: []inhibitorRow{
		{"shutdown:sleep", "backup", "copying the disk", "block", 1000, 4242},
		{"shutdown", "NetworkManager", "saving state", "delay", 0, 17},
		{"sleep:idle", "player", "playing", "block", 1000, 99},
		{"handle-power-key:shutdown", "kiosk", "in a transaction", "block", 0, 7},
	}}
	if err := srv.Export(fake, "/org/freedesktop/login1", "org.freedesktop.login1.Manager"); err != nil {
		t.Fatal(err)
	}
	if reply, err := srv.RequestName("org.freedesktop.login1", dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own org.freedesktop.login1 on the test bus: %v %v", reply, err)
	}
	l := NewLogind(busConn(t, addr))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	all, err := l.Inhibitors(ctx)
	if err != nil || len(all) != 4 || all[0].Who != "backup" || all[0].PID != 4242 || all[0].UID != 1000 || all[0].Why != "copying the disk" {
		t.Fatalf("Inhibitors = %+v, %v; want the four rows decoded", all, err)
	}
	got, err := l.ShutdownBlockers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Who != "backup" || got[1].Who != "kiosk" {
		t.Errorf("ShutdownBlockers = %+v, want backup and kiosk (blocking shutdown), not the delay or the sleep-only ones", got)
	}
	fake.rows = nil
	if got, err := l.ShutdownBlockers(ctx); err != nil || len(got) != 0 {
		t.Errorf("with no inhibitors: %+v, %v; want none", got, err)
	}
	// No logind on the bus: an error naming the call, not a silent "none".
	srv.ReleaseName("org.freedesktop.login1")
	if _, err := l.ShutdownBlockers(ctx); err == nil || !strings.Contains(err.Error(), "list logind inhibitors") {
		t.Errorf("with no logind: %v, want an error naming the call", err)
	}
}
