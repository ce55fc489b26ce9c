package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"latch/agent/fetch"
	"latch/agent/lock"
	"latch/agent/target"
	"latch/store"
)

// The phases of one service in an apply, in order. Each is journalled before
// its side effect ("stopping") and after it ("stopped"), so that a resume
// knows what may have happened.
const (
	phasePending    = "pending"
	phaseStopping   = "stopping"
	phaseStopped    = "stopped"
	phaseInstalling = "installing"
	phaseInstalled  = "installed"
	phaseStarting   = "starting"
	phaseStarted    = "started"
	phaseHealthy    = "healthy"
	phaseRestoring  = "restoring"
	phaseRestopped  = "restore-stopped" // the rollback stopped what the apply started
	phaseRestored   = "restored"
)

var phaseRank = map[string]int{
	phasePending: 0, phaseStopping: 1, phaseStopped: 2, phaseInstalling: 3, phaseInstalled: 4,
	phaseStarting: 5, phaseStarted: 6, phaseHealthy: 7, phaseRestoring: 8, phaseRestopped: 9, phaseRestored: 10,
}

// applyDone is the apply worker's report.
type applyDone struct {
	id          string
	err         error  // nil: applied and healthy
	interrupted bool   // the agent is stopping; the journal says where to resume
	where       string // for an interrupted apply: how far each service got
}

// tryApply applies the pending update app by app: for each app that it
// changes, in order, it takes the locks of that app's services (and the
// device-wide paths), all or nothing, and starts the apply of that app's
// part; an app whose locks are held waits (and says what blocks it) while
// the others go ahead. Only one part is applied at a time; the loop comes
// back here when it ends. When every app is blocked (and neither force nor
// override says otherwise) it records what blocks and waits for the watcher
// to report a change.
func (a *Agent) tryApply() {
	p := a.st.pending
	if a.restageMissing() {
		return
	}
	force := p.Forced || a.st.override.Enabled
	why, by := "override", "override:"+a.st.override.By
	if p.Forced {
		why, by = "forced update", a.forcedBy()
	}
	now := time.Now()
	apps := planApps(a.st.plan)
	blocked := map[string][]lock.Entry{}
	a.st.appReason = map[string]string{}
	a.st.policyWake = time.Time{}
	wakeAt := func(t time.Time) {
		if t.After(now) && (a.st.policyWake.IsZero() || t.Before(a.st.policyWake)) {
			a.st.policyWake = t
		}
	}
	var all []lock.Entry
	var takeErr error
	dirty := false // p.Blocked or p.AppFailed changed: journalled below
	defer func() {
		if dirty {
			a.journal(func(tx *store.Tx) error { return tx.PutPending(p) })
		}
	}()
	for _, app := range apps {
		part := appPart(a.st.plan, app)
		svcs := services(part)
		// Outside its maintenance window an app waits; a force does not.
		if w := a.st.tgt.WindowOf(app); w != nil && !p.Forced && !w.Contains(now) {
			opens := w.Next(now)
			a.st.appReason[app] = fmt.Sprintf("waiting for its maintenance window (%s), which opens at %s", w, opens.Format(time.RFC3339))
			wakeAt(opens)
			continue
		}
		locks, blocking, err := a.take(svcs, force, why, by)
		if err != nil {
			takeErr = err
			a.logf("take locks of %s for update %s: %v", app, short(p.ID), err)
			continue
		}
		if len(blocking) > 0 {
			if p.Blocked[app].IsZero() {
				if p.Blocked == nil {
					p.Blocked = map[string]time.Time{}
				}
				p.Blocked[app] = now
				dirty = true
			}
			if deadline, ok := a.appDeadline(app); ok {
				if now.Before(deadline) {
					wakeAt(deadline)
				} else {
					switch a.cfg.OnMaxDefer {
					case MaxDeferForce:
						msg := fmt.Sprintf("update %s of %s forced by max-defer: blocked since %s, deadline %s", short(p.ID), app, p.Blocked[app].UTC().Format(time.RFC3339), deadline.UTC().Format(time.RFC3339))
						a.event("forced", "max-defer", "%s", msg)
						locks, blocking, err = a.take(svcs, true, "forced by max-defer", "max-defer")
						if err != nil {
							takeErr = err
							continue
						}
					case MaxDeferFail:
						if p.AppFailed == nil {
							p.AppFailed = map[string]string{}
						}
						reason := fmt.Sprintf("%s: waited past its max-defer deadline %s for %s", app, deadline.UTC().Format(time.RFC3339), describe(blocking[0]))
						p.AppFailed[app] = reason
						dirty = true
						a.event("failed", "max-defer", "update %s: %s; given up (--on-max-defer fail)", short(p.ID), reason)
						a.st.plan = slices.DeleteFunc(a.st.plan, func(pl planned) bool { return pl.Svc.App == app })
						continue
					default:
						a.st.appReason[app] = fmt.Sprintf("%s past its max-defer deadline (%s); waiting for %s", now.Sub(deadline).Round(time.Second), deadline.UTC().Format(time.RFC3339), describe(blocking[0]))
					}
				}
			}
		}
		if len(blocking) > 0 {
			blocked[app] = blocking
			for _, e := range blocking {
				if !slices.ContainsFunc(all, func(x lock.Entry) bool { return x.Path == e.Path }) {
					all = append(all, e)
				}
			}
			continue
		}
		a.st.appBlocked = blocked
		if dirty {
			if a.journal(func(tx *store.Tx) error { return tx.PutPending(p) }) == nil {
				dirty = false
			}
		}
		a.startPart(part, locks, len(planApps(a.st.plan)) == 1)
		return
	}
	a.st.appBlocked = blocked
	if len(a.st.plan) == 0 && len(p.AppFailed) > 0 {
		dirty = false
		a.failApps()
		return
	}
	if len(all) > 0 {
		if dirty && a.journal(func(tx *store.Tx) error { return tx.PutPending(p) }) == nil {
			dirty = false
		}
		a.setBlocked(all)
		return
	}
	if takeErr != nil {
		p.Reason = "cannot take the locks: " + takeErr.Error()
		a.st.retryAt = time.Now().Add(a.cfg.RetryDelay)
	}
}

