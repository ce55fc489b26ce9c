package api

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"latch/agent"
	"latch/agent/lock"
	"latch/agent/target"
	"latch/store"
)

// TestEndpoints walks every endpoint of the table over both transports, in
// an order that drives a real agent through hold, update, release, apply,
// restart, override, journal and reboot.
func TestEndpoints(t *testing.T) {
	for _, tr := range (&env{}).transportsNames() {
		t.Run(tr, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			var c transport
			for _, x := range e.transports() {
				if x.name == tr {
					c = x
				}
			}
			holdPath := filepath.Join(e.layout.Dir, "services", "kiosk", "ui", lock.HoldName)

			// GET /ping, /v1/healthy
			if a := c.call(t, "GET", "/ping", nil, nil); a.code != 200 || string(a.body) != "OK" {
				t.Fatalf("GET /ping: got %d %q, want 200 OK", a.code, a.body)
			}
			if a := c.call(t, "GET", "/v1/healthy", nil, nil); a.code != 200 {
				t.Fatalf("GET /v1/healthy: got %d %s, want 200", a.code, a.body)
			}
			// GET /v1/device has every key of the spec.
			a := c.call(t, "GET", "/v1/device", nil, nil)
			if a.code != 200 {
				t.Fatalf("GET /v1/device: got %d, want 200", a.code)
			}
			var dev map[string]any
			a.json(t, &dev)
			for _, k := range []string{"status", "release", "update_pending", "update_downloaded", "update_failed", "download_progress", "override_lock", "blocked_by"} {
				if _, ok := dev[k]; !ok {
					t.Errorf("GET /v1/device: key %q missing in %s", k, a.body)
				}
			}
			if dev["status"] != "idle" {
				t.Errorf("GET /v1/device status: got %v, want idle", dev["status"])
			}
			// POST /v1/update with nothing pending: 202.
			if a := c.call(t, "POST", "/v1/update", str(`{}`), nil); a.code != 202 {
				t.Fatalf("POST /v1/update (nothing pending): got %d %s, want 202", a.code, a.body)
			}
			// GET /v2/locks: empty array.
			if a := c.call(t, "GET", "/v2/locks", nil, nil); a.code != 200 || strings.TrimSpace(string(a.body)) != "[]" {
				t.Fatalf("GET /v2/locks: got %d %s, want 200 []", a.code, a.body)
			}
			// POST /v2/locks: 201 the hold, and its entry exists.
			a = c.call(t, "POST", "/v2/locks", str(`{"app":"kiosk","service":"ui","reason":"filming","for":"30m"}`), nil)
			if a.code != 201 {
				t.Fatalf("POST /v2/locks: got %d %s, want 201", a.code, a.body)
			}
			var h store.Hold
			a.json(t, &h)
			if h.App != "kiosk" || h.Service != "ui" || h.Reason != "filming" || h.Expires.Sub(h.Created).Minutes() != 30 {
				t.Errorf("POST /v2/locks: got hold %+v, want kiosk/ui filming for 30m", h)
			}
			if !strings.HasPrefix(h.By, "api:"+tr) {
				t.Errorf("hold by: got %q, want api:%s...", h.By, tr)
			}
			if _, err := os.Lstat(holdPath); err != nil {
				t.Fatalf("hold entry: %v", err)
			}
			var es []lock.Entry
			c.call(t, "GET", "/v2/locks", nil, nil).json(t, &es)
			if len(es) != 1 || es[0].Path != holdPath || es[0].State != lock.StateHold || es[0].App != "kiosk" {
				t.Fatalf("GET /v2/locks: got %+v, want the hold entry %s", es, holdPath)
			}
			// POST /v2/local/target-state: 202, and the update waits for the hold.
			if a := c.call(t, "POST", "/v2/local/target-state", str(targetDoc("1")), nil); a.code != 202 {
				t.Fatalf("POST /v2/local/target-state: got %d %s, want 202", a.code, a.body)
			}
			waitFor(t, "the update to wait for the hold", func() bool { return e.a.Status().State == agent.StateWaiting })
			// POST /v1/update with an update pending: 204.
			if a := c.call(t, "POST", "/v1/update", str(`{"force":false}`), nil); a.code != 204 {
				t.Fatalf("POST /v1/update (pending): got %d %s, want 204", a.code, a.body)
			}
			// POST /v1/reboot and /v1/shutdown under the hold: 423, balena's shape, lock named.
			for _, p := range []string{"/v1/reboot", "/v1/shutdown"} {
				a := c.call(t, "POST", p, str(`{"force":false}`), nil)
				var pb PowerBody
				a.json(t, &pb)
				if a.code != 423 || pb.Data != "" || pb.Error == nil || !strings.Contains(*pb.Error, holdPath) {
					t.Errorf("POST %s under a hold: got %d %s, want 423 with Error naming %s", p, a.code, a.body, holdPath)
				}
				if len(pb.BlockedBy) == 0 || pb.BlockedBy[0].Path != holdPath {
					t.Errorf("POST %s: blocked_by got %+v, want %s", p, pb.BlockedBy, holdPath)
				}
			}
			// restart-service: 423 under the hold, 404 for an unknown service.
			a = c.call(t, "POST", "/v2/applications/kiosk/restart-service", str(`{"serviceName":"ui"}`), nil)
			var eb ErrorBody
			a.json(t, &eb)
			if a.code != 423 || eb.Status != "failed" || !strings.Contains(eb.Message, holdPath) || len(eb.BlockedBy) != 1 {
				t.Errorf("restart-service under a hold: got %d %s, want 423 naming %s", a.code, a.body, holdPath)
			}
			for _, p := range []struct{ path, body string }{
				{"/v2/applications/kiosk/restart-service", `{"serviceName":"nope"}`},
				{"/v2/applications/nope/restart-service", `{"serviceName":"ui"}`},
			} {
				if a := c.call(t, "POST", p.path, str(p.body), nil); a.code != 404 {
					t.Errorf("POST %s %s: got %d %s, want 404", p.path, p.body, a.code, a.body)
				}
			}
			if len(e.drv.Calls()) != 0 {
				t.Fatalf("driver called under a hold: %v", e.drv.Calls())
			}
			// DELETE /v2/locks/kiosk/ui: 200, then 404; /v2/locks/all: 404.
			if a := c.call(t, "DELETE", "/v2/locks/kiosk/ui", nil, nil); a.code != 200 {
				t.Fatalf("DELETE /v2/locks/kiosk/ui: got %d %s, want 200", a.code, a.body)
			}
			if a := c.call(t, "DELETE", "/v2/locks/kiosk/ui", nil, nil); a.code != 404 {
				t.Errorf("DELETE /v2/locks/kiosk/ui again: got %d %s, want 404", a.code, a.body)
			}
			if a := c.call(t, "DELETE", "/v2/locks/all", nil, nil); a.code != 404 {
				t.Errorf("DELETE /v2/locks/all without a hold: got %d %s, want 404", a.code, a.body)
			}
			// The released update applies.
			waitFor(t, "the update to apply", func() bool { return e.a.Status().Release == "kiosk=1" && e.a.Status().State == agent.StateIdle })
			if got, want := e.drv.Calls(), []string{"stop kiosk/ui", "start kiosk/ui"}; !slices.Equal(got, want) && !slices.Equal(got, want[1:]) {
				t.Errorf("driver calls of the apply: got %v, want %v", got, want)
			}
			// restart-service now: 200, stop and start.
			n := len(e.drv.Calls())
			if a := c.call(t, "POST", "/v2/applications/kiosk/restart-service", str(`{"serviceName":"ui","force":false}`), nil); a.code != 200 {
				t.Fatalf("restart-service: got %d %s, want 200", a.code, a.body)
			}
			if got, want := e.drv.Calls()[n:], []string{"stop kiosk/ui", "start kiosk/ui"}; !slices.Equal(got, want) {
				t.Errorf("restart-service driver calls: got %v, want %v", got, want)
			}
			// --all hold and its release.
			if a := c.call(t, "POST", "/v2/locks", str(`{"all":true}`), nil); a.code != 201 {
				t.Fatalf("POST /v2/locks all: got %d %s, want 201", a.code, a.body)
			}
			if a := c.call(t, "DELETE", "/v2/locks/all", nil, nil); a.code != 200 {
				t.Fatalf("DELETE /v2/locks/all: got %d %s, want 200", a.code, a.body)
			}
			// GET, PUT /v2/device/override.
			var o store.Override
			for _, want := range []bool{true, false} {
				a := c.call(t, "PUT", "/v2/device/override", str(`{"enabled":`+map[bool]string{true: "true", false: "false"}[want]+`}`), nil)
				if a.code != 200 {
					t.Fatalf("PUT override %v: got %d %s, want 200", want, a.code, a.body)
				}
				a.json(t, &o)
				if o.Enabled != want {
					t.Errorf("PUT override: got enabled %v, want %v", o.Enabled, want)
				}
				c.call(t, "GET", "/v2/device/override", nil, nil).json(t, &o)
				if o.Enabled != want || !strings.HasPrefix(o.By, "api:"+tr) {
					t.Errorf("GET override: got %+v, want enabled %v by api:%s", o, want, tr)
				}
			}
			// GET /v2/journal?limit=N: newest first.
			var evs []store.Event
			a = c.call(t, "GET", "/v2/journal?limit=3", nil, nil)
			if a.code != 200 {
				t.Fatalf("GET /v2/journal: got %d %s", a.code, a.body)
			}
			a.json(t, &evs)
			if len(evs) != 3 || evs[0].Seq < evs[1].Seq || evs[0].Kind != "override" {
				t.Errorf("GET /v2/journal?limit=3: got %+v, want 3 events newest first, the override first", evs)
			}
			c.call(t, "GET", "/v2/journal", nil, nil).json(t, &evs)
			if len(evs) < 8 {
				t.Errorf("GET /v2/journal: got %d events, want every event (at least 8)", len(evs))
			}
			// GET /metrics.
			if a := c.call(t, "GET", "/metrics", nil, nil); a.code != 200 || !bytes.Contains(a.body, []byte("latch_update_state{state=\"idle\"} 1")) {
				t.Errorf("GET /metrics: got %d %s", a.code, a.body)
			}
			// POST /v1/reboot with force and no lock: 202 {"Data":"OK","Error":null}.
			a = c.call(t, "POST", "/v1/reboot", str(`{"force":true}`), nil)
			if a.code != 202 || strings.TrimSpace(string(a.body)) != `{"Data":"OK","Error":null}` {
				t.Fatalf("POST /v1/reboot: got %d %s, want 202 {\"Data\":\"OK\",\"Error\":null}", a.code, a.body)
			}
			waitFor(t, "the reboot to reach the driver", func() bool { return slices.Contains(e.drv.Calls(), "reboot") })
		})
	}
}

