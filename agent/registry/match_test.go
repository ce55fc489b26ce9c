package registry

import (
	"regexp"
	"strings"
	"testing"
)

// The regular expressions of the reference grammar that match.go's
// matchers replace; the tests (not the binary) keep them as the reference.
var (
	pathComponentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagRE           = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	digestRE        = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
	domainRE        = regexp.MustCompile(`^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$`)
)

var matchCases = []string{
	"", "a", "A", "0", "_", "-", ".", "__", "___", "a_b", "a__b", "a___b", "a-b", "a--b", "a.b", "a..b", "a._b",
	"a-", "-a", "a.", ".a", "_a", "a_", "abc123", "ABC", "aBc", "a:b", "a/b", "a b", "ü",
	"localhost", "localhost:5000", "127.0.0.1:5000", "registry.example", "registry.example:", "registry.example:123456",
	"registry.example:65535", "reg-istry.example", "-reg.example", "reg-.example", "a..example", "[::1]", "[::1]:5000",
	"[::1", "[]", "[]:80", "[::1]x", "[::1]:", "[fe80::1%eth0]", "[1.2.3.4]", "a:1:2", ":80", "a.b.c:0",
	"v1", "v1.0", "v1.0-rc.1", "_v", ".v", "-v", "latest", strings.Repeat("t", 128), strings.Repeat("t", 129),
	"sha256:" + strings.Repeat("a", 64), "sha256:" + strings.Repeat("A", 64), "sha256:" + strings.Repeat("a", 63),
	"sha256:" + strings.Repeat("a", 65), "sha512:" + strings.Repeat("a", 64), "sha256:" + strings.Repeat("g", 64),
}

func TestMatchersAgreeWithTheGrammar(t *testing.T) {
	check := func(name string, re *regexp.Regexp, fn func(string) bool, s string) {
		if got, want := fn(s), re.MatchString(s); got != want {
			t.Errorf("%s(%q) = %v, the grammar says %v", name, s, got, want)
		}
	}
	for _, s := range matchCases {
		check("validPathComponent", pathComponentRE, validPathComponent, s)
		check("validTag", tagRE, validTag, s)
		check("ValidDigest", digestRE, ValidDigest, s)
		check("validDomain", domainRE, validDomain, s)
	}
}

func FuzzMatchers(f *testing.F) {
	for _, s := range matchCases {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, c := range []struct {
			re *regexp.Regexp
			fn func(string) bool
		}{{pathComponentRE, validPathComponent}, {tagRE, validTag}, {digestRE, ValidDigest}, {domainRE, validDomain}} {
			if c.fn(s) != c.re.MatchString(s) {
				t.Fatalf("%q: matcher %v, grammar %v (%s)", s, c.fn(s), c.re.MatchString(s), c.re)
			}
		}
	})
}
