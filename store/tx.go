package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Tx is one journal transaction, valid only inside the View or Update
// function it was given to. Writes in a View fail.
type Tx struct {
	tx     *bolt.Tx
	j      *Journal
	logged []Event // events that Log appended in this transaction
}

// bucket returns a top-level bucket; Open guarantees they all exist.
func (tx *Tx) bucket(name string) (*bolt.Bucket, error) {
	b := tx.tx.Bucket([]byte(name))
	if b == nil {
		return nil, fmt.Errorf("bucket %s: %w: missing", name, ErrCorrupt)
	}
	return b, nil
}

func (tx *Tx) put(bucket, key string, v any) error {
	b, err := tx.bucket(bucket)
	if err != nil {
		return err
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s/%s: %w", bucket, key, err)
	}
	if err := b.Put([]byte(key), data); err != nil {
		return fmt.Errorf("write %s/%s: %w", bucket, key, err)
	}
	return nil
}

func (tx *Tx) del(bucket, key string) error {
	b, err := tx.bucket(bucket)
	if err != nil {
		return err
	}
	if err := b.Delete([]byte(key)); err != nil {
		return fmt.Errorf("delete %s/%s: %w", bucket, key, err)
	}
	return nil
}

// App returns the record of app name, or ErrNotFound.
func (tx *Tx) App(name string) (App, error) {
	if err := validName(name); err != nil {
		return App{}, fmt.Errorf("app: %w", err)
	}
	b, err := tx.bucket(bucketApps)
	if err != nil {
		return App{}, err
	}
	v := b.Get([]byte(name))
	if v == nil {
		return App{}, fmt.Errorf("app %s: %w", name, ErrNotFound)
	}
	return decodeApp([]byte(name), v)
}

// Apps returns every app record, sorted by name.
func (tx *Tx) Apps() ([]App, error) {
	b, err := tx.bucket(bucketApps)
	if err != nil {
		return nil, err
	}
	var apps []App
	err = b.ForEach(func(k, v []byte) error {
		a, err := decodeApp(k, v)
		apps = append(apps, a)
		return err
	})
	if err != nil {
		return nil, err
	}
	return apps, nil // bbolt iterates in key order: sorted by name
}

// PutApp writes (replaces) the record of a.Name.
func (tx *Tx) PutApp(a App) error {
	if err := a.validate(); err != nil {
		return err
	}
	return tx.put(bucketApps, a.Name, a)
}

// DeleteApp removes the record of app name; it is not an error if there is none.
func (tx *Tx) DeleteApp(name string) error {
	if err := validName(name); err != nil {
		return fmt.Errorf("app: %w", err)
	}
	return tx.del(bucketApps, name)
}

