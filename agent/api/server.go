// Package api is latch's local HTTP API (spec section 7) and the client that
// the CLI uses to talk to it.
//
// Guarantees:
//   - The unix socket is always served and is created with mode 0660 without
//     a moment at a wider mode: it is bound inside a private 0700 directory,
//     chmodded, then renamed into place. A stale socket at the path is
//     replaced; anything else at the path is refused.
//   - On TCP every request but GET /ping needs the API key (Bearer header or
//     ?apikey=), compared in constant time; missing or wrong is 401.
//   - A request that carries an Origin header is refused with 403 on both
//     transports, so a web page in a browser on the device cannot drive it.
//   - Bodies over 1 MiB are 413; malformed JSON, unknown fields and trailing
//     data are 400; a wrong method is 405 with Allow; an unknown path is 404.
//     Every error body is {"status":"failed","message":"..."}, except the
//     balena-shaped answers of POST /v1/reboot and /v1/shutdown.
//   - A refusal because of a lock is 423 and names the blocking lock entries
//     ("blocked_by").
//   - Header, read, write and idle timeouts bound what a slow client holds;
//     on TCP they are shorter, and an answer to a request without the key
//     closes its connection, so that an unauthenticated client holds a
//     connection for seconds at most.
//   - Connections are capped per listener, in total and per peer (see
//     MaxTCPConns): a connection over a cap is answered 503 without being
//     read. A flood on TCP never reaches the unix socket's caps, so the
//     local API stays reachable and the descriptors the API holds stay
//     bounded.
//   - Without a trust key (--trust-key) a target state is accepted over the
//     unix socket only from root (or the agent's own uid): a target's
//     commands run with the agent's privileges, and the socket's group
//     (--api-group) is not meant to be root.
//
// Handlers never change the agent's state themselves: they call the agent's
// request methods, which run on its event loop.
package api

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"latch/agent"
)

// Config says where the API is served.
type Config struct {
	// Socket is the unix socket path (<run-dir>/api.sock); always served.
	Socket string
	// SocketGID, when above 0, is the socket's group: its members may use
	// the API (mode 0660). 0 leaves the group the agent runs with.
	SocketGID int
	// Listen is a TCP address such as "127.0.0.1:48484"; "" serves no TCP.
	Listen string
	// APIKey is required on TCP for everything but GET /ping. Listen
	// refuses a TCP address without a key.
	APIKey string
	// Logf logs; nil means log.Printf.
	Logf func(format string, args ...any)
}

// MaxBody is the largest request body the API accepts (413 above).
const MaxBody = 1 << 20

// Errors of the server side.
var (
	// ErrNotSocket: something other than a socket exists at the socket path.
	ErrNotSocket = errors.New("path exists and is not a socket")
	// ErrNoKey: a TCP address was given without an API key.
	ErrNoKey = errors.New("an API key is required to listen on TCP")
)

// Server is the API server: its listeners exist once Listen returns.
type Server struct {
	cfg  Config
	unix *net.UnixListener
	tcp  net.Listener

	// Timeouts of the http.Servers; Listen sets the defaults, tests shorten them.
	readHeaderTimeout, readTimeout, writeTimeout, idleTimeout time.Duration
	tcpReadHeaderTimeout, tcpIdleTimeout                      time.Duration
	shutdownTimeout                                           time.Duration

	// The capped listeners that Serve serves, around unix and tcp (nil
	// without TCP); Listen sets the Max* caps, tests change them before
	// Serve and read their counts.
	unixLim, tcpLim *limitListener

	closeOnce sync.Once
	// stopping is closed when Serve begins its shutdown: event streams,
	// which would never end by themselves, end then.
	stopping     chan struct{}
	stoppingOnce sync.Once
}

