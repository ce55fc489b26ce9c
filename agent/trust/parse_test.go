package trust

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestPAE(t *testing.T) {
	// The example of the DSSE protocol.
	got := string(PAE("http://example.com/HelloWorld", []byte("hello world")))
	if want := "DSSEv1 29 http://example.com/HelloWorld 11 hello world"; got != want {
		t.Errorf("PAE: got %q, want %q", got, want)
	}
	if got := string(PAE(TargetType, nil)); got != "DSSEv1 33 application/vnd.latch.target+json 0 " {
		t.Errorf("PAE of an empty body: got %q", got)
	}
	// Lengths make the encoding unambiguous: moving bytes between type and
	// body changes it.
	if string(PAE("a b", []byte("c"))) == string(PAE("a", []byte("b c"))) {
		t.Errorf("PAE is ambiguous")
	}
}

func TestKeyID(t *testing.T) {
	// sha256 of 32 zero bytes.
	if got, want := KeyID(make(ed25519.PublicKey, 32)), "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"; got != want {
		t.Errorf("KeyID(zeros): got %s, want %s", got, want)
	}
}

// validBody is a root body as text, to be broken in tests.
func validBody(t *testing.T) (string, SignedRoot) {
	sr := root1(t)
	return string(sr.Body), sr
}

func wrap(body string, sigs []Signature) []byte {
	b, _ := json.Marshal(struct {
		Signed     string      `json:"signed"`
		Signatures []Signature `json:"signatures"`
	}{base64.StdEncoding.EncodeToString([]byte(body)), nonNil(sigs)})
	return b
}

func TestParseRootRefuses(t *testing.T) {
	body, sr := validBody(t)
	if _, err := ParseRoot(wrap(body, sr.Signatures)); err != nil {
		t.Fatalf("ParseRoot of a valid root: %v", err)
	}
	t1id, r1id := id(t1), id(r1)
	otherPub := base64.StdEncoding.EncodeToString(pub(stranger))
	rep := func(old, new string) string {
		if !strings.Contains(body, old) {
			t.Fatalf("the valid body %s has no %q", body, old)
		}
		return strings.Replace(body, old, new, 1)
	}
	for _, tc := range []struct{ name, body, words string }{
		{"unknown field", rep(`"type":"root"`, `"type":"root","owner":"x"`), `unknown field "owner"`},
		{"field in other case", rep(`"fleet"`, `"Fleet"`), `unknown field "Fleet"`},
		{"duplicate field", rep(`"type":"root"`, `"type":"root","version":9`), `"version" appears twice`},
		{"duplicate key id", rep(`"keys":{`, `"keys":{"`+t1id+`":"`+base64.StdEncoding.EncodeToString(pub(t1))+`",`), "appears twice"},
		{"key id not its key", rep(`"`+t1id+`":"`+base64.StdEncoding.EncodeToString(pub(t1))+`"`, `"`+t1id+`":"`+otherPub+`"`), "does not match its key"},
		{"key not 32 bytes", rep(`"`+t1id+`":"`+base64.StdEncoding.EncodeToString(pub(t1))+`"`, `"`+t1id+`":"AAAA"`), "32-byte"},
		{"threshold 0", rep(`"threshold":2`, `"threshold":0`), "roles.root\".threshold: 0, want 1 to 3"},
		{"threshold above keys", rep(`"threshold":1`, `"threshold":3`), "roles.targets\".threshold: 3, want 1 to 2"},
		{"threshold not a number", rep(`"threshold":1`, `"threshold":"1"`), "whole number"},
		{"keyid not in keys", rep(`"keyids":["`+r1id, `"keyids":["`+strings.Repeat("a", 64)+`","`+r1id), "is not in \"keys\""},
		{"keyid twice in a role", rep(`"keyids":["`+r1id, `"keyids":["`+r1id+`","`+r1id), "listed twice"},
		{"empty fleet", rep(`"fleet":"kiosk-prod"`, `"fleet":""`), `"fleet": empty`},
		{"fleet with a newline", rep(`"fleet":"kiosk-prod"`, `"fleet":"a\nb"`), `"fleet"`},
		{"fleet null", rep(`"fleet":"kiosk-prod"`, `"fleet":null`), `"fleet": want a string`},
		{"bad expires", rep(`"expires":"2027-12-01T12:00:00Z"`, `"expires":"2027-12-01"`), `"expires": "2027-12-01" is not an RFC 3339 time`},
		{"version 0", rep(`"version":1`, `"version":0`), "start at 1"},
		{"version 1.5", rep(`"version":1`, `"version":1.5`), "whole number"},
		{"version huge", rep(`"version":1`, `"version":18446744073709551616`), "out of range"},
		{"type not root", rep(`"type":"root"`, `"type":"targets"`), `want "root"`},
		{"missing roles", rep(`,"roles":`, `,"rolez":`), `unknown field "rolez"`},
		{"no targets role", strings.Replace(body, `"targets":`, `"target":`, 1), `unknown field "target"`},
		{"keys empty", body[:strings.Index(body, `"keys":`)] + `"keys":{},"roles":{"root":{"keyids":[],"threshold":1},"targets":{"keyids":[],"threshold":1}}}`, "no key"},
		{"trailing data", body + `{}`, "data after"},
		{"not JSON", `{"type":`, "not valid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRoot(wrap(tc.body, nil))
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("ParseRoot: got %v, want ErrMalformed saying %q", err, tc.words)
			}
			if !reflect.DeepEqual(got, SignedRoot{}) {
				t.Errorf("ParseRoot refused but returned %+v", got)
			}
			if _, err := ParseRootBody([]byte(tc.body)); !errors.Is(err, ErrMalformed) {
				t.Errorf("ParseRootBody: got %v, want ErrMalformed", err)
			}
		})
	}
}

