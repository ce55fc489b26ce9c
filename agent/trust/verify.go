package trust

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// State is what a device remembers between documents. The agent persists
// it in the same journal transaction as the target it goes with, so a power
// cut never leaves one without the other. The zero State trusts nothing.
type State struct {
	// Root is the trusted root envelope (the form of root.json).
	Root []byte `json:"root"`
	// RootVersion is the version of Root.
	RootVersion uint64 `json:"root_version"`
	// TargetVersion is the highest target version accepted (0: none yet).
	TargetVersion uint64 `json:"target_version"`
	// TargetSHA256 is the hex sha256 of that target's exact bytes.
	TargetSHA256 string `json:"target_sha256,omitempty"`
	// TargetExpires is when that target expires, for reporting a freeze
	// between documents.
	TargetExpires time.Time `json:"target_expires,omitzero"`
	// TargetAccepted is when that target was accepted (the device's clock).
	TargetAccepted time.Time `json:"target_accepted,omitzero"`
	// LastIssued is the newest "issued" time accepted: the clock used for
	// expiry never runs backwards past it.
	LastIssued time.Time `json:"last_issued,omitzero"`
}

// NewState trusts the root envelope b, as provisioned (--trust-root, or
// `latch verify --root`). The root must carry a threshold of signatures of
// its own root role (run `latch root sign` until it does); its expiry is
// checked by Verify, not here, so that a device whose root expired while it
// was off can still be told why it refuses everything.
func NewState(b []byte) (State, error) {
	sr, err := ParseRoot(b)
	if err != nil {
		return State{}, err
	}
	if _, err := checkThreshold(sr.Root, sr.Root.Roles.Root, RootType, sr.Body, sr.Signatures, nil,
		fmt.Sprintf("root version %d, by its own root keys", sr.Root.Version)); err != nil {
		return State{}, err
	}
	env, err := json.Marshal(sr)
	if err != nil {
		return State{}, fmt.Errorf("encode root: %w", err)
	}
	return State{Root: env, RootVersion: sr.Root.Version}, nil
}

// TrustedRoot parses s.Root.
func (s State) TrustedRoot() (SignedRoot, error) {
	if len(s.Root) == 0 {
		return SignedRoot{}, refuse(ErrNoRoot, "no trusted root: provision one with --trust-root")
	}
	sr, err := ParseRoot(s.Root)
	if err != nil {
		return SignedRoot{}, fmt.Errorf("trusted root: %w", err)
	}
	if sr.Root.Version != s.RootVersion {
		return SignedRoot{}, malformed("trusted root: version %d, but the state says %d", sr.Root.Version, s.RootVersion)
	}
	return sr, nil
}

// Target is what Verify reads of a target state: the fields of section 10.
// The rest of the document is the target package's.
type Target struct {
	Version uint64
	Issued  time.Time
	Expires time.Time
	Fleet   string
	Device  string // "" when the document is for any device of the fleet
	SHA256  string // hex sha256 of the exact bytes
}

