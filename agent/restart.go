package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"latch/agent/lock"
	"latch/store"
)

// A restart (POST /v2/applications/{app}/restart-service) is an action like
// an apply: its locks come from take, and it is journalled as an apply record
// whose update id is restartPrefix + "app/service", with one step that goes
// pending, stopping, stopped, starting, started. A crash in the middle is
// resumed at the next start like an apply: the locks first, then the service
// is started (and stopped first if the stop had not begun), so that it never
// stays down.
const restartPrefix = "restart:"

func isRestart(ap *store.Apply) bool { return strings.HasPrefix(ap.UpdateID, restartPrefix) }

// restartDone is the restart worker's report.
type restartDone struct {
	svc         lock.Service
	err         error
	interrupted bool
	reply       chan error // nil for a restart resumed after a crash
}

// RestartService restarts one service of the current target under its lock
// (a held lock refuses it with a *LockedError unless force), and returns once
// the service was stopped and started again.
func (a *Agent) RestartService(ctx context.Context, app, service string, force bool, by string) error {
	reply := make(chan error, 1)
	err := a.do(ctx, func() error {
		ls := lock.Service{App: app, Service: service}
		svc, err := a.restartable(ls)
		if err != nil {
			return err
		}
		action := "restart of " + ls.String()
		if a.busy() {
			return &LockedError{Action: action, Entries: lockEntries(a.st.actionLocks)}
		}
		ignore := force || a.st.override.Enabled
		why := "forced restart"
		if !force {
			why, by = "override", "override:"+a.st.override.By
		}
		locks, blocking, err := a.take([]lock.Service{ls}, ignore, why, by)
		if err != nil {
			return err
		}
		if len(blocking) > 0 {
			return &LockedError{Action: action, Entries: blocking}
		}
		ap := &store.Apply{UpdateID: restartPrefix + ls.String(), Locks: lockRefs(locks), Started: time.Now(),
			Steps: []store.Step{{App: app, Service: service, Phase: phasePending, At: time.Now()}}}
		err = a.journal(func(tx *store.Tx) error {
			if err := tx.PutApply(ap); err != nil {
				return err
			}
			_, err := tx.Log(store.Event{Kind: "restart", App: app, Service: service, By: by, Message: "restarting " + ls.String()})
			return err
		})
		if err != nil {
			lock.ReleaseAll(locks)
			return err
		}
		a.startRestart(ap, svc, locks, reply)
		return nil
	})
	if err != nil {
		return err
	}
	select {
	case err := <-reply:
		return err
	case <-a.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err() // the restart goes on, journalled
	}
}

// restartable returns the service as the running (else the latest) target
// has it.
func (a *Agent) restartable(ls lock.Service) (Service, error) {
	st := a.st.running
	if st == nil || st.Apps[ls.App].Services == nil {
		st = a.st.latest
	}
	if st == nil {
		return Service{}, fmt.Errorf("%w: no target state known yet", ErrNotFound)
	}
	ta, ok := st.Apps[ls.App]
	if !ok {
		return Service{}, fmt.Errorf("%w: app %q", ErrNotFound, ls.App)
	}
	spec, ok := ta.Services[ls.Service]
	if !ok {
		return Service{}, fmt.Errorf("%w: service %q of app %q", ErrNotFound, ls.Service, ls.App)
	}
	return Service{App: ls.App, Name: ls.Service, Spec: spec, LockDir: a.cfg.Layout.ServiceDir(ls)}, nil
}

// busy reports whether an action holds the agent's locks or waits to resume.
func (a *Agent) busy() bool {
	s := &a.st
	return s.applying || s.rebooting || s.restarting != nil || s.resume != nil
}

