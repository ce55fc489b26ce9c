package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"latch/agent/lock"
	"latch/agent/target"
	"latch/store"
)

// loopState is the agent's state. It is owned by the event loop goroutine:
// nothing else reads or writes it (requests run on the loop through do).
type loopState struct {
	apps    map[string]store.App // cache of the journal's app records
	pending *store.Update        // the journal's pending update, nil when none
	tgt     *target.State        // pending.Target, parsed
	plan    []planned            // what pending changes, in apply order
	latest  *target.State        // the latest accepted target
	running *target.State        // the target last applied in full (nil: not known)
	queued  *store.Queued        // a target accepted during an action, journalled, taken after it
	// retryDoc is a document from a source that could not be taken for a
	// reason of the device's (a full disk): it is tried again at retryDocAt.
	retryDoc   *target.Doc
	retryDocBy string
	retryDocAt time.Time
	override   store.Override
	forcedBy   string // who armed the pending update's force (the journal keeps only that it is armed)
	holds      []store.Hold
	reboot     *store.Reboot // pending reboot or shutdown

	holdLocks map[string]*lock.Lock // service dir -> the hold entry we keep there

	downloading    bool
	cancelDownload context.CancelFunc
	fileDone       []int64 // bytes done per pending file
	fileTotal      []int64 // size per pending file, -1 unknown
	lastJournalled time.Time
	// pulls is the progress of each container image of the pending
	// update, by reference.
	pulls map[string]pullProgress
	// pullsLoaded says pulls holds the journalled image pulls (read once,
	// at the first status or progress after the start).
	pullsLoaded bool
	// pullMarks is, per image reference, what the journal holds of its
	// pull: the bytes and time of the last record written.
	pullMarks map[string]pullMark
	// pulledBytes counts image bytes received from registries.
	pulledBytes int64
	// containers is the last state latch saw of each container service
	// ("app/service" -> release and state).
	containers map[string]containerSeen

	applying     bool
	applyPlan    []planned    // the part of plan in flight: the services of one app
	actionLocks  []*lock.Lock // the agent's entries for the action in flight (apply, restart, reboot)
	applyStarted time.Time
	// resume is an apply (or a restart) that a crash or a shutdown
	// interrupted, waiting for its locks; nil when none.
	resume *store.Apply
	// restarting is the service being restarted through the API, if any.
	restarting *lock.Service

	rebooting      bool
	rebootFailures int       // reboot or shutdown commands that failed in a row
	rebootError    string    // the last failure, shown in the status
	rebootRetryAt  time.Time // earliest next try of a failed reboot or shutdown (or: when its window opens)
	rebootWindow   string    // why a pending reboot waits for its maintenance window, "" when it does not
	inhibitErr     string    // the last failure to list the shutdown inhibitors, logged once
	blockedBy      []lock.Entry
	blockedSince   time.Time
	// appBlocked is what blocks each app of the pending update that waits
	// (app -> entries); apps absent from it are free or in flight.
	appBlocked map[string][]lock.Entry
	// appReason says why an app of the pending update waits beyond its
	// locks (its window, its max-defer deadline); policyWake is when the
	// next window opens or deadline passes.
	appReason  map[string]string
	policyWake time.Time
	// notices is the update-pending content written in each service dir
	// (nil content: maybe left by an earlier run); noticeErr the last error
	// of a dir, logged once.
	notices   map[string][]byte
	noticeErr map[string]string
	blockKey  string    // paths of blockedBy, to journal a deferral once per change
	retryAt   time.Time // earliest next download or apply attempt

	downloadedBytes   int64
	appliesOK         int
	appliesFailed     int
	lastApplySeconds  float64
	applySecondsTotal float64
}

// planned is one service that the pending update touches: it is replaced
// (stopped, its files installed, started), or, when Remove is set, it is no
// longer in the target and is stopped only.
type planned struct {
	Svc     lock.Service
	Release string         // the app's new release ("" when the app is removed)
	Spec    target.Service // the new release's service; the running one when Remove
	// Old is the service as it runs now, when the running target is known:
	// its stop command stops it, and a rollback starts it again.
	Old *target.Service
	// OldRelease is the release Old belongs to (a container's name and
	// labels carry it); "" when Old is nil.
	OldRelease string
	Remove     bool
	Files      []int // indexes into pending.Files
}