func TestParseEnvelopeRefuses(t *testing.T) {
	body, sr := validBody(t)
	good := base64.StdEncoding.EncodeToString([]byte(body))
	sig := `{"keyid":"` + sr.Signatures[0].KeyID + `","sig":"` + base64.StdEncoding.EncodeToString(sr.Signatures[0].Sig) + `"}`
	for _, tc := range []struct{ name, env, words string }{
		{"signed not base64", `{"signed":"%%%","signatures":[]}`, "base64"},
		{"signed URL base64", `{"signed":"` + strings.TrimRight(base64.URLEncoding.EncodeToString([]byte(body+"??>")), "=") + `","signatures":[]}`, "base64"},
		{"no signatures field", `{"signed":"` + good + `"}`, `"signatures" is missing`},
		{"signatures not a list", `{"signed":"` + good + `","signatures":{}}`, "want a list"},
		{"unknown field", `{"signed":"` + good + `","signatures":[],"extra":1}`, `unknown field "extra"`},
		{"sig too short", `{"signed":"` + good + `","signatures":[{"keyid":"` + sr.Signatures[0].KeyID + `","sig":"AAAA"}]}`, "64-byte"},
		{"keyid upper case", `{"signed":"` + good + `","signatures":[{"keyid":"` + strings.ToUpper(sr.Signatures[0].KeyID) + `","sig":"` + base64.StdEncoding.EncodeToString(sr.Signatures[0].Sig) + `"}]}`, "not a key id"},
		{"duplicate in signature", `{"signed":"` + good + `","signatures":[{"keyid":"` + sr.Signatures[0].KeyID + `","keyid":"x","sig":""}]}`, "appears twice"},
		{"signed twice", `{"signed":"` + good + `","signed":"` + good + `","signatures":[` + sig + `]}`, "appears twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRoot([]byte(tc.env))
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("ParseRoot: got %v, want ErrMalformed saying %q", err, tc.words)
			}
			if !reflect.DeepEqual(got, SignedRoot{}) {
				t.Errorf("ParseRoot refused but returned %+v", got)
			}
		})
	}
}

func TestParseBundle(t *testing.T) {
	body := doc(1, "a")
	bd := signT(t, body, []SignedRoot{root1(t)}, t1, t2)
	js, err := json.Marshal(bd)
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := ParseBundle(js)
	if err != nil {
		t.Fatalf("ParseBundle(JSON): %v", err)
	}
	if !reflect.DeepEqual(fromJSON, bd) {
		t.Errorf("ParseBundle(JSON): got %+v, want %+v", fromJSON, bd)
	}
	fromHeader, err := ParseBundle([]byte(" " + base64.StdEncoding.EncodeToString(js) + "\r\n"))
	if err != nil || !reflect.DeepEqual(fromHeader, bd) {
		t.Errorf("ParseBundle(base64): got %+v, %v, want %+v", fromHeader, err, bd)
	}
	bare := base64.StdEncoding.EncodeToString(ed25519.Sign(t1, body))
	for _, tc := range []struct{ name, in, words string }{
		{"empty", "  ", "empty"},
		{"bare legacy signature", bare, "bare signature"},
		{"base64 of garbage", base64.StdEncoding.EncodeToString([]byte("hello there, not json")), "JSON object"},
		{"neither", "not a bundle!", "neither JSON nor"},
		{"unknown field", `{"signatures":[],"roots":[],"root":[]}`, `unknown field "root"`},
		{"no signatures", `{"roots":[]}`, `"signatures" is missing`},
		{"roots not a list", `{"signatures":[],"roots":{}}`, "want a list"},
		{"bad root", `{"signatures":[],"roots":[{"signed":"e30=","signatures":[]}]}`, "roots[0].signed"},
		{"too many roots", `{"signatures":[],"roots":[` + strings.Repeat(`{},`, MaxRoots) + `{}]}`, "more than 64"},
		{"too many signatures", `{"signatures":[` + strings.Repeat(`{},`, MaxSignatures) + `{}]}`, "more than 64"},
		{"too big", `{"signatures":[],"x":"` + strings.Repeat("a", MaxBundleSize) + `"}`, "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseBundle([]byte(tc.in))
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("ParseBundle: got %v, want ErrMalformed saying %q", err, tc.words)
			}
			if !reflect.DeepEqual(got, Bundle{}) {
				t.Errorf("ParseBundle refused but returned %+v", got)
			}
		})
	}
}

func TestRootBodyRoundTrip(t *testing.T) {
	sr := root1(t)
	back, err := ParseRootBody(sr.Root.Body())
	if err != nil || !reflect.DeepEqual(back, sr.Root) {
		t.Fatalf("ParseRootBody(Body()): got %+v, %v, want %+v", back, err, sr.Root)
	}
	again, err := ParseRoot(envelope(t, sr))
	if err != nil || !reflect.DeepEqual(again, sr) {
		t.Fatalf("ParseRoot(json.Marshal(root)): got %+v, %v", again, err)
	}
}

func TestSignRootRefusesTwice(t *testing.T) {
	sr := root1(t)
	if _, err := SignRoot(sr, r1); !errors.Is(err, ErrAlreadySigned) {
		t.Errorf("SignRoot with a key that signed: got %v, want ErrAlreadySigned", err)
	}
	more, err := SignRoot(sr, r3)
	if err != nil || len(more.Signatures) != 3 || len(sr.Signatures) != 2 {
		t.Errorf("SignRoot(r3): got %d signatures (%v), the original %d, want 3 and 2", len(more.Signatures), err, len(sr.Signatures))
	}
}
