package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"latch/agent/lock"
	"latch/store"
)

// partApps lists the apps of a part of the plan (one, as tryApply makes
// them).
func partApps(part []planned) []string { return planApps(part) }

// runningDoc is the journal's running target document, nil when none.
func (a *Agent) runningDoc() []byte {
	var doc []byte
	err := a.j.View(func(tx *store.Tx) error {
		var err error
		doc, err = tx.Running()
		return err
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		a.logf("read the running target: %v", err)
	}
	return doc
}

// mergeRunning is the running document once apps of the target document
// tgt run: the running document (or tgt, when none is known) with those
// apps taken from tgt, or dropped where tgt no longer has them. An update
// applies app by app, and what runs in between is this mix.
func mergeRunning(running, tgt []byte, apps []string) ([]byte, error) {
	base := running
	if base == nil {
		base = tgt
	}
	var top, ttop map[string]json.RawMessage
	if err := json.Unmarshal(base, &top); err != nil {
		return nil, fmt.Errorf("decode the running target: %w", err)
	}
	if err := json.Unmarshal(tgt, &ttop); err != nil {
		return nil, fmt.Errorf("decode the target: %w", err)
	}
	var have, want map[string]json.RawMessage
	if running != nil {
		if err := json.Unmarshal(top["apps"], &have); err != nil {
			return nil, fmt.Errorf("decode the running target's apps: %w", err)
		}
	}
	if have == nil {
		have = map[string]json.RawMessage{}
	}
	if err := json.Unmarshal(ttop["apps"], &want); err != nil {
		return nil, fmt.Errorf("decode the target's apps: %w", err)
	}
	for _, app := range apps {
		if raw, ok := want[app]; ok {
			have[app] = raw
		} else {
			delete(have, app)
		}
	}
	b, err := json.Marshal(have)
	if err != nil {
		return nil, err
	}
	top["apps"] = b
	return json.Marshal(top)
}

// The policies past a max-defer deadline (--on-max-defer).
const (
	MaxDeferWait  = "wait"  // keep waiting; the status says how late
	MaxDeferForce = "force" // force the app's update (journalled)
	MaxDeferFail  = "fail"  // give the app's update up, with the reason
)

// maxDefer is how long app's update may wait for its locks: its own
// max_defer, else --max-defer; 0 is no bound.
func (a *Agent) maxDefer(app string) time.Duration {
	if st := a.st.tgt; st != nil {
		if ta, ok := st.Apps[app]; ok && ta.HasMaxDefer {
			return ta.MaxDefer
		}
	}
	return a.cfg.MaxDefer
}

// appDeadline is when the wait of app's update ends (--max-defer or the
// app's max_defer), counted from the first time a lock blocked it (kept in
// the journal, so that a restart does not restart it).
func (a *Agent) appDeadline(app string) (time.Time, bool) {
	p := a.st.pending
	if p == nil {
		return time.Time{}, false
	}
	since, ok := p.Blocked[app]
	d := a.maxDefer(app)
	if !ok || since.IsZero() || d <= 0 {
		return time.Time{}, false
	}
	return since.Add(d), true
}

// Inhibitor is a program that blocks shutdowns and reboots through the
// service manager (systemd-logind's "shutdown" block inhibitors).
type Inhibitor struct {
	Who, Why string
	UID, PID int
}

// Inhibitable is implemented by drivers that reboot through a service
// manager whose programs can block a shutdown: before a reboot or a
// shutdown that is not forced, each such inhibitor counts like a held lock.
type Inhibitable interface {
	ShutdownInhibitors(ctx context.Context) ([]Inhibitor, error)
}

// InhibitorKind is the kind of the entries that stand for inhibitors in a
// refusal's blocked_by (their path names the inhibitor).
const InhibitorKind lock.Kind = "inhibitor"

// shutdownInhibitors asks the driver for the inhibitors that block a
// shutdown, as lock entries for a refusal. A driver that cannot say (no
// logind) blocks nothing: the failure is logged once per change.
func (a *Agent) shutdownInhibitors() []lock.Entry {
	d, ok := a.cfg.Driver.(Inhibitable)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), 3*time.Second)
	defer cancel()
	list, err := d.ShutdownInhibitors(ctx)
	if err != nil {
		if msg := err.Error(); msg != a.st.inhibitErr {
			a.st.inhibitErr = msg
			a.logf("shutdown inhibitors not known (%v): going on without them", err)
		}
		return nil
	}
	a.st.inhibitErr = ""
	var out []lock.Entry
	for _, in := range list {
		out = append(out, lock.Entry{
			Path:   fmt.Sprintf("shutdown inhibitor of %s: %s", in.Who, in.Why),
			Kind:   InhibitorKind,
			UID:    in.UID,
			State:  lock.StateHeld,
			Holder: &lock.Holder{PID: in.PID, Command: in.Who},
		})
	}
	return out
}