// ParseTarget reads the section 10 fields of a target state's exact bytes.
// Fields spelled with other capitals ("Version") are refused, since a
// reader that folds case would see another value.
func ParseTarget(body []byte) (Target, error) {
	if err := checkJSON(body, "target"); err != nil {
		return Target{}, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil || m == nil {
		return Target{}, malformed("target: want a JSON object")
	}
	names := []string{"version", "issued", "expires", "fleet", "device"}
	for k := range m {
		for _, n := range names {
			if k != n && strings.EqualFold(k, n) {
				return Target{}, malformed("target: field %q: spell it %q", k, n)
			}
		}
	}
	for _, n := range names[:4] {
		if _, ok := m[n]; !ok {
			return Target{}, malformed("target: field %q is missing: a signed target needs version, issued, expires and fleet", n)
		}
	}
	t := Target{SHA256: Digest(body)}
	var err error
	if t.Version, err = jsonUint(m["version"], "target: field \"version\""); err != nil {
		return Target{}, err
	}
	if t.Version < 1 {
		return Target{}, malformed("target: field \"version\" is 0: versions start at 1")
	}
	if t.Issued, err = jsonTime(m["issued"], "target: field \"issued\""); err != nil {
		return Target{}, err
	}
	if t.Expires, err = jsonTime(m["expires"], "target: field \"expires\""); err != nil {
		return Target{}, err
	}
	if !t.Expires.After(t.Issued) {
		return Target{}, malformed("target: expires %s is not after issued %s", stamp(t.Expires), stamp(t.Issued))
	}
	if t.Fleet, err = jsonString(m["fleet"], "target: field \"fleet\""); err != nil {
		return Target{}, err
	}
	if err := checkName(t.Fleet, "target: field \"fleet\""); err != nil {
		return Target{}, err
	}
	if raw, ok := m["device"]; ok {
		if t.Device, err = jsonString(raw, "target: field \"device\""); err != nil {
			return Target{}, err
		}
		if err := checkName(t.Device, "target: field \"device\""); err != nil {
			return Target{}, err
		}
	}
	return t, nil
}

// Result is an accepted target: what it says, who signed it, and the State
// to persist with it.
type Result struct {
	State  State // the new State; the one given to Verify is unchanged
	Target Target
	// Root is the trusted root after the bundle's roots were applied.
	Root Root
	// RootsApplied is how many of the bundle's roots were new.
	RootsApplied int
	// Signers are the key ids that counted towards the targets threshold.
	Signers []string
}

// Verify decides whether body, a target state's exact bytes, may be
// accepted with bundle, given what the device remembers (state), the time
// now and the device's id ("" when it has none). On success it returns the
// State to persist with the target. A re-delivery of the accepted target
// returns ErrAlreadyAccepted with a valid Result (whose State holds any root
// the bundle rotated in); every other error is a refusal and the State
// given stays the one to keep.
func Verify(state State, body []byte, bundle Bundle, now time.Time, deviceID string) (Result, error) {
	trusted, err := state.TrustedRoot()
	if err != nil {
		return Result{}, err
	}
	// The clock never runs backwards past what was accepted (TUF's fixed
	// update start time, with a floor).
	ref := now
	if state.LastIssued.After(ref) {
		ref = state.LastIssued
	}
	if len(bundle.Roots) > MaxRoots {
		return Result{}, malformed("signature bundle: %d roots, more than %d", len(bundle.Roots), MaxRoots)
	}
	next := state
	revoked := map[string]uint64{} // targets key id -> root version that dropped it
	applied := 0
	for _, nr := range bundle.Roots {
		if nr.Root.Version <= trusted.Root.Version {
			continue // an old root, or a replay of one: nothing to learn
		}
		if nr.Root.Version != trusted.Root.Version+1 {
			return Result{}, refuse(ErrRootVersion, "root version %d does not follow the trusted version %d: roots are taken one version at a time (ship root %d in the bundle, before it)",
				nr.Root.Version, trusted.Root.Version, trusted.Root.Version+1)
		}
		if nr.Root.Fleet != trusted.Root.Fleet {
			return Result{}, refuse(ErrWrongFleet, "root version %d is for fleet %q, the trusted root for %q: a fleet is never changed by rotation",
				nr.Root.Version, nr.Root.Fleet, trusted.Root.Fleet)
		}
		if _, err := checkThreshold(trusted.Root, trusted.Root.Roles.Root, RootType, nr.Body, nr.Signatures, nil,
			fmt.Sprintf("root version %d, by the root keys of version %d", nr.Root.Version, trusted.Root.Version)); err != nil {
			return Result{}, err
		}
		if _, err := checkThreshold(nr.Root, nr.Root.Roles.Root, RootType, nr.Body, nr.Signatures, nil,
			fmt.Sprintf("root version %d, by its own root keys", nr.Root.Version)); err != nil {
			return Result{}, err
		}
		for _, id := range trusted.Root.Roles.Targets.KeyIDs {
			if !contains(nr.Root.Roles.Targets.KeyIDs, id) {
				revoked[id] = nr.Root.Version
			}
		}
		for _, id := range nr.Root.Roles.Targets.KeyIDs {
			delete(revoked, id)
		}
		// When every targets key is replaced, nothing signed before can
		// pass any more: the version count starts again, so that a
		// mistaken huge version can be recovered from (TUF 5.3.11). A
		// rotation that keeps one old targets key keeps the count, or that
		// key could replay its old documents.
		if disjoint(trusted.Root.Roles.Targets.KeyIDs, nr.Root.Roles.Targets.KeyIDs) {
			next.TargetVersion, next.TargetSHA256, next.TargetExpires, next.TargetAccepted = 0, "", time.Time{}, time.Time{}
		}
		trusted = nr
		applied++
	}
	if !trusted.Root.Expires.After(ref) {
		return Result{}, refuse(ErrExpired, "root version %d of fleet %q expired on %s (the clock reads %s): refusing every target until a newer root is shipped in the bundle (a freeze)",
			trusted.Root.Version, trusted.Root.Fleet, stamp(trusted.Root.Expires), stamp(ref))
	}
	signers, err := checkThreshold(trusted.Root, trusted.Root.Roles.Targets, TargetType, body, bundle.Signatures, revoked,
		fmt.Sprintf("target, by the targets keys of root version %d", trusted.Root.Version))
	if err != nil {
		return Result{}, err
	}
	t, err := ParseTarget(body)
	if err != nil {
		return Result{}, err
	}
	if t.Fleet != trusted.Root.Fleet {
		return Result{}, refuse(ErrWrongFleet, "target is for fleet %q, this device trusts fleet %q", t.Fleet, trusted.Root.Fleet)
	}
	if t.Device != "" && t.Device != deviceID {
		if deviceID == "" {
			return Result{}, refuse(ErrWrongDevice, "target is for device %q and this device has no id: give it --device-id", t.Device)
		}
		return Result{}, refuse(ErrWrongDevice, "target is for device %q, this is device %q", t.Device, deviceID)
	}
	env, err := json.Marshal(trusted)
	if err != nil {
		return Result{}, fmt.Errorf("encode root: %w", err)
	}
	next.Root, next.RootVersion = env, trusted.Root.Version
	res := Result{State: next, Target: t, Root: trusted.Root, RootsApplied: applied, Signers: signers}
	switch {
	case t.Version < next.TargetVersion:
		return Result{}, refuse(ErrRollback, "target version %d is older than %d, accepted %s: refusing a rollback (a deliberate downgrade is a new, higher version naming the old release)",
			t.Version, next.TargetVersion, acceptedOn(next.TargetAccepted))
	case t.Version == next.TargetVersion && t.SHA256 != next.TargetSHA256:
		return Result{}, refuse(ErrSameVersion, "target version %d has other content (sha256 %s) than the version %d accepted before (sha256 %s): every change needs a higher version",
			t.Version, t.SHA256, t.Version, next.TargetSHA256)
	case t.Version == next.TargetVersion:
		return res, refuse(ErrAlreadyAccepted, "target version %d (sha256 %s) is the one already accepted", t.Version, t.SHA256)
	}
	if !t.Expires.After(ref) {
		return Result{}, refuse(ErrExpired, "target version %d expired on %s (the clock reads %s): refusing a stale target (a freeze); publish a fresh one",
			t.Version, stamp(t.Expires), stamp(ref))
	}
	res.State.TargetVersion, res.State.TargetSHA256, res.State.TargetExpires = t.Version, t.SHA256, t.Expires
	res.State.TargetAccepted = now.UTC()
	if t.Issued.After(res.State.LastIssued) {
		res.State.LastIssued = t.Issued
	}
	return res, nil
}

// checkThreshold counts the distinct keys of role whose signature over
// PAE(typ, body) verifies, and refuses fewer than the role's threshold. A
// key id counts once however often it signs; a key outside the role counts
// for nothing. what names the document and the role for the message.
func checkThreshold(r Root, role Role, typ string, body []byte, sigs []Signature, revoked map[string]uint64, what string) ([]string, error) {
	if len(sigs) > MaxSignatures {
		return nil, malformed("%s: %d signatures, more than %d", what, len(sigs), MaxSignatures)
	}
	msg := PAE(typ, body)
	var counted, bad, outside []string
	for _, s := range sigs {
		if contains(counted, s.KeyID) {
			continue
		}
		if !contains(role.KeyIDs, s.KeyID) {
			if !contains(outside, s.KeyID) {
				outside = append(outside, s.KeyID)
			}
			continue
		}
		if ed25519.Verify(r.Keys[s.KeyID], msg, s.Sig) {
			counted = append(counted, s.KeyID)
		} else if !contains(bad, s.KeyID) {
			bad = append(bad, s.KeyID)
		}
	}
	if len(counted) >= role.Threshold {
		return counted[:len(counted):len(counted)], nil
	}
	var why []string
	kinds := []error{ErrThreshold}
	for _, id := range outside {
		switch v, ok := revoked[id]; {
		case ok:
			why = append(why, fmt.Sprintf("key %s was revoked by root version %d", short8(id), v))
		case r.Keys[id] != nil:
			why = append(why, fmt.Sprintf("key %s is not a key of this role", short8(id)))
		default:
			why = append(why, fmt.Sprintf("key %s is unknown", short8(id)))
		}
	}
	if len(outside) > 0 {
		kinds = append(kinds, ErrUnknownKey)
	}
	for _, id := range bad {
		if !contains(counted, id) {
			why = append(why, fmt.Sprintf("the signature of key %s does not verify (another document, or another kind of document)", short8(id)))
		}
	}
	if len(sigs) == 0 {
		why = append(why, "there is no signature")
	}
	return nil, &refusal{kinds: kinds, err: fmt.Errorf("%s: %d valid signature(s) of distinct keys, the threshold is %d of %d keys (%s)",
		what, len(counted), role.Threshold, len(role.KeyIDs), strings.Join(why, "; "))}
}

func disjoint(a, b []string) bool {
	for _, x := range a {
		if contains(b, x) {
			return false
		}
	}
	return true
}

// short8 shortens a key id for messages, as git shortens a commit.
func short8(id string) string {
	if len(id) > 16 {
		return id[:16]
	}
	return id
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func acceptedOn(t time.Time) string {
	if t.IsZero() {
		return "before"
	}
	return "on " + t.UTC().Format("2006-01-02")
}

// Signers returns the distinct key ids of role whose signature in sigs is
// valid over PAE(typ, body): what counts towards the role's threshold.
func (r Root) Signers(role Role, typ string, body []byte, sigs []Signature) []string {
	msg := PAE(typ, body)
	var ids []string
	for _, s := range sigs {
		if contains(ids, s.KeyID) || !contains(role.KeyIDs, s.KeyID) {
			continue
		}
		if ed25519.Verify(r.Keys[s.KeyID], msg, s.Sig) {
			ids = append(ids, s.KeyID)
		}
	}
	return ids
}

// Provision merges the provisioned root file (--trust-root) into the State
// read from the journal. The journal wins when its root is as new as the
// file's or newer (rotations arrive in bundles and outlive the file); a
// newer file replaces the trusted root and keeps every counter, so that
// re-provisioning never reopens a rollback. A file for another fleet than
// the journal's root is refused: a device changes fleet only by a reset of
// its trust state.
func Provision(s State, root []byte) (State, error) {
	file, err := NewState(root)
	if err != nil {
		return State{}, err
	}
	if len(s.Root) == 0 {
		next := s
		next.Root, next.RootVersion = file.Root, file.RootVersion
		return next, nil
	}
	cur, err := s.TrustedRoot()
	if err != nil {
		return State{}, err
	}
	fr, err := file.TrustedRoot()
	if err != nil {
		return State{}, err
	}
	if fr.Root.Fleet != cur.Root.Fleet {
		return State{}, refuse(ErrWrongFleet, "provisioned root is for fleet %q, the trusted root (version %d) for %q: reset the device's trust state to change its fleet",
			fr.Root.Fleet, cur.Root.Version, cur.Root.Fleet)
	}
	if fr.Root.Version <= cur.Root.Version {
		return s, nil
	}
	next := s
	next.Root, next.RootVersion = file.Root, file.RootVersion
	return next, nil
}
