package api

import (
	"bufio"
	"io"
	"strconv"
	"strings"
	"time"

	"latch/agent"
	"latch/agent/lock"
)

// The metrics are written by hand in the Prometheus text exposition format
// (version 0.0.4): the client library would add megabytes to a binary meant
// for small boards, for a dozen gauges and counters.

// nowFunc is the clock of the blocked-seconds gauge.
var nowFunc = time.Now

// states are the agent's states, one gauge series each.
var states = []string{agent.StateIdle, agent.StateDownloading, agent.StateWaiting, agent.StateApplying, agent.StateFailed, agent.StateRebooting}

// writeMetrics renders the metrics of st, the lock entries es and the
// liveness of the loop.
func writeMetrics(w io.Writer, st agent.Status, es []lock.Entry, alive bool, now time.Time) error {
	b := bufio.NewWriter(w)
	m := metricWriter{b: b}

	m.family("latch_update_state", "gauge", "State of the update agent: 1 for the current state, 0 for the others.")
	for _, s := range states {
		m.sample("latch_update_state", []string{"state", s}, boolf(st.State == s))
	}
	m.one("latch_update_pending", "gauge", "1 while an update is pending (downloading, waiting or applying).", boolf(st.UpdatePending))
	m.one("latch_update_downloaded", "gauge", "1 when the pending update's files are downloaded and verified.", boolf(st.UpdateDownloaded))
	m.one("latch_update_failed", "gauge", "1 when the last update failed and will not be retried.", boolf(st.UpdateFailed))
	m.one("latch_override_lock", "gauge", "1 while the persistent lock override is on (locks are ignored).", boolf(st.OverrideLock))
	m.one("latch_reboot_pending", "gauge", "1 while a reboot or shutdown waits for the locks.", boolf(st.PendingReboot != nil))
	m.one("latch_loop_alive", "gauge", "1 while the agent's event loop makes progress (what the watchdog checks).", boolf(alive))
	blocked := 0.0
	if !st.BlockedSince.IsZero() && len(st.BlockedBy) > 0 {
		blocked = max(now.Sub(st.BlockedSince).Seconds(), 0)
	}
	m.one("latch_update_blocked_seconds", "gauge", "Seconds the pending update (or reboot) has been blocked by a lock; 0 when not blocked.", blocked)
	m.family("latch_update_deadline_seconds", "gauge", "Seconds left until the max-defer deadline of each app whose update waits for its locks; negative once past it.")
	for _, a := range st.Apps {
		if !a.Deadline.IsZero() {
			m.sample("latch_update_deadline_seconds", []string{"app", a.Name}, a.Deadline.Sub(now).Seconds())
		}
	}
	m.one("latch_download_progress_ratio", "gauge", "Download progress of the pending update, from 0 to 1.", float64(st.DownloadProgress)/100)
	m.one("latch_download_bytes_total", "counter", "Bytes downloaded since the agent started.", float64(st.DownloadedBytes))
	m.family("latch_applies_total", "counter", "Update applies since the agent started, by result.")
	m.sample("latch_applies_total", []string{"result", "success"}, float64(st.AppliesSucceeded))
	m.sample("latch_applies_total", []string{"result", "failure"}, float64(st.AppliesFailed))
	m.one("latch_apply_last_duration_seconds", "gauge", "Duration of the last update apply.", st.LastApplySeconds)
	m.one("latch_apply_duration_seconds_total", "counter", "Sum of the durations of the update applies since the agent started.", st.ApplySecondsTotal)
	m.one("latch_image_pull_bytes_total", "counter", "Bytes of container images received from registries since the agent started (part of latch_download_bytes_total).", float64(st.PulledBytes))
	m.family("latch_container_state", "gauge", "1 for the state latch last saw of each container service (created, running, exited, removed; unknown before latch acted on it), by app, service and release.")
	for _, c := range st.Containers {
		state := c.State
		if state == "" {
			state = "unknown"
		}
		m.sample("latch_container_state", []string{"app", c.App, "service", c.Service, "release", c.Release, "state", state}, 1)
	}
	m.family("latch_image_pull_ratio", "gauge", "Pull progress of each container service's image of the pending update, from 0 to 1.")
	for _, c := range st.Containers {
		if c.PullTotal > 0 {
			m.sample("latch_image_pull_ratio", []string{"app", c.App, "service", c.Service}, float64(c.PullDone)/float64(c.PullTotal))
		}
	}
	m.family("latch_image_pull_layers_done", "gauge", "Layers on the device of each container service's image while it downloads (of latch_image_pull_layers).")
	for _, c := range st.Containers {
		if c.Pull != nil {
			m.sample("latch_image_pull_layers_done", []string{"app", c.App, "service", c.Service}, float64(c.Pull.LayersDone))
		}
	}
	m.family("latch_image_pull_layers", "gauge", "Layers of each container service's image while it downloads.")
	for _, c := range st.Containers {
		if c.Pull != nil {
			m.sample("latch_image_pull_layers", []string{"app", c.App, "service", c.Service}, float64(c.Pull.Layers))
		}
	}
	m.one("latch_holds", "gauge", "Number of holds (latch hold) in force.", float64(len(st.Holds)))

	m.family("latch_lock_held", "gauge", "1 for every lock entry that exists, by app and service (both empty for a device-wide lock), path and state.")
	for _, e := range es {
		m.sample("latch_lock_held", []string{"app", e.App, "service", e.Service, "path", e.Path, "state", string(e.State)}, 1)
	}
	m.family("latch_lock_age_seconds", "gauge", "Seconds since each lock entry appeared.")
	for _, e := range es {
		age := 0.0
		if !e.Since.IsZero() {
			age = max(now.Sub(e.Since).Seconds(), 0)
		}
		m.sample("latch_lock_age_seconds", []string{"app", e.App, "service", e.Service, "path", e.Path, "state", string(e.State)}, age)
	}
	return b.Flush()
}

type metricWriter struct{ b *bufio.Writer }

func (m metricWriter) family(name, typ, help string) {
	m.b.WriteString("# HELP " + name + " " + helpEscaper.Replace(help) + "\n")
	m.b.WriteString("# TYPE " + name + " " + typ + "\n")
}

func (m metricWriter) one(name, typ, help string, v float64) {
	m.family(name, typ, help)
	m.sample(name, nil, v)
}

// sample writes one series; labels are name, value pairs.
func (m metricWriter) sample(name string, labels []string, v float64) {
	m.b.WriteString(name)
	if len(labels) > 0 {
		m.b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				m.b.WriteByte(',')
			}
			m.b.WriteString(labels[i] + `="` + labelEscaper.Replace(labels[i+1]) + `"`)
		}
		m.b.WriteByte('}')
	}
	m.b.WriteByte(' ')
	m.b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	m.b.WriteByte('\n')
}

// Escaping of the text format: label values escape backslash, double quote
// and newline; HELP text escapes backslash and newline.
var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
