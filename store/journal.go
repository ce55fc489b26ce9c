package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// SchemaVersion is the version of the journal's layout that this latch
// writes. A journal with a lower version is migrated by Open; a higher one
// gives ErrSchema.
const SchemaVersion = 1

// Bucket and key names. Nothing outside this package sees them.
const (
	bucketMeta    = "meta"    // keySchema: decimal schema version
	bucketApps    = "apps"    // app name -> App
	bucketPending = "pending" // keyUpdate, keyTarget, sub-bucket "files"
	bucketHolds   = "holds"   // "app/service" or "all" -> Hold
	bucketState   = "state"   // keyApply, keyOverride, keyReboot, keyConfig, keyRunning
	bucketEvents  = "events"  // big-endian seq -> Event

	keySchema   = "schema"
	keyUpdate   = "update"
	keyTarget   = "target"
	keyFiles    = "files"
	keyApply    = "apply"
	keyOverride = "override"
	keyReboot   = "reboot"
	keyConfig   = "config"
	keyRunning  = "running"
)

var allBuckets = []string{bucketMeta, bucketApps, bucketPending, bucketHolds, bucketState, bucketEvents}

// migrations[n] upgrades a journal of schema n to n+1. Each runs in the
// same transaction as the ones after it and the write of the new version,
// so a crash during migration leaves the old journal as it was.
var migrations = []func(*bolt.Tx) error{
	0: migrateV0,
}

// migrateV0 upgrades an unversioned journal (a fresh file, or one written
// before the schema was versioned) to v1: it creates the buckets of v1 and
// keeps whatever records already exist in them.
func migrateV0(tx *bolt.Tx) error {
	for _, name := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// Options tunes Open. A nil *Options means all defaults.
type Options struct {
	Timeout   time.Duration // wait for bbolt's file lock; default 1s
	MaxEvents int           // event log bound; default 1000
}

const (
	defaultTimeout   = time.Second
	defaultMaxEvents = 1000
)

// Journal is an open journal file. Its methods are safe for concurrent use:
// Views run concurrently, Updates one at a time.
type Journal struct {
	path      string
	timeout   time.Duration
	maxEvents int

	// mu guards db and file: View, Update and Check hold it shared, Restore
	// and Close exclusively, so that no transaction runs while Restore
	// switches to the file it wrote. A transaction's function must therefore
	// not call View, Update, Check or Restore of its own Journal: with a
	// Restore waiting, that would never return (bbolt forbids nesting too).
	mu   sync.RWMutex
	db   *bolt.DB
	file *os.File // the file bbolt opened; bbolt owns and closes it

	// onEvents, when set, is called after every committed Update with the
	// events that it logged, in order (see OnEvents).
	onEvents atomic.Pointer[func([]Event)]
}

// OnEvents makes fn see every event logged from now on, once its
// transaction is committed (and never an event of a transaction that was
// not), in the order of their Seq. fn runs on the goroutine that called
// Update, before Update returns: it must not block nor use the journal. A
// nil fn stops the calls.
func (j *Journal) OnEvents(fn func([]Event)) {
	if fn == nil {
		j.onEvents.Store(nil)
		return
	}
	j.onEvents.Store(&fn)
}

// Open opens the journal at path, creating it (mode 0600, parent directory
// 0700) when missing. It waits at most opts.Timeout for the file lock and
// then fails with ErrInUse. It migrates an older schema, refuses a newer one
// with ErrSchema, and checks the whole file before returning: a file that
// bbolt cannot open, that is inconsistent, or that holds a record that does
// not decode gives ErrCorrupt. So does anything at path that is not a
// regular file (a named pipe, a socket, a directory, a device, a symbolic
// link, dangling or not): it is not opened, nor followed.
func Open(path string, opts *Options) (*Journal, error) {
	j := &Journal{path: path, timeout: defaultTimeout, maxEvents: defaultMaxEvents}
	if opts != nil {
		if opts.Timeout > 0 {
			j.timeout = opts.Timeout
		}
		if opts.MaxEvents > 0 {
			j.maxEvents = opts.MaxEvents
		}
	}
	if err := j.open(); err != nil {
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	return j, nil
}

// open opens the file at j.path into j.db and j.file and checks it; on an
// error it leaves them as they were.
func (j *Journal) open() error {
	path := j.path
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	exists, err := checkKind(path)
	if err != nil {
		return err
	}
	if err := precheck(path); err != nil {
		return err
	}

	var file *os.File // the file bbolt opened, to release it if bbolt panics
	bopts := &bolt.Options{
		Timeout:      j.timeout,
		FreelistType: bolt.FreelistMapType,
		// No InitialMmapSize: bbolt maps the file's size rounded up (32 KiB
		// at least) and grows the mapping as the file grows, which keeps the
		// address space small on 32-bit boards. The journal stays small.
		OpenFile: func(name string, flag int, mode os.FileMode) (*os.File, error) {
			f, err := openRegular(name, flag, mode)
			file = f
			return f, err
		},
	}
	var db *bolt.DB
	err = guard(func() error {
		var err error
		db, err = bolt.Open(path, 0o600, bopts)
		return err
	})
	switch {
	case err == nil:
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("%w (waited %s)", ErrInUse, j.timeout)
	case errors.Is(err, ErrCorrupt):
		if db == nil && file != nil {
			// bbolt panicked half-way: release its mapping and fd, and with
			// them the flock.
			unmapFile(file)
			file.Close()
		}
		return err
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
		errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrInvalidMapping):
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	default:
		return err
	}
	if !exists {
		if err := syncDir(dir); err != nil {
			db.Close()
			return err
		}
	}
	nj := &Journal{path: path, timeout: j.timeout, maxEvents: j.maxEvents, db: db, file: file}
	if err := guard(nj.prepare); err != nil {
		db.Close()
		return err
	}
	j.db, j.file = db, file
	return nil
}

// prepare checks the schema version, migrates, and verifies the file.
func (j *Journal) prepare() error {
	var version int
	err := j.db.View(func(tx *bolt.Tx) error {
		var err error
		version, err = schemaVersion(tx)
		return err
	})
	if err != nil {
		return err
	}
	if version > SchemaVersion {
		return fmt.Errorf("%w: file has version %d, this latch knows up to %d", ErrSchema, version, SchemaVersion)
	}
	if version < SchemaVersion {
		err := j.db.Update(func(tx *bolt.Tx) error {
			for v := version; v < SchemaVersion; v++ {
				if err := migrations[v](tx); err != nil {
					return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
				}
			}
			return tx.Bucket([]byte(bucketMeta)).Put([]byte(keySchema), []byte(fmt.Sprint(SchemaVersion)))
		})
		if err != nil {
			return err
		}
	}
	return j.db.View(j.verify)
}

func schemaVersion(tx *bolt.Tx) (int, error) {
	meta := tx.Bucket([]byte(bucketMeta))
	if meta == nil {
		return 0, nil
	}
	v := meta.Get([]byte(keySchema))
	if v == nil {
		return 0, nil
	}
	return decodeVersion(v)
}

// verify reads every page and decodes every record, then runs bbolt's own
// consistency check. It runs in the caller's goroutine, under guard, so that
// a garbled page that makes bbolt panic or fault becomes ErrCorrupt; bbolt's
// check then only revisits pages already read safely.
func (j *Journal) verify(btx *bolt.Tx) error {
	if fi, err := j.file.Stat(); err != nil {
		return fmt.Errorf("stat: %w", err)
	} else if fi.Size() < btx.Size() {
		return fmt.Errorf("%w: file is %d bytes, its pages need %d (truncated)", ErrCorrupt, fi.Size(), btx.Size())
	}
	for _, name := range allBuckets {
		if btx.Bucket([]byte(name)) == nil {
			return fmt.Errorf("%w: bucket %s missing", ErrCorrupt, name)
		}
	}
	tx := &Tx{tx: btx, j: j}
	if _, err := tx.Apps(); err != nil {
		return err
	}
	if _, err := tx.Pending(); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if _, err := tx.Apply(); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if _, err := tx.Holds(); err != nil {
		return err
	}
	if _, err := tx.Override(); err != nil {
		return err
	}
	if _, err := tx.PendingReboot(); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if _, err := tx.Config(); err != nil {
		return err
	}
	if _, err := tx.Running(); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if _, err := tx.Queued(); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if _, err := tx.Trust(); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if _, err := tx.Refused(); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if err := tx.checkCommands(); err != nil {
		return err
	}
	if _, err := tx.ImagePulls(); err != nil {
		return err
	}
	if _, err := tx.Events(0); err != nil {
		return err
	}
	var first error
	for err := range btx.Check() { // drain: Check's goroutine sends every error
		if first == nil {
			first = fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
	}
	return first
}

// guard runs fn and turns a panic or a memory fault inside it (bbolt reading
// a garbled or truncated page) into ErrCorrupt.
func guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrCorrupt, r)
		}
	}()
	return fn()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// OpenOrReset opens the journal like Open. When Open reports ErrCorrupt it