func (*env) transportsNames() []string { return []string{"unix", "tcp"} }

// TestErrors covers every error path of the table, over both transports.
func TestErrors(t *testing.T) {
	e := newEnv(t, envOpts{})
	big := strings.Repeat("x", MaxBody+1)
	tests := []struct {
		name, method, path, body string
		hdr                      map[string]string
		chunked                  bool
		want                     int
		wantAllow, wantMsg       string
	}{
		{name: "malformed JSON", method: "POST", path: "/v1/update", body: `{"force":`, want: 400, wantMsg: "decode JSON"},
		{name: "unknown field", method: "POST", path: "/v1/update", body: `{"force":true,"now":1}`, want: 400, wantMsg: "unknown field"},
		{name: "trailing data", method: "POST", path: "/v1/update", body: `{"force":false} {}`, want: 400, wantMsg: "trailing"},
		{name: "wrong type", method: "POST", path: "/v1/reboot", body: `{"force":"yes"}`, want: 400},
		{name: "hold bad duration", method: "POST", path: "/v2/locks", body: `{"app":"kiosk","service":"ui","for":"soon"}`, want: 400, wantMsg: "duration"},
		{name: "hold negative duration", method: "POST", path: "/v2/locks", body: `{"app":"kiosk","service":"ui","for":"-5m"}`, want: 400},
		{name: "hold bad name", method: "POST", path: "/v2/locks", body: `{"app":"../etc","service":"ui"}`, want: 400},
		{name: "hold app and all", method: "POST", path: "/v2/locks", body: `{"app":"kiosk","service":"ui","all":true}`, want: 400},
		{name: "hold empty body", method: "POST", path: "/v2/locks", body: ``, want: 400},
		{name: "override without enabled", method: "PUT", path: "/v2/device/override", body: `{}`, want: 400, wantMsg: "enabled"},
		{name: "restart without serviceName", method: "POST", path: "/v2/applications/kiosk/restart-service", body: `{}`, want: 400},
		{name: "journal limit 0", method: "GET", path: "/v2/journal?limit=0", want: 400, wantMsg: "limit"},
		{name: "journal limit negative", method: "GET", path: "/v2/journal?limit=-1", want: 400},
		{name: "journal limit text", method: "GET", path: "/v2/journal?limit=ten", want: 400},
		{name: "journal limit huge", method: "GET", path: "/v2/journal?limit=100001", want: 400},
		{name: "target not JSON", method: "POST", path: "/v2/local/target-state", body: `not json`, want: 400},
		{name: "target invalid", method: "POST", path: "/v2/local/target-state", body: `{"apps":{"k":{"release":""}}}`, want: 400},
		{name: "413 with length", method: "POST", path: "/v2/locks", body: big, want: 413},
		{name: "413 chunked", method: "POST", path: "/v2/locks", body: big, chunked: true, want: 413},
		{name: "413 target", method: "POST", path: "/v2/local/target-state", body: big, chunked: true, want: 413},
		{name: "Origin on ping", method: "GET", path: "/ping", hdr: map[string]string{"Origin": "http://evil.example"}, want: 403},
		{name: "Origin on device", method: "GET", path: "/v1/device", hdr: map[string]string{"Origin": "null"}, want: 403},
		{name: "Origin on reboot", method: "POST", path: "/v1/reboot", body: `{"force":true}`, hdr: map[string]string{"Origin": "http://localhost"}, want: 403},
		{name: "405 GET update", method: "GET", path: "/v1/update", want: 405, wantAllow: "POST"},
		{name: "405 DELETE locks", method: "DELETE", path: "/v2/locks", want: 405, wantAllow: "GET, HEAD, POST"},
		{name: "405 POST ping", method: "POST", path: "/ping", want: 405, wantAllow: "GET, HEAD"},
		{name: "405 GET one lock", method: "GET", path: "/v2/locks/kiosk/ui", want: 405, wantAllow: "DELETE"},
		{name: "405 POST override", method: "POST", path: "/v2/device/override", want: 405, wantAllow: "GET, HEAD, PUT"},
		{name: "404 unknown", method: "GET", path: "/v3/nothing", want: 404},
		{name: "404 release unknown hold", method: "DELETE", path: "/v2/locks/kiosk/ui", want: 404},
	}
	for _, tr := range e.transports() {
		for _, tt := range tests {
			t.Run(tr.name+"/"+tt.name, func(t *testing.T) {
				var body io.Reader
				if tt.body != "" {
					body = str(tt.body)
					if tt.chunked {
						body = io.MultiReader(body) // unknown length: sent chunked
					}
				}
				a := tr.call(t, tt.method, tt.path, body, tt.hdr)
				if a.code != tt.want {
					t.Fatalf("%s %s: got %d %s, want %d", tt.method, tt.path, a.code, a.body, tt.want)
				}
				var eb ErrorBody
				a.json(t, &eb)
				if eb.Status != "failed" || eb.Message == "" {
					t.Errorf("error body: got %s, want {\"status\":\"failed\",\"message\":...}", a.body)
				}
				if tt.wantMsg != "" && !strings.Contains(eb.Message, tt.wantMsg) {
					t.Errorf("message: got %q, want it to contain %q", eb.Message, tt.wantMsg)
				}
				if got := a.header.Get("Allow"); got != tt.wantAllow {
					t.Errorf("Allow: got %q, want %q", got, tt.wantAllow)
				}
			})
		}
	}
	if calls := e.drv.Calls(); len(calls) != 0 {
		t.Errorf("driver calls after refused requests: got %v, want none", calls)
	}
}

