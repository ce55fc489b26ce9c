package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

var (
	r1, r2, r3 = key("root1"), key("root2"), key("root3")
	t1, t2, t3 = key("targets1"), key("targets2"), key("targets3")
	n1, n2     = key("newroot1"), key("newroot2")
	stranger   = key("stranger")
)

// root1 is the provisioned root: root role 2 of r1..r3, targets 1 of t1, t2.
func root1(t testing.TB) SignedRoot {
	return makeRoot(t, rootSpec{version: 1, rootKeys: []ed25519.PrivateKey{r1, r2, r3}, rootTh: 2,
		targetKeys: []ed25519.PrivateKey{t1, t2}, targetTh: 1, signedBy: []ed25519.PrivateKey{r1, r2}})
}

// accept verifies and fails the test unless it is accepted.
func accept(t *testing.T, st State, body []byte, b Bundle, now time.Time, dev string) State {
	t.Helper()
	res, err := Verify(st, body, b, now, dev)
	if err != nil {
		t.Fatalf("Verify: got %v, want accepted", err)
	}
	return res.State
}

// refused checks that Verify refuses with want, that the message holds each
// of words, and that the state given is left as it was.
func refused(t *testing.T, st State, body []byte, b Bundle, now time.Time, dev string, want error, words ...string) {
	t.Helper()
	before, _ := json.Marshal(st)
	res, err := Verify(st, body, b, now, dev)
	if !errors.Is(err, want) {
		t.Fatalf("Verify: got %v, want %v", err, want)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Verify: error %q does not say %q", err, w)
		}
	}
	if !reflect.DeepEqual(res, Result{}) {
		t.Errorf("Verify refused with %v but returned a result %+v", err, res)
	}
	if after, _ := json.Marshal(st); !bytes.Equal(before, after) {
		t.Errorf("Verify changed the state it was given")
	}
}

func TestVerifyAcceptsAndAdvances(t *testing.T) {
	st := stateOf(t, root1(t))
	body := doc(7, "2026.11.2")
	res, err := Verify(st, body, signT(t, body, nil, t1), t0, "")
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if res.Target.Version != 7 || res.Target.Fleet != "kiosk-prod" || res.State.TargetVersion != 7 ||
		res.State.TargetSHA256 != Digest(body) || !res.State.LastIssued.Equal(t0.Add(-time.Hour)) || res.State.RootVersion != 1 {
		t.Errorf("Verify: got %+v", res)
	}
	if !reflect.DeepEqual(res.Signers, []string{id(t1)}) {
		t.Errorf("Signers: got %v, want [%s]", res.Signers, id(t1))
	}
	if st.TargetVersion != 0 {
		t.Errorf("Verify changed the State it was given")
	}
	// The State survives the journal (JSON) and goes on working.
	enc, _ := json.Marshal(res.State)
	var back State
	if err := json.Unmarshal(enc, &back); err != nil || !reflect.DeepEqual(back, res.State) {
		t.Fatalf("State through JSON: got %+v, %v, want %+v", back, err, res.State)
	}
	refused(t, back, doc(6, "old"), signT(t, doc(6, "old"), nil, t1), t0, "", ErrRollback)
}

func TestReplayOfOlderVersion(t *testing.T) {
	st := stateOf(t, root1(t))
	v41, v42 := doc(41, "a"), doc(42, "b")
	b41 := signT(t, v41, nil, t1)
	st = accept(t, st, v41, b41, t0, "")
	st = accept(t, st, v42, signT(t, v42, nil, t1), t0, "")
	refused(t, st, v41, b41, t0, "", ErrRollback, "target version 41 is older than 42, accepted on 2026-12-01", "rollback")
}

func TestSameVersionOtherBytes(t *testing.T) {
	st := stateOf(t, root1(t))
	a, b := doc(5, "a"), doc(5, "b")
	st = accept(t, st, a, signT(t, a, nil, t1), t0, "")
	refused(t, st, b, signT(t, b, nil, t1), t0, "", ErrSameVersion, "version 5", "other content")
}

