// Package target is latch's model of a target state: the JSON document that
// says which release each app should run (spec section 6).
//
// It guarantees that a *State returned by Parse is complete and valid: every
// name can be used as a lock directory or an environment variable, every file
// has an absolute clean install path, a checksum, an http, https or file
// source and a mode of permission bits only (no setuid, setgid or sticky
// bit), and no two files share an install path. Every error names the field
// at fault. It also verifies detached ed25519 signatures, and delivers raw
// documents from a watched file or a polled URL (sources never parse).
//
// The package imports nothing from the rest of latch.
package target

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// MaxSize is the largest target document accepted, in bytes.
const MaxSize = 1 << 20

// maxDepth bounds the nesting of a document; the real shape is 6 levels deep.
const maxDepth = 32

// Errors of this package. Callers test them with errors.Is.
var (
	// ErrInvalid is wrapped by every Parse error: the document is malformed
	// or breaks a rule; the error text names the field.
	ErrInvalid = errors.New("invalid target state")
	// ErrBadSignature: a signature is present but malformed or does not
	// verify with the trusted key.
	ErrBadSignature = errors.New("target state signature does not verify")
	// ErrNoSignature: a key is trusted but the document came unsigned.
	ErrNoSignature = errors.New("target state is not signed")
)

// State is a parsed, validated target state (spec section 6).
type State struct {
	Apps   map[string]App         `json:"apps"`
	Config map[string]ConfigValue `json:"config,omitempty"`
	// Window is the maintenance window of every app that has none of its
	// own, and of the reboots that configuration changes need; nil: any time.
	Window *Window `json:"-"`
	// The fields of section 10, checked here for form only (a trust root's
	// Verify decides on them): Version (0: absent) rises with every signed
	// document; Issued and Expires (zero: absent); Fleet and Device ("":
	// absent).
	Version uint64    `json:"version,omitempty"`
	Issued  time.Time `json:"issued,omitzero"`
	Expires time.Time `json:"expires,omitzero"`
	Fleet   string    `json:"fleet,omitempty"`
	Device  string    `json:"device,omitempty"`
}

// topFields are the known top-level fields of a target state.
var topFields = []string{"apps", "config", "window", "version", "issued", "expires", "fleet", "device"}

// MissingSizes returns the field paths of the files that have no size, in
// order: with a trust root every file must have one.
func (s *State) MissingSizes() []string {
	var out []string
	for _, an := range sortedKeys(s.Apps) {
		app := s.Apps[an]
		for _, sn := range sortedKeys(app.Services) {
			for i, f := range app.Services[sn].Files {
				if !f.HasSize {
					out = append(out, fmt.Sprintf("%s.files[%d].size", member(member(member("apps", an), "services"), sn), i))
				}
			}
		}
	}
	return out
}

// App is the release an app should run and its services.
type App struct {
	Release  string             `json:"release"`
	Services map[string]Service `json:"services"`
	// MaxDefer bounds how long the app's update waits for its locks, from
	// the first time it was blocked, when HasMaxDefer (it then wins over
	// the agent's --max-defer; 0 sets no bound).
	MaxDefer    time.Duration `json:"-"`
	HasMaxDefer bool          `json:"-"`
	// Window is the app's own maintenance window; nil: the target's.
	Window *Window `json:"-"`
}

// Service is one service of an app: a systemd unit (systemd driver) or shell
// commands (exec driver), and the files it is made of; or a container (its
// entry has "image", spec section 9).
type Service struct {
	Unit   string `json:"unit,omitempty"` // systemd driver: unit name
	Files  []File `json:"files,omitempty"`
	Stop   string `json:"stop,omitempty"` // exec driver: shell commands
	Start  string `json:"start,omitempty"`
	Health string `json:"health,omitempty"`
	// Image is the container's image (name@sha256:...), when the service
	// is a container; Container is then its whole entry as written, which
	// the agent checks with the container driver's parser when it accepts
	// the target (Parse checks only that the other kinds' keys are absent).
	Image     string          `json:"-"`
	Container json.RawMessage `json:"-"`
}

// IsContainer reports whether s is a container service.
func (s Service) IsContainer() bool { return s.Container != nil }

// MarshalJSON writes a container service as its entry, any other as its
// fields.
func (s Service) MarshalJSON() ([]byte, error) {
	if s.Container != nil {
		return s.Container, nil
	}
	type plain Service
	return json.Marshal(plain(s))
}

