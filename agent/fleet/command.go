package fleet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// Actions of a command.
const (
	ActionUpdate   = "update"   // apply the pending update now (Force ignores locks once)
	ActionCancel   = "cancel"   // cancel the pending update
	ActionOverride = "override" // set the persistent lock override to Enabled
	ActionHold     = "hold"     // hold App/Service (or All), with Reason and For
	ActionRelease  = "release"  // release the hold of App/Service (or All)
	ActionReboot   = "reboot"   // reboot through the agent (Force ignores locks)
)

// Statuses of a result. The agent may use others; these are the ones latch itself writes.
const (
	StatusOK      = "ok"
	StatusFailed  = "failed"
	StatusRefused = "refused"
)

// MaxIDLen bounds a command id.
const MaxIDLen = 128

// Command is one message of latch/devices/<id>/cmd. The broker may deliver a command more than
// once: the agent journals ID and runs each id once.
type Command struct {
	ID      string `json:"id"`
	Action  string `json:"action"`
	Force   bool   `json:"force,omitempty"`   // update, reboot
	Enabled *bool  `json:"enabled,omitempty"` // override: required
	App     string `json:"app,omitempty"`     // hold, release: with Service, or All
	Service string `json:"service,omitempty"` // hold, release
	All     bool   `json:"all,omitempty"`     // hold, release
	Reason  string `json:"reason,omitempty"`  // hold
	For     string `json:"for,omitempty"`     // hold: a Go duration, e.g. "2h"
	// Device and Expires are what a signed command must carry: the one device it is for and
	// when it stops being valid (RFC 3339). The agent refuses a signed command for another
	// device or past its expiry.
	Device  string `json:"device,omitempty"`
	Expires string `json:"expires,omitempty"`
	// Sig is the command's signature, kept as sent for the agent to check: a command that
	// forces or overrides is refused unless signed when a trust root is set (section 11).
	Sig json.RawMessage `json:"sig,omitempty"`
	// Raw is the message exactly as received (set by ParseCommand), for checking Sig.
	Raw []byte `json:"-"`
}

// Result is one message of latch/devices/<id>/result.
type Result struct {
	ID      string `json:"id"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

// ParseCommand parses a command strictly: one JSON object, no unknown field, a known action
// and only the fields that action takes.
func ParseCommand(payload []byte) (Command, error) {
	var c Command
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Command{}, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Command{}, fmt.Errorf("%w: data after the JSON object", ErrBadCommand)
	}
	if len(bytes.TrimSpace(payload)) == 0 || bytes.TrimSpace(payload)[0] != '{' {
		return Command{}, fmt.Errorf("%w: not a JSON object", ErrBadCommand)
	}
	if err := c.Validate(); err != nil {
		return Command{}, err
	}
	c.Raw = bytes.Clone(payload)
	return c, nil
}

// commandID reads the id of a payload that ParseCommand refused, if it has a usable one, so
// that the refusal can be answered.
func commandID(payload []byte) string {
	var probe struct {
		ID string `json:"id"`
	}
	if json.NewDecoder(bytes.NewReader(payload)).Decode(&probe) != nil || checkID(probe.ID) != nil {
		return ""
	}
	return probe.ID
}

func checkID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: id is missing", ErrBadCommand)
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("%w: id is %d bytes long: at most %d", ErrBadCommand, len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._-:", c) >= 0) {
			return fmt.Errorf("%w: id %q: byte %d (%q) is not allowed (use letters, digits and . _ - or :)", ErrBadCommand, id, i, c)
		}
	}
	return nil
}

// Validate checks a command as ParseCommand does.
func (c Command) Validate() error {
	if err := checkID(c.ID); err != nil {
		return err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: command %s: %s", ErrBadCommand, c.ID, fmt.Sprintf(format, args...))
	}
	// fields set that the action does not take
	var extra []string
	has := func(set bool, name string) {
		if set {
			extra = append(extra, name)
		}
	}
	switch c.Action {
	case ActionUpdate, ActionReboot:
		has(c.Enabled != nil, "enabled")
		has(c.App != "" || c.Service != "" || c.All, "app/service/all")
		has(c.Reason != "" || c.For != "", "reason/for")
	case ActionCancel:
		has(c.Force, "force")
		has(c.Enabled != nil, "enabled")
		has(c.App != "" || c.Service != "" || c.All, "app/service/all")
		has(c.Reason != "" || c.For != "", "reason/for")
	case ActionOverride:
		if c.Enabled == nil {
			return bad(`action override needs "enabled": true or false`)
		}
		has(c.Force, "force")
		has(c.App != "" || c.Service != "" || c.All, "app/service/all")
		has(c.Reason != "" || c.For != "", "reason/for")
	case ActionHold, ActionRelease:
		has(c.Force, "force")
		has(c.Enabled != nil, "enabled")
		if c.Action == ActionRelease {
			has(c.Reason != "" || c.For != "", "reason/for")
		}
		if c.All == (c.App != "" || c.Service != "") {
			return bad(`action %s needs "app" and "service", or "all": true (not both)`, c.Action)
		}
		if !c.All && (c.App == "" || c.Service == "") {
			return bad(`action %s needs both "app" and "service"`, c.Action)
		}
		for _, s := range []string{c.App, c.Service} {
			if s != "" {
				if err := checkName("app or service", s); err != nil {
					return bad("%v", err)
				}
			}
		}
		if len(c.Reason) > 1024 {
			return bad("reason is %d bytes long: at most 1024", len(c.Reason))
		}
		if c.For != "" {
			d, err := time.ParseDuration(c.For)
			if err != nil || d <= 0 {
				return bad(`"for" %q is not a positive duration such as "2h"`, c.For)
			}
		}
	case "":
		return bad("action is missing: give one of update, cancel, override, hold, release, reboot")
	default:
		return bad("unknown action %q: give one of update, cancel, override, hold, release, reboot", c.Action)
	}
	if len(extra) > 0 {
		return bad("action %s does not take %s", c.Action, strings.Join(extra, ", "))
	}
	if c.Device != "" {
		if err := checkName("device", c.Device); err != nil {
			return bad("%v", err)
		}
	}
	if c.Expires != "" {
		if _, err := time.Parse(time.RFC3339, c.Expires); err != nil {
			return bad(`"expires" %q is not an RFC 3339 time such as 2026-12-01T12:00:00Z`, c.Expires)
		}
	}
	if c.Sig != nil && !json.Valid(c.Sig) {
		return bad("sig is not JSON")
	}
	return nil
}

// SignedBytes is what a command's signature covers: json.Marshal of the command with Sig
// cleared (the struct's field order, so the same command always gives the same bytes; the
// sender and the agent both marshal the parsed struct, so the message's own spacing never
// matters). Under a root of trust the signature is over DSSE's PAE of these bytes with the
// payload type application/vnd.latch.command+json (agent/trust's CommandType).
func (c Command) SignedBytes() ([]byte, error) {
	c.Sig, c.Raw = nil, nil
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode command %s: %w", c.ID, err)
	}
	return b, nil
}
