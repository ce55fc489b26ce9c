package api

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// flooderEnv makes the test binary a flooder instead of running the tests:
// "NETWORK ADDR SILENT HALF SOURCES" opens SILENT connections that send
// nothing and HALF that send half a request header (TCP ones from SOURCES
// addresses 127.0.0.2 and up), prints "ready OPEN FAILED", and keeps them
// open until its stdin closes. The flood runs in its own process so that the
// descriptors the test counts are the server's alone.
const flooderEnv = "LATCH_API_TEST_FLOOD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(flooderEnv); spec != "" {
		os.Exit(flood(spec))
	}
	os.Exit(m.Run())
}

func flood(spec string) int {
	var network, addr string
	var silent, half, sources int
	if _, err := fmt.Sscan(spec, &network, &addr, &silent, &half, &sources); err != nil {
		fmt.Fprintf(os.Stderr, "flooder: bad %s %q: %v\n", flooderEnv, spec, err)
		return 2
	}
	var conns []net.Conn
	failed := 0
	for i := range silent + half {
		d := net.Dialer{Timeout: 5 * time.Second}
		if network == "tcp" && sources > 0 {
			d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%sources))}
		}
		c, err := d.Dial(network, addr)
		if err != nil {
			failed++
			continue
		}
		if i >= silent {
			io.WriteString(c, "GET /v1/device HTTP/1.1\r\nHost: latch\r\n") // and never the blank line
		}
		conns = append(conns, c)
	}
	fmt.Printf("ready %d %d\n", len(conns), failed)
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	return 0
}

// flooder is a running flood process.
type flooder struct {
	cmd   *exec.Cmd
	stdin io.Closer
	open  int
}

// startFlood runs the flood of spec as the test binary at bin, through
// setpriv when asUID >= 0, and waits until its connections are open.
func startFlood(t *testing.T, bin string, asUID int, spec string) *flooder {
	t.Helper()
	cmd := exec.Command(bin)
	if asUID >= 0 {
		cmd = exec.Command("setpriv", "--reuid="+strconv.Itoa(asUID), "--regid="+strconv.Itoa(asUID), "--groups="+strconv.Itoa(apiGID), bin)
	}
	cmd.Env = append(os.Environ(), flooderEnv+"="+spec)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := &flooder{cmd: cmd, stdin: stdin}
	t.Cleanup(f.stop)
	var open, failed int
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if _, serr := fmt.Sscanf(line, "ready %d %d", &open, &failed); err != nil || serr != nil {
		t.Fatalf("flooder %q: got %q, %v", spec, line, err)
	}
	f.open = open
	t.Logf("flood %q: %d connections open, %d failed to connect", spec, open, failed)
	return f
}

func (f *flooder) stop() {
	if f.stdin != nil {
		f.stdin.Close()
		f.cmd.Wait()
		f.stdin = nil
	}
}

// copyFile copies an executable without holding it in memory (the test
// measures its own RSS).
func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// countFDs counts the test process's open descriptors.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count descriptors: %v", err)
	}
	return len(ents)
}