// File is one file of a release: where to get it, its digest, where it goes.
type File struct {
	Source string `json:"source"`         // http, https or file URL
	SHA256 string `json:"sha256"`         // 64 lowercase hex digits (normalised by Parse)
	Path   string `json:"path"`           // absolute, clean, not "/"
	Mode   string `json:"mode,omitempty"` // octal permission bits, like "0755"; default "0644"
	// AllowWritableDir lets latch install the file into a directory that a
	// user other than root can write (or that root does not own), which it
	// refuses otherwise: such a user can replace the file at any time.
	AllowWritableDir bool `json:"allow_writable_dir,omitempty"`
	// Size is the file's length in bytes when HasSize: a download that
	// passes it stops at once.
	Size    int64 `json:"size,omitempty"`
	HasSize bool  `json:"-"`
}

// FileMode is the file's permission bits: 0644 when Mode is empty (absent),
// 0 for "0000". Parse has checked Mode and refused setuid, setgid and
// sticky bits, so it holds permission bits only; a value that Parse would
// refuse gives 0644.
func (f File) FileMode() os.FileMode {
	if f.Mode == "" || !validMode(f.Mode) {
		return 0o644
	}
	m, err := strconv.ParseUint(f.Mode, 8, 32)
	if err != nil || m&^0o777 != 0 {
		return 0o644
	}
	return os.FileMode(m)
}

// ConfigValue is one configuration value. In JSON it is either a string
// ("value") or an object {"value": "...", "reboot": true}.
type ConfigValue struct {
	Value  string `json:"value"`
	Reboot bool   `json:"reboot,omitempty"`
}

// MarshalJSON writes the short string form when no reboot is needed.
func (c ConfigValue) MarshalJSON() ([]byte, error) {
	if !c.Reboot {
		return json.Marshal(c.Value)
	}
	type plain ConfigValue
	return json.Marshal(plain(c))
}

// UnmarshalJSON accepts both forms, strictly (unknown keys are errors).
func (c *ConfigValue) UnmarshalJSON(data []byte) error {
	v, err := parseConfigValue("value", data)
	if err != nil {
		return err
	}
	*c = v
	return nil
}

// FieldError is a Parse error: the field path and what is wrong with it.
type FieldError struct {
	Path string // like apps.kiosk.services.ui.files[0].sha256; "" for the whole document
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return ErrInvalid.Error() + ": " + e.Msg
	}
	return ErrInvalid.Error() + ": " + e.Path + ": " + e.Msg
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Unwrap() error { return ErrInvalid }