func (a *Agent) startRestart(ap *store.Apply, svc Service, locks []*lock.Lock, reply chan error) {
	ls := lock.Service{App: svc.App, Service: svc.Name}
	a.st.restarting, a.st.actionLocks = &ls, locks
	ap = cloneApply(ap)
	drv := a.cfg.Driver
	stop := func(ctx context.Context) error { return drv.Stop(ctx, svc) }
	start := func(ctx context.Context) error { return drv.Start(ctx, svc) }
	if svc.Spec.IsContainer() {
		// A container service restarts through the engine: its container
		// of the release the app runs.
		stop, start = a.containerRestart(svc)
	}
	go func() {
		ctx := a.ctx
		step := context.WithoutCancel(ctx)
		set := func(phase string) error {
			ap.Steps[0].Phase, ap.Steps[0].At = phase, time.Now()
			if err := a.commit(func(tx *store.Tx) error { return tx.PutApply(ap) }); err != nil {
				return fmt.Errorf("journal %s of %s: %w", phase, ls, err)
			}
			hit("restart-"+phase, ls.String())
			return nil
		}
		run := func() error {
			if phaseRank[ap.Steps[0].Phase] < phaseRank[phaseStopped] {
				if err := set(phaseStopping); err != nil {
					return err
				}
				if err := stop(step); err != nil {
					return fmt.Errorf("stop %s: %w", ls, err)
				}
				if err := set(phaseStopped); err != nil {
					return err
				}
			}
			if ctx.Err() != nil {
				return errInterrupted
			}
			if err := set(phaseStarting); err != nil {
				return err
			}
			if err := start(step); err != nil {
				return fmt.Errorf("start %s: %w", ls, err)
			}
			return set(phaseStarted)
		}
		err := run()
		a.send(restartDone{svc: ls, err: err, interrupted: errors.Is(err, errInterrupted), reply: reply})
	}()
}

// onRestarted ends a restart: the record goes, then the locks.
func (a *Agent) onRestarted(ev restartDone) {
	a.st.restarting = nil
	if ev.interrupted {
		a.logf("restart of %s interrupted by shutdown: the next start starts it again", ev.svc)
		if ev.reply != nil {
			ev.reply <- ErrStopped
		}
		return
	}
	msg := "restarted " + ev.svc.String()
	if ev.err != nil {
		msg = fmt.Sprintf("restart of %s failed: %v", ev.svc, ev.err)
	}
	a.journal(func(tx *store.Tx) error {
		if err := tx.DeleteApply(); err != nil {
			return err
		}
		kind := "restart"
		if ev.err != nil {
			kind = "failed"
		}
		_, err := tx.Log(store.Event{Kind: kind, App: ev.svc.App, Service: ev.svc.Service, Message: msg})
		return err
	})
	a.releaseActionLocks()
	if ev.reply != nil {
		ev.reply <- ev.err
	}
}

// tryResumeRestart resumes a restart that a crash interrupted: its locks
// through take, then the worker (once the agent is ready).
func (a *Agent) tryResumeRestart() {
	s := &a.st
	ap := s.resume
	st := ap.Steps[0]
	ls := lock.Service{App: st.App, Service: st.Service}
	svc, err := a.restartable(ls)
	if err != nil || len(ap.Steps) != 1 {
		a.logf("interrupted restart of %s cannot be resumed (%v): dropping it", ls, err)
		a.journal(func(tx *store.Tx) error { return tx.DeleteApply() })
		s.resume = nil
		a.releaseActionLocks()
		return
	}
	if len(s.actionLocks) == 0 {
		locks, blocking, err := a.take([]lock.Service{ls}, s.override.Enabled, "override", "override:"+s.override.By)
		if err != nil {
			a.logf("re-take the locks of the interrupted restart of %s: %v", ls, err)
			s.retryAt = time.Now().Add(a.cfg.RetryDelay)
			return
		}
		if len(blocking) > 0 {
			if s.blockedSince.IsZero() {
				s.blockedSince = time.Now()
			}
			s.blockedBy = blocking
			if k := entryKey(blocking); k != s.blockKey {
				s.blockKey = k
				a.event("deferred", "", "interrupted restart of %s waiting for the lock: %s", ls, describe(blocking[0]))
			}
			return
		}
		s.actionLocks = locks
		s.blockedBy, s.blockedSince, s.blockKey = nil, time.Time{}, ""
		a.journal(func(tx *store.Tx) error {
			ap.Locks = lockRefs(locks)
			if err := tx.PutApply(ap); err != nil {
				return err
			}
			_, err := tx.Log(store.Event{Kind: "resumed", App: ls.App, Service: ls.Service, Message: "resuming the interrupted restart of " + ls.String()})
			return err
		})
	}
	if !a.isReady() {
		return
	}
	s.resume = nil
	a.startRestart(ap, svc, s.actionLocks, nil)
}
