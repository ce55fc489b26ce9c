package agent

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"latch/agent/lock"
	"latch/store"
)

// States of the agent, as Status.State and the API's "status" report them.
const (
	StateIdle        = "idle"        // nothing to do
	StateDownloading = "downloading" // fetching the files of a pending update
	StateWaiting     = "waiting"     // downloaded; waiting for the locks of the services it touches
	StateApplying    = "applying"    // stopping, installing, starting, checking health
	StateFailed      = "failed"      // the last update failed and will not be retried
	StateRebooting   = "rebooting"   // a reboot or shutdown was issued
)

// Status is a snapshot of what the agent is doing and what blocks it. The
// event loop publishes a new one after every event; readers never see a
// half-made one.
type Status struct {
	State   string      `json:"status"`
	Release string      `json:"release"` // "app=release" pairs, comma-separated, sorted
	Apps    []AppStatus `json:"apps"`

	UpdatePending    bool   `json:"update_pending"`
	UpdateDownloaded bool   `json:"update_downloaded"`
	UpdateFailed     bool   `json:"update_failed"`
	UpdateID         string `json:"update_id,omitempty"`
	Attempts         int    `json:"attempts,omitempty"`
	Reason           string `json:"reason,omitempty"` // why it failed, or what it waits for

	DownloadProgress int   `json:"download_progress"` // percent, 0-100
	DownloadDone     int64 `json:"download_done"`     // bytes
	DownloadTotal    int64 `json:"download_total"`    // bytes, -1 when unknown

	OverrideLock  bool          `json:"override_lock"`
	BlockedBy     []lock.Entry  `json:"blocked_by"`
	BlockedSince  time.Time     `json:"blocked_since,omitzero"`
	Deadline      time.Time     `json:"deadline,omitzero"` // the earliest of the apps' deadlines`
	PendingReboot *store.Reboot `json:"pending_reboot,omitempty"`
	Holds         []store.Hold  `json:"holds"`

	// Refused is the last target state refused under the root of trust
	// (--trust-root): when, from where, why. Nil when none was.
	Refused *store.Refusal `json:"refused,omitempty"`

	// Counters for metrics.
	DownloadedBytes   int64   `json:"downloaded_bytes"`    // bytes fetched since start
	AppliesSucceeded  int     `json:"applies_succeeded"`   // since start
	AppliesFailed     int     `json:"applies_failed"`      // since start
	LastApplySeconds  float64 `json:"last_apply_seconds"`  // duration of the last apply
	ApplySecondsTotal float64 `json:"apply_seconds_total"` // sum of apply durations since start

	// Containers are the container services (spec section 9) of the
	// running and the pending releases; PulledBytes counts image bytes
	// received from registries since start.
	Containers  []ContainerStatus `json:"containers,omitempty"`
	PulledBytes int64             `json:"pulled_bytes"`

	// Fleet is the fleet channel (section 11; --fleet), nil without one. Filled in by
	// DeviceStatus, as GET /v1/device serves it.
	Fleet *FleetStatus `json:"fleet,omitempty"`
}

// AppStatus is one app's releases.
type AppStatus struct {
	Name    string `json:"name"`
	Current string `json:"current"`
	Target  string `json:"target"`
	// BlockedBy is what keeps this app's part of the pending update waiting
	// (absent when it is free, in flight or done): apps are updated one by
	// one, and a lock in one app holds back that app alone.
	BlockedBy []lock.Entry `json:"blocked_by,omitempty"`
	// Reason says what else holds the app's update back: its maintenance
	// window, how late it is past its max-defer deadline, or why it failed.
	Reason string `json:"reason,omitempty"`
	// Deadline is when the app's wait ends (--max-defer, max_defer),
	// counted from the first time a lock blocked it; zero when unbounded or
	// not blocked yet.
	Deadline time.Time `json:"deadline,omitzero"`
}

// Line is the one-line summary that systemd's STATUS= shows.
func (s Status) Line() string {
	switch s.State {
	case StateDownloading:
		return fmt.Sprintf("downloading update %s: %d%%", short(s.UpdateID), s.DownloadProgress)
	case StateWaiting:
		if len(s.BlockedBy) > 0 {
			e := s.BlockedBy[0]
			msg := fmt.Sprintf("update waiting for lock %s", e.Path)
			if e.Holder != nil && e.Holder.PID > 0 {
				msg += fmt.Sprintf(" held by pid %d", e.Holder.PID)
				if e.Holder.Command != "" {
					msg += " (" + e.Holder.Command + ")"
				}
			}
			if !s.BlockedSince.IsZero() {
				msg += fmt.Sprintf(" for %s", time.Since(s.BlockedSince).Round(time.Second))
			}
			if n := len(s.BlockedBy) - 1; n > 0 {
				msg += fmt.Sprintf(" and %d more", n)
			}
			return msg
		}
		return "update downloaded, waiting: " + s.Reason
	case StateApplying:
		return "applying update " + short(s.UpdateID)
	case StateFailed:
		return "update failed: " + s.Reason
	case StateRebooting:
		return "rebooting"
	}
	msg := "idle"
	if s.Release != "" {
		msg += ", running " + s.Release
	}
	if r := s.PendingReboot; r != nil {
		switch {
		case s.Reason != "":
			msg += ", " + r.Kind + " pending: " + s.Reason
		case len(s.BlockedBy) > 0:
			msg += ", " + r.Kind + " pending, waiting for lock " + describe(s.BlockedBy[0])
		default:
			msg += ", " + r.Kind + " pending"
		}
	}
	if s.OverrideLock {
		msg += ", lock override ON"
	}
	return msg
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// LockedError is returned when an action is refused because a lock is held
// (the API answers 423, the CLI exits 73).
type LockedError struct {
	Action  string
	Entries []lock.Entry
}

func (e *LockedError) Error() string {
	if len(e.Entries) == 0 {
		return e.Action + " refused: a lock is held"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s refused: ", e.Action)
	for i, en := range e.Entries {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(describe(en))
	}
	b.WriteString(" (use --force to ignore the lock)")
	return b.String()
}

// describe names a lock entry and its holder for a person.
func describe(e lock.Entry) string {
	s := e.Path + " is held"
	if e.Holder != nil && e.Holder.PID > 0 {
		s += fmt.Sprintf(" by pid %d", e.Holder.PID)
		if e.Holder.Command != "" {
			s += " (" + e.Holder.Command + ")"
		}
	} else {
		s += fmt.Sprintf(" (uid %d, holder unknown)", e.UID)
	}
	if !e.Since.IsZero() {
		s += fmt.Sprintf(" since %s", e.Since.UTC().Format(time.RFC3339))
	}
	if e.State != "" && e.State != lock.StateHeld {
		s += " [" + string(e.State) + "]"
	}
	return s
}

// Errors returned by the agent's request methods.
var (
	// ErrNotFound: no such app, service or hold.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: a request's arguments are wrong (the message says which).
	ErrInvalid = errors.New("invalid request")
	// ErrStopped: the agent is shutting down.
	ErrStopped = errors.New("agent is stopping")
	// ErrBusy: the request cannot be served while an action is in flight
	// (the message says which); ask again once it is over.
	ErrBusy = errors.New("busy")
)
