package api

import (
	"bytes"
	"fmt"
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

// TestMetricsAgainstAgent reads /metrics of a real agent through the client
// and checks the values against the agent's state as it changes.
func TestMetricsAgainstAgent(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := NewClient(e.socket)
	ctx := t.Context()
	read := func() map[string]*dto.MetricFamily {
		t.Helper()
		text, err := c.Metrics(ctx)
		if err != nil {
			t.Fatalf("GET /metrics: %v", err)
		}
		return parseMetrics(t, text)
	}
	fams := read()
	for _, tt := range []struct {
		name string
		want float64
	}{
		{"latch_update_pending", 0}, {"latch_override_lock", 0}, {"latch_update_failed", 0},
		{"latch_loop_alive", 1}, {"latch_update_blocked_seconds", 0}, {"latch_holds", 0},
	} {
		if got := value(t, fams, tt.name, nil); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
	if got := value(t, fams, "latch_update_state", map[string]string{"state": "idle"}); got != 1 {
		t.Errorf("latch_update_state{state=idle}: got %v, want 1", got)
	}
	if got := len(fams["latch_lock_held"].GetMetric()); got != 0 {
		t.Errorf("latch_lock_held: got %d series, want 0", got)
	}

	// A hold and a pending update blocked by it.
	if _, err := c.Hold(ctx, HoldRequest{App: "kiosk", Service: "ui"}); err != nil {
		t.Fatal(err)
	}
	if err := c.PushTarget(ctx, []byte(targetDoc("2")), nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the update to wait", func() bool { return e.a.Status().State == agent.StateWaiting })
	fams = read()
	holdPath := filepath.Join(e.layout.Dir, "services", "kiosk", "ui", lock.HoldName)
	if got := value(t, fams, "latch_lock_held", map[string]string{"app": "kiosk", "service": "ui", "path": holdPath, "state": "hold"}); got != 1 {
		t.Errorf("latch_lock_held for the hold: got %v, want 1", got)
	}
	for _, tt := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"latch_update_pending", nil, 1},
		{"latch_update_downloaded", nil, 1},
		{"latch_holds", nil, 1},
		{"latch_update_state", map[string]string{"state": "waiting"}, 1},
		{"latch_update_state", map[string]string{"state": "idle"}, 0},
		{"latch_download_progress_ratio", nil, float64(e.a.Status().DownloadProgress) / 100},
	} {
		if got := value(t, fams, tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v: got %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	if st := e.a.Status(); !st.BlockedSince.IsZero() {
		if got := value(t, fams, "latch_update_blocked_seconds", nil); got < 0 || got > time.Since(st.BlockedSince).Seconds() {
			t.Errorf("latch_update_blocked_seconds: got %v, want between 0 and %v", got, time.Since(st.BlockedSince).Seconds())
		}
	}

	// Override on: the gauge is 1; the hold goes, the update applies.
	if _, err := c.SetOverride(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Release(ctx, "kiosk", "ui", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the update to apply", func() bool { return e.a.Status().AppliesSucceeded == 1 })
	fams = read()
	st := e.a.Status()
	for _, tt := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"latch_override_lock", nil, 1},
		{"latch_update_pending", nil, 0},
		{"latch_applies_total", map[string]string{"result": "success"}, 1},
		{"latch_applies_total", map[string]string{"result": "failure"}, 0},
		{"latch_apply_last_duration_seconds", nil, st.LastApplySeconds},
		{"latch_apply_duration_seconds_total", nil, st.ApplySecondsTotal},
		{"latch_download_bytes_total", nil, float64(st.DownloadedBytes)},
	} {
		if got := value(t, fams, tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v: got %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	if fams["latch_applies_total"].GetType() != dto.MetricType_COUNTER || fams["latch_update_state"].GetType() != dto.MetricType_GAUGE {
		t.Errorf("types: got %v and %v, want counter and gauge", fams["latch_applies_total"].GetType(), fams["latch_update_state"].GetType())
	}

	// A device-wide lock taken by another tool.
	g := e.layout.Global[0]
	if err := os.WriteFile(g, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fams = read()
	if got := value(t, fams, "latch_lock_held", map[string]string{"app": "", "service": "", "path": g, "state": "held"}); got != 1 {
		t.Errorf("latch_lock_held for %s: got %v, want 1", g, got)
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
