// Package lock is latch's lock core: what counts as a held update lock, who
// holds it, how latch takes and releases locks, and a watcher that reports
// changes.
//
// Guarantees:
//   - A service is locked while any entry named updates.lock,
//     resin-updates.lock or latch-hold.lock exists in its lock directory,
//     whatever its type (file, directory, symlink, even a dangling one) and
//     owner, and every service is locked while any device-wide path exists.
//     Entries are looked at with lstat; a symlink is never followed. A
//     device-wide lock whose directory is a symlink, or is owned by another
//     user who can swap it, counts as held (at that directory) and nothing
//     is removed through it.
//   - Every directory on the way to an entry is opened one component at a
//     time with O_NOFOLLOW|O_DIRECTORY and the work is done at its
//     descriptor, so a directory swapped for a symlink is never acted
//     through.
//   - The lock root and services/ are owned by root (by the euid when latch
//     does not run as root) with mode 0755; one that exists owned by another
//     user or writable by group or other is refused with an error naming it.
//     App and service directories have mode 1777. latch makes an app
//     directory only as the owner of services/ and a service directory only
//     as the owner of its app directory, and does not take locks in one
//     another user made (users can still mkdir service directories in the
//     world-writable app directories: see Scan's bound).
//   - Create makes an entry atomically (a temporary file carrying the holder
//     record and the final owner, linked into place with link(2)): the entry
//     never appears without its record or with the wrong owner, and never
//     replaces anything that exists.
//   - An entry made by Create (or taken over with Reclaim) carries
//     flock(LOCK_EX), held on the descriptor that made it (close-on-exec,
//     never reopened by path) from before the entry appears until Remove,
//     which drops it after the unlink: tools that test a lock with flock
//     see latch's entries held. The kernel drops it when the holder dies;
//     the entry left behind is a dead record.
//   - A record's claim to be the agent's (role agent or hold) counts only on
//     an entry owned by Layout.LockUID, and its pid is named as the holder
//     only while that process's real uid owns the entry (or it is root and
//     the entry is root's or the lock uid's): anyone can write a record.
//   - Acquire is all or nothing in a fixed order; on failure it removes only
//     the entries it created in that attempt, checked by device and inode.
//   - Remove, RemoveEntry and ReleaseAll delete an entry only while it is
//     still the one they were given (same device and inode; and for Remove
//     the ctime, for RemoveEntry the type, owner, size and ctime, because a
//     freed inode number is reused at once), and RemoveEntry refuses paths
//     outside the lock directories and device-wide paths.
//   - A symlinked lock directory component or a non-directory is refused
//     with an error naming the path.
//   - Scan looks at every service directory the agent made, and at most
//     MaxForeignDirs made by other users (a user can make any number); the
//     watcher and Blocking can be narrowed to the services that matter.
//
// The package is Linux-only: it reads /proc/locks, /proc/PID/cmdline and
// /proc/PID/status and the boot id, and uses inotify.
package lock

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Names of lock entries in a service's lock directory (spec section 3).
const (
	UpdatesName = "updates.lock"       // balena's name
	ResinName   = "resin-updates.lock" // legacy balena name
	HoldName    = "latch-hold.lock"    // the agent's hold entry
)

// HeldNames are the entry names that lock a service, sorted.
var HeldNames = []string{HoldName, ResinName, UpdatesName}