func fieldErr(path, format string, args ...any) error {
	return &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Digest is the sha256 hex of the document bytes exactly as accepted; the
// agent uses it as the update ID.
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// Parse decodes and validates a target document strictly: unknown fields
// and duplicate keys are rejected at every level, the size is limited to
// MaxSize, names must be usable as lock directories (apps, services) or
// environment variables (config), and every file must be valid and have an
// install path of its own. Errors wrap ErrInvalid and name the field.
func Parse(data []byte) (*State, error) {
	if len(data) > MaxSize {
		return nil, fieldErr("", "document is %d bytes, the limit is %d", len(data), MaxSize)
	}
	if err := checkSyntax(data); err != nil {
		return nil, err
	}
	top, err := object("", data, topFields...)
	if err != nil {
		return nil, err
	}
	st := &State{Apps: map[string]App{}}
	if err := parseTrustFields(st, top); err != nil {
		return nil, err
	}
	appsRaw, ok := top["apps"]
	if !ok {
		return nil, fieldErr("apps", "missing")
	}
	apps, err := object("apps", appsRaw)
	if err != nil {
		return nil, err
	}
	paths := map[string]string{} // install path → field path of its first file
	for _, name := range sortedKeys(apps) {
		p := member("apps", name)
		if err := checkLockName(p, name); err != nil {
			return nil, err
		}
		app, err := parseApp(p, apps[name], paths)
		if err != nil {
			return nil, err
		}
		st.Apps[name] = app
	}
	if raw, ok := top["window"]; ok && !isNull(raw) {
		if st.Window, err = parseWindow("window", raw); err != nil {
			return nil, err
		}
	}
	if raw, ok := top["config"]; ok && !isNull(raw) {
		cfg, err := object("config", raw)
		if err != nil {
			return nil, err
		}
		st.Config = make(map[string]ConfigValue, len(cfg))
		for _, name := range sortedKeys(cfg) {
			p := member("config", name)
			if !validEnvName(name) {
				return nil, fieldErr(p, "want an environment variable name ([A-Za-z_][A-Za-z0-9_]*), got %q", name)
			}
			v, err := parseConfigValue(p, cfg[name])
			if err != nil {
				return nil, err
			}
			st.Config[name] = v
		}
	}
	return st, nil
}

func parseApp(path string, raw json.RawMessage, paths map[string]string) (App, error) {
	m, err := object(path, raw, "release", "services", "max_defer", "window")
	if err != nil {
		return App{}, err
	}
	var app App
	if raw, ok := m["max_defer"]; ok && !isNull(raw) {
		if app.MaxDefer, err = parseMaxDefer(path+".max_defer", raw); err != nil {
			return App{}, err
		}
		app.HasMaxDefer = true
	}
	if raw, ok := m["window"]; ok && !isNull(raw) {
		if app.Window, err = parseWindow(path+".window", raw); err != nil {
			return App{}, err
		}
	}
	if app.Release, err = requiredString(path+".release", m["release"]); err != nil {
		return App{}, err
	}
	if app.Release == "" {
		return App{}, fieldErr(path+".release", "must not be empty")
	}
	if err := checkText(path+".release", app.Release); err != nil {
		return App{}, err
	}
	sraw, ok := m["services"]
	if !ok {
		return App{}, fieldErr(path+".services", "missing")
	}
	services, err := object(path+".services", sraw)
	if err != nil {
		return App{}, err
	}
	app.Services = make(map[string]Service, len(services))
	for _, name := range sortedKeys(services) {
		p := member(path+".services", name)
		if err := checkLockName(p, name); err != nil {
			return App{}, err
		}
		svc, err := parseService(p, services[name], paths)
		if err != nil {
			return App{}, err
		}
		app.Services[name] = svc
	}
	return app, nil
}

func parseService(path string, raw json.RawMessage, paths map[string]string) (Service, error) {
	if all, err := object(path, raw); err == nil {
		if _, ok := all["image"]; ok {
			return parseContainer(path, raw, all)
		}
	}
	m, err := object(path, raw, "unit", "files", "stop", "start", "health")
	if err != nil {
		return Service{}, err
	}
	var s Service
	for _, f := range []struct {
		key string
		dst *string
	}{{"unit", &s.Unit}, {"stop", &s.Stop}, {"start", &s.Start}, {"health", &s.Health}} {
		if *f.dst, err = optionalString(path+"."+f.key, m[f.key]); err != nil {
			return Service{}, err
		}
		if strings.IndexByte(*f.dst, 0) >= 0 {
			return Service{}, fieldErr(path+"."+f.key, "contains a NUL byte")
		}
	}
	if s.Unit != "" {
		if err := checkUnit(path+".unit", s.Unit); err != nil {
			return Service{}, err
		}
	}
	if raw, ok := m["files"]; ok && !isNull(raw) {
		if kind(raw) != "an array" {
			return Service{}, fieldErr(path+".files", "want an array, got %s", kind(raw))
		}
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return Service{}, fieldErr(path+".files", "%v", err)
		}
		for i, item := range items {
			p := fmt.Sprintf("%s.files[%d]", path, i)
			f, err := parseFile(p, item)
			if err != nil {
				return Service{}, err
			}
			if first, dup := paths[f.Path]; dup {
				return Service{}, fieldErr(p+".path", "%q is also the path of %s", f.Path, first)
			}
			paths[f.Path] = p
			s.Files = append(s.Files, f)
		}
	}
	return s, nil
}

// parseContainer keeps a container service's entry; the agent checks its
// fields (spec section 9) with the container driver.
func parseContainer(path string, raw json.RawMessage, m map[string]json.RawMessage) (Service, error) {
	for _, k := range []string{"unit", "files", "start", "stop", "health"} {
		if _, ok := m[k]; ok {
			return Service{}, fieldErr(path+"."+k, "a container service (it has \"image\") is run by the container engine: remove %q, or remove \"image\" to run it with --driver", k)
		}
	}
	img, err := requiredString(path+".image", m["image"])
	if err != nil {
		return Service{}, err
	}
	if img == "" {
		return Service{}, fieldErr(path+".image", "must not be empty: give name@sha256:<64 hex>")
	}
	if err := checkText(path+".image", img); err != nil {
		return Service{}, err
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return Service{}, fieldErr(path, "%v", err)
	}
	return Service{Image: img, Container: json.RawMessage(buf.Bytes())}, nil
}

