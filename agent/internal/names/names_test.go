package names

import (
	"math/rand"
	"regexp"
	"strings"
	"testing"
)

// The patterns the matchers replace, kept here to prove the matchers accept
// exactly the same strings.
var namePatterns = map[string]struct {
	re    *regexp.Regexp
	match func(string) bool
	cases []string
}{
	"name":    {regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`), IsName, nil},
	"envName": {regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`), IsEnvName, []string{"_1", "1_", "a1", "A-B"}},
	"capName": {regexp.MustCompile(`^(CAP_)?[A-Z_]+$|^ALL$`), IsCapName, []string{"CAP_CAP_", "CAPX", "CAP", "ALLx"}},
	"digestRef": {regexp.MustCompile(`^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$`), IsDigestRef,
		[]string{"a:T@sha256:" + hex64, "a:b@sha256:" + hex64, "a@sha256:" + hex64 + "@"}},
	"imageRef": {regexp.MustCompile(`^[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?(@sha256:[0-9a-f]{64})?$`), IsImageRef,
		[]string{"a:b/C", "a/b:C/d", "a:B.c-d_e", "a:Bc:d", "0:0", "a.b:Z@sha256:" + hex64}},
	"composeVer": {regexp.MustCompile(`^[23](\.[0-9]+){0,2}$`), IsComposeVersion, []string{"2.0", "3.9.9", "2.1.", ".2", "3.1a"}},
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

// dockerName is the engine's rule for a container name.
var dockerName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)

func TestContainerNames(t *testing.T) {
	for _, tc := range []struct{ app, svc, rel, want string }{
		{"kiosk", "ui", "r1", "latch_kiosk_ui_r1"}, // the name older versions gave
		{"kiosk-2", "ui-x", "2026.11.2", "latch_kiosk-2_ui-x_2026.11.2"},
		{"a_b", "c", "r1", "latch_a._b_c_r1"},
		{"a", "b_c", "r1", "latch_a_b._c_r1"},
		{"a.b", "c", "r1", "latch_a..b_c_r1"},
		{"a", "b.", "_r", "latch_a_b..__r"},
	} {
		if got := Container(tc.app, tc.svc, tc.rel); got != tc.want {
			t.Errorf("Container(%q, %q, %q) = %q, want %q", tc.app, tc.svc, tc.rel, got, tc.want)
		}
	}
}

// Two different (app, service, release) never share a name: every name
// parses back to what made it, and random triples over the characters that
// matter never meet.
func TestContainerNamesInjective(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	const first, rest = "ab0", "ab0_.-"
	part := func(alpha string) string {
		b := []byte{first[rng.Intn(len(first))]}
		for n := rng.Intn(5); n > 0; n-- {
			b = append(b, alpha[rng.Intn(len(alpha))])
		}
		return string(b)
	}
	seen := map[string][3]string{}
	for i := 0; i < 50000; i++ {
		in := [3]string{part(rest), part(rest), part(rest)}
		name := Container(in[0], in[1], in[2])
		if !dockerName.MatchString(name) {
			t.Fatalf("Container%q = %q: not a valid container name", in, name)
		}
		app, svc, rel, ok := ParseContainer(name)
		if got := [3]string{app, svc, rel}; !ok || got != in {
			t.Fatalf("ParseContainer(%q) = %q, %v; want %q", name, got, ok, in)
		}
		if prev, ok := seen[name]; ok && prev != in {
			t.Fatalf("%q and %q share the container name %q", prev, in, name)
		}
		seen[name] = in
	}
	for _, bad := range []string{"", "latch_", "latch_a", "latch_a_b", "latch_a_b_", "x_a_b_c", "latch_a.x_b_c", "latch_a_b.", "latch__b_c"} {
		if a, s, r, ok := ParseContainer(bad); ok {
			t.Errorf("ParseContainer(%q) = %q %q %q, want not latch's", bad, a, s, r)
		}
	}
}
