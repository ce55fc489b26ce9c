package trust

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// refusal is an error of this package: its message is for people, and it
// matches its kinds (the sentinels) and its cause with errors.Is.
type refusal struct {
	kinds []error
	err   error
}

func (r *refusal) Error() string { return r.err.Error() }

func (r *refusal) Unwrap() []error { return append(append([]error(nil), r.kinds...), r.err) }

// refuse builds a refusal of one kind; a %w in format also wraps its cause.
func refuse(kind error, format string, args ...any) error {
	return &refusal{kinds: []error{kind}, err: fmt.Errorf(format, args...)}
}

func malformed(format string, args ...any) error { return refuse(ErrMalformed, format, args...) }

// maxDepth bounds the nesting of any document this package reads.
const maxDepth = 64

// checkJSON checks that b is one JSON value with no duplicate name in any
// object and no nesting deeper than maxDepth. encoding/json keeps the last
// of two equal names silently: a document whose signer saw one value and
// whose reader sees another is refused here, before anything reads it.
func checkJSON(b []byte, what string) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return malformed("%s: empty, want a JSON document", what)
	}
	if !utf8.Valid(b) {
		// encoding/json would read invalid bytes as U+FFFD, so two names
		// that differ here would be one name to a reader.
		return malformed("%s: not UTF-8 text", what)
	}
	if !json.Valid(b) {
		dec := json.NewDecoder(bytes.NewReader(b))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return malformed("%s: not valid JSON: %w", what, err)
		}
		return malformed("%s: data after the JSON value: a file holds one document", what)
	}
	// b is valid JSON: in an object, a string right after '{' or ',' is a
	// name, any other string a value.
	type frame struct {
		obj     bool
		wantKey bool
		names   map[string]struct{}
	}
	stack := make([]frame, 0, 8)
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '{', '[':
			if len(stack) >= maxDepth {
				return malformed("%s: nested deeper than %d levels", what, maxDepth)
			}
			stack = append(stack, frame{obj: b[i] == '{', wantKey: b[i] == '{'})
		case '}', ']':
			stack = stack[:len(stack)-1]
		case ',':
			if n := len(stack); stack[n-1].obj {
				stack[n-1].wantKey = true
			}
		case '"':
			j := i + 1
			escaped := false
			for ; b[j] != '"'; j++ {
				if b[j] == '\\' {
					escaped = true
					j++
				}
			}
			if n := len(stack); n > 0 && stack[n-1].wantKey {
				name := string(b[i+1 : j])
				if escaped {
					if err := json.Unmarshal(b[i:j+1], &name); err != nil {
						return malformed("%s: %w", what, err)
					}
				}
				f := &stack[n-1]
				if f.names == nil {
					f.names = map[string]struct{}{}
				}
				if _, dup := f.names[name]; dup {
					return malformed("%s: field %q appears twice in one object: remove one", what, name)
				}
				f.names[name] = struct{}{}
				f.wantKey = false
			}
			i = j
		}
	}
	return nil
}

// object splits raw, a JSON object, into its fields. Every name must be in
// required or optional, spelled exactly (encoding/json would match "Version"
// to "version"), and every required name present.
func object(raw json.RawMessage, where string, required, optional []string) (map[string]json.RawMessage, error) {
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
		return nil, malformed("%s: want a JSON object, got %s", where, short(raw))
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, malformed("%s: %w", where, err)
	}
	for name := range m {
		if !contains(required, name) && !contains(optional, name) {
			return nil, malformed("%s: unknown field %q (known: %s)", where, name, strings.Join(append(append([]string(nil), required...), optional...), ", "))
		}
	}
	for _, name := range required {
		if _, ok := m[name]; !ok {
			return nil, malformed("%s: field %q is missing", where, name)
		}
	}
	return m, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// short quotes the start of raw for an error message.
func short(raw []byte) string {
	s := string(bytes.TrimSpace(raw))
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return strconv.Quote(s)
}

func jsonString(raw json.RawMessage, where string) (string, error) {
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '"' {
		return "", malformed("%s: want a string, got %s", where, short(raw))
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", malformed("%s: %w", where, err)
	}
	return s, nil
}

// jsonUint reads a non-negative integer written in plain digits: 1.0, 1e3
// and -1 are refused, as is anything past uint64.
func jsonUint(raw json.RawMessage, where string) (uint64, error) {
	t := bytes.TrimSpace(raw)
	ok := len(t) > 0 && (len(t) == 1 || t[0] != '0')
	for _, c := range t {
		ok = ok && c >= '0' && c <= '9'
	}
	if !ok {
		return 0, malformed("%s: want a whole number such as 1, got %s", where, short(raw))
	}
	n, err := strconv.ParseUint(string(t), 10, 64)
	if err != nil {
		return 0, malformed("%s: %s is out of range", where, t)
	}
	return n, nil
}

func jsonTime(raw json.RawMessage, where string) (time.Time, error) {
	s, err := jsonString(raw, where)
	if err != nil {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, malformed("%s: %q is not an RFC 3339 time such as 2026-12-01T00:00:00Z", where, s)
	}
	return t.UTC(), nil
}

func jsonList(raw json.RawMessage, where string) ([]json.RawMessage, error) {
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '[' {
		return nil, malformed("%s: want a list, got %s", where, short(raw))
	}
	var l []json.RawMessage
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, malformed("%s: %w", where, err)
	}
	return l, nil
}

// checkName checks a fleet or device name: printable, no white space, so
// that it reads the same in every message and log.
func checkName(s, where string) error {
	if s == "" {
		return malformed("%s: empty: name the fleet or device", where)
	}
	if len(s) > 256 {
		return malformed("%s: longer than 256 bytes", where)
	}
	if !utf8.ValidString(s) {
		return malformed("%s: not UTF-8", where)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return malformed("%s: %q holds a space or control character", where, s)
		}
	}
	return nil
}

func isKeyID(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// decodeB64 decodes standard base64, padded, with nothing around it.
func decodeB64(s string) ([]byte, bool) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	return b, err == nil
}
