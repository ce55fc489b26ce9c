package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"latch/agent"
	"latch/agent/lock"
	"latch/store"
)

func parseMetrics(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse metrics: %v\n%s", err, text)
	}
	return fams
}

// value returns the value of the series of name whose labels include want.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s missing", name)
	}
	var found []float64
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			found = append(found, m.Gauge.GetValue())
		case m.Counter != nil:
			found = append(found, m.Counter.GetValue())
		case m.Untyped != nil:
			found = append(found, m.Untyped.GetValue())
		}
	}
	if len(found) != 1 {
		t.Fatalf("metric %s%v: got %d series, want 1", name, want, len(found))
	}
	return found[0]
}

// TestMetricsAgainstAgent drives a real agent through a scenario and reads
// /metrics through the client after each step. Every expected value comes
// from what the test did (3 bytes served, one hold taken, one apply made to
// fail, one to succeed, a lock file dated 42 s back), never from the
// agent's status, so a bug in the status model fails it as well as one in
// the rendering.
func TestMetricsAgainstAgent(t *testing.T) {
	e := newEnv(t, envOpts{maxAttempts: 1})
	c := NewClient(e.socket)
	ctx := t.Context()
	defer func(f func() time.Time) { nowFunc = f }(nowFunc)
	read := func() map[string]*dto.MetricFamily {
		t.Helper()
		text, err := c.Metrics(ctx)
		if err != nil {
			t.Fatalf("GET /metrics: %v", err)
		}
		return parseMetrics(t, text)
	}
	type want struct {
		name   string
		labels map[string]string
		value  float64
	}
	check := func(step string, fams map[string]*dto.MetricFamily, wants []want) {
		t.Helper()
		for _, w := range wants {
			if got := value(t, fams, w.name, w.labels); got != w.value {
				t.Errorf("%s: %s%v: got %v, want %v", step, w.name, w.labels, got, w.value)
			}
		}
	}
	// state returns the wants of latch_update_state with only s at 1.
	state := func(s string) []want {
		var ws []want
		for _, x := range states {
			ws = append(ws, want{"latch_update_state", map[string]string{"state": x}, boolf(x == s)})
		}
		return ws
	}

	// A fresh agent: idle, nothing pending, held or counted.
	fams := read()
	check("fresh agent", fams, append(state(agent.StateIdle), []want{
		{"latch_update_pending", nil, 0}, {"latch_update_downloaded", nil, 0}, {"latch_update_failed", nil, 0},
		{"latch_override_lock", nil, 0}, {"latch_reboot_pending", nil, 0}, {"latch_loop_alive", nil, 1},
		{"latch_update_blocked_seconds", nil, 0}, {"latch_download_progress_ratio", nil, 0},
		{"latch_download_bytes_total", nil, 0}, {"latch_holds", nil, 0},
		{"latch_applies_total", map[string]string{"result": "success"}, 0},
		{"latch_applies_total", map[string]string{"result": "failure"}, 0},
		{"latch_apply_last_duration_seconds", nil, 0}, {"latch_apply_duration_seconds_total", nil, 0},
	}...))
	if got := len(fams["latch_lock_held"].GetMetric()); got != 0 {
		t.Errorf("fresh agent: latch_lock_held: got %d series, want 0", got)
	}
	if fams["latch_applies_total"].GetType() != dto.MetricType_COUNTER || fams["latch_update_state"].GetType() != dto.MetricType_GAUGE {
		t.Errorf("types: got %v and %v, want counter and gauge", fams["latch_applies_total"].GetType(), fams["latch_update_state"].GetType())
	}

	// Release 1 ships a file of 3 bytes; a hold blocks its apply.
	files := map[string]string{"/ui-1": "abc", "/ui-2": "wxyz"}
	fileSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, body)
	}))
	defer fileSrv.Close()
	install := filepath.Join(e.dir, "opt", "ui")
	doc := func(rel string) []byte {
		sum := sha256.Sum256([]byte(files["/ui-"+rel]))
		return []byte(`{"apps":{"kiosk":{"release":"` + rel + `","services":{"ui":{"unit":"kiosk-ui.service","files":[` +
			`{"source":"` + fileSrv.URL + `/ui-` + rel + `","sha256":"` + hex.EncodeToString(sum[:]) + `","path":"` + install + `","mode":"0755"}]}}}}}`)
	}
	if _, err := c.Hold(ctx, HoldRequest{App: "kiosk", Service: "ui"}); err != nil {
		t.Fatal(err)
	}
	pushed := time.Now()
	if err := c.PushTarget(ctx, doc("1"), nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the update to wait for the hold", func() bool { return e.a.Status().State == agent.StateWaiting })
	seen := time.Now()
	// The blocked-seconds gauge, on a clock 100 s after the test saw the
	// block: the block began between the push and then.
	nowFunc = func() time.Time { return seen.Add(100 * time.Second) }
	fams = read()
	holdPath := filepath.Join(e.layout.Dir, "services", "kiosk", "ui", lock.HoldName)
	check("waiting for the hold", fams, append(state(agent.StateWaiting), []want{
		{"latch_update_pending", nil, 1}, {"latch_update_downloaded", nil, 1}, {"latch_update_failed", nil, 0},
		{"latch_holds", nil, 1}, {"latch_download_progress_ratio", nil, 1}, {"latch_download_bytes_total", nil, 3},
		{"latch_lock_held", map[string]string{"app": "kiosk", "service": "ui", "path": holdPath, "state": "hold"}, 1},
		{"latch_applies_total", map[string]string{"result": "success"}, 0},
		{"latch_applies_total", map[string]string{"result": "failure"}, 0},
	}...))
	if got, lo, hi := value(t, fams, "latch_update_blocked_seconds", nil), 100.0, seen.Add(100*time.Second).Sub(pushed).Seconds(); got < lo || got > hi {
		t.Errorf("latch_update_blocked_seconds: got %v, want between %v and %v", got, lo, hi)
	}
	nowFunc = time.Now

	// The service does not stay up: with one attempt, the update fails.
	e.drv.failHealth.Store(true)
	released := time.Now()
	if err := c.Release(ctx, "kiosk", "ui", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the apply to fail", func() bool { return e.a.Status().State == agent.StateFailed })
	fams = read()
	check("after a failed apply", fams, append(state(agent.StateFailed), []want{
		{"latch_update_failed", nil, 1}, {"latch_holds", nil, 0}, {"latch_download_bytes_total", nil, 3},
		{"latch_applies_total", map[string]string{"result": "success"}, 0},
		{"latch_applies_total", map[string]string{"result": "failure"}, 1},
	}...))

	// Release 2 (4 bytes) applies, under the override.
	e.drv.failHealth.Store(false)
	if _, err := c.SetOverride(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := c.PushTarget(ctx, doc("2"), nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "release 2 to apply", func() bool { return e.a.Status().Release == "kiosk=2" && e.a.Status().State == agent.StateIdle })
	applied := time.Since(released).Seconds()
	fams = read()
	check("after a good apply", fams, append(state(agent.StateIdle), []want{
		{"latch_override_lock", nil, 1}, {"latch_update_pending", nil, 0}, {"latch_update_failed", nil, 0},
		{"latch_update_blocked_seconds", nil, 0}, {"latch_download_bytes_total", nil, 3 + 4},
		{"latch_applies_total", map[string]string{"result": "success"}, 1},
		{"latch_applies_total", map[string]string{"result": "failure"}, 1},
	}...))
	// Two applies ran in the time since the hold was released.
	last, total := value(t, fams, "latch_apply_last_duration_seconds", nil), value(t, fams, "latch_apply_duration_seconds_total", nil)
	if last <= 0 || total <= last || total > applied {
		t.Errorf("apply durations: got last %v, total %v; want 0 < last < total (two applies) <= %v (since the release)", last, total, applied)
	}
	if got, err := os.ReadFile(install); err != nil || string(got) != "wxyz" {
		t.Errorf("installed file: got %q, %v; want release 2's", got, err)
	}

	// A device-wide lock taken by another tool, dated 42 s back.
	g := e.layout.Global[0]
	if err := os.WriteFile(g, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	mtime := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := os.Chtimes(g, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	nowFunc = func() time.Time { return mtime.Add(42 * time.Second) }
	fams = read()
	gl := map[string]string{"app": "", "service": "", "path": g, "state": "held"}
	check("a device-wide lock", fams, []want{{"latch_lock_held", gl, 1}, {"latch_lock_age_seconds", gl, 42}})
	if got := len(fams["latch_lock_held"].GetMetric()); got != 1 {
		t.Errorf("latch_lock_held: got %d series, want 1 (the hold is gone)", got)
	}
}

// TestMetricsEscaping: label values with quotes, backslashes and newlines
// survive a real parser.
func TestMetricsEscaping(t *testing.T) {
	now := time.Now()
	weird := "/tmp/a \"b\"\\c\nd/updates.lock"
	st := agent.Status{State: agent.StateWaiting, UpdatePending: true, BlockedBy: []lock.Entry{{Path: weird}}, BlockedSince: now.Add(-90 * time.Second), Holds: []store.Hold{{All: true}}}
	var b bytes.Buffer
	if err := writeMetrics(&b, st, []lock.Entry{{App: "k\"", Service: "s\\", Path: weird, State: lock.StateHeld, Since: now.Add(-time.Minute)}}, true, now); err != nil {
		t.Fatal(err)
	}
	fams := parseMetrics(t, b.String())
	if got := value(t, fams, "latch_lock_held", map[string]string{"app": "k\"", "service": "s\\", "path": weird}); got != 1 {
		t.Errorf("latch_lock_held with escaped labels: got %v, want 1", got)
	}
	if got := value(t, fams, "latch_update_blocked_seconds", nil); got != 90 {
		t.Errorf("latch_update_blocked_seconds: got %v, want 90", got)
	}
	if got := value(t, fams, "latch_lock_age_seconds", map[string]string{"path": weird}); got != 60 {
		t.Errorf("latch_lock_age_seconds: got %v, want 60", got)
	}
	for name, f := range fams {
		if f.GetHelp() == "" {
			t.Errorf("%s has no HELP", name)
		}
	}
}

// The max-defer gauge: seconds left per app, negative once past; apps
// without a deadline have no series.
func TestMetricsDeadline(t *testing.T) {
	now := time.Now()
	st := agent.Status{State: agent.StateWaiting, UpdatePending: true, Apps: []agent.AppStatus{
		{Name: "alpha", Deadline: now.Add(-30 * time.Second)},
		{Name: "bravo", Deadline: now.Add(2 * time.Minute)},
		{Name: "charlie"},
	}}
	var b bytes.Buffer
	if err := writeMetrics(&b, st, nil, true, now); err != nil {
		t.Fatal(err)
	}
	fams := parseMetrics(t, b.String())
	if got := value(t, fams, "latch_update_deadline_seconds", map[string]string{"app": "alpha"}); got != -30 {
		t.Errorf("alpha: got %v, want -30 (past)", got)
	}
	if got := value(t, fams, "latch_update_deadline_seconds", map[string]string{"app": "bravo"}); got != 120 {
		t.Errorf("bravo: got %v, want 120", got)
	}
	if n := len(fams["latch_update_deadline_seconds"].GetMetric()); n != 2 {
		t.Errorf("%d series, want 2 (charlie has no deadline)", n)
	}
}

// BenchmarkMetrics measures one rendering of the metrics with 20 locks.
func BenchmarkMetrics(b *testing.B) {
	var es []lock.Entry
	for i := range 20 {
		es = append(es, lock.Entry{App: "app", Service: fmt.Sprint("svc", i), Path: fmt.Sprint("/tmp/latch/services/app/svc", i, "/updates.lock"), State: lock.StateHeld})
	}
	st := agent.Status{State: agent.StateWaiting, BlockedBy: es}
	var buf bytes.Buffer
	for b.Loop() {
		buf.Reset()
		writeMetrics(&buf, st, es, true, time.Now())
	}
}