// failApps ends an update whose remaining apps were all given up (past
// their max-defer deadline under --on-max-defer fail): it is failed, with
// the reasons, and not retried unless asked for again.
func (a *Agent) failApps() {
	p := a.st.pending
	var reasons []string
	for _, app := range sortedKeys(p.AppFailed) {
		reasons = append(reasons, p.AppFailed[app])
	}
	a.journal(func(tx *store.Tx) error {
		p.State, p.Reason, p.Updated = store.Failed, strings.Join(reasons, "; "), time.Now()
		if err := tx.PutPending(p); err != nil {
			return err
		}
		_, err := tx.Log(store.Event{Kind: "failed", Message: fmt.Sprintf("update %s failed: %s", short(p.ID), p.Reason)})
		return err
	})
	a.st.appBlocked = nil
	a.st.blockedBy, a.st.blockedSince, a.st.blockKey = nil, time.Time{}, ""
}

// startPart journals the apply of one app's part (its locks are taken) and
// starts it. A force armed for the update stays armed until its last app.
func (a *Agent) startPart(part []planned, locks []*lock.Lock, last bool) {
	p := a.st.pending
	svcs := services(part)
	ap := &store.Apply{UpdateID: p.ID, Locks: lockRefs(locks), Started: time.Now()}
	for _, pl := range part {
		ap.Steps = append(ap.Steps, store.Step{App: pl.Svc.App, Service: pl.Svc.Service, Phase: phasePending, At: time.Now()})
	}
	forced := p.Forced
	err := a.journal(func(tx *store.Tx) error {
		p.State, p.Attempts, p.Reason, p.Updated = store.Applying, p.Attempts+1, "", time.Now()
		p.Forced = p.Forced && !last
		if err := tx.PutPending(p); err != nil {
			return err
		}
		if err := tx.PutApply(ap); err != nil {
			return err
		}
		msg := fmt.Sprintf("locks taken for update %s (attempt %d): %s", short(p.ID), p.Attempts, svcList(svcs))
		if forced {
			msg += " (forced)"
		} else if a.st.override.Enabled {
			msg += " (override on)"
		}
		_, err := tx.Log(store.Event{Kind: "lock-taken", Message: msg})
		return err
	})
	if err != nil {
		lock.ReleaseAll(locks)
		a.st.retryAt = time.Now().Add(a.cfg.RetryDelay)
		return
	}
	hit(FPLocksTaken)
	if len(a.st.appBlocked) == 0 {
		a.st.blockedBy, a.st.blockedSince, a.st.blockKey = nil, time.Time{}, ""
	}
	a.startApply(ap, locks, false, part)
}

