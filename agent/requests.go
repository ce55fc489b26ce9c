package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"latch/agent/lock"
	"latch/store"
)

// Update asks for the pending update to be applied now. With force, the
// update is applied once regardless of locks: the user locks in its way are
// removed, and a force that arrives while the apply waits takes effect at
// once. With cancel, a pending update that is not being applied is dropped.
// It reports whether there was anything to do.
func (a *Agent) Update(ctx context.Context, force, cancel bool, by string) (bool, error) {
	var triggered bool
	err := a.do(ctx, func() error {
		p := a.st.pending
		if p == nil {
			return nil
		}
		if cancel {
			if a.st.applying {
				return fmt.Errorf("%w: update %s is being applied and cannot be cancelled now; cancel again once it waits or failed", ErrBusy, short(p.ID))
			}
			triggered = true
			if a.st.resume != nil {
				// Half applied: it is rolled back under its locks, then dropped.
				return a.journal(func(tx *store.Tx) error {
					p.Reason, p.Updated = cancelPrefix+by+": rolling back the half-done apply once its locks can be taken", time.Now()
					if err := tx.PutPending(p); err != nil {
						return err
					}
					_, err := tx.Log(store.Event{Kind: "cancelled", By: by, Message: "update " + short(p.ID) + " cancelled while half applied: it is rolled back once its locks can be taken"})
					return err
				})
			}
			a.cancelPending(by, "cancelled on request")
			return nil
		}
		if a.st.applying {
			return fmt.Errorf("%w: update %s is being applied now", ErrBusy, short(p.ID))
		}
		triggered = true
		a.st.retryAt = time.Time{}
		retry := p.State == store.Failed
		defer func() {
			if retry && a.st.pending == p && a.st.tgt != nil {
				a.setPending(p, a.st.tgt) // the apps given up are planned again
			}
		}()
		return a.journal(func(tx *store.Tx) error {
			msg := "update " + short(p.ID) + " requested"
			if p.State == store.Failed {
				p.State, p.Attempts = store.Downloaded, 0 // an operator's retry starts afresh
				p.Blocked, p.AppFailed = nil, nil         // every app again, with new deadlines
				if !downloaded(p) {
					p.State = store.Downloading
				}
				msg += " again after failure"
			}
			if force {
				p.Forced = true
				a.st.forcedBy = by
				msg += " with force"
			}
			if err := tx.PutPending(p); err != nil {
				return err
			}
			kind := "update"
			if force {
				kind = "forced"
			}
			_, err := tx.Log(store.Event{Kind: kind, By: by, Message: msg})
			return err
		})
	})
	return triggered, err
}

func downloaded(p *store.Update) bool {
	for _, f := range p.Files {
		if !f.Complete {
			return false
		}
	}
	return true
}

// rebootDone is the outcome of a reboot or shutdown request to the driver.
type rebootDone struct {
	kind string
	err  error
}

// Reboot reboots the device through the driver once it holds the locks of
// every service (and no device-wide lock exists); a held lock refuses it
// with a *LockedError unless force (or the override) is on.
func (a *Agent) Reboot(ctx context.Context, force bool, by string) error {
	return a.powerRequest(ctx, "reboot", force, by)
}

// Shutdown powers the device off, with the same rules as Reboot.
func (a *Agent) Shutdown(ctx context.Context, force bool, by string) error {
	return a.powerRequest(ctx, "shutdown", force, by)
}

func (a *Agent) powerRequest(ctx context.Context, kind string, force bool, by string) error {
	return a.do(ctx, func() error {
		if a.st.rebooting {
			return nil
		}
		if a.busy() {
			return &LockedError{Action: kind, Entries: a.actionEntries()}
		}
		return a.power(kind, "requested", force, by)
	})
}

// power takes every lock of every service and calls the driver.
func (a *Agent) power(kind, reason string, force bool, by string) error {
	svcs := a.knownServices()
	ignore := force || a.st.override.Enabled
	why := "forced " + kind
	if !force {
		why, by = "override", "override:"+a.st.override.By
	}
	if !ignore {
		if inh := a.shutdownInhibitors(); len(inh) > 0 {
			return &LockedError{Action: kind, Entries: inh}
		}
	}
	locks, blocking, err := a.take(svcs, ignore, why, by)
	if err != nil {
		return fmt.Errorf("take the locks for %s: %w", kind, err)
	}
	if len(blocking) > 0 {
		return &LockedError{Action: kind, Entries: blocking}
	}
	r := &store.Reboot{Kind: kind, BootID: a.bootID, Reason: reason, Requested: time.Now(), By: by}
	if a.st.reboot != nil {
		r.Reason = a.st.reboot.Reason
	}
	err = a.journal(func(tx *store.Tx) error {
		if err := tx.SetPendingReboot(r); err != nil {
			return err
		}
		msg := fmt.Sprintf("%s issued (%s); locks taken: %s", kind, r.Reason, svcList(svcs))
		if force {
			msg += " (forced)"
		}
		_, err := tx.Log(store.Event{Kind: kind, By: by, Message: msg})
		return err
	})
	if err != nil {
		lock.ReleaseAll(locks)
		return err
	}
	a.st.reboot, a.st.rebooting, a.st.actionLocks = r, true, locks
	drv := a.cfg.Driver
	go func() {
		ctx := context.WithoutCancel(a.ctx)
		var err error
		if kind == "shutdown" {
			err = drv.Shutdown(ctx)
		} else {
			err = drv.Reboot(ctx)
		}
		a.send(rebootDone{kind: kind, err: err})
	}()
	return nil
}