// TestAuth checks the API key on TCP, and that the unix socket needs none.
func TestAuth(t *testing.T) {
	e := newEnv(t, envOpts{})
	tcp := e.transports()[1]
	tcp.key = ""
	tests := []struct {
		name, method, path string
		hdr                map[string]string
		want               int
	}{
		{"ping without key", "GET", "/ping", nil, 200},
		{"device without key", "GET", "/v1/device", nil, 401},
		{"metrics without key", "GET", "/metrics", nil, 401},
		{"POST ping without key", "POST", "/ping", nil, 401},
		{"wrong Bearer", "GET", "/v1/device", map[string]string{"Authorization": "Bearer nope"}, 401},
		{"key prefix", "GET", "/v1/device", map[string]string{"Authorization": "Bearer " + testKey[:4]}, 401},
		{"Basic scheme", "GET", "/v1/device", map[string]string{"Authorization": "Basic " + testKey}, 401},
		{"right Bearer", "GET", "/v1/device", map[string]string{"Authorization": "Bearer " + testKey}, 200},
		{"bearer lower case", "GET", "/v1/device", map[string]string{"Authorization": "bearer " + testKey}, 200},
		{"right apikey", "GET", "/v1/device?apikey=" + testKey, nil, 200},
		{"wrong apikey", "GET", "/v1/device?apikey=nope", nil, 401},
		{"empty apikey", "GET", "/v1/device?apikey=", nil, 401},
		{"journal with apikey and limit", "GET", "/v2/journal?limit=1&apikey=" + testKey, nil, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := tcp.call(t, tt.method, tt.path, nil, tt.hdr)
			if a.code != tt.want {
				t.Fatalf("%s %s: got %d %s, want %d", tt.method, tt.path, a.code, a.body, tt.want)
			}
			if tt.want == 401 && a.header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 without WWW-Authenticate")
			}
		})
	}
	unix := e.transports()[0]
	if a := unix.call(t, "GET", "/v1/device", nil, nil); a.code != 200 {
		t.Errorf("unix socket without key: got %d, want 200", a.code)
	}
}

