package fetch

import (
	"strings"
	"testing"
)

// FuzzParseContentRange: the server's Content-Range header never panics the
// parser, and what it accepts has a sane start and total.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-99/100", "bytes 5-9/*", "bytes */100", "bytes -1-2/3", "bytes 1-2", "", "bytes 99999999999999999999-1/2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, total, ok := parseContentRange(s)
		if !ok {
			return
		}
		if start < -1 || total < -1 {
			t.Fatalf("parseContentRange(%q) = %d, %d: negative", s, start, total)
		}
		if start >= 0 && total >= 0 && !strings.HasPrefix(s, "bytes ") {
			t.Fatalf("parseContentRange(%q): accepted without the bytes unit", s)
		}
	})
}