// TestFlood: thousands of TCP connections that send nothing or half a
// header, and (as root) a thousand unix connections of a member of the
// socket's group, leave the server with a bounded number of descriptors;
// meanwhile root's GET /v1/device over the socket is answered, a TCP
// connection over the caps is answered 503 at once, and after the flood
// every slot is given back and TCP is served again.
func TestFlood(t *testing.T) {
	asRoot := os.Getuid() == 0
	o := envOpts{quiet: true, tune: func(s *Server) {
		// Long enough that the flood's connections hold their slots while
		// the test looks; the default is seconds.
		s.tcpReadHeaderTimeout = time.Minute
		s.readHeaderTimeout = time.Minute
	}}
	if asRoot {
		o.socketGID = apiGID
	}
	e := newEnv(t, o)
	unixTr := e.transports()[0]
	// One keep-alive connection of root's client, opened before counting.
	if a := unixTr.call(t, "GET", "/v1/device", nil, nil); a.code != 200 {
		t.Fatalf("GET /v1/device before the flood: got %d", a.code)
	}
	idleFDs, idleRSS := countFDs(t), procKB("VmRSS")

	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const silent, half, sources = 3000, 300, 100
	flooders := []*flooder{startFlood(t, bin, -1, fmt.Sprintf("tcp %s %d %d %d", e.srv.Addr(), silent, half, sources))}
	unixFlood := 0
	if asRoot {
		if _, err := exec.LookPath("setpriv"); err == nil {
			// uid 1000 must be able to run a copy of the test binary.
			dir, err := os.MkdirTemp("", "latchflood")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			copyBin := filepath.Join(dir, "flooder")
			if err := copyFile(bin, copyBin); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			unixFlood = 1000
			flooders = append(flooders, startFlood(t, copyBin, 1000, fmt.Sprintf("unix %s %d %d 0", e.socket, unixFlood-100, 100)))
		}
	}
	if unixFlood == 0 {
		t.Log("not root: the unix socket was not flooded by another uid")
	}

	// The server has taken what the caps allow once its counts are full.
	waitFor(t, "the TCP listener to reach its cap", func() bool { n, _ := e.srv.tcpLim.counts(""); return n >= MaxTCPConns })
	if unixFlood > 0 {
		waitFor(t, "uid 1000 to reach its cap on the socket", func() bool { _, n := e.srv.unixLim.counts("uid 1000"); return n >= MaxUnixConnsPerUID })
	}
	bound := idleFDs + MaxTCPConns + 32 // 32: the flooders' pipes and pidfds, the test's own clients
	if unixFlood > 0 {
		bound += MaxUnixConnsPerUID
	}
	maxFDs, maxRSS := 0, 0
	for i := range 20 {
		a := unixTr.call(t, "GET", "/v1/device", nil, nil)
		if a.code != 200 {
			t.Fatalf("GET /v1/device over the socket under the flood (%d): got %d %s", i, a.code, a.body)
		}
		maxFDs, maxRSS = max(maxFDs, countFDs(t)), max(maxRSS, procKB("VmRSS"))
	}
	for _, src := range []string{"127.0.0.1", "127.0.0.250"} {
		n, per := e.srv.tcpLim.counts(src)
		if n > MaxTCPConns || per > MaxTCPConnsPerIP {
			t.Errorf("TCP connections held: %d in all, %d from %s; the caps are %d and %d", n, per, src, MaxTCPConns, MaxTCPConnsPerIP)
		}
	}
	if _, per := e.srv.tcpLim.counts("127.0.0.2"); per > MaxTCPConnsPerIP {
		t.Errorf("TCP connections held from 127.0.0.2: %d, the cap is %d", per, MaxTCPConnsPerIP)
	}
	// A new TCP client is refused at once with a 503 that says why, before
	// it sends anything: the listener is full.
	resp, body := readRefusal(t, "tcp", e.srv.Addr().String())
	var eb ErrorBody
	if resp.StatusCode != 503 || json.Unmarshal(body, &eb) != nil || eb.Status != "failed" || !strings.Contains(eb.Message, "the limit is 64") {
		t.Errorf("TCP request under the flood: got %d %s, want 503 naming the cap", resp.StatusCode, body)
	}
	t.Logf("descriptors: idle %d, under the flood at most %d (bound %d); RSS: idle %d KiB, under the flood at most %d KiB; flood: %d TCP, %d unix connections",
		idleFDs, maxFDs, bound, idleRSS, maxRSS, silent+half, unixFlood)
	if maxFDs > bound {
		t.Errorf("descriptors under the flood: got %d, want at most %d (idle %d + the caps + 32)", maxFDs, bound, idleFDs)
	}

	// After the flood every slot comes back and TCP serves again.
	for _, f := range flooders {
		f.stop()
	}
	waitFor(t, "the flood's slots to be given back", func() bool {
		tn, _ := e.srv.tcpLim.counts("")
		un := 0
		if unixFlood > 0 { // else uid 1000 may be the test's own
			_, un = e.srv.unixLim.counts("uid 1000")
		}
		return tn == 0 && un == 0
	})
	if a := e.transports()[1].call(t, "GET", "/v1/device", nil, nil); a.code != 200 {
		t.Errorf("TCP after the flood: got %d %s, want 200", a.code, a.body)
	}
}