// sidecarSuffixes are names that fetch.Install and Fetch keep next to a
// file; an install path ending so would collide with another file's.
var sidecarSuffixes = []string{".part", ".latch-prev", ".latch-absent", ".latch-new"}

func parseFile(path string, raw json.RawMessage) (File, error) {
	m, err := object(path, raw, "source", "sha256", "path", "mode", "allow_writable_dir", "size")
	if err != nil {
		return File{}, err
	}
	var f File
	if raw, ok := m["size"]; ok && !isNull(raw) {
		n, err := parseCount(path+".size", raw)
		if err != nil {
			return File{}, err
		}
		if n > 1<<62 {
			return File{}, fieldErr(path+".size", "%d bytes is beyond any file latch installs", n)
		}
		f.Size, f.HasSize = int64(n), true
	}
	if f.Source, err = requiredString(path+".source", m["source"]); err != nil {
		return File{}, err
	}
	if err := checkSource(path+".source", f.Source); err != nil {
		return File{}, err
	}
	if f.SHA256, err = requiredString(path+".sha256", m["sha256"]); err != nil {
		return File{}, err
	}
	if !isHex64(f.SHA256) {
		return File{}, fieldErr(path+".sha256", "want 64 hex digits, got %q", clip(f.SHA256))
	}
	f.SHA256 = strings.ToLower(f.SHA256)
	if f.Path, err = requiredString(path+".path", m["path"]); err != nil {
		return File{}, err
	}
	if err := checkInstallPath(path+".path", f.Path); err != nil {
		return File{}, err
	}
	if f.Mode, err = optionalString(path+".mode", m["mode"]); err != nil {
		return File{}, err
	}
	if f.Mode != "" {
		if !validMode(f.Mode) {
			return File{}, fieldErr(path+".mode", "want an octal mode like \"0755\", got %q", clip(f.Mode))
		}
		if len(f.Mode) == 4 && f.Mode[0] != '0' {
			return File{}, fieldErr(path+".mode", "mode %s of %s: setuid, setgid and sticky bits are not installed by latch; give the permission bits only, like \"0%s\"", f.Mode, clip(f.Path), f.Mode[1:])
		}
	} else {
		f.Mode = "0644"
	}
	if raw, ok := m["allow_writable_dir"]; ok && !isNull(raw) {
		if kind(raw) != "a boolean" {
			return File{}, fieldErr(path+".allow_writable_dir", "want true or false, got %s", kind(raw))
		}
		if err := json.Unmarshal(raw, &f.AllowWritableDir); err != nil {
			return File{}, fieldErr(path+".allow_writable_dir", "want true or false: %v", err)
		}
	}
	return f, nil
}

// parseTrustFields reads the section 10 fields for form: version an integer
// >= 1, issued and expires RFC 3339 times, fleet and device strings.
func parseTrustFields(st *State, top map[string]json.RawMessage) error {
	var err error
	if raw, ok := top["version"]; ok && !isNull(raw) {
		if st.Version, err = parseCount("version", raw); err != nil {
			return err
		}
		if st.Version < 1 {
			return fieldErr("version", "is 0: versions start at 1")
		}
	}
	for _, f := range []struct {
		key string
		dst *time.Time
	}{{"issued", &st.Issued}, {"expires", &st.Expires}} {
		s, err := optionalString(f.key, top[f.key])
		if err != nil {
			return err
		}
		if s == "" {
			if raw, ok := top[f.key]; ok && !isNull(raw) {
				return fieldErr(f.key, "want an RFC 3339 time like \"2026-01-02T15:04:05Z\", got \"\"")
			}
			continue
		}
		if *f.dst, err = time.Parse(time.RFC3339, s); err != nil {
			return fieldErr(f.key, "want an RFC 3339 time like \"2026-01-02T15:04:05Z\", got %q", clip(s))
		}
	}
	if !st.Issued.IsZero() && !st.Expires.IsZero() && !st.Expires.After(st.Issued) {
		return fieldErr("expires", "%s is not after issued %s", st.Expires.Format(time.RFC3339), st.Issued.Format(time.RFC3339))
	}
	for _, f := range []struct {
		key string
		dst *string
	}{{"fleet", &st.Fleet}, {"device", &st.Device}} {
		if *f.dst, err = optionalString(f.key, top[f.key]); err != nil {
			return err
		}
		if err := checkText(f.key, *f.dst); err != nil {
			return err
		}
	}
	return nil
}

