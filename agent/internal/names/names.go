// Package names holds the rules for the names latch accepts in container
// specs and compose files (services, volumes, environment variables,
// capabilities, image references), shared by agent/docker and
// agent/compose so that both accept exactly the same strings, and the
// encoding of an app's and a service's name into a container name, which
// is injective: two different (app, service) pairs never share a name.
//
// The checks are small hand-written matchers; each comment gives the
// language as a regular expression (the tests hold the patterns and prove
// that the matchers agree with them).
package names

import "strings"

// IsName reports whether s is ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ (an app,
// service, volume or network name).
func IsName(s string) bool {
	if s == "" || !isAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// IsEnvName reports whether s is ^[A-Za-z_][A-Za-z0-9_]*$.
func IsEnvName(s string) bool {
	if s == "" || !(isLetter(s[0]) || s[0] == '_') {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' {
			return false
		}
	}
	return true
}

// IsCapName reports whether s is ^(CAP_)?[A-Z_]+$|^ALL$, which is the same
// language as ^[A-Z_]+$.
func IsCapName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'A' && c <= 'Z' || c == '_') {
			return false
		}
	}
	return true
}

// IsDigest reports whether s is sha256:[0-9a-f]{64}.
func IsDigest(s string) bool {
	h, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(h) != 64 {
		return false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// IsRepoPath reports whether s is [a-z0-9][a-z0-9._/:-]*.
func IsRepoPath(s string) bool {
	if s == "" || !(isLower(s[0]) || isDigit(s[0])) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !(isLower(c) || isDigit(c) || c == '.' || c == '_' || c == '/' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// IsDigestRef reports whether s is
// ^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$ (an image pinned by digest).
func IsDigestRef(s string) bool {
	name, digest, ok := strings.Cut(s, "@")
	return ok && IsRepoPath(name) && IsDigest(digest)
}

// IsImageRef reports whether s is
// ^[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?(@sha256:[0-9a-f]{64})?$.
func IsImageRef(s string) bool {
	if i := strings.IndexByte(s, '@'); i >= 0 {
		if !IsDigest(s[i+1:]) {
			return false
		}
		s = s[:i]
	}
	if IsRepoPath(s) {
		return true
	}
	// A tag with capitals can only follow the last colon: a tag holds no
	// colon, and the name before it is lowercase.
	i := strings.LastIndexByte(s, ':')
	if i < 1 || !IsRepoPath(s[:i]) {
		return false
	}
	return IsTag(s[i+1:])
}

// IsTag reports whether s is [A-Za-z0-9_][A-Za-z0-9_.-]*.
func IsTag(s string) bool {
	if s == "" || !(isAlnum(s[0]) || s[0] == '_') {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// IsComposeVersion reports whether s is ^[23](\.[0-9]+){0,2}$.
func IsComposeVersion(s string) bool {
	if s == "" || s[0] != '2' && s[0] != '3' {
		return false
	}
	parts := strings.Split(s[1:], ".")
	if len(parts) > 3 || parts[0] != "" {
		return false
	}
	for _, p := range parts[1:] {
		if p == "" {
			return false
		}
		for i := 0; i < len(p); i++ {
			if !isDigit(p[i]) {
				return false
			}
		}
	}
	return true
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isLower(c byte) bool  { return c >= 'a' && c <= 'z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }
func isAlnum(c byte) bool  { return isLetter(c) || isDigit(c) }

// IsAlnum reports whether c is an ASCII letter or digit.
func IsAlnum(c byte) bool { return isAlnum(c) }

// Container names. A container's name is
//
//	latch_<app>_<service>_<release>
//
// where app and service are escaped: '.' is written ".." and '_' is
// written "._", so that an unescaped '_' only ever separates the parts.
// A name without '.' or '_' is written as it is ("latch_kiosk_ui_r1"),
// which is also the name older latch versions gave it; app "a_b" service
// "c" is "latch_a._b_c_r1" and app "a" service "b_c" "latch_a_b._c_r1".
// The release part is last and may hold anything a name may. The labels
// latch puts on a container stay the truth; the name only has to be
// unique and readable.

// ContainerPrefix is what every container name of latch begins with.
const ContainerPrefix = "latch_"

// Container returns the container name of app and service at the short
// release rel. app and service must satisfy IsName, rel must be non-empty
// of [A-Za-z0-9_.-]: the caller checks.
func Container(app, service, rel string) string {
	return ContainerPrefix + escape(app) + "_" + escape(service) + "_" + rel
}

// ParseContainer undoes Container: ok is false when name is not one of
// its names.
func ParseContainer(name string) (app, service, rel string, ok bool) {
	rest, ok := strings.CutPrefix(name, ContainerPrefix)
	if !ok {
		return "", "", "", false
	}
	var parts [2]string
	for p := range parts {
		var b strings.Builder
		for {
			if rest == "" {
				return "", "", "", false
			}
			c := rest[0]
			rest = rest[1:]
			if c == '_' {
				break
			}
			if c == '.' {
				if rest == "" || rest[0] != '.' && rest[0] != '_' {
					return "", "", "", false
				}
				c, rest = rest[0], rest[1:]
			}
			b.WriteByte(c)
		}
		parts[p] = b.String()
		if !IsName(parts[p]) {
			return "", "", "", false
		}
	}
	if rest == "" {
		return "", "", "", false
	}
	return parts[0], parts[1], rest, true
}

func escape(s string) string {
	if !strings.ContainsAny(s, "._") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '.' || c == '_' {
			b.WriteByte('.')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