// restageMissing puts the pending update back to downloading when a staged
// file went missing from the state dir (a cleanup, a full disk's victim), so
// that it is fetched again instead of failing the apply.
func (a *Agent) restageMissing() bool {
	p := a.st.pending
	var missing []int
	for i, f := range p.Files {
		if _, err := os.Lstat(a.staged(f.SHA256)); err != nil {
			missing = append(missing, i)
		}
	}
	if len(missing) == 0 {
		return false
	}
	err := a.journal(func(tx *store.Tx) error {
		for _, i := range missing {
			if err := tx.SetFileProgress(i, 0, false); err != nil {
				return err
			}
			p.Files[i].Done, p.Files[i].Complete = 0, false
		}
		p.State, p.Reason, p.Updated = store.Downloading, "", time.Now()
		if err := tx.PutPending(p); err != nil {
			return err
		}
		_, err := tx.Log(store.Event{Kind: "download", Message: fmt.Sprintf("update %s: %d staged file(s) missing from %s, downloading again", short(p.ID), len(missing), a.downloadDir())})
		return err
	})
	if err != nil {
		a.st.retryAt = time.Now().Add(a.cfg.RetryDelay)
		return true
	}
	for _, i := range missing {
		a.st.fileDone[i] = 0
	}
	a.st.retryAt = time.Now() // wakes the loop at once: the download starts
	return true
}

func svcList(svcs []lock.Service) string {
	names := make([]string, len(svcs))
	for i, s := range svcs {
		names[i] = s.String()
	}
	return strings.Join(names, ", ")
}

func lockRefs(locks []*lock.Lock) []store.LockRef {
	refs := make([]store.LockRef, len(locks))
	for i, l := range locks {
		refs[i] = store.LockRef{Path: l.Path, Dev: l.Dev, Ino: l.Ino}
	}
	return refs
}

// startApply runs the apply worker for part (one app's services) beside
// the loop.
func (a *Agent) startApply(ap *store.Apply, locks []*lock.Lock, rollback bool, part []planned) {
	a.st.applying, a.st.actionLocks, a.st.applyStarted = true, locks, time.Now()
	a.st.applyPlan = slices.Clone(part)
	w := &applyWorker{
		a:        a,
		ap:       cloneApply(ap),
		plan:     slices.Clone(part),
		files:    slices.Clone(a.st.pending.Files),
		rollback: rollback,
	}
	go func() { a.send(w.run(a.ctx)) }()
}

func cloneApply(ap *store.Apply) *store.Apply {
	c := *ap
	c.Steps = slices.Clone(ap.Steps)
	c.Locks = slices.Clone(ap.Locks)
	return &c
}

// applyWorker performs the side effects of one apply. It owns its copy of the
// apply record and journals each phase itself; it touches no loop state.
type applyWorker struct {
	a        *Agent
	ap       *store.Apply
	plan     []planned
	files    []store.File
	rollback bool // resume straight into the rollback
}

// setPhase journals the phase of service i, then hits its failpoint.
func (w *applyWorker) setPhase(i int, phase string) error {
	w.ap.Steps[i].Phase, w.ap.Steps[i].At = phase, time.Now()
	if err := w.a.commit(func(tx *store.Tx) error { return tx.PutApply(w.ap) }); err != nil {
		return fmt.Errorf("journal %s of %s: %w", phase, w.plan[i].Svc, err)
	}
	hit(phase, w.plan[i].Svc.String())
	return nil
}

// service is service i as the new release has it (for a removal: as it runs).
func (w *applyWorker) service(i int) Service {
	pl := w.plan[i]
	return Service{App: pl.Svc.App, Name: pl.Svc.Service, Spec: pl.Spec, LockDir: w.a.cfg.Layout.ServiceDir(pl.Svc)}
}

