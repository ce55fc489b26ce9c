package api

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSocketMode: the socket is mode 0660; root connects, uid 1000 is refused
// by the kernel (curl as another user through setpriv).
func TestSocketMode(t *testing.T) {
	e := newEnv(t, envOpts{})
	fi, err := os.Lstat(e.socket)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode(); got.Type() != os.ModeSocket || got.Perm() != 0o660 {
		t.Fatalf("socket mode: got %v, want socket 0660", got)
	}
	// Nothing is left of the private directory the socket was bound in.
	if ents, _ := os.ReadDir(filepath.Dir(e.socket)); len(ents) != 1 {
		t.Errorf("run dir: got %d entries, want only api.sock", len(ents))
	}
	if os.Getuid() != 0 {
		t.Skip("not root: the refusal of another uid (setpriv --reuid=1000) was not tested")
	}
	for _, tool := range []string{"curl", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: the refusal of another uid was not tested", tool)
		}
	}
	// The run dir must be searchable by uid 1000 so that only the socket's
	// own mode decides.
	if err := os.Chmod(filepath.Dir(e.socket), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("curl", "-sS", "--unix-socket", e.socket, "http://latch/ping").CombinedOutput()
	if err != nil || string(out) != "OK" {
		t.Fatalf("curl as root: got %q, %v, want OK", out, err)
	}
	out, err = exec.Command("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
		"curl", "-sS", "-v", "--unix-socket", e.socket, "http://latch/ping").CombinedOutput()
	if err == nil || !strings.Contains(strings.ToLower(string(out)), "permission denied") {
		t.Fatalf("curl as uid 1000: got %q, %v, want permission denied", out, err)
	}
}

// TestListenPath: a stale socket is replaced, anything else is refused and
// left alone, and the socket is removed at shutdown.
func TestListenPath(t *testing.T) {
	dir, err := os.MkdirTemp("", "latchsock")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)

	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a socket file that nobody listens on, as after a crash
	s, err := Listen(Config{Socket: stale})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after Close: got %v, want it removed", err)
	}

	for _, tt := range []struct {
		name string
		make func(p string) error
	}{
		{"regular file", func(p string) error { return os.WriteFile(p, []byte("data"), 0o644) }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o755) }},
		{"symlink", func(p string) error { return os.Symlink(stale, p) }},
	} {
		p := filepath.Join(dir, tt.name)
		if err := tt.make(p); err != nil {
			t.Fatal(err)
		}
		if _, err := Listen(Config{Socket: p}); !errors.Is(err, ErrNotSocket) {
			t.Errorf("Listen on a %s: got %v, want ErrNotSocket", tt.name, err)
		}
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s after a refused Listen: %v, want it left alone", tt.name, err)
		}
	}
	if _, err := Listen(Config{Socket: filepath.Join(dir, "k.sock"), Listen: "127.0.0.1:0"}); !errors.Is(err, ErrNoKey) {
		t.Errorf("Listen on TCP without a key: got %v, want ErrNoKey", err)
	}
}

// TestSlowClient: a client that never finishes its headers is disconnected
// after the header timeout instead of holding a connection forever.
func TestSlowClient(t *testing.T) {
	e := newEnv(t, envOpts{tune: func(s *Server) {
		s.readHeaderTimeout = 200 * time.Millisecond
		s.tcpReadHeaderTimeout = 200 * time.Millisecond
	}})
	for _, dial := range []struct{ network, addr string }{{"unix", e.socket}, {"tcp", e.srv.Addr().String()}} {
		c, err := net.Dial(dial.network, dial.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /v1/device HTTP/1.1\r\nHost: latch\r\n") // and never the blank line
		c.SetReadDeadline(time.Now().Add(20 * time.Second))             // a bound for a broken server, not a timing assertion
		_, err = io.ReadAll(bufio.NewReader(c))
		c.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s: the server kept a slow client's connection open", dial.network)
		}
	}
}

// TestSocketGroup: with SocketGID the socket belongs to that group, and a
// member of it (uid 1000 with the group as a supplementary one) connects
// where a non-member is refused.
func TestSocketGroup(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("not root: giving the socket to another group was not tested")
	}
	for _, tool := range []string{"curl", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: access by the socket's group was not tested", tool)
		}
	}
	dir, err := os.MkdirTemp("", "latchgrp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "api.sock")
	const gid = 4242
	s, err := Listen(Config{Socket: sock, SocketGID: gid})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	go http.Serve(s.unix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "OK") }))
	var st syscall.Stat_t
	if err := syscall.Lstat(sock, &st); err != nil {
		t.Fatal(err)
	}
	if st.Gid != gid || st.Mode&0o777 != 0o660 {
		t.Fatalf("socket: gid %d mode %o, want gid %d mode 660", st.Gid, st.Mode&0o777, gid)
	}
	curl := func(groups string) (string, error) {
		out, err := exec.Command("setpriv", "--reuid=1000", "--regid=1000", "--groups="+groups,
			"curl", "-sS", "-v", "--unix-socket", sock, "http://latch/ping").CombinedOutput()
		return string(out), err
	}
	if out, err := curl("4242"); err != nil || !strings.HasSuffix(out, "OK") {
		t.Errorf("uid 1000 in group %d: got %q, %v; want OK", gid, out, err)
	}
	if out, err := curl("4343"); err == nil || !strings.Contains(strings.ToLower(out), "permission denied") {
		t.Errorf("uid 1000 outside group %d: got %q, %v; want permission denied", gid, out, err)
	}
}
