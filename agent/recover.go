package agent

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

	if s.queued, err = a.readQueued(); err != nil {
		return err
	}
	// The holds' entries come first, so that the interrupted action's locks
	// are taken through the same gate as ever, holds included.
	a.expireHolds(time.Now())
	a.reconcileHolds(true)

	// The interrupted apply's (or restart's) locks, before READY: through
	// the one gate every action uses, in the lock directories of this
	// start's layout, with the device-wide paths and the holds. If something
	// blocks, the update waits for it like any other, and says so.
	if apply != nil {
		s.resume = apply
		a.tryResume()
	}
	// Entries of a dead agent that nothing needs any more. An entry whose
	// recorded process is alive on this boot is another agent's, never ours
	// to remove.
	leftovers, err := a.ownEntries(lock.RoleAgent)
	if err != nil {
		a.logf("look for the agent's leftover locks: %v", err)
	}
	for _, e := range leftovers {
		if a.classify(e) != entryDead {
			continue
		}
		if err := a.cfg.Layout.RemoveEntry(e); err != nil {
			a.logf("remove leftover lock %s: %v", e.Path, err)
			continue
		}
		a.event("lock-released", "", "removed the agent's leftover lock %s (pid %d is gone)", e.Path, e.Record.PID)
	}
	for _, g := range a.cfg.Layout.Global {
		e, err := a.cfg.Layout.Inspect(g)
		if err != nil || a.classify(e) != entryDead {
			continue
		}
		if err := a.cfg.Layout.RemoveEntry(e); err == nil {
			a.event("lock-released", "", "removed the agent's leftover lock %s (pid %d is gone)", e.Path, e.Record.PID)
		}
	}

	return nil
}

// readQueued reads the target accepted during an action before a restart.
func (a *Agent) readQueued() (*store.Queued, error) {
	var q *store.Queued
	err := a.j.View(func(tx *store.Tx) error {
		var err error
		q, err = tx.Queued()
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	return q, nil
}

// takeOwn creates path as the agent's entry with the given role, or adopts
// an entry of the same role that a dead agent left (its record, its owner and
// its dead process say so).
func (a *Agent) takeOwn(path string, role lock.Role) (*lock.Lock, error) {
	dir := filepath.Dir(path)
	if svc, ok := a.serviceOf(dir); ok {
		if _, err := a.cfg.Layout.EnsureServiceDir(svc); err != nil {
			return nil, err
		}
	}
	l, err := a.cfg.Layout.Create(path, a.record(role), a.cfg.LockUID, a.cfg.LockGID)
	if err == nil {
		return l, nil
	}
	var he *lock.HeldError
	if errors.As(err, &he) && a.classify(he.Entry) == entryDead && he.Entry.Record.Role == role {
		return lock.Reclaim(path) // a dead agent's entry for the same purpose, with its flock
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
