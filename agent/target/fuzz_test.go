package target

import (
	"encoding/json"
	"errors"
	"testing"
)

// FuzzParse: Parse never panics, every error wraps ErrInvalid, and every
// accepted state survives a JSON round trip unchanged in meaning.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validDoc))
	f.Add([]byte(`{"apps":{}}`))
	f.Add([]byte(`{"apps":{"a":{"release":"1","services":{"s":{"files":[{"source":"file:///x","sha256":"` + hexA + `","path":"/x"}]}}}},"config":{"A":{"value":"1","reboot":true}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse error %v does not wrap ErrInvalid", err)
			}
			return
		}
		b, err := json.Marshal(st)
		if err != nil {
			t.Fatalf("Marshal accepted state: %v", err)
		}
		if _, err := Parse(b); err != nil {
			t.Fatalf("Parse(Marshal(Parse(%q))) = %v", data, err)
		}
	})
}

// FuzzDecodeSignature: never panics; success means exactly 64 bytes, and
// errors are ErrNoSignature or ErrBadSignature.
func FuzzDecodeSignature(f *testing.F) {
	f.Add([]byte("5gA8U4oE4q4s7Q0m1vQ0lQx2q3C9t8bJ1k7oJtqf7Jw9mVJ3A0aQhQ3L5v0m8pM2m7b7s1m6o4s2w1b6j5h8Cg=="))
	f.Add([]byte(""))
	f.Add([]byte(" AAAA\n"))
	f.Fuzz(func(t *testing.T, s []byte) {
		sig, err := DecodeSignature(s)
		if err != nil {
			if !errors.Is(err, ErrNoSignature) && !errors.Is(err, ErrBadSignature) {
				t.Fatalf("DecodeSignature(%q): error %v is neither sentinel", s, err)
			}
			return
		}
		if len(sig) != 64 {
			t.Fatalf("DecodeSignature(%q): got %d bytes, want 64", s, len(sig))
		}
	})
}
