package trust

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// t0 is the fixed "now" of the tests.
var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// key returns a deterministic key pair named name.
func key(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("latch trust test key " + name))
	return ed25519.NewKeyFromSeed(seed[:])
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

func id(k ed25519.PrivateKey) string { return KeyID(pub(k)) }

// rootSpec describes a root for a test.
type rootSpec struct {
	version     uint64
	expires     time.Time
	fleet       string
	rootKeys    []ed25519.PrivateKey
	rootTh      int
	targetKeys  []ed25519.PrivateKey
	targetTh    int
	extraKeys   []ed25519.PrivateKey // in "keys" only
	signedBy    []ed25519.PrivateKey
	signWithTyp string // "" = RootType
}

func makeRoot(t testing.TB, s rootSpec) SignedRoot {
	t.Helper()
	if s.expires.IsZero() {
		s.expires = t0.Add(365 * 24 * time.Hour)
	}
	if s.fleet == "" {
		s.fleet = "kiosk-prod"
	}
	r := Root{Version: s.version, Expires: s.expires, Fleet: s.fleet, Keys: map[string]ed25519.PublicKey{}}
	for _, k := range append(append(append([]ed25519.PrivateKey(nil), s.rootKeys...), s.targetKeys...), s.extraKeys...) {
		r.Keys[id(k)] = pub(k)
	}
	for _, k := range s.rootKeys {
		r.Roles.Root.KeyIDs = append(r.Roles.Root.KeyIDs, id(k))
	}
	for _, k := range s.targetKeys {
		r.Roles.Targets.KeyIDs = append(r.Roles.Targets.KeyIDs, id(k))
	}
	r.Roles.Root.Threshold, r.Roles.Targets.Threshold = s.rootTh, s.targetTh
	sr, err := NewSignedRoot(r)
	if err != nil {
		t.Fatalf("NewSignedRoot: %v", err)
	}
	for _, k := range s.signedBy {
		if s.signWithTyp != "" {
			sr.Signatures = append(sr.Signatures, Signature{KeyID: id(k), Sig: ed25519.Sign(k, PAE(s.signWithTyp, sr.Body))})
			continue
		}
		if sr, err = SignRoot(sr, k); err != nil {
			t.Fatalf("SignRoot: %v", err)
		}
	}
	return sr
}

func envelope(t testing.TB, sr SignedRoot) []byte {
	t.Helper()
	b, err := json.Marshal(sr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func stateOf(t testing.TB, sr SignedRoot) State {
	t.Helper()
	st, err := NewState(envelope(t, sr))
	if err != nil {
		t.Fatalf("NewState: %v", err)
	}
	return st
}

// targetDoc is a target state with the section 10 fields.
func targetDoc(version uint64, issued, expires time.Time, fleet, device, release string) []byte {
	dev := ""
	if device != "" {
		dev = fmt.Sprintf(`,"device":%q`, device)
	}
	return fmt.Appendf(nil, `{"version":%d,"issued":%q,"expires":%q,"fleet":%q%s,"apps":{"kiosk":{"release":%q,"services":{}}}}`,
		version, issued.Format(time.RFC3339), expires.Format(time.RFC3339), fleet, dev, release)
}

func doc(version uint64, release string) []byte {
	return targetDoc(version, t0.Add(-time.Hour), t0.Add(7*24*time.Hour), "kiosk-prod", "", release)
}

func signT(t testing.TB, body []byte, roots []SignedRoot, keys ...ed25519.PrivateKey) Bundle {
	t.Helper()
	b := Bundle{Roots: roots}
	for _, k := range keys {
		var err error
		if b, err = SignTarget(b, body, k); err != nil {
			t.Fatalf("SignTarget: %v", err)
		}
	}
	return b
}
