package api

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Connection caps. Every accepted connection costs a descriptor, a goroutine
// and buffers before a single byte of it is read, so a flood of connections
// that never authenticate could otherwise exhaust the process's descriptors
// and take the unix socket down with TCP. Each listener has a total cap and a
// cap per peer (a TCP peer's IP address, or its /64 for IPv6; a unix peer's
// uid), so that one peer cannot fill the total alone. A connection over a cap
// is answered 503 at once, without reading it, and closed (a client that
// has already written its request may see the connection reset instead).
//
// The unix socket's caps are larger and its own: a flood on TCP never uses
// them, and root is still served while a member of the socket's group floods
// it. At most MaxTCPConns+MaxUnixConns descriptors are ever held by the API.
const (
	MaxTCPConns        = 64
	MaxTCPConnsPerIP   = 8
	MaxUnixConns       = 512
	MaxUnixConnsPerUID = 64
)

// peer is who is at the other end of a connection, carried in every
// request's context.
type peer struct {
	name string // for the journal: "api:unix uid=1000 pid=4242", "api:tcp 127.0.0.1:5555"
	tcp  bool
	uid  int    // a unix peer's uid from SO_PEERCRED; -1 over TCP or when unknown
	key  string // what the per-peer cap counts by
}

// unixPeer names the process at the other end of a unix connection from
// SO_PEERCRED. A peer whose credentials cannot be read has uid -1 and counts
// as one peer with every other such connection.
func unixPeer(c net.Conn) peer {
	p := peer{name: "api:unix", uid: -1, key: "uid ?"}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return p
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return p
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || cerr != nil || cred == nil {
		return p
	}
	p.uid = int(cred.Uid)
	p.key = "uid " + strconv.Itoa(p.uid)
	p.name = "api:unix uid=" + strconv.Itoa(p.uid) + " pid=" + strconv.Itoa(int(cred.Pid))
	return p
}

// tcpPeer names a TCP peer by its address and counts it by its IP (IPv6 by
// its /64, which one host is commonly given whole).
func tcpPeer(c net.Conn) peer {
	p := peer{name: "api:tcp " + c.RemoteAddr().String(), tcp: true, uid: -1, key: c.RemoteAddr().String()}
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		if ip4 := a.IP.To4(); ip4 != nil {
			p.key = ip4.String()
		} else {
			p.key = a.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
		}
	}
	return p
}

// limitListener hands the HTTP server at most max connections, at most
// perPeer of them from one peer; it refuses the others itself.
type limitListener struct {
	net.Listener
	what     string // "TCP" or "unix socket", for messages
	max      int
	perPeer  int
	identify func(net.Conn) peer
	logf     func(format string, args ...any)

	mu     sync.Mutex
	open   int            // guarded by mu: connections handed out and not yet closed
	byPeer map[string]int // guarded by mu: open connections per peer key

	refused    atomic.Int64 // refused since the last log line
	lastLogged atomic.Int64 // unix nanoseconds of the last log line
}

func newLimitListener(l net.Listener, what string, max, perPeer int, identify func(net.Conn) peer, logf func(string, ...any)) *limitListener {
	return &limitListener{Listener: l, what: what, max: max, perPeer: perPeer, identify: identify, logf: logf, byPeer: map[string]int{}}
}

// Accept returns the next connection within the caps; a connection over a
// cap is answered and closed here and never reaches the server.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		p := l.identify(c)
		if why := l.take(p.key); why != "" {
			l.refuse(c, p, why)
			continue
		}
		return &limitedConn{Conn: c, l: l, p: p}, nil
	}
}

// take counts a connection of peer key in, or says which cap it is over.
func (l *limitListener) take(key string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open >= l.max {
		return fmt.Sprintf("%d connections are open to the latch API's %s, the limit is %d", l.open, l.what, l.max)
	}
	if n := l.byPeer[key]; n >= l.perPeer {
		return fmt.Sprintf("%d connections are open from %s, the limit per peer is %d", n, key, l.perPeer)
	}
	l.open++
	l.byPeer[key]++
	return ""
}

func (l *limitListener) put(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byPeer[key]--; l.byPeer[key] <= 0 {
		delete(l.byPeer, key)
	}
}

// counts returns the open connections in total and of peer key.
func (l *limitListener) counts(key string) (total, ofPeer int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.byPeer[key]
}

// refuse answers 503 without reading the request and closes c. The write
// goes into the fresh socket's empty send buffer; its deadline only guards
// against a kernel that will not take it.
func (l *limitListener) refuse(c net.Conn, p peer, why string) {
	msg, _ := json.Marshal(why + ": close idle connections or try again later")
	body := `{"status":"failed","message":` + string(msg) + "}\n"
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	c.Close()
	// One log line per 10 seconds at most: a flood must not flood the log.
	n := l.refused.Add(1)
	now := time.Now().UnixNano()
	if last := l.lastLogged.Load(); now-last >= int64(10*time.Second) && l.lastLogged.CompareAndSwap(last, now) {
		l.refused.Add(-n)
		l.logf("api: refused %d connection(s) to the %s over its caps, the last from %s: %s", n, l.what, p.name, why)
	}
}

// limitedConn gives its slot back when it is closed, once.
type limitedConn struct {
	net.Conn
	l    *limitListener
	p    peer
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.put(c.p.key) })
	return err
}
