package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// App is what the journal knows of one app: the release it runs and the
// release the target state asks for.
type App struct {
	Name    string    `json:"name"`
	Current string    `json:"current"` // release now running ("" = none yet)
	Target  string    `json:"target"`  // release the target state asks for
	Updated time.Time `json:"updated"`
	By      string    `json:"by"` // who asked (e.g. "target-file", "api:uid=0", "cli")
}

// UpdateState is where the pending update stands.
type UpdateState string

// The states of the pending update.
const (
	Downloading UpdateState = "downloading"
	Downloaded  UpdateState = "downloaded"
	Waiting     UpdateState = "waiting" // for locks
	Applying    UpdateState = "applying"
	Applied     UpdateState = "applied"
	Failed      UpdateState = "failed"
)

func (s UpdateState) valid() bool {
	switch s {
	case Downloading, Downloaded, Waiting, Applying, Applied, Failed:
		return true
	}
	return false
}

// File is one file of the pending update and its download progress.
type File struct {
	App      string `json:"app"`
	Service  string `json:"service"`
	Source   string `json:"source"`
	SHA256   string `json:"sha256"`
	Path     string `json:"path"` // where it is installed
	Mode     uint32 `json:"mode"`
	Size     int64  `json:"size"`     // total, -1 unknown
	Done     int64  `json:"done"`     // bytes verified and staged so far
	Complete bool   `json:"complete"` // downloaded, verified, staged
}

// Update is the pending update: at most one at a time.
type Update struct {
	ID       string // digest of the target document
	Target   []byte // the raw target document (JSON), as accepted
	State    UpdateState
	Files    []File
	Attempts int    // apply attempts started; breaks crash and reboot loops
	Reason   string // why it failed, or what it waits for
	Forced   bool   // a one-shot force is armed for this update
	Created  time.Time
	Updated  time.Time
	By       string
	// Blocked is, for each app of the update, when a lock first kept its
	// part from being applied: the max-defer deadline counts from there,
	// across restarts.
	Blocked map[string]time.Time
	// AppFailed is, for each app whose part was given up (its max-defer
	// deadline passed under --on-max-defer fail), why; the others go on.
	AppFailed map[string]string
}

// updateRecord is the stored header of the pending update. The target
// document and the files are stored under keys of their own, so that
// recording download progress rewrites one small file record only.
type updateRecord struct {
	ID       string      `json:"id"`
	State    UpdateState `json:"state"`
	Files    int         `json:"files"` // number of file records
	Attempts int         `json:"attempts"`
	Reason   string      `json:"reason,omitempty"`
	Forced   bool        `json:"forced,omitempty"`
	Created  time.Time   `json:"created"`
	Updated  time.Time   `json:"updated"`
	By       string      `json:"by,omitempty"`

	Blocked   map[string]time.Time `json:"blocked,omitempty"`
	AppFailed map[string]string    `json:"app_failed,omitempty"`
}

// Step is the journalled progress of one service during an apply.
type Step struct {
	App     string    `json:"app"`
	Service string    `json:"service"`
	Phase   string    `json:"phase"` // the agent's own phase names
	At      time.Time `json:"at"`
}

// LockRef names one lock entry the agent created, by path and inode, so
// that after a crash it removes exactly its own entries.
type LockRef struct {
	Path string `json:"path"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

// Apply is the apply in progress.
type Apply struct {
	UpdateID string    `json:"update_id"`
	Steps    []Step    `json:"steps"` // one per service touched, in apply order
	Locks    []LockRef `json:"locks"` // the agent's locks taken for this apply
	Started  time.Time `json:"started"`
}

// Hold is a `latch hold`: App and Service name one service, or All is set
// and both are empty.
type Hold struct {
	App     string    `json:"app,omitempty"`
	Service string    `json:"service,omitempty"`
	All     bool      `json:"all,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Expires time.Time `json:"expires"` // zero: no expiry
	Created time.Time `json:"created"`
	By      string    `json:"by,omitempty"`
}

// Override is the persistent lock override.
type Override struct {
	Enabled bool      `json:"enabled"`
	By      string    `json:"by,omitempty"`
	At      time.Time `json:"at"`
}

// Reboot is a pending reboot or shutdown.
type Reboot struct {
	Kind      string    `json:"kind"`    // "reboot" or "shutdown"
	BootID    string    `json:"boot_id"` // the boot that asked for it: a different boot id at start means it happened
	Reason    string    `json:"reason,omitempty"`
	Requested time.Time `json:"requested"`
	By        string    `json:"by,omitempty"`
}

