package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"
)

// Root is the body of a root: the fleet's keys and who may sign what, until
// Expires.
type Root struct {
	Version uint64
	Expires time.Time
	Fleet   string
	// Keys maps each key's id (KeyID) to the key.
	Keys  map[string]ed25519.PublicKey
	Roles Roles
}

// Roles are the two roles of a root.
type Roles struct {
	Root    Role // signs the next root
	Targets Role // signs target states
}

// Role is a set of keys and how many of them must sign.
type Role struct {
	KeyIDs    []string
	Threshold int
}

// SignedRoot is a root envelope, the form of root.json and of a bundle's
// roots: the exact signed body, its parsed form and its signatures.
type SignedRoot struct {
	Body       []byte // the exact bytes the signatures cover
	Root       Root   // Body, parsed
	Signatures []Signature
}

// ParseRoot parses a root envelope, {"signed": base64(body), "signatures":
// [...]}, and the root body inside it. Signatures are parsed, not checked.
func ParseRoot(b []byte) (SignedRoot, error) {
	if len(b) > MaxBundleSize {
		return SignedRoot{}, malformed("root: %d bytes, more than the %d a root may have", len(b), MaxBundleSize)
	}
	if err := checkJSON(b, "root"); err != nil {
		return SignedRoot{}, err
	}
	return parseEnvelope(b, "root")
}

func parseEnvelope(raw json.RawMessage, where string) (SignedRoot, error) {
	m, err := object(raw, where, []string{"signed", "signatures"}, nil)
	if err != nil {
		return SignedRoot{}, err
	}
	s, err := jsonString(m["signed"], where+".signed")
	if err != nil {
		return SignedRoot{}, err
	}
	body, ok := decodeB64(s)
	if !ok {
		return SignedRoot{}, malformed("%s.signed: not standard base64 (the root body, encoded)", where)
	}
	r, err := parseRootBody(body, where+".signed")
	if err != nil {
		return SignedRoot{}, err
	}
	sigs, err := parseSignatures(m["signatures"], where+".signatures")
	if err != nil {
		return SignedRoot{}, err
	}
	return SignedRoot{Body: body, Root: r, Signatures: sigs}, nil
}

// ParseRootBody parses the body of a root (what the signatures cover).
func ParseRootBody(body []byte) (Root, error) {
	if len(body) > MaxBundleSize {
		return Root{}, malformed("root body: %d bytes, more than the %d a root may have", len(body), MaxBundleSize)
	}
	return parseRootBody(body, "root body")
}

func parseRootBody(body []byte, where string) (Root, error) {
	if err := checkJSON(body, where); err != nil {
		return Root{}, err
	}
	m, err := object(body, where, []string{"type", "version", "expires", "fleet", "keys", "roles"}, nil)
	if err != nil {
		return Root{}, err
	}
	typ, err := jsonString(m["type"], where+": field \"type\"")
	if err != nil {
		return Root{}, err
	}
	if typ != "root" {
		return Root{}, malformed("%s: field \"type\" is %q, want \"root\"", where, typ)
	}
	var r Root
	if r.Version, err = jsonUint(m["version"], where+": field \"version\""); err != nil {
		return Root{}, err
	}
	if r.Version < 1 {
		return Root{}, malformed("%s: field \"version\" is 0: versions start at 1", where)
	}
	if r.Expires, err = jsonTime(m["expires"], where+": field \"expires\""); err != nil {
		return Root{}, err
	}
	if r.Fleet, err = jsonString(m["fleet"], where+": field \"fleet\""); err != nil {
		return Root{}, err
	}
	if err := checkName(r.Fleet, where+": field \"fleet\""); err != nil {
		return Root{}, err
	}
	if r.Keys, err = parseKeys(m["keys"], where+": field \"keys\""); err != nil {
		return Root{}, err
	}
	rm, err := object(m["roles"], where+": field \"roles\"", []string{"root", "targets"}, nil)
	if err != nil {
		return Root{}, err
	}
	if r.Roles.Root, err = parseRole(rm["root"], where+": field \"roles.root\"", r.Keys); err != nil {
		return Root{}, err
	}
	if r.Roles.Targets, err = parseRole(rm["targets"], where+": field \"roles.targets\"", r.Keys); err != nil {
		return Root{}, err
	}
	return r, nil
}