// parseCount reads a non-negative JSON integer (no fraction, no exponent).
func parseCount(path string, raw json.RawMessage) (uint64, error) {
	if kind(raw) != "a number" {
		return 0, fieldErr(path, "want a non-negative integer, got %s", kind(raw))
	}
	t := strings.TrimSpace(string(raw))
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return 0, fieldErr(path, "want a non-negative integer, got %s", clip(t))
	}
	return n, nil
}

func parseConfigValue(path string, raw json.RawMessage) (ConfigValue, error) {
	var v ConfigValue
	switch kind(raw) {
	case "a string":
		if err := json.Unmarshal(raw, &v.Value); err != nil {
			return v, fieldErr(path, "%v", err)
		}
	case "an object":
		m, err := object(path, raw, "value", "reboot")
		if err != nil {
			return v, err
		}
		if v.Value, err = requiredString(path+".value", m["value"]); err != nil {
			return v, err
		}
		if r, ok := m["reboot"]; ok && !isNull(r) {
			if err := json.Unmarshal(r, &v.Reboot); err != nil {
				return v, fieldErr(path+".reboot", "want true or false, got %s", kind(r))
			}
		}
		path += ".value"
	default:
		return v, fieldErr(path, "want a string or an object {\"value\": ..., \"reboot\": ...}, got %s", kind(raw))
	}
	if strings.ContainsAny(v.Value, "\x00\n\r") {
		return v, fieldErr(path, "must not contain a NUL byte or a line break")
	}
	return v, nil
}

// object decodes raw as a JSON object whose keys must be among allowed
// (any key when allowed is empty).
func object(path string, raw json.RawMessage, allowed ...string) (map[string]json.RawMessage, error) {
	if k := kind(raw); k != "an object" {
		return nil, fieldErr(path, "want an object, got %s", k)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fieldErr(path, "%v", err)
	}
	if len(allowed) > 0 {
		for _, k := range sortedKeys(m) {
			known := false
			for _, a := range allowed {
				if k == a {
					known = true
					break
				}
			}
			if !known {
				for _, a := range allowed {
					if strings.EqualFold(k, a) {
						return nil, fieldErr(member(path, k), "unknown field: spell it %q (field names are exact; a reader that folds case would see another value)", a)
					}
				}
				return nil, fieldErr(member(path, k), "unknown field (known: %s)", strings.Join(allowed, ", "))
			}
		}
	}
	return m, nil
}

func requiredString(path string, raw json.RawMessage) (string, error) {
	if raw == nil {
		return "", fieldErr(path, "missing")
	}
	if kind(raw) != "a string" {
		return "", fieldErr(path, "want a string, got %s", kind(raw))
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fieldErr(path, "%v", err)
	}
	return s, nil
}

func optionalString(path string, raw json.RawMessage) (string, error) {
	if raw == nil || isNull(raw) {
		return "", nil
	}
	return requiredString(path, raw)
}

// kind names the JSON type of raw for error messages.
func kind(raw json.RawMessage) string {
	b := bytes.TrimLeft(raw, " \t\r\n")
	if len(b) == 0 {
		return "nothing"
	}
	switch b[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

func isNull(raw json.RawMessage) bool { return kind(raw) == "null" }

// checkSyntax rejects malformed JSON, trailing data, duplicate keys (which
// encoding/json would silently collapse) and absurd nesting, naming where.
func checkSyntax(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var walk func(path string, depth int) error
	walk = func(path string, depth int) error {
		if depth > maxDepth {
			return fieldErr(path, "nested more than %d levels deep", maxDepth)
		}
		tok, err := dec.Token()
		if err != nil {
			return syntaxErr(path, dec, err)
		}
		d, ok := tok.(json.Delim)
		if !ok {
			return nil
		}
		switch d {
		case '{':
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return syntaxErr(path, dec, err)
				}
				k, _ := kt.(string)
				p := member(path, k)
				if seen[k] {
					return fieldErr(p, "duplicate key")
				}
				seen[k] = true
				if err := walk(p, depth+1); err != nil {
					return err
				}
			}
		case '[':
			for i := 0; dec.More(); i++ {
				if err := walk(fmt.Sprintf("%s[%d]", path, i), depth+1); err != nil {
					return err
				}
			}
		}
		if _, err := dec.Token(); err != nil { // the closing delimiter
			return syntaxErr(path, dec, err)
		}
		return nil
	}
	if err := walk("", 0); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fieldErr("", "malformed JSON: data after the document at byte %d", dec.InputOffset())
	}
	return nil
}

