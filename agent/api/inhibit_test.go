package api

import (
	"context"
	"strings"
	"sync"
	"testing"

	"latch/agent"
)

// inhibDriver is the recording driver with the shutdown inhibitors that a
// systemd driver reads from logind.
type inhibDriver struct {
	*recDriver
	mu   sync.Mutex
	list []agent.Inhibitor
}

func (d *inhibDriver) ShutdownInhibitors(ctx context.Context) ([]agent.Inhibitor, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.list, nil
}

// A shutdown inhibitor counts like a lock: a reboot or shutdown is refused
// with 423 naming who inhibits it and why, until it goes or the request is
// forced.
func TestRebootHonoursInhibitors(t *testing.T) {
	var d *inhibDriver
	e := newEnv(t, envOpts{driver: func(r *recDriver) agent.Driver {
		d = &inhibDriver{recDriver: r, list: []agent.Inhibitor{{Who: "backup", Why: "copying the disk", UID: 1000, PID: 4242}}}
		return d
	}})
	c := e.transports()[0]
	for _, kind := range []string{"reboot", "shutdown"} {
		a := c.call(t, "POST", "/v1/"+kind, str(`{}`), nil)
		if a.code != 423 || !strings.Contains(string(a.body), "backup") || !strings.Contains(string(a.body), "copying the disk") {
			t.Errorf("POST /v1/%s under an inhibitor: %d %s, want 423 naming backup and why", kind, a.code, a.body)
		}
	}
	for _, call := range e.drv.Calls() {
		if call == "reboot" || call == "shutdown" {
			t.Fatalf("the driver was asked to %s under an inhibitor", call)
		}
	}
	if a := c.call(t, "POST", "/v1/reboot", str(`{"force":true}`), nil); a.code != 202 {
		t.Fatalf("forced reboot: %d %s, want 202", a.code, a.body)
	}
	waitFor(t, "the forced reboot", func() bool {
		for _, call := range e.drv.Calls() {
			if call == "reboot" {
				return true
			}
		}
		return false
	})
}