// Pending returns the pending update with its target document and files,
// or ErrNotFound when there is none.
func (tx *Tx) Pending() (*Update, error) {
	b, err := tx.bucket(bucketPending)
	if err != nil {
		return nil, err
	}
	v := b.Get([]byte(keyUpdate))
	if v == nil {
		return nil, fmt.Errorf("pending update: %w", ErrNotFound)
	}
	r, err := decodeUpdate(v)
	if err != nil {
		return nil, err
	}
	u := &Update{
		ID: r.ID, State: r.State, Attempts: r.Attempts, Reason: r.Reason, Forced: r.Forced,
		Created: r.Created, Updated: r.Updated, By: r.By,
		Blocked: r.Blocked, AppFailed: r.AppFailed,
	}
	if t := b.Get([]byte(keyTarget)); t != nil {
		u.Target = append([]byte(nil), t...)
	}
	fb := b.Bucket([]byte(keyFiles))
	if fb == nil {
		if r.Files != 0 {
			return nil, corrupt(bucketPending, keyFiles, fmt.Errorf("missing, want %d files", r.Files))
		}
		return u, nil
	}
	u.Files = make([]File, 0, r.Files)
	err = fb.ForEach(func(k, v []byte) error {
		f, err := decodeFile(k, v)
		if err != nil {
			return err
		}
		if i := binary.BigEndian.Uint32(k); i != uint32(len(u.Files)) {
			return corrupt(bucketPending+"/files", keyName(k), fmt.Errorf("want index %d", len(u.Files)))
		}
		u.Files = append(u.Files, f)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(u.Files) != r.Files {
		return nil, corrupt(bucketPending, keyFiles, fmt.Errorf("%d files, want %d", len(u.Files), r.Files))
	}
	return u, nil
}

// PutPending writes (replaces) the pending update, its target document and
// its files.
func (tx *Tx) PutPending(u *Update) error {
	if u == nil {
		return fmt.Errorf("pending update: nil: %w", ErrInvalid)
	}
	r := updateRecord{
		ID: u.ID, State: u.State, Files: len(u.Files), Attempts: u.Attempts, Reason: u.Reason,
		Forced: u.Forced, Created: u.Created, Updated: u.Updated, By: u.By,
		Blocked: u.Blocked, AppFailed: u.AppFailed,
	}
	if err := r.validate(); err != nil {
		return err
	}
	for _, f := range u.Files {
		if err := f.validate(); err != nil {
			return fmt.Errorf("update %s: %w", u.ID, err)
		}
	}
	b, err := tx.bucket(bucketPending)
	if err != nil {
		return err
	}
	if err := tx.put(bucketPending, keyUpdate, r); err != nil {
		return err
	}
	if err := b.Put([]byte(keyTarget), u.Target); err != nil {
		return fmt.Errorf("write %s/%s: %w", bucketPending, keyTarget, err)
	}
	if b.Bucket([]byte(keyFiles)) != nil {
		if err := b.DeleteBucket([]byte(keyFiles)); err != nil {
			return fmt.Errorf("replace %s/%s: %w", bucketPending, keyFiles, err)
		}
	}
	fb, err := b.CreateBucket([]byte(keyFiles))
	if err != nil {
		return fmt.Errorf("create %s/%s: %w", bucketPending, keyFiles, err)
	}
	for i, f := range u.Files {
		data, err := json.Marshal(f)
		if err != nil {
			return fmt.Errorf("encode file %d: %w", i, err)
		}
		if err := fb.Put(fileKey(i), data); err != nil {
			return fmt.Errorf("write file %d: %w", i, err)
		}
	}
	return nil
}

// DeletePending removes the pending update; it is not an error if there is none.
func (tx *Tx) DeletePending() error {
	b, err := tx.bucket(bucketPending)
	if err != nil {
		return err
	}
	for _, k := range []string{keyUpdate, keyTarget} {
		if err := b.Delete([]byte(k)); err != nil {
			return fmt.Errorf("delete %s/%s: %w", bucketPending, k, err)
		}
	}
	if b.Bucket([]byte(keyFiles)) != nil {
		if err := b.DeleteBucket([]byte(keyFiles)); err != nil {
			return fmt.Errorf("delete %s/%s: %w", bucketPending, keyFiles, err)
		}
	}
	return nil
}

// SetFileProgress records the download progress of file i of the pending
// update. It rewrites that file's record only, not the target document.
func (tx *Tx) SetFileProgress(i int, done int64, complete bool) error {
	if i < 0 || done < 0 {
		return fmt.Errorf("file progress: index %d, done %d: %w", i, done, ErrInvalid)
	}
	b, err := tx.bucket(bucketPending)
	if err != nil {
		return err
	}
	fb := b.Bucket([]byte(keyFiles))
	if b.Get([]byte(keyUpdate)) == nil || fb == nil {
		return fmt.Errorf("file progress %d: pending update: %w", i, ErrNotFound)
	}
	k := fileKey(i)
	v := fb.Get(k)
	if v == nil {
		return fmt.Errorf("file progress %d: file: %w", i, ErrNotFound)
	}
	f, err := decodeFile(k, v)
	if err != nil {
		return err
	}
	f.Done, f.Complete = done, complete
	data, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode file %d: %w", i, err)
	}
	if err := fb.Put(k, data); err != nil {
		return fmt.Errorf("write file %d: %w", i, err)
	}
	return nil
}

// Apply returns the apply in progress, or ErrNotFound.
func (tx *Tx) Apply() (*Apply, error) {
	b, err := tx.bucket(bucketState)
	if err != nil {
		return nil, err
	}
	v := b.Get([]byte(keyApply))
	if v == nil {
		return nil, fmt.Errorf("apply: %w", ErrNotFound)
	}
	return decodeApply(v)
}

// PutApply writes (replaces) the apply in progress.
func (tx *Tx) PutApply(a *Apply) error {
	if a == nil {
		return fmt.Errorf("apply: nil: %w", ErrInvalid)
	}
	if err := a.validate(); err != nil {
		return err
	}
	return tx.put(bucketState, keyApply, a)
}

// DeleteApply removes the apply in progress; it is not an error if there is none.
func (tx *Tx) DeleteApply() error { return tx.del(bucketState, keyApply) }

// Running returns the target document of the last update applied in full
// (what runs now), or ErrNotFound when none was recorded. The agent reads the
// services of what runs from it: the ones a new target drops are stopped.
func (tx *Tx) Running() ([]byte, error) {
	b, err := tx.bucket(bucketState)
	if err != nil {
		return nil, err
	}
	v := b.Get([]byte(keyRunning))
	if v == nil {
		return nil, fmt.Errorf("running target: %w", ErrNotFound)
	}
	if !json.Valid(v) {
		return nil, corrupt(bucketState, keyRunning, fmt.Errorf("not JSON"))
	}
	return append([]byte(nil), v...), nil
}

// SetRunning records doc (a JSON target document) as what runs now.
func (tx *Tx) SetRunning(doc []byte) error {
	if !json.Valid(doc) {
		return fmt.Errorf("running target: not JSON: %w", ErrInvalid)
	}
	b, err := tx.bucket(bucketState)
	if err != nil {
		return err
	}
	if err := b.Put([]byte(keyRunning), doc); err != nil {
		return fmt.Errorf("write %s/%s: %w", bucketState, keyRunning, err)
	}
	return nil
}

// Holds returns every hold, the --all hold first, then by app and service.
func (tx *Tx) Holds() ([]Hold, error) {
	b, err := tx.bucket(bucketHolds)
	if err != nil {
		return nil, err
	}
	var holds []Hold
	err = b.ForEach(func(k, v []byte) error {
		h, err := decodeHold(k, v)
		holds = append(holds, h)
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(holds, func(a, b int) bool {
		if holds[a].All != holds[b].All {
			return holds[a].All
		}
		if holds[a].App != holds[b].App {
			return holds[a].App < holds[b].App
		}
		return holds[a].Service < holds[b].Service
	})
	return holds, nil
}

// PutHold writes a hold, replacing the one on the same service (or the
// --all hold).
func (tx *Tx) PutHold(h Hold) error {
	if err := h.validate(); err != nil {
		return err
	}
	return tx.put(bucketHolds, string(holdKey(h.App, h.Service, h.All)), h)
}

// DeleteHold removes the hold on app/service (or the --all hold), or
// returns ErrNotFound.
func (tx *Tx) DeleteHold(app, service string, all bool) error {
	if err := (Hold{App: app, Service: service, All: all}).validate(); err != nil {
		return err
	}
	b, err := tx.bucket(bucketHolds)
	if err != nil {
		return err
	}
	k := holdKey(app, service, all)
	if b.Get(k) == nil {
		return fmt.Errorf("hold %s: %w", k, ErrNotFound)
	}
	if err := b.Delete(k); err != nil {
		return fmt.Errorf("delete hold %s: %w", k, err)
	}
	return nil
}

// Override returns the lock override, the zero value when never set.
func (tx *Tx) Override() (Override, error) {
	b, err := tx.bucket(bucketState)
	if err != nil {
		return Override{}, err
	}
	v := b.Get([]byte(keyOverride))
	if v == nil {
		return Override{}, nil
	}
	return decodeOverride(v)
}

// SetOverride writes the lock override.
func (tx *Tx) SetOverride(o Override) error { return tx.put(bucketState, keyOverride, o) }

// PendingReboot returns the pending reboot or shutdown, or ErrNotFound.
func (tx *Tx) PendingReboot() (*Reboot, error) {
	b, err := tx.bucket(bucketState)
	if err != nil {
		return nil, err
	}
	v := b.Get([]byte(keyReboot))
	if v == nil {
		return nil, fmt.Errorf("pending reboot: %w", ErrNotFound)
	}
	return decodeReboot(v)
}

// SetPendingReboot writes the pending reboot or shutdown; nil clears it.
func (tx *Tx) SetPendingReboot(r *Reboot) error {
	if r == nil {
		return tx.del(bucketState, keyReboot)
	}
	if err := r.validate(); err != nil {
		return err
	}
	return tx.put(bucketState, keyReboot, r)
}

// Config returns the configuration last applied; an empty map when none.
func (tx *Tx) Config() (map[string]string, error) {
	b, err := tx.bucket(bucketState)
	if err != nil {
		return nil, err
	}
	v := b.Get([]byte(keyConfig))
	if v == nil {
		return map[string]string{}, nil
	}
	return decodeConfig(v)
}

// PutConfig writes (replaces) the configuration last applied.
func (tx *Tx) PutConfig(m map[string]string) error {
	if err := validConfig(m); err != nil {
		return err
	}
	if m == nil {
		m = map[string]string{}
	}
	return tx.put(bucketState, keyConfig, m)
}

// Log appends e to the event log. It assigns e.Seq (one more than any
// event ever logged in this journal, even trimmed ones) and e.Time when
// zero, and removes the oldest events beyond Options.MaxEvents.
func (tx *Tx) Log(e Event) (Event, error) {
	if e.Kind == "" {
		return Event{}, fmt.Errorf("event: empty kind: %w", ErrInvalid)
	}
	b, err := tx.bucket(bucketEvents)
	if err != nil {
		return Event{}, err
	}
	seq, err := b.NextSequence()
	if err != nil {
		return Event{}, fmt.Errorf("event sequence: %w", err)
	}
	e.Seq = seq
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	data, err := json.Marshal(e)
	if err != nil {
		return Event{}, fmt.Errorf("encode event %d: %w", seq, err)
	}
	if err := b.Put(seqKey(seq), data); err != nil {
		return Event{}, fmt.Errorf("write event %d: %w", seq, err)
	}
	tx.logged = append(tx.logged, e)
	// Events are only ever removed from the front, so the keys are the
	// contiguous range first..seq: the count is seq-first+1.
	c := b.Cursor()
	for k, _ := c.First(); len(k) == 8 && seq-binary.BigEndian.Uint64(k)+1 > uint64(tx.j.maxEvents); k, _ = c.First() {
		if err := b.Delete(k); err != nil {
			return Event{}, fmt.Errorf("trim event %s: %w", keyName(k), err)
		}
	}
	return e, nil
}

// Events returns the newest limit events, newest first; limit <= 0 means all.
func (tx *Tx) Events(limit int) ([]Event, error) {
	b, err := tx.bucket(bucketEvents)
	if err != nil {
		return nil, err
	}
	var events []Event
	c := b.Cursor()
	for k, v := c.Last(); k != nil && (limit <= 0 || len(events) < limit); k, v = c.Prev() {
		if v == nil {
			return nil, corrupt(bucketEvents, keyName(k), errors.New("a bucket where an event belongs"))
		}
		e, err := decodeEvent(k, v)
		if err != nil {
			return nil, err
		}
		events = append(events, e)
	}
	return events, nil
}

// EventsAfter returns the events whose Seq is above seq, oldest first, at
// most limit of them (limit <= 0: all). Events trimmed from the log are not
// returned: the first one returned may be well after seq+1.
func (tx *Tx) EventsAfter(seq uint64, limit int) ([]Event, error) {
	b, err := tx.bucket(bucketEvents)
	if err != nil {
		return nil, err
	}
	var events []Event
	c := b.Cursor()
	for k, v := c.Seek(seqKey(seq + 1)); k != nil && (limit <= 0 || len(events) < limit); k, v = c.Next() {
		if v == nil {
			return nil, corrupt(bucketEvents, keyName(k), errors.New("a bucket where an event belongs"))
		}
		e, err := decodeEvent(k, v)
		if err != nil {
			return nil, err
		}
		events = append(events, e)
	}
	return events, nil
}
