package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"latch/agent/lock"
)

// take is the one place where the agent decides that an action on svcs (an
// apply, its resume or rollback, a removal, a restart, a reboot or a
// shutdown) may run now, and takes its locks. Nothing else takes action
// locks.
//
// An action is blocked by
//   - every held name in the lock directory of each service of svcs,
//   - every device-wide lock path,
//   - every hold the journal records on one of svcs, whether or not its
//     entry is still on disk,
//   - the agent's own entries of another action in flight.
//
// A force or the override passes the first three: the entries of others in
// the way are removed (journalled as done by `by`, for `why`), and the
// agent's own holds are passed over. Entries that a dead agent left (latch's
// agent or hold record, owned by the lock uid, naming a process that is not
// alive on this boot) block nothing: they are removed and taken anew.
//
// Once nothing blocks, take creates the agent's entries at every device-wide
// path and at both names in every service directory of svcs, all or nothing,
// so that an application that tries to lock during the action gets EEXIST
// instead of a promise that would not be kept. It returns the locks, or what
// blocks (locks nil), or an error.
func (a *Agent) take(svcs []lock.Service, force bool, why, by string) ([]*lock.Lock, []lock.Entry, error) {
	entries, err := a.cfg.Layout.Blocking(svcs)
	if err != nil {
		return nil, nil, err
	}
	var blocking, remove, dead []lock.Entry
	for _, e := range entries {
		switch a.classify(e) {
		case entryAction:
			blocking = append(blocking, e)
		case entryHold:
			if !force {
				blocking = append(blocking, e)
			}
		case entryDead:
			dead = append(dead, e)
		default:
			if force {
				remove = append(remove, e)
			} else {
				blocking = append(blocking, e)
			}
		}
	}
	if !force {
		for _, h := range a.recordedHolds(svcs) {
			if !slices.ContainsFunc(blocking, func(e lock.Entry) bool { return e.Path == h.Path }) {
				blocking = append(blocking, h)
			}
		}
	}
	if len(blocking) > 0 {
		return nil, blocking, nil
	}
	for _, e := range dead {
		if err := a.cfg.Layout.RemoveEntry(e); err != nil {
			return nil, nil, fmt.Errorf("remove the leftover lock %s of a dead agent (pid %d): %w", e.Path, e.Record.PID, err)
		}
		a.event("lock-released", "", "removed the leftover lock %s of a dead agent (pid %d)", e.Path, e.Record.PID)
	}
	for _, e := range remove {
		if err := a.cfg.Layout.RemoveEntry(e); err != nil {
			// Replaced since the scan: what is there now blocks.
			return nil, []lock.Entry{e}, nil
		}
		a.event("lock-removed", by, "%s: removed %s (%s)", why, e.Path, holderText(e))
	}
	locks, err := a.createLocks(svcs, force)
	var he *lock.HeldError
	if errors.As(err, &he) {
		return nil, []lock.Entry{he.Entry}, nil // taken in between: wait for the watcher
	}
	if err != nil {
		return nil, nil, err
	}
	return locks, nil, nil
}

// createLocks creates the agent's entries at every device-wide path, then
// both names in every service directory of svcs, all or nothing.
func (a *Agent) createLocks(svcs []lock.Service, force bool) ([]*lock.Lock, error) {
	rec := lock.NewRecord(lock.RoleAgent)
	var globals []*lock.Lock
	mine := map[[2]uint64]bool{}
	for _, g := range a.cfg.Layout.Global {
		l, err := a.cfg.Layout.Create(g, rec, a.cfg.LockUID, a.cfg.LockGID)
		if err != nil && errors.Is(err, fs.ErrNotExist) {
			// No parent directory: nobody can take this path without
			// creating it first, and the agent creates the usual ones at
			// start. Nothing to hold here.
			continue
		}
		if err != nil {
			lock.ReleaseAll(globals)
			return nil, err
		}
		globals = append(globals, l)
		mine[[2]uint64{l.Dev, l.Ino}] = true
	}
	ignore := func(e lock.Entry) bool {
		return mine[[2]uint64{e.Dev, e.Ino}] || force && a.classify(e) == entryHold
	}
	locks, err := a.cfg.Layout.AcquireExcept(svcs, []string{lock.UpdatesName, lock.ResinName}, rec, a.cfg.LockUID, a.cfg.LockGID, ignore)
	if err != nil {
		lock.ReleaseAll(globals)
		return nil, err
	}
	return append(globals, locks...), nil
}

// What an existing lock entry is to the agent.
type entryClass int

const (
	entryOther  entryClass = iota // an application's, a user's, or a claim the agent cannot back
	entryAction                   // the agent's own, for the action in flight
	entryHold                     // the agent's own hold entry
	entryDead                     // left by an agent that is dead
)

// classify tells the agent's own entries (by device and inode, as created or
// adopted) from everybody else's. A record that says "agent" or "hold"
// counts only on an entry owned by the lock uid; one that names a live
// process (this agent included) but is not one of the entries the agent
// holds is somebody else's claim, and an ordinary lock.
func (a *Agent) classify(e lock.Entry) entryClass {
	same := func(l *lock.Lock) bool { return l.Dev == e.Dev && l.Ino == e.Ino && l.Path == e.Path }
	if slices.ContainsFunc(a.st.actionLocks, same) {
		return entryAction
	}
	for _, l := range a.st.holdLocks {
		if same(l) {
			return entryHold
		}
	}
	r := e.Record
	if r == nil || e.UID != a.cfg.LockUID || e.Kind != lock.KindFile || (r.Role != lock.RoleAgent && r.Role != lock.RoleHold) {
		return entryOther
	}
	if !recordLive(r) {
		return entryDead
	}
	return entryOther
}

// recordLive reports whether a record names a process that is alive on this
// boot and still runs the command the record names (a pid is reused at
// once after a crash).
func recordLive(r *lock.Record) bool {
	if r.BootID != lock.BootID() {
		return false
	}
	if r.PID == os.Getpid() {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(r.PID) + "/cmdline")
	if err != nil {
		return false
	}
	return strings.Join(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), " ") == r.Command
}

// recordedHolds returns, for every hold the journal records on one of svcs,
// the entry it stands for, whether or not that entry is on disk: a hold
// whose latch-hold.lock was deleted still holds.
func (a *Agent) recordedHolds(svcs []lock.Service) []lock.Entry {
	var out []lock.Entry
	for _, h := range a.st.holds {
		for _, s := range svcs {
			if !h.All && (h.App != s.App || h.Service != s.Service) {
				continue
			}
			out = append(out, lock.Entry{
				App: s.App, Service: s.Service,
				Path:  filepath.Join(a.cfg.Layout.ServiceDir(s), lock.HoldName),
				Kind:  lock.KindFile,
				UID:   a.cfg.LockUID,
				Since: h.Created.UTC(),
				State: lock.StateHold,
			})
		}
	}
	return out
}

func holderText(e lock.Entry) string {
	if e.Holder != nil && e.Holder.PID > 0 {
		if e.Holder.Command != "" {
			return fmt.Sprintf("held by pid %d, %s", e.Holder.PID, e.Holder.Command)
		}
		return fmt.Sprintf("held by pid %d", e.Holder.PID)
	}
	return fmt.Sprintf("uid %d, holder unknown", e.UID)
}