// Listen creates the listeners: the unix socket (mode 0660) and, when
// cfg.Listen is set, the TCP listener. The caller then calls Serve.
func Listen(cfg Config) (*Server, error) {
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	if cfg.Socket == "" {
		return nil, errors.New("listen: no socket path")
	}
	if cfg.Listen != "" && cfg.APIKey == "" {
		return nil, fmt.Errorf("listen on %s: %w (give --api-key-file)", cfg.Listen, ErrNoKey)
	}
	s := &Server{
		cfg:               cfg,
		stopping:          make(chan struct{}),
		readHeaderTimeout: 5 * time.Second,
		readTimeout:       30 * time.Second,
		writeTimeout:      5 * time.Minute, // a restart-service waits for the driver
		idleTimeout:       2 * time.Minute,
		// An unauthenticated TCP client gets a few seconds for its headers;
		// an operator's idle keep-alive connection gives its slot back soon.
		tcpReadHeaderTimeout: 3 * time.Second,
		tcpIdleTimeout:       30 * time.Second,
		shutdownTimeout:      5 * time.Second,
	}
	ul, err := listenUnix(cfg.Socket, cfg.SocketGID)
	if err != nil {
		return nil, err
	}
	s.unix = ul
	s.unixLim = newLimitListener(ul, "unix socket", MaxUnixConns, MaxUnixConnsPerUID, unixPeer, cfg.Logf)
	if cfg.Listen != "" {
		tl, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
		}
		s.tcp = tl
		s.tcpLim = newLimitListener(tl, "TCP listener", MaxTCPConns, MaxTCPConnsPerIP, tcpPeer, cfg.Logf)
	}
	return s, nil
}

// listenUnix binds the socket at path with mode 0660. It binds inside a
// private directory next to path, so the socket never exists at a wider mode
// where others could connect, then renames it into place.
func listenUnix(path string, gid int) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory %s: %w", dir, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("listen on %s: %w (%s); remove it or choose another --run-dir", path, ErrNotSocket, fi.Mode().Type())
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	priv, err := os.MkdirTemp(dir, ".api-sock-")
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.RemoveAll(priv)
	tmp := filepath.Join(priv, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false) // the socket is renamed; Close removes it by its final name
	if err := os.Chmod(tmp, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket %s: %w", path, err)
	}
	if gid > 0 {
		if err := os.Lchown(tmp, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("give socket %s to group %d: %w", path, gid, err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return l, nil
}

// Addr returns the TCP listener's address, or nil without TCP.
func (s *Server) Addr() net.Addr {
	if s.tcp == nil {
		return nil
	}
	return s.tcp.Addr()
}

// Close closes the listeners and removes the socket file. Serve calls it.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if s.unix != nil {
			err = errors.Join(err, s.unix.Close())
			if rerr := os.Remove(s.cfg.Socket); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				err = errors.Join(err, rerr)
			}
		}
		if s.tcp != nil {
			err = errors.Join(err, s.tcp.Close())
		}
	})
	return err
}

type ctxKey int

const peerKey ctxKey = 0

// Serve serves the API for a until ctx ends, then shuts the servers down,
// waiting at most a few seconds for requests in flight. It returns nil after
// a shutdown caused by ctx.
func (s *Server) Serve(ctx context.Context, a *agent.Agent) error {
	defer s.Close()
	type srv struct {
		hs *http.Server
		l  net.Listener
	}
	var srvs []srv
	srvs = append(srvs, srv{s.httpServer(s.Handler(a, false), s.readHeaderTimeout, s.idleTimeout), s.unixLim})
	if s.tcp != nil {
		srvs = append(srvs, srv{s.httpServer(s.Handler(a, true), s.tcpReadHeaderTimeout, s.tcpIdleTimeout), s.tcpLim})
	}
	errc := make(chan error, len(srvs))
	for _, x := range srvs {
		go func() {
			err := x.hs.Serve(x.l)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errc <- err
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("serve api: %w", err)
	}
	if s.stopping != nil {
		s.stoppingOnce.Do(func() { close(s.stopping) })
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.shutdownTimeout)
	defer cancel()
	for _, x := range srvs {
		if serr := x.hs.Shutdown(sctx); serr != nil {
			x.hs.Close()
		}
	}
	return err
}

func (s *Server) httpServer(h http.Handler, headerTimeout, idleTimeout time.Duration) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: headerTimeout,
		ReadTimeout:       s.readTimeout,
		WriteTimeout:      s.writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(logWriter(s.cfg.Logf), "api: ", 0),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			p := peer{name: "api", uid: -1}
			if lc, ok := c.(*limitedConn); ok {
				p = lc.p
			}
			return context.WithValue(ctx, peerKey, p)
		},
	}
}

// peerOf says who sent r; a request that did not come through Serve's
// listeners is an unknown peer (uid -1).
func peerOf(r *http.Request) peer {
	if p, ok := r.Context().Value(peerKey).(peer); ok {
		return p
	}
	return peer{name: "api", uid: -1}
}

// by says who asked, for the journal.
func by(r *http.Request) string { return peerOf(r).name }

type logWriter func(format string, args ...any)

func (f logWriter) Write(p []byte) (int, error) {
	f("%s", string(p))
	return len(p), nil
}