// onRebootDone runs when the driver returned from a reboot or shutdown. On a
// real device the agent is stopped before or soon after; if the command failed,
// the locks are released and a config reboot stays pending for a retry.
func (a *Agent) onRebootDone(ev rebootDone) {
	a.st.rebooting = false
	if ev.err != nil {
		a.st.rebootFailures++
		delay := min(a.cfg.RetryDelay<<min(a.st.rebootFailures-1, 6), time.Hour)
		a.st.rebootError = fmt.Sprintf("%s command failed (%d times): %v; next try at %s", ev.kind, a.st.rebootFailures, ev.err, time.Now().Add(delay).Format(time.TimeOnly))
		a.event("failed", "", "%s", a.st.rebootError)
		a.logf("%s", a.st.rebootError)
		a.releaseActionLocks()
		a.st.rebootRetryAt = time.Now().Add(delay)
		return
	}
	a.st.rebootFailures, a.st.rebootError = 0, ""
	a.journal(func(tx *store.Tx) error { return tx.SetPendingReboot(nil) })
	a.st.reboot = nil
	a.releaseActionLocks()
	a.event(ev.kind, "", "%s command returned", ev.kind)
}

// tryPendingReboot reboots for a configuration change once no lock is held.
func (a *Agent) tryPendingReboot() {
	now := time.Now()
	if now.Before(a.st.rebootRetryAt) {
		return
	}
	// A reboot that waits (a configuration's) runs only inside the
	// target's maintenance window, and is woken when it opens.
	a.st.rebootWindow = ""
	if st := a.st.latest; st != nil && st.Window != nil && !st.Window.Contains(now) {
		opens := st.Window.Next(now)
		a.st.rebootWindow = fmt.Sprintf("waiting for the maintenance window (%s), which opens at %s", st.Window, opens.Format(time.RFC3339))
		a.st.rebootRetryAt = opens
		return
	}
	err := a.power(a.st.reboot.Kind, a.st.reboot.Reason, false, a.st.reboot.By)
	var le *LockedError
	if errors.As(err, &le) {
		if a.st.blockedSince.IsZero() || entryKey(le.Entries) != entryKey(a.st.blockedBy) {
			a.st.blockedSince = time.Now()
		}
		a.st.blockedBy = le.Entries
		return
	}
	a.st.blockedBy, a.st.blockedSince = nil, time.Time{}
	if err != nil {
		a.logf("pending %s: %v", a.st.reboot.Kind, err)
	}
}

// actionEntries describes the agent's entries of the action in flight.
func (a *Agent) actionEntries() []lock.Entry {
	if len(a.st.actionLocks) == 0 && len(a.st.blockedBy) > 0 {
		return a.st.blockedBy // an interrupted apply waiting for these
	}
	return lockEntries(a.st.actionLocks)
}

func lockEntries(locks []*lock.Lock) []lock.Entry {
	out := make([]lock.Entry, len(locks))
	for i, l := range locks {
		out[i] = lock.Entry{Path: l.Path, State: lock.StateAgent}
	}
	return out
}

// SetOverride turns the persistent lock override on or off. Turning it on
// removes the existing user locks.
func (a *Agent) SetOverride(ctx context.Context, on bool, by string) error {
	return a.do(ctx, func() error { return a.setOverride(on, by) })
}

func (a *Agent) setOverride(on bool, by string) error {
	o := store.Override{Enabled: on, By: by, At: time.Now()}
	err := a.journal(func(tx *store.Tx) error {
		if err := tx.SetOverride(o); err != nil {
			return err
		}
		state := "off: locks are respected again"
		if on {
			state = "on: locks are ignored and user locks removed"
		}
		_, err := tx.Log(store.Event{Kind: "override", By: by, Message: "lock override " + state})
		return err
	})
	if err != nil {
		return err
	}
	a.st.override = o
	if on {
		a.removeOthers(a.knownServices(), "override", by)
	}
	return nil
}

// Override reports the persistent lock override.
func (a *Agent) Override(ctx context.Context) (store.Override, error) {
	var o store.Override
	err := a.do(ctx, func() error { o = a.st.override; return nil })
	return o, err
}

// Locks lists every lock entry (spec section 3).
func (a *Agent) Locks(ctx context.Context) ([]lock.Entry, error) {
	entries, err := a.cfg.Layout.Scan()
	if errors.Is(err, lock.ErrTruncated) {
		a.logf("list locks: %v", err) // other users' directories beyond the bound
		err = nil
	}
	if entries == nil {
		entries = []lock.Entry{}
	}
	return entries, err
}

// Events returns the journal's event log, newest first (limit <= 0: all).
func (a *Agent) Events(ctx context.Context, limit int) ([]store.Event, error) {
	var evs []store.Event
	err := a.j.View(func(tx *store.Tx) error {
		var err error
		evs, err = tx.Events(limit)
		return err
	})
	if evs == nil {
		evs = []store.Event{}
	}
	return evs, err
}
