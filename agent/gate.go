package agent

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

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
		if e.App == "" && e.Reason != "" {
			// A device-wide lock held through a symlinked or foreign
			// directory: latch removes nothing through it, a force passes it.
			a.event("lock-removed", by, "%s: passed over %s (%s); latch removes nothing through it", why, e.Path, e.Reason)
			continue
		}
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
	rec := a.record(lock.RoleAgent)
	var globals []*lock.Lock
	mine := map[[2]uint64]bool{}
	for _, g := range a.cfg.Layout.Global {
		if force {
			// A device-wide path that is held through a symlinked or
			// foreign directory cannot be taken: a force passes it.
			if e, err := a.cfg.Layout.Inspect(g); err == nil && e.Reason != "" {
				continue
			}
		}
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
		return mine[[2]uint64{e.Dev, e.Ino}] || force && (a.classify(e) == entryHold || e.App == "" && e.Reason != "")
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
	if r == nil || e.UID != a.cfg.LockUID || e.Kind != lock.KindFile || (r.Role != lock.RoleAgent && r.Role != lock.RoleHold) || !a.macOK(*r) {
		return entryOther
	}
	if !recordLive(r) {
		return entryDead
	}
	return entryOther
}

// record is a holder record of this agent, with the MAC that proves it.
func (a *Agent) record(role lock.Role) lock.Record {
	r := lock.NewRecord(role)
	r.MAC = a.mac(r)
	return r
}

// mac is the keyed digest of a record's fields (all but the MAC).
func (a *Agent) mac(r lock.Record) string {
	m := hmac.New(sha256.New, a.lockKey)
	fmt.Fprintf(m, "latch lock record\n%s\n%d\n%s\n%s\n%s", r.Role, r.PID, r.BootID, r.Created.UTC().Format(time.RFC3339Nano), r.Command)
	return hex.EncodeToString(m.Sum(nil))
}

// macOK reports whether a record was made by an agent with this state dir's
// key: only root can read the key, so a process of the lock uid cannot
// make an entry that passes for the agent's.
func (a *Agent) macOK(r lock.Record) bool {
	want := a.mac(r)
	return len(a.lockKey) > 0 && hmac.Equal([]byte(r.MAC), []byte(want))
}

// loadLockKey reads the key that the agent's records are made with, or
// makes one (32 random bytes, mode 0600 in the state dir).
func (a *Agent) loadLockKey() error {
	path := filepath.Join(a.cfg.StateDir, "lock.key")
	b, err := os.ReadFile(path)
	if err == nil && len(b) == 32 {
		a.lockKey = b
		return nil
	}
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		a.logf("warning: lock record key %s unreadable (%v): making a new one; entries that a dead agent left block until removed or forced", path, err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("make the lock record key: %w", err)
	}
	if err := writeFileAtomic(path, key, 0o600); err != nil {
		return fmt.Errorf("write the lock record key %s: %w", path, err)
	}
	a.lockKey = key
	return nil
}

// hint says what to do about an entry that the agent itself left under
// another --lock-uid (its record's MAC is the agent's, its owner is not the
// lock uid now): "" for any other entry.
func (a *Agent) hint(e lock.Entry) string {
	if r := e.Record; r != nil && e.UID != a.cfg.LockUID && (r.Role == lock.RoleAgent || r.Role == lock.RoleHold) && a.macOK(*r) {
		return fmt.Sprintf(" (left by this agent when it ran with --lock-uid %d, now %d: remove it, force the update, or restart with --lock-uid %d)", e.UID, a.cfg.LockUID, e.UID)
	}
	return ""
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
