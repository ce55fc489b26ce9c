package lock

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseProcLocks(t *testing.T) {
	in := `1: FLOCK  ADVISORY  WRITE 1234 fe:00:748772 0 EOF
1: -> FLOCK  ADVISORY  WRITE 1240 fe:00:748772 0 EOF
2: POSIX  ADVISORY  READ 5678 08:01:99 0 EOF
3: OFDLCK ADVISORY  WRITE -1 08:01:100 0 EOF
4: FLOCK  ADVISORY  WRITE 4321 103:0a:7 0 EOF
garbage
5: FLOCK ADVISORY WRITE x 08:01:5 0 EOF
`
	got := ParseProcLocks(strings.NewReader(in))
	for _, tc := range []struct {
		maj, min uint32
		ino      uint64
		want     []int
	}{
		{0xfe, 0, 748772, []int{1234}},
		{8, 1, 99, []int{5678}},
		{8, 1, 100, nil},
		{0x103, 0x0a, 7, []int{4321}},
		{8, 1, 5, nil},
	} {
		k := [2]uint64{unix.Mkdev(tc.maj, tc.min), tc.ino}
		if g := got[k]; len(g) != len(tc.want) || len(g) > 0 && g[0] != tc.want[0] {
			t.Errorf("%x:%x:%d: got %v, want %v", tc.maj, tc.min, tc.ino, g, tc.want)
		}
	}
	if len(got) != 3 {
		t.Errorf("got %d locked files, want 3", len(got))
	}
}

func TestParseRecord(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{`{"pid":12,"boot_id":"b","command":"x","role":"user","created":"2026-01-02T03:04:05Z"}` + "\n", true},
		{`{"pid":12,"boot_id":"b","role":"agent"}`, true},
		{`{"pid":12,"boot_id":"b","role":"root"}`, false},
		{`{"pid":0,"boot_id":"b","role":"user"}`, false},
		{`{"pid":12,"role":"user"}`, false},
		{"12345\n", false},
		{"", false},
		{`{"pid":"12"}`, false},
	} {
		if _, ok := ParseRecord([]byte(tc.in)); ok != tc.want {
			t.Errorf("ParseRecord(%q): got %v, want %v", tc.in, ok, tc.want)
		}
	}
}

// FuzzParseProcLocks: whatever /proc/locks holds, no pid <= 0 is returned
// (a pid of 0 or -1 would name the caller or every process), and the
// result is exactly what parsing it once more, as /proc/locks lines,
// gives: nothing is invented or lost in the parse.
func FuzzParseProcLocks(f *testing.F) {
	f.Add("1: FLOCK  ADVISORY  WRITE 1234 fe:00:748772 0 EOF\n")
	f.Add("3: OFDLCK ADVISORY  WRITE -1 08:01:100 0 EOF\n2: POSIX  ADVISORY  READ 0 08:01:99 0 EOF\n")
	f.Fuzz(func(t *testing.T, s string) {
		got := ParseProcLocks(strings.NewReader(s))
		var again strings.Builder
		n := 0
		for k, pids := range got {
			if len(pids) == 0 {
				t.Fatalf("%v: empty pid list", k)
			}
			for _, p := range pids {
				if p <= 0 {
					t.Fatalf("pid %d accepted from %q", p, s)
				}
				n++
				fmt.Fprintf(&again, "%d: FLOCK ADVISORY WRITE %d %x:%x:%d 0 EOF\n", n, p, unix.Major(k[0]), unix.Minor(k[0]), k[1])
			}
		}
		if lines := strings.Count(s, "\n") + 1; n > lines {
			t.Fatalf("%d holders from %d lines", n, lines)
		}
		re := ParseProcLocks(strings.NewReader(again.String()))
		if len(re) != len(got) {
			t.Fatalf("reparse: %d files, want %d", len(re), len(got))
		}
		for k, pids := range got {
			if !slices.Equal(sorted(re[k]), sorted(pids)) {
				t.Fatalf("reparse of %v: %v, want %v", k, re[k], pids)
			}
		}
	})
}

func sorted(s []int) []int { s = slices.Clone(s); slices.Sort(s); return s }

// FuzzParseRecord: what ParseRecord accepts is a valid record (a pid > 0,
// a boot id, a known role), and a record round-trips: marshalling what was
// parsed and parsing it again gives the same record, field by field.
func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"pid":12,"boot_id":"b","command":"x","role":"user","created":"2026-01-02T03:04:05Z"}`))
	f.Add([]byte(`{"pid":7,"boot_id":"b","role":"hold","command":"a\u0000b","created":"2026-01-02T03:04:05.123456789+02:00"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok := ParseRecord(b)
		if !ok {
			return
		}
		if r.PID <= 0 || r.BootID == "" || r.Role != RoleUser && r.Role != RoleAgent && r.Role != RoleHold {
			t.Fatalf("accepted %+v", r)
		}
		r2, ok := ParseRecord(r.marshal())
		if !ok || r2.PID != r.PID || r2.Role != r.Role || r2.BootID != r.BootID || r2.Command != r.Command || !r2.Created.Equal(r.Created) {
			t.Fatalf("round trip: %+v -> %+v %v", r, r2, ok)
		}
	})
}