func syntaxErr(path string, dec *json.Decoder, err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fieldErr(path, "malformed JSON at byte %d: %v", se.Offset, err)
	}
	return fieldErr(path, "malformed JSON at byte %d: %v", dec.InputOffset(), err)
}

// member is the field path of key under path: "a.b" for plain names,
// a["odd key"] for anything else, so a path is never ambiguous about what
// the document said.
func member(path, key string) string {
	plain := key != ""
	for i := 0; i < len(key); i++ {
		if !isNameByte(key[i]) {
			plain = false
			break
		}
	}
	if !plain {
		return fmt.Sprintf("%s[%q]", path, clip(key))
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func isNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
}

// checkLockName: app and service names become lock directories
// (<lock-dir>/services/APP/SERVICE), so they must be plain file names.
func checkLockName(path, name string) error {
	switch {
	case name == "":
		return fieldErr(path, "name must not be empty")
	case len(name) > 128:
		return fieldErr(path, "name is %d bytes, the limit is 128", len(name))
	case name[0] == '.':
		return fieldErr(path, "name must not start with '.'")
	}
	for i := 0; i < len(name); i++ {
		if !isNameByte(name[i]) {
			return fieldErr(path, "name may hold only A-Z a-z 0-9 _ . -, got %q", clip(name))
		}
	}
	return nil
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

var unitSuffixes = []string{".service", ".socket", ".target", ".timer", ".path", ".mount"}

func checkUnit(path, unit string) error {
	if len(unit) > 255 {
		return fieldErr(path, "unit name is %d bytes, the limit is 255", len(unit))
	}
	suffixOK := false
	for _, s := range unitSuffixes {
		if strings.HasSuffix(unit, s) && len(unit) > len(s) {
			suffixOK = true
		}
	}
	if !suffixOK {
		return fieldErr(path, "want a unit name ending in %s, got %q", strings.Join(unitSuffixes, ", "), clip(unit))
	}
	for i := 0; i < len(unit); i++ {
		c := unit[i]
		if !(isNameByte(c) || c == ':' || c == '@' || c == '\\') {
			return fieldErr(path, "unit name may hold only A-Z a-z 0-9 : _ . @ \\ -, got %q", clip(unit))
		}
	}
	return nil
}

func checkSource(path, src string) error {
	u, err := url.Parse(src)
	if err != nil {
		return fieldErr(path, "want an http, https or file URL, got %q: %v", clip(src), err)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return fieldErr(path, "URL %q has no host", clip(src))
		}
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return fieldErr(path, "file URL %q names host %q; want file:///absolute/path", clip(src), u.Host)
		}
		if !filepath.IsAbs(u.Path) {
			return fieldErr(path, "file URL %q has no absolute path", clip(src))
		}
	default:
		return fieldErr(path, "want an http, https or file URL, got %q", clip(src))
	}
	return nil
}

func checkInstallPath(path, p string) error {
	switch {
	case p == "":
		return fieldErr(path, "must not be empty")
	case strings.IndexByte(p, 0) >= 0:
		return fieldErr(path, "contains a NUL byte")
	case !filepath.IsAbs(p):
		return fieldErr(path, "want an absolute path, got %q", clip(p))
	case p == "/":
		return fieldErr(path, "must not be /")
	case filepath.Clean(p) != p:
		return fieldErr(path, "want a clean path (no //, /./, /../ or trailing /), got %q; did you mean %q?", clip(p), clip(filepath.Clean(p)))
	}
	for _, s := range sidecarSuffixes {
		if strings.HasSuffix(p, s) {
			return fieldErr(path, "must not end in %q (latch keeps its own files under that name)", s)
		}
	}
	return nil
}

func checkText(path, s string) error {
	if strings.ContainsAny(s, "\x00\n\r") {
		return fieldErr(path, "must not contain a NUL byte or a line break")
	}
	return nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// validMode accepts 3 or 4 octal digits, like "755" or "0755" or "4755"
// (parseFile then refuses the special bits of "4755").
func validMode(s string) bool {
	if len(s) < 3 || len(s) > 4 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '7' {
			return false
		}
	}
	return true
}

// clip shortens a value quoted in an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
