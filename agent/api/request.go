package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// UpdateRequest is the body of POST /v1/update.
type UpdateRequest struct {
	Force  bool `json:"force"`
	Cancel bool `json:"cancel"`
}

// PowerRequest is the body of POST /v1/reboot and POST /v1/shutdown.
type PowerRequest struct {
	Force bool `json:"force"`
}

// RestartRequest is the body of POST /v2/applications/{app}/restart-service.
type RestartRequest struct {
	ServiceName string `json:"serviceName"`
	Force       bool   `json:"force"`
}

// HoldRequest is the body of POST /v2/locks. For is a Go duration ("30m",
// "2h"); "" means no expiry.
type HoldRequest struct {
	App     string `json:"app,omitempty"`
	Service string `json:"service,omitempty"`
	All     bool   `json:"all,omitempty"`
	Reason  string `json:"reason,omitempty"`
	For     string `json:"for,omitempty"`
}

// OverrideRequest is the body of PUT /v2/device/override; Enabled is
// required.
type OverrideRequest struct {
	Enabled *bool `json:"enabled"`
}

// Errors of request parsing (400 unless it is a *http.MaxBytesError, 413).
var (
	// ErrBadRequest: the body or a query parameter is malformed.
	ErrBadRequest = errors.New("bad request")
)

// decodeBody decodes one JSON object of r's body into v (see decodeJSON).
func decodeBody[T any](r io.Reader, v *T, emptyOK bool) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err // *http.MaxBytesError included
	}
	return decodeJSON(data, v, emptyOK)
}

// decodeJSON decodes one JSON object of data into v, strictly: malformed
// JSON, unknown fields, trailing data, a key that is not spelt exactly as
// its field ("Force" for "force", which encoding/json would take) and a key
// given twice (where encoding/json would let the last one win) are errors.
// An empty body decodes as {} when emptyOK. On an error v is left as it was.
func decodeJSON[T any](data []byte, v *T, emptyOK bool) error {
	if len(bytes.TrimSpace(data)) == 0 {
		if emptyOK {
			var zero T
			*v = zero
			return nil
		}
		return fmt.Errorf("%w: empty body, want a JSON object", ErrBadRequest)
	}
	var out T
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		return fmt.Errorf("%w: decode JSON body: %v", ErrBadRequest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: trailing data after the JSON object", ErrBadRequest)
	}
	if err := checkKeys(data, jsonKeys(reflect.TypeFor[T]())); err != nil {
		return err
	}
	*v = out
	return nil
}

// maxKeyDepth bounds the nesting checkKeys walks; encoding/json has decoded
// the body already, so this only keeps the walk's stack small.
const maxKeyDepth = 32

// checkKeys refuses what encoding/json lets through silently: a body that
// is not an object, a key given twice in any object of the body, and a key
// of the top object that is not spelt exactly as one of known. It is the
// same rule as the target-state parser's, for the API's own bodies.
func checkKeys(data []byte, known []string) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var walk func(path string, depth int) error
	walk = func(path string, depth int) error {
		if depth > maxKeyDepth {
			return fmt.Errorf("%w: %s: nested more than %d levels deep", ErrBadRequest, path, maxKeyDepth)
		}
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%w: decode JSON body: %v", ErrBadRequest, err)
		}
		d, ok := tok.(json.Delim)
		if depth == 0 && d != '{' {
			return fmt.Errorf("%w: the body is %s, want a JSON object", ErrBadRequest, tokenKind(tok))
		}
		if !ok {
			return nil
		}
		switch d {
		case '{':
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return fmt.Errorf("%w: decode JSON body: %v", ErrBadRequest, err)
				}
				k, _ := kt.(string)
				p := strconv.Quote(k)
				if path != "" {
					p = path + "." + p
				}
				if seen[k] {
					return fmt.Errorf("%w: key %s is given twice: give each key once", ErrBadRequest, p)
				}
				seen[k] = true
				if depth == 0 && !slices.Contains(known, k) {
					hint := ""
					for _, f := range known {
						if strings.EqualFold(f, k) {
							hint = fmt.Sprintf(": keys are case-sensitive, did you mean %q?", f)
							break
						}
					}
					return fmt.Errorf("%w: unknown field %s%s (known: %s)", ErrBadRequest, p, hint, strings.Join(known, ", "))
				}
				if err := walk(p, depth+1); err != nil {
					return err
				}
			}
		case '[':
			for i := 0; dec.More(); i++ {
				if err := walk(fmt.Sprintf("%s[%d]", path, i), depth+1); err != nil {
					return err
				}
			}
		}
		if _, err := dec.Token(); err != nil { // the closing delimiter
			return fmt.Errorf("%w: decode JSON body: %v", ErrBadRequest, err)
		}
		return nil
	}
	return walk("", 0)
}

func tokenKind(tok json.Token) string {
	switch tok.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case json.Delim:
		return "an array"
	}
	return "not an object"
}

// jsonKeys are the JSON names of t's fields, as their tags spell them.
func jsonKeys(t reflect.Type) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-" || !f.IsExported():
			continue
		case name == "":
			name = f.Name
		}
		keys = append(keys, name)
	}
	return keys
}

// parseHold decodes and validates a POST /v2/locks body.
func parseHold(data []byte) (HoldRequest, time.Duration, error) {
	var h HoldRequest
	if err := decodeJSON(data, &h, false); err != nil {
		return HoldRequest{}, 0, err
	}
	var d time.Duration
	if h.For != "" {
		var err error
		if d, err = time.ParseDuration(h.For); err != nil {
			return HoldRequest{}, 0, fmt.Errorf("%w: \"for\": %q is not a duration such as 30m or 2h", ErrBadRequest, h.For)
		}
		if d <= 0 {
			return HoldRequest{}, 0, fmt.Errorf("%w: \"for\": %s is not a positive duration", ErrBadRequest, h.For)
		}
	}
	return h, d, nil
}

// maxJournal bounds ?limit= of GET /v2/journal.
const maxJournal = 100000

// parseLimit validates ?limit=N: absent means all events (0).
func parseLimit(q string, present bool) (int, error) {
	if !present {
		return 0, nil
	}
	n, err := strconv.Atoi(q)
	if err != nil || n < 1 || n > maxJournal {
		return 0, fmt.Errorf("%w: limit %q: want a whole number from 1 to %d", ErrBadRequest, q, maxJournal)
	}
	return n, nil
}

// bodyError maps a body-reading error to its status: 413 over MaxBody,
// else 400.
func bodyError(err error) int {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusBadRequest
}