// Sentinel errors of the lock core; test with errors.Is.
var (
	// ErrHeld means an entry exists where a lock was to be taken; the error
	// is a *HeldError describing the entry.
	ErrHeld = errors.New("lock is held")
	// ErrNotOurs means the entry at a path is no longer the one this
	// process created or was given (another device or inode, or changed).
	ErrNotOurs = errors.New("lock entry is not the one this process created or looked at (it was replaced or changed)")
	// ErrSymlink means a path component that must be a real directory (or
	// an entry that must not be followed) is a symlink.
	ErrSymlink = errors.New("path component is a symlink")
	// ErrNotDir means a path component that must be a directory is not one.
	ErrNotDir = errors.New("path component is not a directory")
	// ErrOutside means a path is neither in a service lock directory nor a
	// device-wide lock path, so latch refuses to remove it.
	ErrOutside = errors.New("path is outside the lock directories")
	// ErrUntrusted means a lock directory is owned by another user, or
	// writable by others where only its owner may write, so latch does not
	// act in it.
	ErrUntrusted = errors.New("lock directory is owned by another user or writable by others")
	// ErrTruncated means Scan skipped service directories beyond
	// MaxForeignDirs; the error is a *TruncatedError and the entries
	// returned with it are valid.
	ErrTruncated = errors.New("too many service directories made by other users")
)

// Kind is the type of a lock entry.
type Kind string

// Kinds of lock entries. Anything that is neither a directory nor a symlink
// (regular file, fifo, socket, device) is reported as a file.
const (
	KindFile    Kind = "file"
	KindDir     Kind = "dir"
	KindSymlink Kind = "symlink"
)

// State says what a lock entry means (spec section 3).
type State string

// States of a lock entry.
const (
	StateHeld  State = "held"  // holder alive or unknown
	StateStale State = "stale" // latch's record names a dead process, or another boot
	StateAgent State = "agent" // taken by the agent for an action
	StateHold  State = "hold"  // kept by the agent for a `latch hold`
)

// Role says who took a lock that carries latch's record.
type Role string

// Roles of latch's records.
const (
	RoleUser  Role = "user"  // latch lock
	RoleAgent Role = "agent" // the agent, for an action
	RoleHold  Role = "hold"  // the agent, for a hold
)

// Record is the holder record latch writes into every lock file it creates
// (JSON, one line).
type Record struct {
	PID     int       `json:"pid"`
	BootID  string    `json:"boot_id"`
	Command string    `json:"command"`
	Role    Role      `json:"role"`
	Created time.Time `json:"created"`
	// MAC, on the agent's records, is a keyed digest that only the agent
	// can make (its key is root's): a process of the lock uid can write an
	// entry that looks like the agent's, but not this.
	MAC string `json:"mac,omitempty"`
}

// NewRecord returns a record naming this process: its pid, the boot id and
// its command line.
func NewRecord(role Role) Record {
	return Record{
		PID:     os.Getpid(),
		BootID:  BootID(),
		Command: strings.Join(os.Args, " "),
		Role:    role,
		Created: time.Now().UTC().Truncate(time.Millisecond),
	}
}

// Alive reports whether the process the record names is running: the record
// is from this boot and its pid exists. (A reused pid also passes: compare
// the owner, as Scan does, where that matters.)
func (r Record) Alive() bool { return r.BootID != "" && r.BootID == BootID() && alive(r.PID) }

// maxRecord bounds how much of a lock file is read when looking for a record.
const maxRecord = 4096

// ParseRecord decodes latch's holder record from the content of a lock file.
// It returns false when the content is not a record written by latch (other
// tools write nothing, a pid, or anything else).
func ParseRecord(b []byte) (Record, bool) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' || len(b) > maxRecord {
		return Record{}, false
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, false
	}
	switch r.Role {
	case RoleUser, RoleAgent, RoleHold:
	default:
		return Record{}, false
	}
	if r.PID <= 0 || r.BootID == "" {
		return Record{}, false
	}
	return r, true
}

func (r Record) marshal() []byte {
	b, err := json.Marshal(r)
	if err != nil { // a Record always marshals
		panic(err)
	}
	return append(b, '\n')
}

var bootID = sync.OnceValue(func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
})

// BootID returns this boot's id from /proc/sys/kernel/random/boot_id, or ""
// when it cannot be read.
func BootID() string { return bootID() }

// Holder is a process that holds a lock, where it can be known.
type Holder struct {
	PID     int    `json:"pid"`
	Command string `json:"command,omitempty"`
}