// running is service i as it runs before the apply: its stop command stops
// it and a rollback starts it with its own start command. Without a known
// running target it is the new release's service.
func (w *applyWorker) running(i int) Service {
	svc := w.service(i)
	if old := w.plan[i].Old; old != nil {
		svc.Spec = *old
	}
	return svc
}

// run applies every service: stop, install, start; then waits --health-wait
// and checks each. On failure it restores every service it touched. A side
// effect runs with a context that shutdown does not cancel, so the step in
// flight finishes; the worker stops between steps when ctx ends.
func (w *applyWorker) run(ctx context.Context) applyDone {
	d := w.run1(ctx)
	if d.interrupted {
		var parts []string
		for _, st := range w.ap.Steps {
			parts = append(parts, st.App+"/"+st.Service+" "+st.Phase)
		}
		d.where = strings.Join(parts, ", ")
	}
	return d
}

func (w *applyWorker) run1(ctx context.Context) applyDone {
	id := w.ap.UpdateID
	if w.rollback || w.inRollback() {
		err := w.restore(ctx, errors.New("apply interrupted during its rollback"))
		return applyDone{id: id, err: err, interrupted: errors.Is(err, errInterrupted)}
	}
	err := w.forward(ctx)
	if errors.Is(err, errInterrupted) {
		return applyDone{id: id, err: err, interrupted: true}
	}
	if err != nil {
		err = w.restore(ctx, err)
		return applyDone{id: id, err: err, interrupted: errors.Is(err, errInterrupted)}
	}
	return applyDone{id: id}
}

func (w *applyWorker) inRollback() bool {
	for _, s := range w.ap.Steps {
		if s.Phase == phaseRestoring || s.Phase == phaseRestopped || s.Phase == phaseRestored {
			return true
		}
	}
	return false
}

func (w *applyWorker) forward(ctx context.Context) error {
	a := w.a
	step := context.WithoutCancel(ctx)
	for i := range w.plan {
		rank := phaseRank[w.ap.Steps[i].Phase]
		if rank < phaseRank[phaseStopped] {
			if err := w.do(ctx, i, phaseStopping, phaseStopped, func() error { return w.stopSvc(step, i, true) }); err != nil {
				return fmt.Errorf("stop %s: %w", w.plan[i].Svc, err)
			}
		}
		if w.plan[i].Remove {
			continue // no longer in the target: stopped, and left so
		}
		if rank < phaseRank[phaseInstalled] {
			if err := w.do(ctx, i, phaseInstalling, phaseInstalled, func() error { return w.install(i) }); err != nil {
				return fmt.Errorf("install %s: %w", w.plan[i].Svc, err)
			}
		}
		if rank < phaseRank[phaseStarted] {
			if err := w.do(ctx, i, phaseStarting, phaseStarted, func() error { return w.startSvc(step, i, false) }); err != nil {
				return fmt.Errorf("start %s: %w", w.plan[i].Svc, err)
			}
		}
	}
	// Check that every service stays up for --health-wait.
	if a.cfg.HealthWait > 0 {
		t := time.NewTimer(a.cfg.HealthWait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errInterrupted
		case <-t.C:
		}
	}
	for i := range w.plan {
		if phaseRank[w.ap.Steps[i].Phase] >= phaseRank[phaseHealthy] {
			continue
		}
		if w.plan[i].Remove {
			if err := w.setPhase(i, phaseHealthy); err != nil {
				return err
			}
			continue
		}
		if err := w.healthSvc(step, i); err != nil {
			return fmt.Errorf("health check of %s: %w", w.plan[i].Svc, err)
		}
		if err := w.setPhase(i, phaseHealthy); err != nil {
			return err
		}
	}
	w.dropOldContainers(step)
	return nil
}

// do journals before, runs fn, journals after; it refuses to start a new
// step once ctx has ended.
func (w *applyWorker) do(ctx context.Context, i int, before, after string, fn func() error) error {
	if ctx.Err() != nil {
		return errInterrupted
	}
	if err := w.setPhase(i, before); err != nil {
		return err
	}
	if err := fn(); err != nil {
		return err
	}
	return w.setPhase(i, after)
}

