package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"
)

func FuzzParseRoot(f *testing.F) {
	sr := root1(f)
	f.Add(envelope(f, sr))
	unsigned := sr
	unsigned.Signatures = nil
	f.Add(envelope(f, unsigned))
	f.Add(wrap(string(sr.Body)+" ", nil))
	f.Add([]byte(`{"signed":"e30=","signatures":[]}`))
	f.Add([]byte(`{"signed":"","signatures":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseRoot(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseRoot error %v is not ErrMalformed", err)
			}
			if !reflect.DeepEqual(got, SignedRoot{}) {
				t.Fatalf("ParseRoot refused (%v) but returned %+v", err, got)
			}
			return
		}
		enc, err := json.Marshal(got)
		if err != nil {
			t.Fatalf("encode a parsed root: %v", err)
		}
		again, err := ParseRoot(enc)
		if err != nil {
			t.Fatalf("a parsed root, encoded again, does not parse: %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(again, got) {
			t.Fatalf("root changed through encode and parse:\n got %+v\nwant %+v", again, got)
		}
		if enc2, _ := json.Marshal(again); !bytes.Equal(enc2, enc) {
			t.Fatalf("encoding is not stable:\n%s\n%s", enc, enc2)
		}
		body, err := ParseRootBody(got.Root.Body())
		if err != nil || !reflect.DeepEqual(body, got.Root) {
			t.Fatalf("root body changed through Body and ParseRootBody: %+v, %v", body, err)
		}
	})
}

func FuzzParseBundle(f *testing.F) {
	body := doc(1, "a")
	bd := signT(f, body, []SignedRoot{root1(f)}, t1, t2)
	js, _ := json.Marshal(bd)
	f.Add(js)
	f.Add([]byte(base64.StdEncoding.EncodeToString(js)))
	f.Add([]byte(`{"signatures":[]}`))
	f.Add([]byte(`{"signatures":[],"roots":[]}`))
	f.Add([]byte(base64.StdEncoding.EncodeToString(make([]byte, 64))))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseBundle(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseBundle error %v is not ErrMalformed", err)
			}
			if !reflect.DeepEqual(got, Bundle{}) {
				t.Fatalf("ParseBundle refused (%v) but returned %+v", err, got)
			}
			return
		}
		enc, err := json.Marshal(got)
		if err != nil {
			t.Fatalf("encode a parsed bundle: %v", err)
		}
		again, err := ParseBundle(enc)
		if err != nil {
			t.Fatalf("a parsed bundle, encoded again, does not parse: %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(again, got) {
			t.Fatalf("bundle changed through encode and parse:\n got %+v\nwant %+v", again, got)
		}
		header, err := ParseBundle([]byte(base64.StdEncoding.EncodeToString(enc)))
		if err != nil || !reflect.DeepEqual(header, got) {
			t.Fatalf("the header form of a bundle parses otherwise: %+v, %v", header, err)
		}
	})
}

// FuzzVerify: whatever the document and bundle, Verify never panics and
// never accepts without a threshold of valid signatures of targets keys.
func FuzzVerify(f *testing.F) {
	st := stateOf(f, root1(f))
	body := doc(3, "a")
	js, _ := json.Marshal(signT(f, body, nil, t1))
	f.Add(body, js)
	v2 := rotation2(f)
	js2, _ := json.Marshal(signT(f, body, []SignedRoot{v2}, t3))
	f.Add(body, js2)
	f.Add([]byte(`{}`), []byte(`{"signatures":[]}`))
	f.Fuzz(func(t *testing.T, body, sig []byte) {
		bd, err := ParseBundle(sig)
		if err != nil {
			return
		}
		res, err := Verify(st, body, bd, t0, "")
		if err != nil {
			return
		}
		tr, err := res.State.TrustedRoot()
		if err != nil {
			t.Fatalf("accepted, but the new State's root does not parse: %v", err)
		}
		role := tr.Root.Roles.Targets
		valid := map[string]bool{}
		for _, s := range bd.Signatures {
			if contains(role.KeyIDs, s.KeyID) && ed25519.Verify(tr.Root.Keys[s.KeyID], PAE(TargetType, body), s.Sig) {
				valid[s.KeyID] = true
			}
		}
		if len(valid) < role.Threshold {
			t.Fatalf("accepted with %d valid targets keys, threshold %d", len(valid), role.Threshold)
		}
		if res.Target.Expires.Before(t0) || res.Target.Fleet != tr.Root.Fleet {
			t.Fatalf("accepted an expired or foreign target: %+v", res.Target)
		}
	})
}

func rotation2(t testing.TB) SignedRoot {
	return makeRoot(t, rootSpec{version: 2, expires: t0.Add(time.Hour), rootKeys: []ed25519.PrivateKey{n1, n2, r1}, rootTh: 2,
		targetKeys: []ed25519.PrivateKey{t3}, targetTh: 1, signedBy: []ed25519.PrivateKey{r1, r2, n1}})
}

func FuzzParseTarget(f *testing.F) {
	f.Add(doc(1, "a"))
	f.Add(targetDoc(9, t0, t0.Add(time.Hour), "kiosk-prod", "board-a", "b"))
	f.Add([]byte(`{"version":1,"Version":2}`))
	f.Add([]byte(`{"version":1,"vers\u0069on":2,"issued":"2026-12-01T00:00:00Z","expires":"2026-12-02T00:00:00Z","fleet":"f"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := ParseTarget(body)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseTarget error %v is not ErrMalformed", err)
			}
			if !reflect.DeepEqual(got, Target{}) {
				t.Fatalf("ParseTarget refused (%v) but returned %+v", err, got)
			}
			return
		}
		if got.Version < 1 || !got.Expires.After(got.Issued) || got.Fleet == "" || got.SHA256 != Digest(body) {
			t.Fatalf("ParseTarget accepted %q as %+v", body, got)
		}
		// What encoding/json reads of the same fields agrees: no duplicate
		// or case-folded name can make two readers disagree.
		var std struct {
			Version uint64 `json:"version"`
			Fleet   string `json:"fleet"`
			Device  string `json:"device"`
		}
		if err := json.Unmarshal(body, &std); err != nil || std.Version != got.Version || std.Fleet != got.Fleet || std.Device != got.Device {
			t.Fatalf("encoding/json reads %+v (%v) where ParseTarget reads %+v", std, err, got)
		}
	})
}
