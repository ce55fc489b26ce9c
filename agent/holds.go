package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"latch/agent/lock"
	"latch/store"
)

// HoldRequest asks the agent to hold the lock of one service, or of every
// service (All), until released or until For has passed (0: no expiry).
type HoldRequest struct {
	App, Service string
	All          bool
	Reason       string
	For          time.Duration
	By           string
}

// Hold journals a hold and puts its lock entry (latch-hold.lock) in place
// before it returns. A hold of the same service replaces the previous one.
func (a *Agent) Hold(ctx context.Context, r HoldRequest) (store.Hold, error) {
	if r.All == (r.App != "" || r.Service != "") {
		return store.Hold{}, fmt.Errorf("%w: a hold names either app and service, or all", ErrInvalid)
	}
	if !r.All {
		if _, err := lock.ParseService(r.App + "/" + r.Service); err != nil {
			return store.Hold{}, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
	}
	if r.For < 0 {
		return store.Hold{}, fmt.Errorf("%w: hold duration %s is negative", ErrInvalid, r.For)
	}
	if len(r.Reason) > 1024 {
		return store.Hold{}, fmt.Errorf("%w: reason is longer than 1024 bytes", ErrInvalid)
	}
	h := store.Hold{App: r.App, Service: r.Service, All: r.All, Reason: r.Reason, Created: time.Now(), By: r.By}
	if r.For > 0 {
		h.Expires = h.Created.Add(r.For)
	}
	err := a.do(ctx, func() error {
		if err := a.holdAllowed(h); err != nil {
			return err
		}
		prev := slices.Clone(a.st.holds)
		err := a.journal(func(tx *store.Tx) error {
			if err := tx.PutHold(h); err != nil {
				return err
			}
			msg := "hold on " + holdName(h)
			if !h.Expires.IsZero() {
				msg += " until " + h.Expires.UTC().Format(time.RFC3339)
			}
			if h.Reason != "" {
				msg += ": " + h.Reason
			}
			_, err := tx.Log(store.Event{Kind: "hold", App: h.App, Service: h.Service, By: h.By, Message: msg})
			return err
		})
		if err != nil {
			return err
		}
		a.st.holds = replaceHold(a.st.holds, h)
		if err := a.reconcileHolds(false); err != nil {
			// Refused holds leave no trace: the journal forgets it again.
			a.st.holds = prev
			a.journal(func(tx *store.Tx) error {
				if i := findHold(prev, h.App, h.Service, h.All); i >= 0 {
					return tx.PutHold(prev[i])
				}
				if err := tx.DeleteHold(h.App, h.Service, h.All); err != nil {
					return err
				}
				_, err := tx.Log(store.Event{Kind: "release", App: h.App, Service: h.Service, By: h.By, Message: "hold on " + holdName(h) + " not taken: " + err.Error()})
				return err
			})
			a.reconcileHolds(false)
			return err
		}
		return nil
	})
	return h, err
}

// holdAllowed refuses a hold that an action in flight would break (the
// action already holds the service's locks: the hold could not be kept), and
// a hold on a service that no target names once targets are known.
func (a *Agent) holdAllowed(h store.Hold) error {
	s := &a.st
	var busy []lock.Service
	switch {
	case s.rebooting:
		return &LockedError{Action: "hold on " + holdName(h) + " (a " + s.reboot.Kind + " is under way)", Entries: a.actionEntries()}
	case s.restarting != nil:
		busy = []lock.Service{*s.restarting}
	case s.applying || s.resume != nil:
		busy = services(s.applyPlan)
		if s.resume != nil && len(s.resume.Steps) > 0 {
			busy = services(appPart(s.plan, s.resume.Steps[0].App))
		}
		if s.resume != nil && isRestart(s.resume) {
			st := s.resume.Steps[0]
			busy = []lock.Service{{App: st.App, Service: st.Service}}
		}
	}
	for _, b := range busy {
		if h.All || (b.App == h.App && b.Service == h.Service) {
			return &LockedError{Action: "hold on " + holdName(h) + " while " + b.String() + " is being updated; ask again once it is done", Entries: a.actionEntries()}
		}
	}
	if h.All {
		return nil
	}
	known := a.knownServices()
	if len(known) > 0 && !slices.Contains(known, lock.Service{App: h.App, Service: h.Service}) {
		return fmt.Errorf("%w: no target state names %s/%s, so there is nothing to hold; check the name (latch status lists the apps)", ErrNotFound, h.App, h.Service)
	}
	return nil
}

// Release ends a hold (or the --all hold) and removes its entry unless
// another hold still needs it. ErrNotFound when there is no such hold.
func (a *Agent) Release(ctx context.Context, app, service string, all bool, by string) error {
	return a.do(ctx, func() error {
		i := findHold(a.st.holds, app, service, all)
		if i < 0 {
			return fmt.Errorf("%w: no hold on %s", ErrNotFound, holdName(store.Hold{App: app, Service: service, All: all}))
		}
		h := a.st.holds[i]
		err := a.journal(func(tx *store.Tx) error {
			if err := tx.DeleteHold(app, service, all); err != nil {
				return err
			}
			_, err := tx.Log(store.Event{Kind: "release", App: app, Service: service, By: by, Message: "hold on " + holdName(h) + " released"})
			return err
		})
		if err != nil {
			return err
		}
		a.st.holds = append(a.st.holds[:i:i], a.st.holds[i+1:]...)
		return a.reconcileHolds(true)
	})
}

func holdName(h store.Hold) string {
	if h.All {
		return "all services"
	}
	return h.App + "/" + h.Service
}

func findHold(hs []store.Hold, app, service string, all bool) int {
	for i, h := range hs {
		if h.All == all && h.App == app && h.Service == service {
			return i
		}
	}
	return -1
}

func replaceHold(hs []store.Hold, h store.Hold) []store.Hold {
	if i := findHold(hs, h.App, h.Service, h.All); i >= 0 {
		hs[i] = h
		return hs
	}
	return append(hs, h)
}

// expireHolds releases the holds whose --for has passed, and journals it.
func (a *Agent) expireHolds(now time.Time) {
	var keep []store.Hold
	var expired []store.Hold
	for _, h := range a.st.holds {
		if !h.Expires.IsZero() && !now.Before(h.Expires) {
			expired = append(expired, h)
		} else {
			keep = append(keep, h)
		}
	}
	if len(expired) == 0 {
		return
	}
	err := a.journal(func(tx *store.Tx) error {
		for _, h := range expired {
			if err := tx.DeleteHold(h.App, h.Service, h.All); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			if _, err := tx.Log(store.Event{Kind: "release", App: h.App, Service: h.Service, By: "expiry", Message: "hold on " + holdName(h) + " expired"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return
	}
	a.st.holds = keep
	a.reconcileHolds(true)
}

// reconcileHolds makes the hold entries on disk match the journal's holds:
// it creates (or adopts) an entry in every service directory a hold covers,
// and removes the agent's hold entries that no hold needs any more. With
// leftovers it also looks for hold entries of a dead agent that no hold
// needs (a scan of every lock directory: at start and when a hold ends).
func (a *Agent) reconcileHolds(leftovers bool) error {
	want := map[string]lock.Service{}
	for _, h := range a.st.holds {
		if h.All {
			for _, s := range a.knownServices() {
				want[a.cfg.Layout.ServiceDir(s)] = s
			}
			continue
		}
		s := lock.Service{App: h.App, Service: h.Service}
		want[a.cfg.Layout.ServiceDir(s)] = s
	}
	var firstErr error
	for dir, s := range want {
		if l, ok := a.st.holdLocks[dir]; ok {
			if stillThere(l) {
				continue
			}
			// Gone or replaced: drop the old one's descriptor and flock
			// (Remove unlinks only the entry it made, which is gone).
			l.Remove()
			delete(a.st.holdLocks, dir)
		}
		if _, err := a.cfg.Layout.EnsureServiceDir(s); err != nil {
			firstErr = errors.Join(firstErr, err)
			continue
		}
		l, err := a.takeOwn(filepath.Join(dir, lock.HoldName), lock.RoleHold)
		if err != nil {
			a.logf("hold entry for %s: %v", s, err)
			firstErr = errors.Join(firstErr, fmt.Errorf("hold entry for %s: %w", s, err))
			continue
		}
		a.st.holdLocks[dir] = l
	}
	for dir, l := range a.st.holdLocks {
		if _, ok := want[dir]; ok {
			continue
		}
		if err := l.Remove(); err != nil && !errors.Is(err, lock.ErrNotOurs) {
			a.logf("remove hold entry %s: %v", l.Path, err)
		}
		delete(a.st.holdLocks, dir)
	}
	// Hold entries of the agent's own that no hold needs (expired or released
	// while the agent was down).
	if !leftovers {
		return firstErr
	}
	if entries, err := a.ownEntries(lock.RoleHold); err == nil {
		for _, e := range entries {
			if _, ok := want[filepath.Dir(e.Path)]; ok || a.classify(e) != entryDead {
				continue
			}
			a.cfg.Layout.RemoveEntry(e)
		}
	}
	return firstErr
}

// stillThere reports whether l's entry still exists as created.
func stillThere(l *lock.Lock) bool {
	cur, err := lock.Adopt(l.Path)
	return err == nil && cur.Dev == l.Dev && cur.Ino == l.Ino
}

// ownEntries lists the entries that carry the agent's record with role and
// are owned by the lock uid: the agent's own, whoever else may look alike.
func (a *Agent) ownEntries(role lock.Role) ([]lock.Entry, error) {
	entries, err := a.cfg.Layout.Scan()
	if err != nil && !errors.Is(err, lock.ErrTruncated) {
		return nil, err // truncated: other users' directories beyond the bound are not the agent's
	}
	var out []lock.Entry
	for _, e := range entries {
		if e.App == "" || e.UID != a.cfg.LockUID || e.Record == nil || e.Record.Role != role {
			continue
		}
		out = append(out, e)
	}
	return out, nil
}