func parseKeys(raw json.RawMessage, where string) (map[string]ed25519.PublicKey, error) {
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
		return nil, malformed("%s: want a JSON object of key id to base64 key, got %s", where, short(raw))
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, malformed("%s: %w", where, err)
	}
	if len(m) == 0 {
		return nil, malformed("%s: no key: a root needs at least one", where)
	}
	if len(m) > MaxKeys {
		return nil, malformed("%s: %d keys, more than %d", where, len(m), MaxKeys)
	}
	keys := make(map[string]ed25519.PublicKey, len(m))
	for id, v := range m {
		s, err := jsonString(v, fmt.Sprintf("%s[%q]", where, id))
		if err != nil {
			return nil, err
		}
		pub, ok := decodeB64(s)
		if !ok || len(pub) != ed25519.PublicKeySize {
			return nil, malformed("%s[%q]: want the base64 of a 32-byte ed25519 public key", where, id)
		}
		if got := KeyID(pub); got != id {
			return nil, malformed("%s: key id %q does not match its key, whose id is %s", where, id, got)
		}
		keys[id] = ed25519.PublicKey(pub)
	}
	return keys, nil
}

func parseRole(raw json.RawMessage, where string, keys map[string]ed25519.PublicKey) (Role, error) {
	m, err := object(raw, where, []string{"keyids", "threshold"}, nil)
	if err != nil {
		return Role{}, err
	}
	list, err := jsonList(m["keyids"], where+".keyids")
	if err != nil {
		return Role{}, err
	}
	var role Role
	for i, v := range list {
		id, err := jsonString(v, fmt.Sprintf("%s.keyids[%d]", where, i))
		if err != nil {
			return Role{}, err
		}
		if _, ok := keys[id]; !ok {
			return Role{}, malformed("%s.keyids[%d]: %q is not in \"keys\"", where, i, id)
		}
		if contains(role.KeyIDs, id) {
			return Role{}, malformed("%s.keyids: %q is listed twice", where, id)
		}
		role.KeyIDs = append(role.KeyIDs, id)
	}
	th, err := jsonUint(m["threshold"], where+".threshold")
	if err != nil {
		return Role{}, err
	}
	if th < 1 || th > uint64(len(role.KeyIDs)) {
		return Role{}, malformed("%s.threshold: %d, want 1 to %d (the number of its keyids)", where, th, len(role.KeyIDs))
	}
	role.Threshold = int(th)
	return role, nil
}

// Validate checks r as ParseRootBody would, for a root built in code.
func (r Root) Validate() error {
	_, err := ParseRootBody(r.Body())
	return err
}

// Body encodes r as a root body, in a fixed order (keys sorted), ready to
// be signed. Parsing it gives r back.
func (r Root) Body() []byte {
	type wireRole struct {
		KeyIDs    []string `json:"keyids"`
		Threshold int      `json:"threshold"`
	}
	role := func(r Role) wireRole {
		ids := r.KeyIDs
		if ids == nil {
			ids = []string{}
		}
		return wireRole{ids, r.Threshold}
	}
	keys := make(map[string]string, len(r.Keys))
	for id, k := range r.Keys {
		keys[id] = base64.StdEncoding.EncodeToString(k)
	}
	w := struct {
		Type    string            `json:"type"`
		Version uint64            `json:"version"`
		Expires string            `json:"expires"`
		Fleet   string            `json:"fleet"`
		Keys    map[string]string `json:"keys"`
		Roles   struct {
			Root    wireRole `json:"root"`
			Targets wireRole `json:"targets"`
		} `json:"roles"`
	}{Type: "root", Version: r.Version, Expires: r.Expires.UTC().Format(time.RFC3339Nano), Fleet: r.Fleet, Keys: keys}
	w.Roles.Root, w.Roles.Targets = role(r.Roles.Root), role(r.Roles.Targets)
	b, err := json.Marshal(w)
	if err != nil {
		panic(err) // strings, numbers and maps of strings always encode
	}
	return b
}

// NewSignedRoot wraps r, unsigned: the form `latch root init` writes.
func NewSignedRoot(r Root) (SignedRoot, error) {
	body := r.Body()
	parsed, err := ParseRootBody(body)
	if err != nil {
		return SignedRoot{}, err
	}
	return SignedRoot{Body: body, Root: parsed}, nil
}

// MarshalJSON encodes the envelope: {"signed": base64(Body), "signatures": [...]}.
func (s SignedRoot) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Signed     string      `json:"signed"`
		Signatures []Signature `json:"signatures"`
	}{base64.StdEncoding.EncodeToString(s.Body), nonNil(s.Signatures)})
}

// KeysOf returns the keys of role, in its order.
func (r Root) KeysOf(role Role) []ed25519.PublicKey {
	out := make([]ed25519.PublicKey, 0, len(role.KeyIDs))
	for _, id := range role.KeyIDs {
		out = append(out, r.Keys[id])
	}
	return out
}