func TestSameVersionSameBytesIsAlreadyAccepted(t *testing.T) {
	st := stateOf(t, root1(t))
	a := doc(5, "a")
	bd := signT(t, a, nil, t1)
	st = accept(t, st, a, bd, t0, "")
	res, err := Verify(st, a, bd, t0.Add(time.Minute), "")
	if !errors.Is(err, ErrAlreadyAccepted) {
		t.Fatalf("Verify of the accepted target again: got %v, want ErrAlreadyAccepted", err)
	}
	for _, attack := range []error{ErrRollback, ErrSameVersion, ErrThreshold, ErrExpired} {
		if errors.Is(err, attack) {
			t.Errorf("a re-poll matches %v", attack)
		}
	}
	if !reflect.DeepEqual(res.State, st) {
		t.Errorf("re-poll: State got %+v, want unchanged %+v", res.State, st)
	}
}

func TestExpiredTarget(t *testing.T) {
	st := stateOf(t, root1(t))
	body := targetDoc(3, t0.Add(-48*time.Hour), t0.Add(-time.Second), "kiosk-prod", "", "a")
	refused(t, st, body, signT(t, body, nil, t1), t0, "", ErrExpired, "target version 3 expired on")
	// Expiry at exactly now is expired.
	body = targetDoc(3, t0.Add(-48*time.Hour), t0, "kiosk-prod", "", "a")
	refused(t, st, body, signT(t, body, nil, t1), t0, "", ErrExpired)
}

func TestExpiredRoot(t *testing.T) {
	old := makeRoot(t, rootSpec{version: 1, expires: t0.Add(-time.Hour), rootKeys: []ed25519.PrivateKey{r1}, rootTh: 1,
		targetKeys: []ed25519.PrivateKey{t1}, targetTh: 1, signedBy: []ed25519.PrivateKey{r1}})
	st := stateOf(t, old) // provisioning an expired root is allowed: Verify says why
	body := doc(1, "a")
	refused(t, st, body, signT(t, body, nil, t1), t0, "", ErrExpired, "root version 1", "expired")

	// A newer root in the bundle lifts the freeze.
	v2 := makeRoot(t, rootSpec{version: 2, rootKeys: []ed25519.PrivateKey{r1}, rootTh: 1,
		targetKeys: []ed25519.PrivateKey{t1}, targetTh: 1, signedBy: []ed25519.PrivateKey{r1}})
	accept(t, st, body, signT(t, body, []SignedRoot{v2}, t1), t0, "")

	// The final root counts, intermediate ones do not: v2 expired, v3 fresh.
	v2x := makeRoot(t, rootSpec{version: 2, expires: t0.Add(-time.Minute), rootKeys: []ed25519.PrivateKey{r1}, rootTh: 1,
		targetKeys: []ed25519.PrivateKey{t1}, targetTh: 1, signedBy: []ed25519.PrivateKey{r1}})
	v3 := makeRoot(t, rootSpec{version: 3, rootKeys: []ed25519.PrivateKey{r1}, rootTh: 1,
		targetKeys: []ed25519.PrivateKey{t1}, targetTh: 1, signedBy: []ed25519.PrivateKey{r1}})
	st3 := accept(t, st, body, signT(t, body, []SignedRoot{v2x, v3}, t1), t0, "")
	if st3.RootVersion != 3 {
		t.Errorf("after [v2 expired, v3]: root version %d, want 3", st3.RootVersion)
	}
	refused(t, st, body, signT(t, body, []SignedRoot{v2x}, t1), t0, "", ErrExpired, "root version 2")
}

func TestClockSetBack(t *testing.T) {
	st := stateOf(t, root1(t))
	issued := t0
	first := targetDoc(1, issued, issued.Add(24*time.Hour), "kiosk-prod", "", "a")
	st = accept(t, st, first, signT(t, first, nil, t1), t0.Add(time.Minute), "")
	if !st.LastIssued.Equal(issued) {
		t.Fatalf("LastIssued: got %v, want %v", st.LastIssued, issued)
	}
	// A document that expired before the last issued time, delivered to a
	// device whose clock was set back a day (it would look fresh then).
	stale := targetDoc(2, issued.Add(-3*time.Hour), issued.Add(-time.Hour), "kiosk-prod", "", "b")
	back := issued.Add(-24 * time.Hour)
	refused(t, st, stale, signT(t, stale, nil, t1), back, "", ErrExpired, "the clock reads "+stamp(issued))
	// The same device with a clock at 1970.
	refused(t, st, stale, signT(t, stale, nil, t1), time.Unix(0, 0), "", ErrExpired)
	// And the floor is only a floor: a fresh document at the set-back clock passes.
	ok := targetDoc(3, back, issued.Add(time.Hour), "kiosk-prod", "", "c")
	accept(t, st, ok, signT(t, ok, nil, t1), back, "")
}

