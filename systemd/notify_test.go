package systemd

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// listen binds a real unixgram socket, points NOTIFY_SOCKET at it and returns it.
func listen(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

// drain returns every datagram already queued on c, without waiting for more: each Notifier call
// has returned by then, and a unixgram send is complete when it returns.
func drain(t *testing.T, c *net.UnixConn) []string {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	buf := make([]byte, 4096)
	for {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if rerr != nil {
			return got
		}
		got = append(got, string(buf[:n]))
	}
}

func TestNotifier(t *testing.T) {
	c := listen(t)
	n := NewNotifier()
	if !n.Enabled() {
		t.Fatal("Enabled() = false with NOTIFY_SOCKET set, want true")
	}
	steps := []struct {
		name string
		do   func() error
		want []string
	}{
		{"status before ready", func() error { return n.Status("starting: opening journal") }, []string{"STATUS=starting: opening journal"}},
		{"ready carries status", n.Ready, []string{"READY=1\nSTATUS=starting: opening journal"}},
		{"same status is not resent", func() error { return n.Status("starting: opening journal") }, nil},
		{"newlines folded", func() error { return n.Status("waiting for lock\nkiosk/ui held by pid 42\r\n") }, []string{"STATUS=waiting for lock kiosk/ui held by pid 42"}},
		{"folded equal is deduplicated", func() error { return n.Status("waiting for lock kiosk/ui held by pid 42") }, nil},
		{"change is sent", func() error { return n.Status("idle") }, []string{"STATUS=idle"}},
		{"stopping", n.Stopping, []string{"STOPPING=1"}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		got := drain(t, c)
		if len(got) != len(s.want) {
			t.Fatalf("%s: got datagrams %q, want %q", s.name, got, s.want)
		}
		for i := range got {
			if got[i] != s.want[i] {
				t.Errorf("%s: got datagram %q, want %q", s.name, got[i], s.want[i])
			}
		}
	}
}

func TestNotifierOutsideSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := NewNotifier()
	if n.Enabled() {
		t.Error("Enabled() = true without NOTIFY_SOCKET, want false")
	}
	for name, f := range map[string]func() error{
		"Ready": n.Ready, "Status": func() error { return n.Status("x") }, "Stopping": n.Stopping,
	} {
		if err := f(); err != nil {
			t.Errorf("%s outside systemd: got %v, want nil", name, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n.RunWatchdog(ctx, time.Millisecond, func() bool { t.Error("alive called outside systemd"); return true })
}

func TestNotifierSocketGone(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "missing.sock"))
	if err := NewNotifier().Ready(); err == nil {
		t.Error("Ready to a missing socket: got nil error, want one")
	}
}

// TestRunWatchdog counts pings: one per alive()==true answer, none once alive turns false.
func TestRunWatchdog(t *testing.T) {
	const aliveCalls, totalCalls = 5, 12
	c := listen(t)
	n := NewNotifier()
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	calls := 0
	done := make(chan struct{})
	alive := func() bool {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == totalCalls {
			cancel()
		}
		return calls <= aliveCalls
	}
	go func() { n.RunWatchdog(ctx, time.Millisecond, alive); close(done) }()
	<-done
	got := drain(t, c)
	if len(got) != aliveCalls {
		t.Fatalf("got %d pings (%q), want %d: one per alive()==true, none after", len(got), got, aliveCalls)
	}
	for _, g := range got {
		if g != "WATCHDOG=1" {
			t.Errorf("got datagram %q, want WATCHDOG=1", g)
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	me := strconv.Itoa(os.Getpid())
	tests := []struct {
		usec, pid string
		want      time.Duration
		ok        bool
	}{
		{"", "", 0, false},
		{"10000000", "", 5 * time.Second, true},
		{"10000000", me, 5 * time.Second, true},
		{"2000000", strconv.Itoa(os.Getpid() + 1), 0, false},
		{"abc", "", 0, false},
		{"-5", "", 0, false},
		{"0", "", 0, false},
		{"1", "", 500 * time.Nanosecond, true},
	}
	for _, tt := range tests {
		t.Setenv("WATCHDOG_USEC", tt.usec)
		t.Setenv("WATCHDOG_PID", tt.pid)
		got, ok := WatchdogInterval()
		if got != tt.want || ok != tt.ok {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: got (%v, %v), want (%v, %v)", tt.usec, tt.pid, got, ok, tt.want, tt.ok)
		}
	}
}

func TestOneLine(t *testing.T) {
	tests := []struct{ in, want string }{
		{"a", "a"},
		{"a\nb", "a b"},
		{"a\r\n\r\nb\t c", "a b  c"},
		{"\n lead and trail \n", "lead and trail"},
		{"", ""},
		{"é\x00x", "é x"},
	}
	for _, tt := range tests {
		if got := oneLine(tt.in); got != tt.want {
			t.Errorf("oneLine(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// BenchmarkStatus compares a status line that changed (one datagram to systemd) with an
// unchanged one (deduplicated, nothing sent): the agent may call Status on every loop turn.
func BenchmarkStatus(b *testing.B) {
	path := filepath.Join(b.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	go func() { // keep the socket's queue from filling
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
	b.Setenv("NOTIFY_SOCKET", path)
	lines := [2]string{"waiting for lock kiosk/ui held by pid 42 for 3m", "idle: release 2026.11.2 running"}
	b.Run("changed", func(b *testing.B) {
		n := NewNotifier()
		for i := 0; i < b.N; i++ {
			if err := n.Status(lines[i%2]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unchanged", func(b *testing.B) {
		n := NewNotifier()
		for i := 0; i < b.N; i++ {
			if err := n.Status(lines[0]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