// TestLockedByGlobalLock: a lock taken by another tool (lock.Create, as
// `latch lock` does) at a device-wide path refuses reboot with 423 naming it.
func TestLockedByGlobalLock(t *testing.T) {
	e := newEnv(t, envOpts{})
	g := e.layout.Global[0]
	l, err := lock.Create(g, lock.NewRecord(lock.RoleUser), os.Getuid(), os.Getgid())
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range e.transports() {
		for _, p := range []string{"/v1/reboot", "/v1/shutdown"} {
			a := tr.call(t, "POST", p, str(`{}`), nil)
			var pb PowerBody
			a.json(t, &pb)
			if a.code != http.StatusLocked || pb.Error == nil || !strings.Contains(*pb.Error, g) || len(pb.BlockedBy) != 1 || pb.BlockedBy[0].Path != g {
				t.Errorf("%s %s under %s: got %d %s, want 423 naming it", tr.name, p, g, a.code, a.body)
			}
			if pb.BlockedBy[0].Holder == nil || pb.BlockedBy[0].Holder.PID != os.Getpid() {
				t.Errorf("blocked_by holder: got %+v, want pid %d", pb.BlockedBy[0].Holder, os.Getpid())
			}
		}
	}
	if err := l.Remove(); err != nil {
		t.Fatal(err)
	}
	a := e.transports()[0].call(t, "POST", "/v1/shutdown", nil, nil)
	if a.code != 202 {
		t.Fatalf("POST /v1/shutdown after release: got %d %s, want 202", a.code, a.body)
	}
	waitFor(t, "the shutdown to reach the driver", func() bool { return slices.Contains(e.drv.Calls(), "shutdown") })
}

