package docker

import (
	"math/rand"
	"regexp"
	"strings"
	"testing"
)

// The patterns the matchers in names.go replace, kept here to prove the
// matchers accept exactly the same strings.
var namePatterns = map[string]struct {
	re    *regexp.Regexp
	match func(string) bool
	cases []string
}{
	"name":    {regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`), isName, nil},
	"envName": {regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`), isEnvName, []string{"_1", "1_", "a1", "A-B"}},
	"capName": {regexp.MustCompile(`^(CAP_)?[A-Z_]+$|^ALL$`), isCapName, []string{"CAP_CAP_", "CAPX", "CAP", "ALLx"}},
	"digestRef": {regexp.MustCompile(`^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$`), isDigestRef,
		[]string{"a:T@sha256:" + hex64, "a:b@sha256:" + hex64, "a@sha256:" + hex64 + "@"}},
}

var hex64 = strings.Repeat("0123456789abcdef", 4)

// commonCases are edge cases for every pattern: empty, one character of each
// class, trailing newlines (a regexp's $ is the end of the text), NUL,
// multibyte and invalid UTF-8 lookalikes.
var commonCases = []string{
	"", "a", "A", "0", "_", ".", "-", ":", "/", "@", " ", "a\n", "\na", "a\x00", "\x00",
	"é", "aé", "a\xff", "\xff", "ａ", "CAP_", "CAP_NET_ADMIN", "NET_ADMIN", "ALL", "all", "CAP_all",
	"2", "3", "4", "2.", "2.1", "2.1.0", "2.1.0.1", "3.10", "2..1", "23", "2a", " 2", "2 ", "3.x",
	"busybox", "busybox:1.36", "busybox:Latest", "Busybox", "a/b/c:Tag_1.x-y", "a:b:C", "a:B:c",
	"a:_x", "a:.x", "a:-x", "a:", "a::", "host:5000/x", "host:5000/x:T", "a@sha256:" + hex64,
	"a:T@sha256:" + hex64, "a@sha256:" + hex64[:63], "a@sha256:" + hex64 + "0", "a@sha256:" + strings.ToUpper(hex64),
	"a@sha512:" + hex64, "@sha256:" + hex64, "a@@sha256:" + hex64, "a:T@", "a@sha256:" + hex64 + "\n",
	"x.y-z_1", "-x", ".x", "_x", "1x", "x y", "ab_", "A_B", "a-b", "_",
}

func TestNameMatchersAgreeWithTheirPatterns(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	const alphabet = "aZ09_.-:/@shA\n\x00é"
	for name, p := range namePatterns {
		check := func(s string) {
			if got, want := p.match(s), p.re.MatchString(s); got != want {
				t.Errorf("%s(%q) = %v, the pattern %s says %v", name, s, got, p.re, want)
			}
		}
		for _, s := range commonCases {
			check(s)
		}
		for _, s := range p.cases {
			check(s)
		}
		// Random strings built from the pattern's own interesting pieces.
		pieces := append([]string{"sha256:", hex64, "CAP_", "ALL", "2", "3", "."}, strings.Split(alphabet, "")...)
		for i := 0; i < 20000; i++ {
			var b strings.Builder
			for n := rng.Intn(8); n >= 0; n-- {
				b.WriteString(pieces[rng.Intn(len(pieces))])
			}
			check(b.String())
		}
	}
}

func FuzzNameMatchers(f *testing.F) {
	for _, s := range commonCases {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for name, p := range namePatterns {
			if got, want := p.match(s), p.re.MatchString(s); got != want {
				t.Errorf("%s(%q) = %v, the pattern %s says %v", name, s, got, p.re, want)
			}
		}
	})
}

// volumeName is the pattern of a short name, for the tests that check a
// name the driver makes.
var volumeName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