// install puts the service's staged files in place (idempotent: a file that
// already has the new content is left alone).
func (w *applyWorker) install(i int) error {
	for _, fi := range w.plan[i].Files {
		f := w.files[fi]
		allow := false // the target may allow a directory others can write, file by file
		for _, tf := range w.plan[i].Spec.Files {
			if tf.Path == f.Path {
				allow = tf.AllowWritableDir
			}
		}
		// Checked again now: a link planted since the target was accepted
		// must not lead an install into latch's own files.
		if d := w.a.ownPath(f.Path); d != "" {
			return fmt.Errorf("install %s: it now leads into %s, which latch keeps for itself", f.Path, d)
		}
		if err := fetch.Install(w.a.staged(f.SHA256), f.Path, modeOf(f), f.SHA256, fetch.AllowWritableDir(allow)); err != nil {
			return err
		}
	}
	return nil
}

// restore undoes the apply after cause: in reverse order, every service that
// was touched is stopped, its previous files restored, and started again.
// It returns cause (with the rollback's own failures appended).
func (w *applyWorker) restore(ctx context.Context, cause error) error {
	step := context.WithoutCancel(ctx)
	var problems []string
	for i := len(w.plan) - 1; i >= 0; i-- {
		ph := w.ap.Steps[i].Phase
		if ph == phasePending || ph == phaseRestored {
			continue
		}
		if ctx.Err() != nil {
			return errInterrupted
		}
		if ph != phaseRestopped {
			// What the apply started of the new release is stopped, with
			// its own command; a service it never started (or a removed
			// one, stopped for good) is not stopped again. "restoring"
			// from an earlier rollback cannot tell, and stops.
			started := phaseRank[ph] >= phaseRank[phaseStarting]
			if err := w.setPhase(i, phaseRestoring); err != nil {
				return err
			}
			if started && !w.plan[i].Remove {
				if err := w.stopSvc(step, i, false); err != nil {
					problems = append(problems, fmt.Sprintf("stop %s: %v", w.plan[i].Svc, err))
				}
			}
			if err := w.setPhase(i, phaseRestopped); err != nil {
				return err
			}
		}
		for _, fi := range w.plan[i].Files {
			f := w.files[fi]
			if err := fetch.Restore(f.Path, f.SHA256); err != nil {
				problems = append(problems, fmt.Sprintf("restore %s: %v", f.Path, err))
			}
		}
		if err := w.startSvc(step, i, true); err != nil {
			problems = append(problems, fmt.Sprintf("restart %s: %v", w.plan[i].Svc, err))
		}
		if err := w.setPhase(i, phaseRestored); err != nil {
			return err
		}
	}
	hit(FPRolledBack)
	if len(problems) > 0 {
		return fmt.Errorf("%w; rolled back with problems: %s", cause, strings.Join(problems, "; "))
	}
	return fmt.Errorf("%w; rolled back to the previous release", cause)
}