// Event is one entry of the bounded event log.
type Event struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // e.g. "lock-taken","lock-released","deferred","applied","forced","failed","override","hold","reboot"
	App     string    `json:"app,omitempty"`
	Service string    `json:"service,omitempty"`
	Release string    `json:"release,omitempty"`
	By      string    `json:"by,omitempty"`
	Message string    `json:"message"`
}

// validName reports whether s can name an app or service: it becomes a
// directory under the lock directory and part of a journal key.
func validName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty name: %w", ErrInvalid)
	case s == "." || s == "..":
		return fmt.Errorf("name %q: %w", s, ErrInvalid)
	case strings.ContainsAny(s, "/\x00"):
		return fmt.Errorf("name %q contains '/' or NUL: %w", s, ErrInvalid)
	}
	return nil
}

// corrupt wraps a decoding failure of bucket/key as ErrCorrupt.
func corrupt(bucket, key string, err error) error {
	return fmt.Errorf("decode %s/%s: %w: %v", bucket, key, ErrCorrupt, err)
}

func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, seq)
}

func fileKey(i int) []byte {
	return binary.BigEndian.AppendUint32(nil, uint32(i))
}

func holdKey(app, service string, all bool) []byte {
	if all {
		return []byte("all")
	}
	return []byte(app + "/" + service)
}

func (a App) validate() error {
	if err := validName(a.Name); err != nil {
		return fmt.Errorf("app: %w", err)
	}
	return nil
}

func decodeApp(key, val []byte) (App, error) {
	var a App
	if err := json.Unmarshal(val, &a); err != nil {
		return App{}, corrupt(bucketApps, strconv.Quote(string(key)), err)
	}
	if err := a.validate(); err != nil {
		return App{}, corrupt(bucketApps, strconv.Quote(string(key)), err)
	}
	if a.Name != string(key) {
		return App{}, corrupt(bucketApps, strconv.Quote(string(key)), fmt.Errorf("record names app %q", a.Name))
	}
	return a, nil
}

func (f File) validate() error {
	if err := validName(f.App); err != nil {
		return fmt.Errorf("file %s app: %w", f.Path, err)
	}
	if err := validName(f.Service); err != nil {
		return fmt.Errorf("file %s service: %w", f.Path, err)
	}
	if f.Path == "" {
		return fmt.Errorf("file of %s/%s: empty path: %w", f.App, f.Service, ErrInvalid)
	}
	if f.Size < -1 || f.Done < 0 {
		return fmt.Errorf("file %s: size %d, done %d: %w", f.Path, f.Size, f.Done, ErrInvalid)
	}
	return nil
}

func decodeFile(key, val []byte) (File, error) {
	name := keyName(key)
	if len(key) != 4 {
		return File{}, corrupt(bucketPending+"/files", name, fmt.Errorf("key is %d bytes, want 4", len(key)))
	}
	var f File
	if err := json.Unmarshal(val, &f); err != nil {
		return File{}, corrupt(bucketPending+"/files", name, err)
	}
	if err := f.validate(); err != nil {
		return File{}, corrupt(bucketPending+"/files", name, err)
	}
	return f, nil
}

func (r updateRecord) validate() error {
	if r.ID == "" {
		return fmt.Errorf("update: empty id: %w", ErrInvalid)
	}
	if !r.State.valid() {
		return fmt.Errorf("update %s: unknown state %q: %w", r.ID, r.State, ErrInvalid)
	}
	if r.Files < 0 || r.Attempts < 0 {
		return fmt.Errorf("update %s: files %d, attempts %d: %w", r.ID, r.Files, r.Attempts, ErrInvalid)
	}
	for app := range r.Blocked {
		if err := validName(app); err != nil {
			return fmt.Errorf("update %s: blocked app: %w", r.ID, err)
		}
	}
	for app := range r.AppFailed {
		if err := validName(app); err != nil {
			return fmt.Errorf("update %s: failed app: %w", r.ID, err)
		}
	}
	return nil
}

func decodeUpdate(val []byte) (updateRecord, error) {
	var r updateRecord
	if err := json.Unmarshal(val, &r); err != nil {
		return updateRecord{}, corrupt(bucketPending, keyUpdate, err)
	}
	if err := r.validate(); err != nil {
		return updateRecord{}, corrupt(bucketPending, keyUpdate, err)
	}
	return r, nil
}

