package api

import (
	"encoding/json"
	"errors"
	"strconv"
	"testing"
)

// roundTrip checks that a value the parser accepted re-encodes to JSON that
// the parser accepts again as the same value.
func roundTrip[T comparable](t *testing.T, v T) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %+v: %v", v, err)
	}
	var again T
	if err := decodeJSON(b, &again, false); err != nil {
		t.Fatalf("re-decode %s: %v", b, err)
	}
	if again != v {
		t.Fatalf("round trip: got %+v, want %+v", again, v)
	}
}

func FuzzHoldRequest(f *testing.F) {
	for _, s := range []string{
		`{"app":"kiosk","service":"ui","reason":"filming","for":"30m"}`,
		`{"all":true}`, `{"app":"a","service":"b","for":"-1s"}`, `{"for":"1h2m3.5s"}`,
		`{"app":1}`, `{} {}`, `{"app":"a","x":1}`, ``, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, d, err := parseHold(data)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v does not wrap ErrBadRequest", err)
			}
			return
		}
		if d < 0 || (h.For == "") != (d == 0) {
			t.Fatalf("for %q parsed as %v", h.For, d)
		}
		roundTrip(t, h)
	})
}

func FuzzUpdateRequest(f *testing.F) {
	for _, s := range []string{`{"force":true,"cancel":false}`, `{}`, ``, `{"force":1}`, `{"force":true}x`, `{"Force":true}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var u UpdateRequest
		if err := decodeJSON(data, &u, true); err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v does not wrap ErrBadRequest", err)
			}
			return
		}
		roundTrip(t, u)
		var p PowerRequest
		if decodeJSON(data, &p, true) == nil {
			roundTrip(t, p)
		}
		var r RestartRequest
		if decodeJSON(data, &r, true) == nil {
			roundTrip(t, r)
		}
	})
}

func FuzzJournalLimit(f *testing.F) {
	for _, s := range []string{"1", "0", "-1", "100000", "100001", "ten", "", "+5", "0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		n, err := parseLimit(q, true)
		if err != nil {
			return
		}
		if n < 1 || n > maxJournal || strconv.Itoa(n) != q && "+"+strconv.Itoa(n) != q && !leadingZeros(q, n) {
			t.Fatalf("limit %q accepted as %d", q, n)
		}
	})
}

func leadingZeros(q string, n int) bool {
	for len(q) > 1 && (q[0] == '0' || q[0] == '+') {
		q = q[1:]
	}
	return q == strconv.Itoa(n)
}