// moves what is at path aside as <path>.corrupt-<UTC time 20060102T150405Z>
// (with .1, .2, ... appended when that name is taken), opens a fresh
// journal and returns the aside path (empty when nothing was moved). What
// is moved is the thing at path itself, whatever its kind: a directory is
// renamed with all it holds, a symbolic link is renamed and what it points
// to is left as it was. Nothing is deleted. ErrInUse, ErrSchema and other
// errors are returned as they are.
func OpenOrReset(path string, opts *Options) (j *Journal, aside string, err error) {
	j, err = Open(path, opts)
	if err == nil || !errors.Is(err, ErrCorrupt) {
		return j, "", err
	}
	openErr := err
	aside, err = moveAside(path, ".corrupt-")
	if err != nil {
		if aside == "" {
			return nil, "", fmt.Errorf("move corrupt journal aside (%v): %w", openErr, err)
		}
		return nil, aside, fmt.Errorf("move corrupt journal aside: %w", err)
	}
	j, err = Open(path, opts)
	if err != nil {
		return nil, aside, fmt.Errorf("fresh journal after moving the corrupt one to %s: %w", aside, err)
	}
	return j, aside, nil
}

// Close closes the journal. It is safe to call more than once.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.db.Close(); err != nil {
		return fmt.Errorf("close journal %s: %w", j.path, err)
	}
	return nil
}

// Path is the journal's file name as given to Open.
func (j *Journal) Path() string { return j.path }

// View runs fn in a read-only transaction; it sees one consistent state.
func (j *Journal) View(fn func(*Tx) error) error {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return j.db.View(func(btx *bolt.Tx) error {
		return fn(&Tx{tx: btx, j: j})
	})
}

// Update runs fn in a read-write transaction. When fn returns nil every
// write it made is committed together and fsynced before Update returns;
// when fn returns an error (or panics) none of them is.
func (j *Journal) Update(fn func(*Tx) error) error {
	j.mu.RLock()
	defer j.mu.RUnlock()
	var logged []Event
	err := j.db.Update(func(btx *bolt.Tx) error {
		tx := &Tx{tx: btx, j: j}
		err := fn(tx)
		logged = tx.logged
		return err
	})
	if err == nil && len(logged) > 0 {
		if hook := j.onEvents.Load(); hook != nil {
			(*hook)(logged)
		}
	}
	return err
}