// TestTargetSignature: with a trust key, unsigned and badly signed targets
// are 403 and change nothing; a signed one is 202.
func TestTargetSignature(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	_, other, _ := ed25519.GenerateKey(nil)
	e := newEnv(t, envOpts{trust: pub})
	doc := targetDoc("7")
	for _, tr := range e.transports() {
		tests := []struct {
			name string
			sig  string
			want int
		}{
			{"unsigned", "", 403},
			{"other key", target.Sign(other, []byte(doc)), 403},
			{"not base64", "!!!", 403},
			{"signed", target.Sign(priv, []byte(doc)), 202},
		}
		for _, tt := range tests {
			a := tr.call(t, "POST", "/v2/local/target-state", str(doc), map[string]string{"X-Latch-Signature": tt.sig})
			if a.code != tt.want {
				t.Errorf("%s %s: got %d %s, want %d", tr.name, tt.name, a.code, a.body, tt.want)
			}
			if tt.want == 403 && e.a.Status().UpdatePending && tr.name == "unix" {
				t.Errorf("%s %s: an update is pending after a refused target", tr.name, tt.name)
			}
		}
	}
	var st agent.Status
	e.transports()[0].call(t, "GET", "/v1/device", nil, nil).json(t, &st)
	if !st.UpdatePending && st.Release != "kiosk=7" {
		t.Errorf("after the signed target: got %+v, want update pending or applied", st)
	}
	_ = json.Valid
}
