package fleet

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// recorder is a Handlers that records what it gets.
type recorder struct {
	mu       sync.Mutex
	targets  []targetMsg
	cmds     []Command
	errs     []error
	connects int
	changed  chan struct{} // closed and replaced at every event
}

type targetMsg struct{ source, payload string }

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) event(f func()) {
	r.mu.Lock()
	f()
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func (r *recorder) handlers() Handlers {
	return Handlers{
		OnTarget: func(source string, payload []byte) {
			r.event(func() { r.targets = append(r.targets, targetMsg{source, string(payload)}) })
		},
		OnCommand: func(c Command) { r.event(func() { r.cmds = append(r.cmds, c) }) },
		OnConnect: func() { r.event(func() { r.connects++ }) },
		OnError:   func(err error) { r.event(func() { r.errs = append(r.errs, err) }) },
	}
}

// wait waits until cond (called with r.mu held) is true.
func (r *recorder) wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		r.mu.Lock()
		ok, ch := cond(), r.changed
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			r.mu.Lock()
			defer r.mu.Unlock()
			errs := r.errs
			if len(errs) > 10 {
				errs = errs[len(errs)-10:]
			}
			t.Fatalf("timed out waiting for %s; targets %v, commands %v, last errors %v (of %d), connects %d", what, r.targets, r.cmds, errs, len(r.errs), r.connects)
		}
	}
}

func startDevice(t *testing.T, cfg Config, h Handlers) *Device {
	t.Helper()
	d, err := Start(context.Background(), cfg, h)
	if err != nil {
		t.Fatalf("Start(%s): %v", cfg.DeviceID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Close(ctx); err != nil {
			t.Errorf("Close(%s): %v", cfg.DeviceID, err)
		}
	})
	return d
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// proxy is a TCP relay in front of the broker whose connections the test can cut, as a lost
// network would: no DISCONNECT reaches the broker.
type proxy struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l}
	t.Cleanup(func() { l.Close(); p.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}
