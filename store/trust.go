package store

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// keyTrust (bucket state) is what the device remembers of its root of trust
// (spec section 10): the trusted root, the highest target version accepted
// and its digest, and the clock floor. It is written in the same transaction
// as the target it goes with.
const keyTrust = "trust"

// keyRefused (bucket state) is the last target state refused under the root
// of trust, for the status.
const keyRefused = "refused"

// Trust is the device's trust state (the fields of agent/trust's State).
type Trust struct {
	Root           []byte    `json:"root"` // the trusted root envelope, as root.json
	RootVersion    uint64    `json:"root_version"`
	TargetVersion  uint64    `json:"target_version"`
	TargetSHA256   string    `json:"target_sha256,omitempty"`
	TargetExpires  time.Time `json:"target_expires,omitzero"`
	TargetAccepted time.Time `json:"target_accepted,omitzero"`
	LastIssued     time.Time `json:"last_issued,omitzero"`
}

func (t *Trust) validate() error {
	if len(t.Root) == 0 || !json.Valid(t.Root) {
		return fmt.Errorf("trust: the trusted root is not JSON")
	}
	if t.RootVersion < 1 {
		return fmt.Errorf("trust: root version %d, want 1 or more", t.RootVersion)
	}
	if t.TargetSHA256 != "" {
		if b, err := hex.DecodeString(t.TargetSHA256); err != nil || len(b) != 32 || strings.ToLower(t.TargetSHA256) != t.TargetSHA256 {
			return fmt.Errorf("trust: target sha256 %q, want 64 lowercase hex digits", t.TargetSHA256)
		}
	}
	if (t.TargetVersion == 0) != (t.TargetSHA256 == "") {
		return fmt.Errorf("trust: target version %d with digest %q: want both or neither", t.TargetVersion, t.TargetSHA256)
	}
	return nil
}

// Trust returns the trust state, or ErrNotFound when the device has none.
func (tx *Tx) Trust() (*Trust, error) {
	b, err := tx.bucket(bucketState)
	if err != nil {
		return nil, err
	}
	v := b.Get([]byte(keyTrust))
	if v == nil {
		return nil, fmt.Errorf("trust: %w", ErrNotFound)
	}
	t := new(Trust)
	if err := json.Unmarshal(v, t); err != nil {
		return nil, corrupt(bucketState, keyTrust, err)
	}
	if err := t.validate(); err != nil {
		return nil, corrupt(bucketState, keyTrust, err)
	}
	return t, nil
}

// PutTrust writes (replaces) the trust state.
func (tx *Tx) PutTrust(t *Trust) error {
	if t == nil {
		return fmt.Errorf("trust: nil: %w", ErrInvalid)
	}
	if err := t.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return tx.put(bucketState, keyTrust, t)
}

// Refusal is a target state refused under the root of trust.
type Refusal struct {
	At     time.Time `json:"at"`
	Source string    `json:"source"` // where it came from
	By     string    `json:"by,omitempty"`
	Reason string    `json:"reason"`
	SHA256 string    `json:"sha256"` // of the document's exact bytes
}

func (r *Refusal) validate() error {
	switch {
	case r.At.IsZero():
		return fmt.Errorf("refused target: no time")
	case r.Reason == "":
		return fmt.Errorf("refused target: no reason")
	}
	return nil
}

// Refused returns the last refused target state, or ErrNotFound.
func (tx *Tx) Refused() (*Refusal, error) {
	b, err := tx.bucket(bucketState)
	if err != nil {
		return nil, err
	}
	v := b.Get([]byte(keyRefused))
	if v == nil {
		return nil, fmt.Errorf("refused target: %w", ErrNotFound)
	}
	r := new(Refusal)
	if err := json.Unmarshal(v, r); err != nil {
		return nil, corrupt(bucketState, keyRefused, err)
	}
	if err := r.validate(); err != nil {
		return nil, corrupt(bucketState, keyRefused, err)
	}
	return r, nil
}

// SetRefused records r as the last refused target state.
func (tx *Tx) SetRefused(r *Refusal) error {
	if r == nil {
		return fmt.Errorf("refused target: nil: %w", ErrInvalid)
	}
	if err := r.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return tx.put(bucketState, keyRefused, r)
}