// onApplied records the outcome of an apply and removes the agent's locks.
func (a *Agent) onApplied(ev applyDone) {
	s := &a.st
	s.applying = false
	if ev.interrupted {
		// The journal and the locks stay as they are, for the next start.
		a.logf("apply of update %s interrupted by shutdown: %s; the next start re-takes its locks and resumes from there", short(s.pending.ID), ev.where)
		return
	}
	p := s.pending
	dur := time.Since(s.applyStarted).Seconds()
	s.lastApplySeconds = dur
	s.applySecondsTotal += dur
	if ev.err == nil {
		part := s.applyPlan
		// What remains once this part is done: the plan without its app.
		var rest []planned
		for _, pl := range s.plan {
			if len(part) == 0 || pl.Svc.App != part[0].Svc.App {
				rest = append(rest, pl)
			}
		}
		done := len(rest) == 0
		// Complete: every app of the target runs its release. An update
		// whose other apps were given up (max-defer) ends failed instead.
		complete := done && len(p.AppFailed) == 0
		running := p.Target
		if !complete {
			var err error
			if running, err = mergeRunning(a.runningDoc(), p.Target, partApps(part)); err != nil {
				a.logf("record what runs after update %s of %s: %v", short(p.ID), releases(part), err)
				running = nil
			}
		}
		err := a.journal(func(tx *store.Tx) error {
			for _, app := range partApps(part) {
				if _, stays := s.tgt.Apps[app]; !stays {
					if err := tx.DeleteApp(app); err != nil {
						return err
					}
					continue
				}
				ap := s.apps[app]
				ap.Name, ap.Current, ap.Target, ap.Updated = app, s.tgt.Apps[app].Release, s.tgt.Apps[app].Release, time.Now()
				if err := tx.PutApp(ap); err != nil {
					return err
				}
			}
			if running != nil {
				if err := tx.SetRunning(running); err != nil {
					return err
				}
			}
			if err := tx.DeleteApply(); err != nil {
				return err
			}
			if complete {
				if err := tx.DeletePending(); err != nil {
					return err
				}
			} else if done {
				var reasons []string
				for _, app := range sortedKeys(p.AppFailed) {
					reasons = append(reasons, p.AppFailed[app])
				}
				p.State, p.Reason, p.Updated = store.Failed, strings.Join(reasons, "; "), time.Now()
				if err := tx.PutPending(p); err != nil {
					return err
				}
			} else {
				// The next app's part starts afresh.
				p.State, p.Attempts, p.Reason, p.Updated = store.Downloaded, 0, "", time.Now()
				if err := tx.PutPending(p); err != nil {
					return err
				}
			}
			msg := fmt.Sprintf("update %s applied in %.1fs: %s", short(p.ID), dur, releases(part))
			if !done {
				msg += fmt.Sprintf(" (%s to go)", strings.Join(planApps(rest), ", "))
			}
			_, err := tx.Log(store.Event{Kind: "applied", Message: msg})
			return err
		})
		if err != nil {
			return // try again from the journal at the next start
		}
		for _, app := range partApps(part) {
			if _, stays := s.tgt.Apps[app]; !stays {
				delete(s.apps, app)
				continue
			}
			ap := s.apps[app]
			ap.Name, ap.Current, ap.Target = app, s.tgt.Apps[app].Release, s.tgt.Apps[app].Release
			s.apps[app] = ap
		}
		if running != nil {
			if st, err := target.Parse(running); err == nil {
				s.running = st
			}
		}
		hit(FPFinished)
		for _, pl := range part {
			for _, fi := range pl.Files {
				if err := fetch.Commit(p.Files[fi].Path); err != nil {
					a.logf("forget the install markers of %s: %v", p.Files[fi].Path, err)
				}
			}
		}
		s.appliesOK++
		a.logf("update %s applied: %s", short(p.ID), releases(part))
		a.releaseActionLocks()
		s.applyPlan = nil
		if complete {
			a.setPending(nil, nil)
			a.cleanDownloads()
		} else if done {
			s.plan = nil
			s.appBlocked = nil
			a.event("failed", "", "update %s failed: %s", short(p.ID), p.Reason)
		} else {
			s.plan = rest
			delete(s.appBlocked, part[0].Svc.App)
		}
	} else {
		s.appliesFailed++
		part := s.applyPlan
		s.applyPlan = nil
		if cancelled(p) {
			a.releaseActionLocks()
			a.cancelPending(cancelledBy(p), "rolled back: "+ev.err.Error())
			return
		}
		final := p.Attempts >= a.cfg.MaxAttempts
		// An app that failed for good is given up alone while other apps
		// of the update remain: they go on, and the update ends failed
		// once they are done.
		var app string
		others := false
		if len(part) > 0 {
			app = part[0].Svc.App
			others = slices.ContainsFunc(s.plan, func(pl planned) bool { return pl.Svc.App != app })
		}
		giveUp := final && others
		a.journal(func(tx *store.Tx) error {
			p.Reason, p.Updated = ev.err.Error(), time.Now()
			p.State = store.Downloaded
			if giveUp {
				if p.AppFailed == nil {
					p.AppFailed = map[string]string{}
				}
				p.AppFailed[app] = app + ": " + ev.err.Error()
				p.Attempts, p.Reason = 0, ""
			} else if final {
				p.State = store.Failed
				if len(p.AppFailed) > 0 {
					var reasons []string
					for _, name := range sortedKeys(p.AppFailed) {
						reasons = append(reasons, p.AppFailed[name])
					}
					p.Reason = strings.Join(append(reasons, app+": "+ev.err.Error()), "; ")
				}
			}
			if err := tx.PutPending(p); err != nil {
				return err
			}
			if err := tx.DeleteApply(); err != nil {
				return err
			}
			msg := fmt.Sprintf("update %s failed (attempt %d of %d): %v", short(p.ID), p.Attempts, a.cfg.MaxAttempts, ev.err)
			switch {
			case giveUp:
				msg = fmt.Sprintf("update %s of %s failed (attempt %d of %d): %v; %s is given up, the other apps go on", short(p.ID), app, a.cfg.MaxAttempts, a.cfg.MaxAttempts, ev.err, app)
			case !final:
				msg += "; will retry"
			}
			_, err := tx.Log(store.Event{Kind: "failed", Message: msg})
			return err
		})
		a.logf("update %s failed (attempt %d of %d): %v", short(p.ID), p.Attempts, a.cfg.MaxAttempts, ev.err)
		a.releaseActionLocks()
		if giveUp {
			s.plan = slices.DeleteFunc(s.plan, func(pl planned) bool { return pl.Svc.App == app })
			delete(s.appBlocked, app)
		} else if !final {
			s.retryAt = time.Now().Add(a.cfg.RetryDelay << min(p.Attempts-1, 6))
		}
	}
}

