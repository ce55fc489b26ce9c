package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
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

// decodeBody decodes one JSON value of r's body into v: unknown fields and
// trailing data are errors. An empty body decodes as {} when emptyOK.
func decodeBody(r io.Reader, v any, emptyOK bool) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err // *http.MaxBytesError included
	}
	return decodeJSON(data, v, emptyOK)
}

// decodeJSON is decodeBody's parser, separate so that it can be fuzzed.
func decodeJSON(data []byte, v any, emptyOK bool) error {
	if len(bytes.TrimSpace(data)) == 0 {
		if emptyOK {
			return nil
		}
		return fmt.Errorf("%w: empty body, want a JSON object", ErrBadRequest)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: decode JSON body: %v", ErrBadRequest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: trailing data after the JSON object", ErrBadRequest)
	}
	return nil
}

// parseHold decodes and validates a POST /v2/locks body.
func parseHold(data []byte) (HoldRequest, time.Duration, error) {
	var h HoldRequest
	if err := decodeJSON(data, &h, false); err != nil {
		return h, 0, err
	}
	var d time.Duration
	if h.For != "" {
		var err error
		if d, err = time.ParseDuration(h.For); err != nil {
			return h, 0, fmt.Errorf("%w: \"for\": %q is not a duration such as 30m or 2h", ErrBadRequest, h.For)
		}
		if d <= 0 {
			return h, 0, fmt.Errorf("%w: \"for\": %s is not a positive duration", ErrBadRequest, h.For)
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