// readRefusal connects to network/addr and reads the answer that a
// connection over a cap gets without sending anything (the server does not
// read it; a request written after its close could reset the connection
// before the answer is read).
func readRefusal(t *testing.T, network, addr string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second)) // a bound for a hung server, not a timing assertion
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read the refusal of a connection over the cap to %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// dialFrom opens a TCP connection to addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ping sends GET /ping on c and returns the status of the answer.
func ping(t *testing.T, c net.Conn) int {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second)) // a bound for a hung server, not a timing assertion
	if _, err := io.WriteString(c, "GET /ping HTTP/1.1\r\nHost: latch\r\n\r\n"); err != nil {
		t.Fatalf("write /ping: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read /ping: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestConnCapPerPeer: the connection over a peer's cap is answered 503
// without being read, another peer is still served, and a closed
// connection gives its slot back; on the unix socket the peer is the uid.
func TestConnCapPerPeer(t *testing.T) {
	e := newEnv(t, envOpts{tune: func(s *Server) { s.unixLim.perPeer = 3 }})
	addr := e.srv.Addr().String()
	var held []net.Conn
	for range MaxTCPConnsPerIP {
		held = append(held, dialFrom(t, "127.0.0.1", addr))
	}
	waitFor(t, "the connections from 127.0.0.1 to be accepted", func() bool { _, n := e.srv.tcpLim.counts("127.0.0.1"); return n == MaxTCPConnsPerIP })
	over := dialFrom(t, "127.0.0.1", addr)
	over.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(over)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the connection over the cap, sending nothing: got %v, want a 503 answer", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || !strings.Contains(string(b), "from 127.0.0.1, the limit per peer is 8") {
		t.Errorf("the connection over the cap: got %d %s, want 503 naming the peer's cap", resp.StatusCode, b)
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("the connection over the cap after its answer: got %v, want it closed (EOF)", err)
	}
	// Another address is another peer.
	if code := ping(t, dialFrom(t, "127.0.0.3", addr)); code != 200 {
		t.Errorf("GET /ping from 127.0.0.3: got %d, want 200", code)
	}
	// The held ones are served, and a closed one gives its slot back.
	if code := ping(t, held[0]); code != 200 {
		t.Errorf("GET /ping on a held connection: got %d, want 200", code)
	}
	held[1].Close()
	waitFor(t, "the closed connection's slot", func() bool { _, n := e.srv.tcpLim.counts("127.0.0.1"); return n < MaxTCPConnsPerIP })
	if code := ping(t, dialFrom(t, "127.0.0.1", addr)); code != 200 {
		t.Errorf("GET /ping after a slot was given back: got %d, want 200", code)
	}

	// The unix socket counts by uid (3 in this test).
	me := "uid " + strconv.Itoa(os.Getuid())
	for range 3 {
		c, err := net.Dial("unix", e.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	waitFor(t, "the unix connections to be accepted", func() bool { _, n := e.srv.unixLim.counts(me); return n == 3 })
	resp, body := readRefusal(t, "unix", e.socket)
	if resp.StatusCode != 503 || !strings.Contains(string(body), me+", the limit per peer is 3") {
		t.Errorf("the 4th unix connection of %s: got %d %s, want 503 naming the cap", me, resp.StatusCode, body)
	}
}

// TestUnauthenticatedClose: an answer to a TCP request without the key (a
// 401, or GET /ping) closes the connection, so that a client without the
// key cannot keep one of the capped slots; with the key it stays open.
func TestUnauthenticatedClose(t *testing.T) {
	e := newEnv(t, envOpts{})
	addr := e.srv.Addr().String()
	for _, tt := range []struct {
		name, req string
		want      int
		closed    bool
	}{
		{"401", "GET /v1/device HTTP/1.1\r\nHost: latch\r\n\r\n", 401, true},
		{"wrong key", "GET /v1/device HTTP/1.1\r\nHost: latch\r\nAuthorization: Bearer nope\r\n\r\n", 401, true},
		{"ping without key", "GET /ping HTTP/1.1\r\nHost: latch\r\n\r\n", 200, true},
		{"ping with a wrong key", "GET /ping HTTP/1.1\r\nHost: latch\r\nAuthorization: Bearer nope\r\n\r\n", 200, true},
		{"ping with the key", "GET /ping HTTP/1.1\r\nHost: latch\r\nAuthorization: Bearer " + testKey + "\r\n\r\n", 200, false},
		{"Origin", "GET /ping HTTP/1.1\r\nHost: latch\r\nOrigin: \r\n\r\n", 403, true},
		{"with the key", "GET /v1/device HTTP/1.1\r\nHost: latch\r\nAuthorization: Bearer " + testKey + "\r\n\r\n", 200, false},
	} {
		c := dialFrom(t, "127.0.0.1", addr)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, tt.req)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
		// A second request on the same connection: EOF when it was closed.
		io.WriteString(c, "GET /ping HTTP/1.1\r\nHost: latch\r\n\r\n")
		_, err = http.ReadResponse(br, nil)
		if closed := err != nil; closed != tt.closed {
			t.Errorf("%s: connection closed after the answer: got %v (%v), want %v", tt.name, closed, err, tt.closed)
		}
		c.Close()
	}
}