// Entry is one lock entry that exists, as `latch locks --json` prints it.
type Entry struct {
	App     string    `json:"app"`     // "" for a device-wide lock
	Service string    `json:"service"` // "" for a device-wide lock
	Path    string    `json:"path"`
	Kind    Kind      `json:"kind"`
	UID     int       `json:"uid"`
	Since   time.Time `json:"since"`
	State   State     `json:"state"`
	Holder  *Holder   `json:"holder"`
	Record  *Record   `json:"record,omitempty"`
	// Reason says why an entry that is not a plain lock counts as held
	// (a symlinked or foreign device-wide lock directory).
	Reason string `json:"reason,omitempty"`
	Dev    uint64 `json:"-"`
	Ino    uint64 `json:"-"`
	// seen is what the entry looked like when it was scanned, so that a
	// removal can tell it from a new entry that reused the inode number.
	seen seen
}

// seen holds the parts of an entry's stat that change when the entry is
// replaced, beyond its device and inode: a file system may hand a freed
// inode number to the next file at once, within the same ctime tick.
type seen struct {
	mode  uint32
	uid   uint32
	size  int64
	ctime unix.Timespec
}

// same reports whether st is still the entry described by s; a zero s
// (an Entry not made by a scan) only checks device and inode.
func (s seen) same(st *unix.Stat_t) bool {
	if s == (seen{}) {
		return true
	}
	return st.Mode&unix.S_IFMT == s.mode&unix.S_IFMT && st.Uid == s.uid &&
		st.Size == s.size && st.Ctim == s.ctime
}

// HeldError reports that a lock could not be taken because an entry exists.
type HeldError struct{ Entry Entry }

func (e *HeldError) Error() string {
	en := e.Entry
	since := ""
	if !en.Since.IsZero() {
		since = " since " + en.Since.Local().Format(time.RFC3339)
	}
	what := en.Path
	if en.Kind != "" && en.Kind != KindFile {
		what += " (" + string(en.Kind) + ")"
	}
	switch {
	case en.Reason != "":
		return fmt.Sprintf("%s is held: %s", what, en.Reason)
	case en.Holder != nil && en.Holder.Command != "":
		return fmt.Sprintf("%s is held by pid %d (%s)%s", what, en.Holder.PID, en.Holder.Command, since)
	case en.Holder != nil:
		return fmt.Sprintf("%s is held by pid %d%s", what, en.Holder.PID, since)
	case en.State == StateStale && en.Record != nil:
		return fmt.Sprintf("%s is held by a stale lock of dead pid %d (%s)%s", what, en.Record.PID, en.Record.Command, since)
	default:
		return fmt.Sprintf("%s is held (holder unknown, uid %d)%s", what, en.UID, since)
	}
}

// Is makes errors.Is(err, ErrHeld) true for a *HeldError.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// Service names one service of one app.
type Service struct{ App, Service string }

// String returns "app/service".
func (s Service) String() string { return s.App + "/" + s.Service }

// ParseService parses and validates "app/service".
func ParseService(s string) (Service, error) {
	app, svc, ok := strings.Cut(s, "/")
	if !ok {
		return Service{}, fmt.Errorf("service %q: want APP/SERVICE", s)
	}
	if err := validName(app); err != nil {
		return Service{}, fmt.Errorf("service %q: app name: %w", s, err)
	}
	if err := validName(svc); err != nil {
		return Service{}, fmt.Errorf("service %q: service name: %w", s, err)
	}
	return Service{App: app, Service: svc}, nil
}

func validName(n string) error {
	switch {
	case n == "":
		return errors.New("empty")
	case len(n) > 128:
		return fmt.Errorf("%d bytes long, at most 128", len(n))
	case n[0] == '.':
		return fmt.Errorf("%q starts with '.'", n)
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-' {
			continue
		}
		return fmt.Errorf("%q has %q: only letters, digits, '_', '.' and '-' are allowed", n, c)
	}
	return nil
}