func (s *loopState) init() {
	s.apps = map[string]store.App{}
	s.holdLocks = map[string]*lock.Lock{}
	s.noticeErr = map[string]string{}
}

// nextWake is how long the loop may sleep before a timer-driven action
// (a retry, a hold expiry) is due.
func (s *loopState) nextWake(now time.Time) (time.Duration, bool) {
	var next time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if s.pending != nil && (s.pending.State == store.Downloading || s.pending.State == store.Downloaded || s.pending.State == store.Waiting) {
		consider(s.retryAt)
		consider(s.policyWake)
	}
	for _, h := range s.holds {
		consider(h.Expires)
	}
	if s.retryDoc != nil {
		consider(s.retryDocAt)
	}
	if s.reboot != nil {
		consider(s.rebootRetryAt)
	}
	if s.resume != nil {
		consider(s.retryAt)
	}
	if next.IsZero() {
		return 0, false
	}
	d := next.Sub(now)
	if d < 0 {
		d = 0
	}
	return d, true
}

// setPending caches the pending update and what it changes.
func (a *Agent) setPending(u *store.Update, st *target.State) {
	s := &a.st
	s.pending, s.tgt = u, st
	s.plan = nil
	s.fileDone, s.fileTotal = nil, nil
	s.blockedBy, s.blockedSince, s.blockKey = nil, time.Time{}, ""
	s.appBlocked, s.appReason, s.policyWake = nil, nil, time.Time{}
	if u == nil {
		return
	}
	s.plan = makePlan(st, s.apps, s.running, u.Files)
	// Apps given up (max-defer) are not applied.
	s.plan = slices.DeleteFunc(s.plan, func(pl planned) bool { return u.AppFailed[pl.Svc.App] != "" })
	for _, f := range u.Files {
		s.fileDone = append(s.fileDone, f.Done)
		s.fileTotal = append(s.fileTotal, f.Size)
	}
}