// releases says what a plan does, app by app: "extra removed,
// kiosk=2026.11.3 (backend removed)".
func releases(plan []planned) string {
	var out []string
	for i := 0; i < len(plan); {
		app, j := plan[i].Svc.App, i
		var removed []string
		for ; j < len(plan) && plan[j].Svc.App == app; j++ {
			if plan[j].Remove {
				removed = append(removed, plan[j].Svc.Service)
			}
		}
		switch {
		case plan[i].Release == "":
			out = append(out, app+" removed")
		case len(removed) > 0:
			out = append(out, fmt.Sprintf("%s=%s (%s removed)", app, plan[i].Release, strings.Join(removed, ", ")))
		default:
			out = append(out, app+"="+plan[i].Release)
		}
		i = j
	}
	return strings.Join(out, ", ")
}

// releaseActionLocks removes the entries of the action that ended (only
// those still the ones the agent created).
func (a *Agent) releaseActionLocks() {
	if len(a.st.actionLocks) == 0 {
		return
	}
	if err := lock.ReleaseAll(a.st.actionLocks); err != nil {
		a.logf("release locks: %v", err)
	}
	a.event("lock-released", "", "locks released: %s", lockPaths(a.st.actionLocks))
	a.st.actionLocks = nil
}

func lockPaths(locks []*lock.Lock) string {
	var paths []string
	for _, l := range locks {
		paths = append(paths, l.Path)
	}
	return strings.Join(paths, ", ")
}