func TestUnknownKey(t *testing.T) {
	st := stateOf(t, root1(t))
	body := doc(1, "a")
	refused(t, st, body, signT(t, body, nil, stranger), t0, "", ErrUnknownKey, "unknown", id(stranger)[:16])
	refused(t, st, body, signT(t, body, nil, stranger), t0, "", ErrThreshold)
	// A root key is not a targets key.
	refused(t, st, body, signT(t, body, nil, r1), t0, "", ErrUnknownKey, "not a key of this role")
	// An unknown key next to a valid one does not hurt.
	accept(t, st, body, signT(t, body, nil, stranger, t1), t0, "")
}

func TestOneKeyTwiceAgainstThreshold2(t *testing.T) {
	r := makeRoot(t, rootSpec{version: 1, rootKeys: []ed25519.PrivateKey{r1}, rootTh: 1,
		targetKeys: []ed25519.PrivateKey{t1, t2, t3}, targetTh: 2, signedBy: []ed25519.PrivateKey{r1}})
	st := stateOf(t, r)
	body := doc(1, "a")
	one := signT(t, body, nil, t1)
	twice := Bundle{Signatures: []Signature{one.Signatures[0], one.Signatures[0]}}
	refused(t, st, body, twice, t0, "", ErrThreshold, "1 valid signature(s)", "threshold is 2")
	// A malformed signature next to a valid one counts for nothing.
	bad := Signature{KeyID: id(t2), Sig: make([]byte, 64)}
	refused(t, st, body, Bundle{Signatures: []Signature{bad, one.Signatures[0]}}, t0, "", ErrThreshold, "does not verify")
	accept(t, st, body, signT(t, body, nil, t1, t3), t0, "")
	// SignTarget refuses to sign twice with one key.
	if _, err := SignTarget(one, body, t1); !errors.Is(err, ErrAlreadySigned) {
		t.Errorf("SignTarget twice: got %v, want ErrAlreadySigned", err)
	}
}

func TestRootSkippingAVersion(t *testing.T) {
	st := stateOf(t, root1(t))
	v3 := makeRoot(t, rootSpec{version: 3, rootKeys: []ed25519.PrivateKey{r1, r2, r3}, rootTh: 2,
		targetKeys: []ed25519.PrivateKey{t1}, targetTh: 1, signedBy: []ed25519.PrivateKey{r1, r2}})
	body := doc(1, "a")
	refused(t, st, body, signT(t, body, []SignedRoot{v3}, t1), t0, "", ErrRootVersion, "root version 3 does not follow the trusted version 1", "ship root 2")
}

func TestTypeConfusion(t *testing.T) {
	// k signs for both roles: a root signature must not pass for a target one.
	k := key("both")
	r := makeRoot(t, rootSpec{version: 1, rootKeys: []ed25519.PrivateKey{k}, rootTh: 1,
		targetKeys: []ed25519.PrivateKey{k}, targetTh: 1, signedBy: []ed25519.PrivateKey{k}})
	st := stateOf(t, r)
	body := doc(1, "a")
	asRoot := Bundle{Signatures: []Signature{{KeyID: id(k), Sig: ed25519.Sign(k, PAE(RootType, body))}}}
	refused(t, st, body, asRoot, t0, "", ErrThreshold, "does not verify")
	// The legacy form, a signature over the bare bytes, is not a PAE signature.
	bare := Bundle{Signatures: []Signature{{KeyID: id(k), Sig: ed25519.Sign(k, body)}}}
	refused(t, st, body, bare, t0, "", ErrThreshold)
	// And a root signed with the target type does not rotate.
	v2 := makeRoot(t, rootSpec{version: 2, rootKeys: []ed25519.PrivateKey{k}, rootTh: 1,
		targetKeys: []ed25519.PrivateKey{k}, targetTh: 1, signedBy: []ed25519.PrivateKey{k}, signWithTyp: TargetType})
	refused(t, st, body, signT(t, body, []SignedRoot{v2}, k), t0, "", ErrThreshold, "root version 2")
	accept(t, st, body, signT(t, body, nil, k), t0, "")
}