// makePlan lists the services of every app whose release differs from the
// one running, in a fixed order (app, then service), with their files. When
// the running target is known, the services it has and st does not (a whole
// app, or a service of an app that changes release) are planned for removal.
func makePlan(st *target.State, apps map[string]store.App, running *target.State, files []store.File) []planned {
	var plan []planned
	names := map[string]bool{}
	for app := range st.Apps {
		names[app] = true
	}
	if running != nil {
		for app := range running.Apps {
			names[app] = true // planned below only while it runs that release
		}
	}
	for _, app := range sortedKeys(names) {
		ta, inTarget := st.Apps[app]
		cur, known := apps[app]
		if inTarget && known && cur.Current == ta.Release {
			continue
		}
		// What runs of app: only when the running target names the release
		// that the journal says runs.
		var old map[string]target.Service
		if running != nil && known {
			if ra, ok := running.Apps[app]; ok && ra.Release == cur.Current {
				old = ra.Services
			}
		}
		svcs := map[string]bool{}
		for svc := range ta.Services {
			svcs[svc] = true
		}
		for svc := range old {
			svcs[svc] = true
		}
		for _, svc := range containerOrder(sortedKeys(svcs), ta.Services) {
			p := planned{Svc: lock.Service{App: app, Service: svc}, Release: ta.Release}
			if o, ok := old[svc]; ok {
				p.Old, p.OldRelease = &o, cur.Current
			}
			if spec, stays := ta.Services[svc]; stays {
				p.Spec = spec
				for i, f := range files {
					if f.App == app && f.Service == svc {
						p.Files = append(p.Files, i)
					}
				}
			} else {
				p.Spec, p.Remove = *p.Old, true
			}
			plan = append(plan, p)
		}
	}
	return plan
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// planApps lists the apps of a plan, in its order.
func planApps(plan []planned) []string {
	var out []string
	for _, p := range plan {
		if len(out) == 0 || out[len(out)-1] != p.Svc.App {
			out = append(out, p.Svc.App)
		}
	}
	return out
}

// appPart is the part of plan that changes app: the services that one
// journalled apply of that app acts on. An update applies app by app, so that
// a lock in one app never holds back another.
func appPart(plan []planned, app string) []planned {
	var out []planned
	for _, p := range plan {
		if p.Svc.App == app {
			out = append(out, p)
		}
	}
	return out
}

// services returns the lock services of a plan.
func services(plan []planned) []lock.Service {
	out := make([]lock.Service, len(plan))
	for i, p := range plan {
		out[i] = p.Svc
	}
	return out
}

// knownServices is every service that a target names: the latest, the
// pending and the running one's, and the services that holds name. Lock
// directories that users made for services no target names are not the
// agent's business: it neither watches nor locks them.
func (a *Agent) knownServices() []lock.Service {
	seen := map[lock.Service]bool{}
	add := func(st *target.State) {
		if st == nil {
			return
		}
		for app, ta := range st.Apps {
			for svc := range ta.Services {
				seen[lock.Service{App: app, Service: svc}] = true
			}
		}
	}
	add(a.st.latest)
	add(a.st.tgt)
	add(a.st.running)
	for _, h := range a.st.holds {
		if !h.All {
			seen[lock.Service{App: h.App, Service: h.Service}] = true
		}
	}
	out := make([]lock.Service, 0, len(seen))
	for s := range seen {
		out = append(out, s)
	}
	slices.SortFunc(out, func(x, y lock.Service) int { return strings.Compare(x.String(), y.String()) })
	return out
}

// journal runs fn in one journal transaction; a failure is logged and
// returned. Every state change of the agent is journalled before it is
// acted upon.
func (a *Agent) journal(fn func(tx *store.Tx) error) error {
	err := a.commit(fn)
	if err != nil {
		a.logf("journal: %v", err)
	}
	return err
}

// commit is the one way the agent writes its journal: one transaction, then
// the commit failpoint (LATCH_FAILPOINT=commit:N kills the agent right after
// its Nth commit, so that a test can kill it between any two).
func (a *Agent) commit(fn func(tx *store.Tx) error) error {
	err := a.j.Update(fn)
	if err == nil {
		hitCommit()
	}
	return err
}

// event appends one event to the journal's log (best effort).
func (a *Agent) event(kind, by, format string, args ...any) {
	a.journal(func(tx *store.Tx) error {
		_, err := tx.Log(store.Event{Kind: kind, By: by, Message: fmt.Sprintf(format, args...)})
		return err
	})
}

// snapshot builds the status from the loop's state.
func (a *Agent) snapshot() Status {
	s := &a.st
	st := Status{
		State:             StateIdle,
		BlockedBy:         []lock.Entry{},
		Holds:             slices.Clone(s.holds),
		OverrideLock:      s.override.Enabled,
		PendingReboot:     s.reboot,
		DownloadTotal:     -1,
		DownloadedBytes:   s.downloadedBytes,
		AppliesSucceeded:  s.appliesOK,
		AppliesFailed:     s.appliesFailed,
		LastApplySeconds:  s.lastApplySeconds,
		ApplySecondsTotal: s.applySecondsTotal,
		PulledBytes:       s.pulledBytes,
		Containers:        a.containerStatus(),
	}
	if st.Holds == nil {
		st.Holds = []store.Hold{}
	}
	st.Refused = a.Refused()
	var rel []string
	for _, name := range sortedKeys(s.apps) {
		ap := s.apps[name]
		as := AppStatus{Name: name, Current: ap.Current, Target: ap.Target}
		if p := s.pending; p != nil {
			if b := s.appBlocked[name]; len(b) > 0 {
				as.BlockedBy = slices.Clone(b)
			}
			as.Reason = s.appReason[name]
			if r := p.AppFailed[name]; r != "" {
				as.Reason = "failed: " + r
			}
			if d, ok := a.appDeadline(name); ok && p.AppFailed[name] == "" && p.State != store.Failed {
				as.Deadline = d
				if st.Deadline.IsZero() || d.Before(st.Deadline) {
					st.Deadline = d
				}
			}
		}
		st.Apps = append(st.Apps, as)
		if ap.Current != "" {
			rel = append(rel, name+"="+ap.Current)
		}
	}
	st.Release = strings.Join(rel, ",")
	if p := s.pending; p != nil {
		st.UpdateID, st.Attempts, st.Reason = p.ID, p.Attempts, p.Reason
		var done, total int64
		known := true
		for i := range s.fileDone {
			done += s.fileDone[i]
			if s.fileTotal[i] < 0 {
				known = false
			} else {
				total += s.fileTotal[i]
			}
		}
		st.DownloadDone = done
		if known {
			st.DownloadTotal = total
		}
		switch p.State {
		case store.Downloading:
			st.State, st.UpdatePending = StateDownloading, true
			if known && total > 0 {
				st.DownloadProgress = int(done * 100 / total)
			}
		case store.Downloaded, store.Waiting:
			st.State, st.UpdatePending, st.UpdateDownloaded, st.DownloadProgress = StateWaiting, true, true, 100
		case store.Applying:
			st.State, st.UpdatePending, st.UpdateDownloaded, st.DownloadProgress = StateApplying, true, true, 100
		case store.Failed:
			st.State, st.UpdateFailed = StateFailed, true
		}
		if st.State == StateWaiting && len(s.blockedBy) > 0 {
			st.BlockedBy = slices.Clone(s.blockedBy)
			st.BlockedSince = s.blockedSince
		}
		if st.State == StateWaiting && st.Reason == "" {
			for _, app := range sortedKeys(s.appReason) {
				if r := s.appReason[app]; r != "" {
					st.Reason = app + ": " + r
					break
				}
			}
		}
	}
	if s.resume != nil && !s.applying && len(s.blockedBy) > 0 {
		// An interrupted apply (or restart) waits for its locks.
		st.State, st.BlockedBy, st.BlockedSince = StateWaiting, slices.Clone(s.blockedBy), s.blockedSince
		what := "the interrupted apply"
		if isRestart(s.resume) {
			what = "the interrupted " + strings.Replace(s.resume.UpdateID, ":", " of ", 1)
		} else if s.pending != nil && cancelled(s.pending) {
			what = "the rollback of the cancelled update"
		}
		st.Reason = what + " waits for the lock: " + describe(s.blockedBy[0]) + a.hint(s.blockedBy[0])
	}
	if s.applying || s.restarting != nil {
		st.State = StateApplying
	}
	if s.reboot != nil && !s.rebooting && st.State == StateIdle {
		if s.rebootError != "" {
			st.Reason = s.rebootError
		} else if s.rebootWindow != "" {
			st.Reason = s.rebootWindow
		} else if len(s.blockedBy) > 0 {
			st.BlockedBy, st.BlockedSince = slices.Clone(s.blockedBy), s.blockedSince
			st.Reason = "waiting for the lock: " + describe(s.blockedBy[0])
		}
	}
	if s.rebooting {
		st.State = StateRebooting
	}
	return st
}

// handle applies a worker's event to the state.
func (a *Agent) handle(ev any) {
	switch ev := ev.(type) {
	case dlProgress:
		a.onProgress(ev)
	case dlDone:
		a.onDownloaded(ev)
	case pullProgress:
		a.onPullProgress(ev)
	case containerSeen:
		a.onContainerSeen(ev)
	case applyDone:
		a.onApplied(ev)
	case rebootDone:
		a.onRebootDone(ev)
	case restartDone:
		a.onRestarted(ev)
	default:
		panic(fmt.Sprintf("agent: unknown event %T", ev))
	}
}

// advance moves the state machine on as far as it can without waiting.
func (a *Agent) advance() {
	now := time.Now()
	a.expireHolds(now)
	if a.st.rebooting {
		return
	}
	if len(a.st.holds) > 0 {
		a.reconcileHolds(false) // an entry a cleanup deleted is put back
	}
	if a.st.resume != nil && !a.st.applying {
		a.tryResume()
		return
	}
	if a.st.queued != nil && !a.busy() {
		a.takeQueued()
	}
	if d := a.st.retryDoc; d != nil && !now.Before(a.st.retryDocAt) {
		a.st.retryDoc = nil
		if err := a.accept(*d, a.st.retryDocBy); err != nil {
			a.logf("target from %s rejected again: %v", d.Source, err)
			if !refusedForGood(err) {
				a.retrySource(*d, a.st.retryDocBy)
			}
		}
	}
	if a.cfg.BreakStale {
		a.breakStale()
	}
	p := a.st.pending
	if p != nil && !a.st.applying {
		switch p.State {
		case store.Downloading:
			if !a.st.downloading && !now.Before(a.st.retryAt) {
				a.startDownload()
			}
		case store.Downloaded, store.Waiting:
			if p.Forced || a.st.override.Enabled || !now.Before(a.st.retryAt) {
				a.tryApply()
			}
		}
	}
	busy := a.st.applying || (p != nil && p.State != store.Failed)
	if a.st.reboot != nil && !busy {
		a.tryPendingReboot()
	}
}

// removeOthers removes the entries of others (not the agent's own, not its
// holds) that stand in svcs' lock directories and at the device-wide paths:
// the override does this when it is turned on. It journals what it removed,
// why and for whom.
func (a *Agent) removeOthers(svcs []lock.Service, why, by string) {
	entries, err := a.cfg.Layout.Blocking(svcs)
	if err != nil {
		a.logf("scan locks: %v", err)
		return
	}
	for _, e := range entries {
		if a.classify(e) != entryOther {
			continue
		}
		if err := a.cfg.Layout.RemoveEntry(e); err != nil {
			a.logf("remove lock %s (%s): %v", e.Path, why, err)
			continue
		}
		a.event("lock-removed", by, "%s: removed %s (%s)", why, e.Path, holderText(e))
	}
}

// setBlocked records what blocks the pending update, journalling a deferral
// once per change of the blocking set.
func (a *Agent) setBlocked(entries []lock.Entry) {
	s := &a.st
	paths := make([]string, len(entries))
	for i, e := range entries {
		paths[i] = e.Path
	}
	key := strings.Join(paths, "\x00")
	if s.blockedSince.IsZero() {
		s.blockedSince = time.Now()
	}
	s.blockedBy = entries
	if key == s.blockKey {
		return
	}
	s.blockKey = key
	p := s.pending
	reason := "waiting for the lock: " + describe(entries[0]) + a.hint(entries[0])
	a.journal(func(tx *store.Tx) error {
		p.State, p.Reason, p.Updated = store.Waiting, reason, time.Now()
		if err := tx.PutPending(p); err != nil {
			return err
		}
		_, err := tx.Log(store.Event{Kind: "deferred", Message: "update " + short(p.ID) + " deferred: " + reason})
		return err
	})
}

// breakStale removes stale entries (latch's own record naming a dead
// process) when --break-stale is set.
func (a *Agent) breakStale() {
	entries, err := a.cfg.Layout.Scan()
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.State != lock.StateStale {
			continue
		}
		if err := a.cfg.Layout.RemoveEntry(e); err != nil {
			a.logf("break stale lock %s: %v", e.Path, err)
			continue
		}
		a.event("lock-removed", "break-stale", "removed stale lock %s (%s)", e.Path, holderText(e))
	}
}

// forcedBy names who armed the force of the pending update, for the journal
// of what the force removed.
func (a *Agent) forcedBy() string {
	if a.st.forcedBy != "" {
		return a.st.forcedBy
	}
	return "force (asked for before the agent restarted)"
}

// errInterrupted: an apply stopped between steps because the agent is
// shutting down; the journal says where to resume.
var errInterrupted = errors.New("interrupted by shutdown")