// tryResume takes the locks of the apply (or the restart) that a crash or a
// shutdown interrupted, through the same gate as every other action: in the
// lock directories the agent uses now, with the device-wide paths and the
// recorded holds, and with force, override and cancel working on it. Until it
// can, the update shows as waiting, naming what blocks it. Before the agent is
// ready it only takes the locks; the loop starts the worker.
func (a *Agent) tryResume() {
	s := &a.st
	ap := s.resume
	if isRestart(ap) {
		a.tryResumeRestart()
		return
	}
	p := s.pending
	var part []planned
	if len(ap.Steps) > 0 {
		part = appPart(s.plan, ap.Steps[0].App)
	}
	if p == nil || p.ID != ap.UpdateID || !stepsMatch(ap.Steps, part) {
		a.logf("apply record of %s does not match the pending update: dropping it", short(ap.UpdateID))
		a.journal(func(tx *store.Tx) error { return tx.DeleteApply() })
		s.resume = nil
		a.releaseActionLocks()
		return
	}
	rollback := p.Attempts >= a.cfg.MaxAttempts || cancelled(p)
	if len(s.actionLocks) == 0 {
		force := p.Forced || s.override.Enabled
		why, by := "override", "override:"+s.override.By
		if p.Forced {
			why, by = "forced resume of an interrupted update", a.forcedBy()
		}
		svcs := services(part)
		if rollback {
			svcs = touched(ap, part) // a rollback acts on these alone
		}
		locks, blocking, err := a.take(svcs, force, why, by)
		if err != nil {
			a.logf("re-take the locks of the interrupted apply of %s: %v", short(p.ID), err)
			s.retryAt = time.Now().Add(a.cfg.RetryDelay)
			return
		}
		if len(blocking) > 0 {
			a.setResumeBlocked(blocking)
			return
		}
		s.actionLocks = locks
		s.blockedBy, s.blockedSince, s.blockKey = nil, time.Time{}, ""
		a.journal(func(tx *store.Tx) error {
			ap.Locks = lockRefs(locks)
			p.Forced, p.Updated = p.Forced && len(planApps(s.plan)) > 1, time.Now()
			if err := tx.PutPending(p); err != nil {
				return err
			}
			if err := tx.PutApply(ap); err != nil {
				return err
			}
			_, err := tx.Log(store.Event{Kind: "lock-taken", Message: "re-took the locks of the interrupted apply of " + short(p.ID) + ": " + lockPaths(locks)})
			return err
		})
	}
	if !a.isReady() {
		return // Run starts the worker once ready
	}
	a.journal(func(tx *store.Tx) error {
		p.State, p.Attempts, p.Updated = store.Applying, p.Attempts+1, time.Now()
		if err := tx.PutPending(p); err != nil {
			return err
		}
		msg := fmt.Sprintf("resuming interrupted apply of %s (attempt %d)", short(p.ID), p.Attempts)
		if rollback {
			msg = fmt.Sprintf("rolling back interrupted apply of %s", short(p.ID))
		}
		_, err := tx.Log(store.Event{Kind: "resumed", Message: msg})
		return err
	})
	s.resume = nil
	a.startApply(ap, s.actionLocks, rollback, part)
}

// touched lists the services of an apply record that its forward pass
// reached (a step past pending).
func touched(ap *store.Apply, plan []planned) []lock.Service {
	var out []lock.Service
	for i, st := range ap.Steps {
		if st.Phase != phasePending && i < len(plan) {
			out = append(out, plan[i].Svc)
		}
	}
	return out
}

// setResumeBlocked records what keeps an interrupted apply from resuming;
// the update shows as waiting (the journal keeps it "applying", so that it
// still resumes after another crash).
func (a *Agent) setResumeBlocked(entries []lock.Entry) {
	s := &a.st
	if s.blockedSince.IsZero() {
		s.blockedSince = time.Now()
	}
	s.blockedBy = entries
	key := entryKey(entries)
	if key == s.blockKey {
		return
	}
	s.blockKey = key
	msg := "interrupted apply waiting for the lock: " + describe(entries[0]) + a.hint(entries[0])
	a.event("deferred", "", "update %s: %s", short(s.resume.UpdateID), msg)
	a.logf("update %s: %s", short(s.resume.UpdateID), msg)
}

func entryKey(entries []lock.Entry) string {
	paths := make([]string, len(entries))
	for i, e := range entries {
		paths[i] = e.Path
	}
	return strings.Join(paths, "\x00")
}

// isReady reports whether Run has reported ready and the loop runs.
func (a *Agent) isReady() bool {
	select {
	case <-a.ready:
		return true
	default:
		return false
	}
}

// cancelPrefix starts the reason of an update whose cancel was asked for
// while it was half applied: it is rolled back, then dropped.
const cancelPrefix = "cancelled by "

func cancelled(p *store.Update) bool { return strings.HasPrefix(p.Reason, cancelPrefix) }

func cancelledBy(p *store.Update) string {
	by, _, _ := strings.Cut(strings.TrimPrefix(p.Reason, cancelPrefix), ":")
	return by
}

// stepsMatch reports whether an apply record's steps are the services of plan.
func stepsMatch(steps []store.Step, plan []planned) bool {
	if len(steps) != len(plan) {
		return false
	}
	for i, st := range steps {
		if st.App != plan[i].Svc.App || st.Service != plan[i].Svc.Service {
			return false
		}
	}
	return true
}

// modeOf is a file's mode as accepted: the target's default (0644) was
// filled in at acceptance, so 0 is a mode of 0000 asked for.
func modeOf(f store.File) os.FileMode { return os.FileMode(f.Mode) & os.ModePerm }
