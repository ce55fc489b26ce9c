package target

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const sizedFile = `{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","size":1234}`

func TestParseTrustFields(t *testing.T) {
	doc := `{"version":7,"issued":"2026-12-01T10:00:00Z","expires":"2026-12-08T10:00:00+01:00","fleet":"kiosks","device":"pi-7",
	  "apps":{"a":{"release":"1","services":{"s":{"files":[` + sizedFile + `]}}}}}`
	st, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if st.Version != 7 || st.Fleet != "kiosks" || st.Device != "pi-7" {
		t.Errorf("Parse: got version %d fleet %q device %q, want 7 kiosks pi-7", st.Version, st.Fleet, st.Device)
	}
	if want := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC); !st.Issued.Equal(want) {
		t.Errorf("Parse: issued %v, want %v", st.Issued, want)
	}
	if want := time.Date(2026, 12, 8, 9, 0, 0, 0, time.UTC); !st.Expires.Equal(want) {
		t.Errorf("Parse: expires %v, want %v", st.Expires, want)
	}
	f := st.Apps["a"].Services["s"].Files[0]
	if !f.HasSize || f.Size != 1234 {
		t.Errorf("Parse: file size %d (has %v), want 1234", f.Size, f.HasSize)
	}
	if m := st.MissingSizes(); len(m) != 0 {
		t.Errorf("MissingSizes: %v, want none", m)
	}

	// Without the fields the document is as before; a file without size says so.
	st, err = Parse([]byte(fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x"}`)))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if st.Version != 0 || !st.Issued.IsZero() || st.Apps["a"].Services["s"].Files[0].HasSize {
		t.Errorf("Parse of a document without section 10 fields: got %+v", st)
	}
	if m := st.MissingSizes(); len(m) != 1 || m[0] != "apps.a.services.s.files[0].size" {
		t.Errorf("MissingSizes: %v, want [apps.a.services.s.files[0].size]", m)
	}

	// A size of 0 is a size (an empty file).
	st, err = Parse([]byte(fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","size":0}`)))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if f := st.Apps["a"].Services["s"].Files[0]; !f.HasSize || f.Size != 0 {
		t.Errorf("size 0: got %d has %v", f.Size, f.HasSize)
	}
}

func TestParseTrustFieldsInvalid(t *testing.T) {
	apps := `"apps":{}`
	file := func(size string) string {
		return fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","size":` + size + `}`)
	}
	tests := []struct{ name, doc, want string }{
		{"version 0", `{"version":0,` + apps + `}`, "version: is 0: versions start at 1"},
		{"version negative", `{"version":-1,` + apps + `}`, "version: want a non-negative integer, got -1"},
		{"version fraction", `{"version":1.5,` + apps + `}`, "version: want a non-negative integer, got 1.5"},
		{"version exponent", `{"version":1e3,` + apps + `}`, "version: want a non-negative integer, got 1e3"},
		{"version string", `{"version":"3",` + apps + `}`, "version: want a non-negative integer, got a string"},
		{"version too big", `{"version":18446744073709551616,` + apps + `}`, "version: want a non-negative integer"},
		{"Version capital", `{"Version":9,` + apps + `}`, `Version: unknown field: spell it "version"`},
		{"EXPIRES capital", `{"EXPIRES":"2030-01-01T00:00:00Z",` + apps + `}`, `EXPIRES: unknown field: spell it "expires"`},
		{"both spellings", `{"version":1,"Version":9,` + apps + `}`, `Version: unknown field: spell it "version"`},
		{"Fleet capital", `{"Fleet":"x",` + apps + `}`, `Fleet: unknown field: spell it "fleet"`},
		{"Size capital", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","Size":3}`), `files[0].Size: unknown field: spell it "size"`},
		{"issued not RFC 3339", `{"issued":"2026-12-01 10:00",` + apps + `}`, `issued: want an RFC 3339 time like "2026-01-02T15:04:05Z", got "2026-12-01 10:00"`},
		{"expires number", `{"expires":1700000000,` + apps + `}`, "expires: want a string, got a number"},
		{"expires empty", `{"expires":"",` + apps + `}`, "expires: want an RFC 3339 time"},
		{"expires before issued", `{"issued":"2026-12-02T00:00:00Z","expires":"2026-12-01T00:00:00Z",` + apps + `}`, "expires: 2026-12-01T00:00:00Z is not after issued 2026-12-02T00:00:00Z"},
		{"fleet number", `{"fleet":1,` + apps + `}`, "fleet: want a string, got a number"},
		{"device newline", `{"device":"a\nb",` + apps + `}`, "device: must not contain"},
		{"size negative", file("-1"), "files[0].size: want a non-negative integer, got -1"},
		{"size fraction", file("1.0"), "files[0].size: want a non-negative integer, got 1.0"},
		{"size string", file(`"12"`), "files[0].size: want a non-negative integer, got a string"},
		{"size huge", file("9223372036854775807"), "files[0].size: 9223372036854775807 bytes is beyond any file"},
		{"size twice", file("1,\"size\":2"), "files[0].size: duplicate key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatalf("Parse: got state %+v, want an error containing %q", st, tt.want)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse: got error %q, want one wrapping ErrInvalid containing %q", err, tt.want)
			}
		})
	}
}
