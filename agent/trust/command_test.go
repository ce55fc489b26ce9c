package trust

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"testing"
	"time"
)

func cmdBody(device string, expires time.Time) []byte {
	return fmt.Appendf(nil, `{"id":"c1","action":"update","force":true,"device":%q,"expires":%q}`, device, expires.UTC().Format(time.RFC3339))
}

func signC(t *testing.T, body []byte, keys ...ed25519.PrivateKey) Bundle {
	t.Helper()
	var b Bundle
	for _, k := range keys {
		var err error
		if b, err = SignCommand(b, body, k); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// A command needs a threshold of distinct targets keys over PAE(CommandType, body), names
// its device and an unexpired time; a target signature over the same bytes does not pass, a
// command signature does not pass for a target.
func TestVerifyCommand(t *testing.T) {
	ka, kb, kc, kroot := key("a"), key("b"), key("c"), key("root")
	sr := makeRoot(t, rootSpec{version: 1, rootKeys: []ed25519.PrivateKey{kroot}, rootTh: 1,
		targetKeys: []ed25519.PrivateKey{ka, kb}, targetTh: 2, extraKeys: []ed25519.PrivateKey{kc}, signedBy: []ed25519.PrivateKey{kroot}})
	st := stateOf(t, sr)
	body := cmdBody("d1", t0.Add(10*time.Minute))

	if err := VerifyCommand(st, body, signC(t, body, ka, kb), t0); err != nil {
		t.Fatalf("two targets keys: %v", err)
	}
	asTarget := Bundle{Signatures: []Signature{
		{KeyID: id(ka), Sig: ed25519.Sign(ka, PAE(TargetType, body))},
		{KeyID: id(kb), Sig: ed25519.Sign(kb, PAE(TargetType, body))},
	}}
	asRoot := Bundle{Signatures: []Signature{
		{KeyID: id(ka), Sig: ed25519.Sign(ka, PAE(RootType, body))},
		{KeyID: id(kb), Sig: ed25519.Sign(kb, PAE(RootType, body))},
	}}
	other := cmdBody("d1", t0.Add(11*time.Minute))
	for _, c := range []struct {
		name string
		body []byte
		b    Bundle
		now  time.Time
		st   State
		want error
	}{
		{"one key of two", body, signC(t, body, ka), t0, st, ErrThreshold},
		{"the same key twice", body, Bundle{Signatures: append(signC(t, body, ka).Signatures, signC(t, body, ka).Signatures...)}, t0, st, ErrThreshold},
		{"a key outside the targets role", body, signC(t, body, ka, kc), t0, st, ErrThreshold},
		{"the root key", body, signC(t, body, ka, kroot), t0, st, ErrThreshold},
		{"target signatures over the command", body, asTarget, t0, st, ErrThreshold},
		{"root signatures over the command", body, asRoot, t0, st, ErrThreshold},
		{"signatures of another command", body, signC(t, other, ka, kb), t0, st, ErrThreshold},
		{"unsigned", body, Bundle{}, t0, st, ErrThreshold},
		{"expired", body, signC(t, body, ka, kb), t0.Add(10 * time.Minute), st, ErrExpired},
		{"expired by the clock floor", body, signC(t, body, ka, kb), t0, State{Root: st.Root, RootVersion: 1, LastIssued: t0.Add(time.Hour)}, ErrExpired},
		{"no device", []byte(`{"id":"c1","action":"update","expires":"2026-12-01T12:10:00Z"}`), Bundle{}, t0, st, ErrThreshold},
		{"no trusted root", body, signC(t, body, ka, kb), t0, State{}, ErrNoRoot},
	} {
		err := VerifyCommand(c.st, c.body, c.b, c.now)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: VerifyCommand = %v, want %v", c.name, err, c.want)
		}
	}
	// the body's own fields, validly signed
	for _, c := range []struct {
		name string
		body []byte
		want error
	}{
		{"no device", []byte(`{"id":"c1","action":"update","expires":"2026-12-01T12:10:00Z"}`), ErrMalformed},
		{"no expiry", []byte(`{"id":"c1","action":"update","device":"d1"}`), ErrMalformed},
		{"a bad expiry", []byte(`{"id":"c1","action":"update","device":"d1","expires":"tomorrow"}`), ErrMalformed},
		{"not an object", []byte(`["d1"]`), ErrMalformed},
	} {
		err := VerifyCommand(st, c.body, signC(t, c.body, ka, kb), t0)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: VerifyCommand = %v, want %v", c.name, err, c.want)
		}
	}

	// a command signature never passes for a target (the same bytes signed as a command)
	tdoc := targetDoc(1, t0.Add(-time.Minute), t0.Add(time.Hour), "kiosk-prod", "", "r1")
	if _, err := Verify(st, tdoc, signC(t, tdoc, ka, kb), t0, ""); !errors.Is(err, ErrThreshold) {
		t.Errorf("Verify of a target with command signatures = %v, want ErrThreshold", err)
	}
	if _, err := Verify(st, tdoc, signT(t, tdoc, nil, ka, kb), t0, ""); err != nil {
		t.Errorf("Verify of the same target signed as a target: %v", err)
	}
}

func TestVerifyCommandKey(t *testing.T) {
	k, other := key("a"), key("b")
	body := cmdBody("d1", t0.Add(time.Minute))
	if err := VerifyCommandKey(pub(k), body, signC(t, body, other, k), t0); err != nil {
		t.Fatalf("signed by the key: %v", err)
	}
	asTarget := Bundle{Signatures: []Signature{{KeyID: id(k), Sig: ed25519.Sign(k, PAE(TargetType, body))}}}
	for name, b := range map[string]Bundle{"another key": signC(t, body, other), "a target signature": asTarget, "none": {}} {
		if err := VerifyCommandKey(pub(k), body, b, t0); !errors.Is(err, ErrThreshold) {
			t.Errorf("%s: VerifyCommandKey = %v, want ErrThreshold", name, err)
		}
	}
	if err := VerifyCommandKey(pub(k), body, signC(t, body, k), t0.Add(time.Hour)); !errors.Is(err, ErrExpired) {
		t.Errorf("expired: VerifyCommandKey = %v, want ErrExpired", err)
	}
}