func TestOtherFleetOrDevice(t *testing.T) {
	st := stateOf(t, root1(t))
	other := targetDoc(1, t0.Add(-time.Hour), t0.Add(time.Hour), "kiosk-staging", "", "a")
	refused(t, st, other, signT(t, other, nil, t1), t0, "", ErrWrongFleet, `"kiosk-staging"`, `"kiosk-prod"`)
	forA := targetDoc(1, t0.Add(-time.Hour), t0.Add(time.Hour), "kiosk-prod", "board-a", "a")
	bd := signT(t, forA, nil, t1)
	refused(t, st, forA, bd, t0, "board-b", ErrWrongDevice, `"board-a"`, `"board-b"`)
	refused(t, st, forA, bd, t0, "", ErrWrongDevice, "--device-id")
	accept(t, st, forA, bd, t0, "board-a")
}

// rotation builds root v2 of root1: root role 2 of n1, n2, r1; targets
// 1 of the given keys, signed by signers.
func rotation(t *testing.T, targets []ed25519.PrivateKey, signers ...ed25519.PrivateKey) SignedRoot {
	return makeRoot(t, rootSpec{version: 2, rootKeys: []ed25519.PrivateKey{n1, n2, r1}, rootTh: 2,
		targetKeys: targets, targetTh: 1, extraKeys: nil, signedBy: signers})
}

func TestRotationToNewTargetsKey(t *testing.T) {
	st := stateOf(t, root1(t))
	v1 := doc(1, "a")
	st = accept(t, st, v1, signT(t, v1, nil, t1), t0, "")

	// Old threshold (r2, r3) and new threshold (n1, n2): accepted.
	v2 := rotation(t, []ed25519.PrivateKey{t3}, r2, r3, n1, n2)
	body := doc(2, "b")
	st2 := accept(t, st, body, signT(t, body, []SignedRoot{v2}, t3), t0, "")
	if st2.RootVersion != 2 {
		t.Fatalf("root version after rotation: got %d, want 2", st2.RootVersion)
	}
	tr, err := st2.TrustedRoot()
	if err != nil || tr.Root.Version != 2 {
		t.Fatalf("TrustedRoot: got %v, %v", tr.Root.Version, err)
	}
	// Then the old targets key is refused, with the new root persisted...
	v3 := doc(3, "c")
	refused(t, st2, v3, signT(t, v3, nil, t1), t0, "", ErrUnknownKey, "unknown")
	// ...and named as revoked when the rotation comes in the same bundle.
	refused(t, st, v3, signT(t, v3, []SignedRoot{v2}, t1), t0, "", ErrUnknownKey, "revoked by root version 2")
	// The new key goes on working, and a replay of root v1 is ignored.
	accept(t, st2, v3, signT(t, v3, []SignedRoot{root1(t), v2}, t3), t0, "")
}

func TestRotationNeedsOldAndNewThresholds(t *testing.T) {
	st := stateOf(t, root1(t))
	body := doc(1, "a")
	for _, tc := range []struct {
		name    string
		signers []ed25519.PrivateKey
		words   string
	}{
		{"new keys only", []ed25519.PrivateKey{n1, n2}, "by the root keys of version 1"},
		{"old keys only", []ed25519.PrivateKey{r2, r3}, "by its own root keys"},
		{"one old key", []ed25519.PrivateKey{r1, n1, n2}, "by the root keys of version 1"},
		{"a stranger", []ed25519.PrivateKey{stranger, r2, n1, n2}, "by the root keys of version 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v2 := rotation(t, []ed25519.PrivateKey{t3}, tc.signers...)
			refused(t, st, body, signT(t, body, []SignedRoot{v2}, t3), t0, "", ErrThreshold, tc.words)
		})
	}
	// r1 is in both: r1+r2 for the old role, r1+n1 for the new.
	v2 := rotation(t, []ed25519.PrivateKey{t3}, r1, r2, n1)
	accept(t, st, body, signT(t, body, []SignedRoot{v2}, t3), t0, "")
}

func TestRotationRefusesFleetChange(t *testing.T) {
	st := stateOf(t, root1(t))
	v2 := makeRoot(t, rootSpec{version: 2, fleet: "other", rootKeys: []ed25519.PrivateKey{r1, r2}, rootTh: 2,
		targetKeys: []ed25519.PrivateKey{t1}, targetTh: 1, signedBy: []ed25519.PrivateKey{r1, r2}})
	body := targetDoc(1, t0.Add(-time.Hour), t0.Add(time.Hour), "other", "", "a")
	refused(t, st, body, signT(t, body, []SignedRoot{v2}, t1), t0, "", ErrWrongFleet, "never changed")
}

