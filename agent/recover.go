package agent

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"latch/agent/lock"
	"latch/agent/target"
	"latch/store"
)

// recover loads the agent's state from the journal and puts back, before the
// agent reports ready, every lock entry it must hold: the locks of an
// interrupted apply and the entries of every hold. /tmp is cleared at boot, so
// after a reboot they are all missing; after a crash they may still be there
// and are adopted. Entries of the agent's own that nothing needs any more are
// removed; nobody else's entry is ever touched.
func (a *Agent) recover() error {
	s := &a.st
	var apply *store.Apply
	err := a.j.View(func(tx *store.Tx) error {
		apps, err := tx.Apps()
		if err != nil {
			return err
		}
		for _, ap := range apps {
			s.apps[ap.Name] = ap
		}
		if s.override, err = tx.Override(); err != nil {
			return err
		}
		if s.holds, err = tx.Holds(); err != nil {
			return err
		}
		if s.reboot, err = tx.PendingReboot(); errors.Is(err, store.ErrNotFound) {
			s.reboot = nil
		} else if err != nil {
			return err
		}
		if s.pending, err = tx.Pending(); errors.Is(err, store.ErrNotFound) {
			s.pending = nil
		} else if err != nil {
			return err
		}
		if doc, err := tx.Running(); err == nil {
			if s.running, err = target.Parse(doc); err != nil {
				// Valid when applied; a newer latch may be stricter. Removed
				// services are then not stopped until the next full apply.
				a.logf("the running target no longer parses: %v", err)
				s.running = nil
			}
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if apply, err = tx.Apply(); errors.Is(err, store.ErrNotFound) {
			apply = nil
		} else if err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read journal: %w", err)
	}

	if r := s.reboot; r != nil && r.BootID != a.bootID {
		a.journal(func(tx *store.Tx) error {
			if err := tx.SetPendingReboot(nil); err != nil {
				return err
			}
			_, err := tx.Log(store.Event{Kind: r.Kind, By: r.By, Message: fmt.Sprintf("%s done (asked for at %s: %s)", r.Kind, r.Requested.UTC().Format(time.RFC3339), r.Reason)})
			return err
		})
		s.reboot = nil
	}

	if p := s.pending; p != nil {
		st, err := target.Parse(p.Target)
		if err != nil {
			// The document was valid when accepted; a newer latch may be stricter.
			a.event("failed", "", "pending update %s no longer parses, dropped: %v", short(p.ID), err)
			a.journal(func(tx *store.Tx) error { return tx.DeletePending() })
			s.pending, apply = nil, nil
		} else {
			a.setPending(p, st)
			if p.State == store.Applying && apply == nil {
				p.State = store.Downloaded // crashed between the two journal writes
			}
		}
	}

	// The interrupted apply's locks come first.
	if apply != nil {
		s.retake = slices.Clone(apply.Locks)
		a.retakeApplyLocks()
	}
	keep := map[string]bool{}
	if apply != nil {
		for _, r := range apply.Locks {
			keep[r.Path] = true
		}
	}
	leftovers, err := a.ownEntries(lock.RoleAgent)
	if err != nil {
		return fmt.Errorf("look for the agent's leftover locks: %w", err)
	}
	for _, e := range leftovers {
		if keep[e.Path] {
			continue
		}
		if err := a.cfg.Layout.RemoveEntry(e); err != nil {
			a.logf("remove leftover lock %s: %v", e.Path, err)
			continue
		}
		a.event("lock-released", "", "removed the agent's leftover lock %s", e.Path)
	}

	// The services of the last accepted target (and of the pending update)
	// get their lock directories and drop-ins before READY=1: /tmp and /run
	// were cleared at boot, and units ordered after latch start right after.
	latest, err := os.ReadFile(a.latestPath())
	if err == nil {
		if st, err := target.Parse(latest); err == nil {
			s.latest = st
			a.prepare(st)
		} else {
			a.logf("kept target state %s no longer parses: %v", a.latestPath(), err)
		}
	}
	if s.tgt != nil && !bytes.Equal(latest, s.pending.Target) {
		a.prepare(s.tgt)
	}

	// Then every hold, minus the ones that expired while the agent was down.
	a.expireHolds(time.Now())
	a.reconcileHolds()
	return nil
}

// retakeApplyLocks re-creates (or adopts) the locks of an interrupted apply.
// A lock that someone else took meanwhile is waited for: the apply resumes
// only once all of them are the agent's again.
func (a *Agent) retakeApplyLocks() {
	s := &a.st
	var still []store.LockRef
	for _, r := range s.retake {
		l, err := a.takeOwn(r.Path, lock.RoleAgent)
		if err != nil {
			var he *lock.HeldError
			if errors.As(err, &he) {
				s.blockedBy = []lock.Entry{he.Entry}
				if s.blockedSince.IsZero() {
					s.blockedSince = time.Now()
				}
			} else {
				a.logf("re-take lock %s: %v", r.Path, err)
			}
			still = append(still, r)
			continue
		}
		s.applyLocks = append(s.applyLocks, l)
	}
	s.retake = still
	if len(still) > 0 {
		return
	}
	s.blockedBy, s.blockedSince = nil, time.Time{}
	a.event("lock-taken", "", "re-took the locks of the interrupted apply: %s", lockPaths(s.applyLocks))
	// Record the entries' new identities before anything else happens.
	a.journal(func(tx *store.Tx) error {
		ap, err := tx.Apply()
		if err != nil {
			return err
		}
		ap.Locks = lockRefs(s.applyLocks)
		return tx.PutApply(ap)
	})
	select {
	case <-a.ready:
		a.resumeApply() // the locks came back after start-up: resume now
	default: // still starting: Run resumes once ready
	}
}

// takeOwn creates path as the agent's entry with the given role, or adopts an
// entry that is already the agent's own (its record and its owner say so).
func (a *Agent) takeOwn(path string, role lock.Role) (*lock.Lock, error) {
	dir := filepath.Dir(path)
	if svc, ok := a.serviceOf(dir); ok {
		if _, err := a.cfg.Layout.EnsureServiceDir(svc); err != nil {
			return nil, err
		}
	}
	l, err := lock.Create(path, lock.NewRecord(role), a.cfg.LockUID, a.cfg.LockGID)
	if err == nil {
		return l, nil
	}
	var he *lock.HeldError
	if errors.As(err, &he) && he.Entry.Record != nil && he.Entry.Record.Role == role && he.Entry.UID == a.cfg.LockUID {
		return lock.Adopt(path)
	}
	return nil, err
}

// serviceOf maps a service lock directory back to its service.
func (a *Agent) serviceOf(dir string) (lock.Service, bool) {
	rel, err := filepath.Rel(filepath.Join(a.cfg.Layout.Dir, "services"), dir)
	if err != nil {
		return lock.Service{}, false
	}
	app, svc, ok := cutPath(rel)
	if !ok {
		return lock.Service{}, false
	}
	s, err := lock.ParseService(app + "/" + svc)
	return s, err == nil
}

func cutPath(rel string) (string, string, bool) {
	app, svc := filepath.Split(rel)
	app = filepath.Clean(app)
	if app == "." || app == ".." || svc == "" || filepath.Dir(app) != "." {
		return "", "", false
	}
	return app, svc, true
}

// existingServiceDirs lists the service lock directories that exist.
func (a *Agent) existingServiceDirs() []lock.Service {
	root := filepath.Join(a.cfg.Layout.Dir, "services")
	apps, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	var out []lock.Service
	for _, ad := range apps {
		if !ad.IsDir() {
			continue
		}
		svcs, err := os.ReadDir(filepath.Join(root, ad.Name()))
		if err != nil {
			continue
		}
		for _, sd := range svcs {
			if !sd.IsDir() {
				continue
			}
			if s, err := lock.ParseService(ad.Name() + "/" + sd.Name()); err == nil {
				out = append(out, s)
			}
		}
	}
	return out
}
