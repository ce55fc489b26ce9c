package compose

import "strings"

// The checks below are small hand-written matchers for the names latch
// accepts; each comment gives the language as a regular expression.

// isName reports whether s is ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ (a service,
// volume or network name).
func isName(s string) bool {
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

// isEnvName reports whether s is ^[A-Za-z_][A-Za-z0-9_]*$.
func isEnvName(s string) bool {
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

// isCapName reports whether s is ^(CAP_)?[A-Z_]+$|^ALL$, which is the same
// language as ^[A-Z_]+$.
func isCapName(s string) bool {
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

// isDigest reports whether s is sha256:[0-9a-f]{64}.
func isDigest(s string) bool {
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

// isRepoPath reports whether s is [a-z0-9][a-z0-9._/:-]*.
func isRepoPath(s string) bool {
	if s == "" || !(isLower(s[0]) || isDigit(s[0])) {
		return false
	}
	return allRepoChars(s[1:])
}

func allRepoChars(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(isLower(c) || isDigit(c) || c == '.' || c == '_' || c == '/' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isLower(c byte) bool  { return c >= 'a' && c <= 'z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }
func isAlnum(c byte) bool  { return isLetter(c) || isDigit(c) }

// isImageRef reports whether s is
// ^[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?(@sha256:[0-9a-f]{64})?$.
func isImageRef(s string) bool {
	if i := strings.IndexByte(s, '@'); i >= 0 {
		if !isDigest(s[i+1:]) {
			return false
		}
		s = s[:i]
	}
	if isRepoPath(s) {
		return true
	}
	// A tag with capitals can only follow the last colon: a tag holds no
	// colon, and the name before it is lowercase.
	i := strings.LastIndexByte(s, ':')
	if i < 1 || !isRepoPath(s[:i]) {
		return false
	}
	return isTag(s[i+1:])
}

// isTag reports whether s is [A-Za-z0-9_][A-Za-z0-9_.-]*.
func isTag(s string) bool {
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

// isComposeVersion reports whether s is ^[23](\.[0-9]+){0,2}$.
func isComposeVersion(s string) bool {
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