func TestRotationResetsVersionOnlyWhenEveryTargetsKeyIsReplaced(t *testing.T) {
	st := stateOf(t, root1(t))
	huge := doc(1_000_000, "a")
	st = accept(t, st, huge, signT(t, huge, nil, t1), t0, "")
	small := doc(1, "b")
	// Keeping t1 keeps the count: t1 could replay what it signed.
	keep := rotation(t, []ed25519.PrivateKey{t1, t3}, r1, r2, n1)
	refused(t, st, small, signT(t, small, []SignedRoot{keep}, t3), t0, "", ErrRollback)
	// Replacing t1 and t2 starts it again.
	replace := rotation(t, []ed25519.PrivateKey{t3}, r1, r2, n1)
	st2 := accept(t, st, small, signT(t, small, []SignedRoot{replace}, t3), t0, "")
	if st2.TargetVersion != 1 || !st2.LastIssued.Equal(st.LastIssued) {
		t.Errorf("after replacing the targets keys: got %+v", st2)
	}
}

func TestMixAndMatch(t *testing.T) {
	st := stateOf(t, root1(t))
	a, b := doc(1, "a"), doc(1, "b")
	refused(t, st, b, signT(t, a, nil, t1), t0, "", ErrThreshold, "does not verify")
	// One byte changed after signing.
	c := bytes.Replace(a, []byte(`"a"`), []byte(`"c"`), 1)
	refused(t, st, c, signT(t, a, nil, t1), t0, "", ErrThreshold)
}

func TestNewStateNeedsASignedRoot(t *testing.T) {
	for _, tc := range []struct {
		name    string
		signers []ed25519.PrivateKey
	}{{"unsigned", nil}, {"below threshold", []ed25519.PrivateKey{r1}}, {"targets key", []ed25519.PrivateKey{t1, t2}}} {
		r := makeRoot(t, rootSpec{version: 1, rootKeys: []ed25519.PrivateKey{r1, r2, r3}, rootTh: 2,
			targetKeys: []ed25519.PrivateKey{t1, t2}, targetTh: 1, signedBy: tc.signers})
		if _, err := NewState(envelope(t, r)); !errors.Is(err, ErrThreshold) {
			t.Errorf("%s: NewState: got %v, want ErrThreshold", tc.name, err)
		}
	}
	if _, err := Verify(State{}, doc(1, "a"), Bundle{}, t0, ""); !errors.Is(err, ErrNoRoot) {
		t.Errorf("Verify with no root: got %v, want ErrNoRoot", err)
	}
}

func TestTargetFieldsAreStrict(t *testing.T) {
	st := stateOf(t, root1(t))
	iss, exp := `"2026-12-01T11:00:00Z"`, `"2026-12-08T00:00:00Z"`
	for _, tc := range []struct{ name, body, words string }{
		{"no version", `{"issued":` + iss + `,"expires":` + exp + `,"fleet":"kiosk-prod"}`, `"version" is missing`},
		{"version 0", `{"version":0,"issued":` + iss + `,"expires":` + exp + `,"fleet":"kiosk-prod"}`, "start at 1"},
		{"version as string", `{"version":"2","issued":` + iss + `,"expires":` + exp + `,"fleet":"kiosk-prod"}`, "whole number"},
		{"version 2.0", `{"version":2.0,"issued":` + iss + `,"expires":` + exp + `,"fleet":"kiosk-prod"}`, "whole number"},
		{"version negative", `{"version":-2,"issued":` + iss + `,"expires":` + exp + `,"fleet":"kiosk-prod"}`, "whole number"},
		{"version twice", `{"version":9,"version":1,"issued":` + iss + `,"expires":` + exp + `,"fleet":"kiosk-prod"}`, "appears twice"},
		{"version twice, once escaped", `{"version":9,"vers\u0069on":1,"issued":` + iss + `,"expires":` + exp + `,"fleet":"kiosk-prod"}`, "appears twice"},
		{"names equal once read as UTF-8", "{\"version\":9,\"issued\":" + iss + ",\"expires\":" + exp + ",\"fleet\":\"kiosk-prod\",\"apps\":{\"a\xff\":{},\"a\xfe\":{}}}", "not UTF-8"},
		{"Version spelled otherwise", `{"version":9,"Version":1,"issued":` + iss + `,"expires":` + exp + `,"fleet":"kiosk-prod"}`, `spell it "version"`},
		{"duplicate deep inside", `{"version":9,"issued":` + iss + `,"expires":` + exp + `,"fleet":"kiosk-prod","apps":{"a":{"release":"1","release":"2"}}}`, "appears twice"},
		{"bad issued", `{"version":9,"issued":"yesterday","expires":` + exp + `,"fleet":"kiosk-prod"}`, "RFC 3339"},
		{"expires before issued", `{"version":9,"issued":` + exp + `,"expires":` + iss + `,"fleet":"kiosk-prod"}`, "not after issued"},
		{"empty fleet", `{"version":9,"issued":` + iss + `,"expires":` + exp + `,"fleet":""}`, "fleet"},
		{"trailing data", `{"version":9,"issued":` + iss + `,"expires":` + exp + `,"fleet":"kiosk-prod"} {}`, "data after"},
		{"not an object", `[1]`, "object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(tc.body)
			refused(t, st, body, signT(t, body, nil, t1), t0, "", ErrMalformed, tc.words)
		})
	}
}