func (a *Apply) validate() error {
	if a.UpdateID == "" {
		return fmt.Errorf("apply: empty update id: %w", ErrInvalid)
	}
	for _, s := range a.Steps {
		if err := validName(s.App); err != nil {
			return fmt.Errorf("apply step app: %w", err)
		}
		if err := validName(s.Service); err != nil {
			return fmt.Errorf("apply step service: %w", err)
		}
	}
	for _, l := range a.Locks {
		if l.Path == "" {
			return fmt.Errorf("apply lock: empty path: %w", ErrInvalid)
		}
	}
	return nil
}

func decodeApply(val []byte) (*Apply, error) {
	a := new(Apply)
	if err := json.Unmarshal(val, a); err != nil {
		return nil, corrupt(bucketState, keyApply, err)
	}
	if err := a.validate(); err != nil {
		return nil, corrupt(bucketState, keyApply, err)
	}
	return a, nil
}

func (h Hold) validate() error {
	if h.All {
		if h.App != "" || h.Service != "" {
			return fmt.Errorf("hold --all names %s/%s: %w", h.App, h.Service, ErrInvalid)
		}
		return nil
	}
	if err := validName(h.App); err != nil {
		return fmt.Errorf("hold app: %w", err)
	}
	if err := validName(h.Service); err != nil {
		return fmt.Errorf("hold service: %w", err)
	}
	return nil
}

func decodeHold(key, val []byte) (Hold, error) {
	name := strconv.Quote(string(key))
	var h Hold
	if err := json.Unmarshal(val, &h); err != nil {
		return Hold{}, corrupt(bucketHolds, name, err)
	}
	if err := h.validate(); err != nil {
		return Hold{}, corrupt(bucketHolds, name, err)
	}
	if string(holdKey(h.App, h.Service, h.All)) != string(key) {
		return Hold{}, corrupt(bucketHolds, name, fmt.Errorf("record is for %q", holdKey(h.App, h.Service, h.All)))
	}
	return h, nil
}

func decodeOverride(val []byte) (Override, error) {
	var o Override
	if err := json.Unmarshal(val, &o); err != nil {
		return Override{}, corrupt(bucketState, keyOverride, err)
	}
	return o, nil
}

func (r *Reboot) validate() error {
	if r.Kind != "reboot" && r.Kind != "shutdown" {
		return fmt.Errorf("pending reboot: kind %q, want reboot or shutdown: %w", r.Kind, ErrInvalid)
	}
	return nil
}

func decodeReboot(val []byte) (*Reboot, error) {
	r := new(Reboot)
	if err := json.Unmarshal(val, r); err != nil {
		return nil, corrupt(bucketState, keyReboot, err)
	}
	if err := r.validate(); err != nil {
		return nil, corrupt(bucketState, keyReboot, err)
	}
	return r, nil
}

func validConfig(m map[string]string) error {
	for k := range m {
		if k == "" || strings.ContainsRune(k, 0) {
			return fmt.Errorf("config name %q: %w", k, ErrInvalid)
		}
	}
	return nil
}

func decodeConfig(val []byte) (map[string]string, error) {
	var m map[string]string
	if err := json.Unmarshal(val, &m); err != nil {
		return nil, corrupt(bucketState, keyConfig, err)
	}
	if m == nil {
		return nil, corrupt(bucketState, keyConfig, fmt.Errorf("not an object"))
	}
	if err := validConfig(m); err != nil {
		return nil, corrupt(bucketState, keyConfig, err)
	}
	return m, nil
}

func decodeEvent(key, val []byte) (Event, error) {
	name := keyName(key)
	if len(key) != 8 {
		return Event{}, corrupt(bucketEvents, name, fmt.Errorf("key is %d bytes, want 8", len(key)))
	}
	var e Event
	if err := json.Unmarshal(val, &e); err != nil {
		return Event{}, corrupt(bucketEvents, name, err)
	}
	if seq := binary.BigEndian.Uint64(key); e.Seq != seq {
		return Event{}, corrupt(bucketEvents, name, fmt.Errorf("record has seq %d", e.Seq))
	}
	if e.Kind == "" {
		return Event{}, corrupt(bucketEvents, name, fmt.Errorf("empty kind"))
	}
	return e, nil
}

func decodeVersion(val []byte) (int, error) {
	v, err := strconv.Atoi(string(val))
	if err != nil || v < 0 {
		return 0, corrupt(bucketMeta, keySchema, fmt.Errorf("schema version %q", val))
	}
	return v, nil
}

// keyName renders a binary key (a sequence number or an index) for errors.
func keyName(key []byte) string {
	switch len(key) {
	case 8:
		return strconv.FormatUint(binary.BigEndian.Uint64(key), 10)
	case 4:
		return strconv.FormatUint(uint64(binary.BigEndian.Uint32(key)), 10)
	}
	return fmt.Sprintf("%x", key)
}
