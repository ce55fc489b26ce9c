package api

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"latch/agent"
)

// rawCall writes req, byte for byte, to a new connection to network/addr
// and reads one answer: the test decides exactly which headers are sent.
func rawCall(t *testing.T, network, addr, req string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second)) // a bound for a hung server, not a timing assertion
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read the answer to %q: %v", req, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	if _, err := bufio.NewReader(resp.Body).WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return resp, []byte(b.String())
}

// TestOriginPresence: a request with an Origin header is refused whatever
// its value, empty included, and however the name is spelt, before the API
// key is looked at; the refused request does nothing.
func TestOriginPresence(t *testing.T) {
	e := newEnv(t, envOpts{})
	origins := []struct{ name, header string }{
		{"empty", "Origin: \r\n"},
		{"empty no space", "Origin:\r\n"},
		{"blank", "Origin:    \r\n"},
		{"lower case", "origin: \r\n"},
		{"upper case", "ORIGIN: http://localhost\r\n"},
		{"null", "Origin: null\r\n"},
		{"twice, first empty", "Origin: \r\nOrigin: \r\n"},
	}
	dials := []struct{ network, addr, auth string }{
		{"unix", e.socket, ""},
		{"tcp", e.srv.Addr().String(), "Authorization: Bearer " + testKey + "\r\n"},
	}
	for _, d := range dials {
		for _, o := range origins {
			for _, rq := range []struct{ method, path, body string }{
				{"GET", "/v1/device", ""},
				{"POST", "/v1/reboot", `{"force":true}`},
			} {
				req := rq.method + " " + rq.path + " HTTP/1.1\r\nHost: latch\r\n" + d.auth + o.header +
					"Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(rq.body)) + "\r\n\r\n" + rq.body
				resp, body := rawCall(t, d.network, d.addr, req)
				var eb ErrorBody
				if resp.StatusCode != 403 || json.Unmarshal(body, &eb) != nil || eb.Status != "failed" || !strings.Contains(eb.Message, "Origin") {
					t.Errorf("%s %s %s with Origin %s: got %d %s, want 403 naming Origin", d.network, rq.method, rq.path, o.name, resp.StatusCode, body)
				}
			}
		}
	}
	if calls := e.drv.Calls(); len(calls) != 0 {
		t.Errorf("driver calls after requests with an Origin: %v", calls)
	}
	// Without Origin the same raw request is served: the refusal is the header's.
	resp, body := rawCall(t, "unix", e.socket, "GET /v1/device HTTP/1.1\r\nHost: latch\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Errorf("GET /v1/device without Origin: got %d %s, want 200", resp.StatusCode, body)
	}
}

// TestBodyKeys: every body of the API refuses a key given twice and a key
// spelt in another case (which encoding/json would match, letting the last
// one win) with 400 naming the key, and the refused request changes
// nothing: no driver call, no hold, no override, no journal event.
func TestBodyKeys(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := t.Context()
	before, err := e.a.Events(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		method, path, body string
		key                string // named in the message
	}{
		{"POST", "/v1/update", `{"force":false,"force":true}`, `"force" is given twice`},
		{"POST", "/v1/update", `{"Force":true}`, `"Force"`},
		{"POST", "/v1/update", `{"force":false,"FORCE":true}`, `"FORCE"`},
		{"POST", "/v1/update", `{"cancel":true,"cAncel":false}`, `"cAncel"`},
		{"POST", "/v1/update", `{"\u0066orce":false,"force":true}`, `"force" is given twice`},
		{"POST", "/v1/update", `null`, "want a JSON object"},
		{"POST", "/v1/reboot", `{"force":false,"force":true}`, `"force" is given twice`},
		{"POST", "/v1/reboot", `{"Force":true}`, `"Force"`},
		{"POST", "/v1/shutdown", `{"force":false,"Force":true}`, `"Force"`},
		{"POST", "/v1/shutdown", `{"force":true,"force":true}`, `"force" is given twice`},
		{"POST", "/v2/applications/kiosk/restart-service", `{"serviceName":"ui","serviceName":"ui"}`, `"serviceName" is given twice`},
		{"POST", "/v2/applications/kiosk/restart-service", `{"servicename":"ui"}`, `"servicename"`},
		{"POST", "/v2/applications/kiosk/restart-service", `{"serviceName":"ui","Force":true}`, `"Force"`},
		{"POST", "/v2/locks", `{"app":"kiosk","service":"ui","App":"other"}`, `"App"`},
		{"POST", "/v2/locks", `{"app":"kiosk","service":"ui","for":"1h","for":"1s"}`, `"for" is given twice`},
		{"POST", "/v2/locks", `{"all":false,"all":true}`, `"all" is given twice`},
		{"POST", "/v2/locks", `{"ALL":true}`, `"ALL"`},
		{"PUT", "/v2/device/override", `{"enabled":false,"enabled":true}`, `"enabled" is given twice`},
		{"PUT", "/v2/device/override", `{"Enabled":true}`, `"Enabled"`},
		{"PUT", "/v2/device/override", `{"enabled":false,"ENABLED":true}`, `"ENABLED"`},
	}
	for _, tr := range e.transports() {
		for _, tt := range tests {
			a := tr.call(t, tt.method, tt.path, str(tt.body), nil)
			var eb ErrorBody
			if err := json.Unmarshal(a.body, &eb); err != nil {
				t.Errorf("%s %s %s %s: answer %q is not an error body", tr.name, tt.method, tt.path, tt.body, a.body)
				continue
			}
			if a.code != 400 || eb.Status != "failed" || !strings.Contains(eb.Message, tt.key) {
				t.Errorf("%s %s %s %s: got %d %s, want 400 naming %s", tr.name, tt.method, tt.path, tt.body, a.code, a.body, tt.key)
			}
		}
	}
	if calls := e.drv.Calls(); len(calls) != 0 {
		t.Errorf("driver calls after refused bodies: %v", calls)
	}
	st := settled(t, e)
	if len(st.Holds) != 0 || st.OverrideLock || st.PendingReboot != nil {
		t.Errorf("after refused bodies: holds %v, override %v, pending reboot %v; want none", st.Holds, st.OverrideLock, st.PendingReboot)
	}
	after, err := e.a.Events(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Errorf("journal after refused bodies: got %d events, want %d: newest %+v", len(after), len(before), after[0])
	}
	// The same bodies spelt right are served.
	if a := e.transports()[0].call(t, "PUT", "/v2/device/override", str(`{"enabled":false}`), nil); a.code != 200 {
		t.Errorf("PUT override {\"enabled\":false}: got %d %s, want 200", a.code, a.body)
	}
	if a := e.transports()[0].call(t, "POST", "/v2/locks", str(`{"app":"kiosk","service":"ui","for":"1h"}`), nil); a.code != 201 {
		t.Errorf("POST /v2/locks: got %d %s, want 201", a.code, a.body)
	}
	if st := settled(t, e); len(st.Holds) != 1 || st.State != agent.StateIdle {
		t.Errorf("after a good hold: got holds %v state %s, want one hold, idle", st.Holds, st.State)
	}
}