func TestVerifyNeverMutatesState(t *testing.T) {
	st := stateOf(t, root1(t))
	body := doc(1, "a")
	st = accept(t, st, body, signT(t, body, nil, t1), t0, "")
	keep := State{Root: bytes.Clone(st.Root), RootVersion: st.RootVersion, TargetVersion: st.TargetVersion,
		TargetSHA256: st.TargetSHA256, TargetExpires: st.TargetExpires, TargetAccepted: st.TargetAccepted, LastIssued: st.LastIssued}
	v2 := rotation(t, []ed25519.PrivateKey{t3}, r1, r2, n1)
	next := doc(2, "b")
	res, err := Verify(st, next, signT(t, next, []SignedRoot{v2}, t3), t0.Add(time.Hour), "")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st, keep) {
		t.Errorf("Verify changed its input state")
	}
	res.State.Root[0] = 'X'
	if st.Root[0] == 'X' {
		t.Errorf("the new State shares its root bytes with the old one")
	}
}

func TestProvision(t *testing.T) {
	v1 := envelope(t, root1(t))
	st, err := Provision(State{}, v1)
	if err != nil || st.RootVersion != 1 {
		t.Fatalf("Provision(empty, v1): got %+v, %v", st, err)
	}
	body := doc(9, "a")
	st = accept(t, st, body, signT(t, body, nil, t1), t0, "")
	// The journal's newer root wins over an older file.
	v2 := rotation(t, []ed25519.PrivateKey{t3}, r1, r2, n1)
	next := doc(10, "b")
	st2 := accept(t, st, next, signT(t, next, []SignedRoot{v2}, t3), t0, "")
	got, err := Provision(st2, v1)
	if err != nil || !reflect.DeepEqual(got, st2) {
		t.Fatalf("Provision(journal v2, file v1): got %+v, %v, want the journal's state", got, err)
	}
	// A newer file replaces the root and keeps the counters.
	got, err = Provision(st, envelope(t, v2))
	if err != nil || got.RootVersion != 2 || got.TargetVersion != 9 || got.TargetSHA256 != st.TargetSHA256 {
		t.Fatalf("Provision(journal v1, file v2): got %+v, %v", got, err)
	}
	// Another fleet, or an unsigned file, is refused.
	other := makeRoot(t, rootSpec{version: 3, fleet: "other", rootKeys: []ed25519.PrivateKey{r1}, rootTh: 1,
		targetKeys: []ed25519.PrivateKey{t1}, targetTh: 1, signedBy: []ed25519.PrivateKey{r1}})
	if _, err := Provision(st, envelope(t, other)); !errors.Is(err, ErrWrongFleet) {
		t.Errorf("Provision of another fleet's root: got %v, want ErrWrongFleet", err)
	}
	unsigned := makeRoot(t, rootSpec{version: 3, rootKeys: []ed25519.PrivateKey{r1}, rootTh: 1,
		targetKeys: []ed25519.PrivateKey{t1}, targetTh: 1})
	if _, err := Provision(st, envelope(t, unsigned)); !errors.Is(err, ErrThreshold) {
		t.Errorf("Provision of an unsigned root: got %v, want ErrThreshold", err)
	}
}
