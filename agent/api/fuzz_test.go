package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The properties the fuzz targets check, for every body of the API:
//   - an accepted body means what it says: each key once, spelt exactly as
//     a field's JSON name, and each field holds its key's value decoded on
//     its own (absent keys leave the zero value);
//   - an accepted value re-encodes to a body that is accepted as the same
//     value;
//   - a refused body wraps ErrBadRequest and leaves the destination as it
//     was, and at the API it changes nothing in a real agent.

// topLevel returns the keys of the JSON object in data in order, duplicates
// included, and their raw values; an empty body has none.
func topLevel(t *testing.T, data []byte) ([]string, []json.RawMessage) {
	t.Helper()
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("accepted %q, which is not a JSON object (%v, %v)", data, tok, err)
	}
	var keys []string
	var vals []json.RawMessage
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			t.Fatalf("accepted %q: key: %v", data, err)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			t.Fatalf("accepted %q: value of %v: %v", data, kt, err)
		}
		keys, vals = append(keys, kt.(string)), append(vals, raw)
	}
	return keys, vals
}

// meansWhatItSays checks the first property for got, accepted from data.
func meansWhatItSays[T any](t *testing.T, data []byte, got T) {
	t.Helper()
	rt := reflect.TypeFor[T]()
	fields := map[string]int{}
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		fields[name] = i
	}
	want := reflect.New(rt).Elem()
	keys, vals := topLevel(t, data)
	seen := map[string]bool{}
	for i, k := range keys {
		if seen[k] {
			t.Fatalf("accepted %q: key %q is given twice", data, k)
		}
		seen[k] = true
		fi, ok := fields[k]
		if !ok {
			t.Fatalf("accepted %q: key %q is no field's name (%v)", data, k, fields)
		}
		fv := reflect.New(rt.Field(fi).Type)
		if err := json.Unmarshal(vals[i], fv.Interface()); err != nil {
			t.Fatalf("accepted %q: key %q: %v", data, k, err)
		}
		want.Field(fi).Set(fv.Elem())
	}
	if !reflect.DeepEqual(got, want.Interface()) {
		t.Fatalf("accepted %q as %+v, but its keys say %+v", data, got, want.Interface())
	}
}

// roundTrip checks that v re-encodes to JSON that is accepted as v again.
func roundTrip[T any](t *testing.T, v T) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %+v: %v", v, err)
	}
	var again T
	if err := decodeJSON(b, &again, false); err != nil {
		t.Fatalf("re-decode %s: %v", b, err)
	}
	if !reflect.DeepEqual(again, v) {
		t.Fatalf("round trip: got %+v, want %+v", again, v)
	}
}

// checkDecode decodes data into a destination that holds sentinel and
// checks every property of the parser; it reports whether data was
// accepted.
func checkDecode[T any](t *testing.T, data []byte, emptyOK bool, sentinel T) bool {
	t.Helper()
	v := sentinel
	if err := decodeJSON(data, &v, emptyOK); err != nil {
		if !errors.Is(err, ErrBadRequest) {
			t.Fatalf("refused %q: error %v does not wrap ErrBadRequest", data, err)
		}
		if !reflect.DeepEqual(v, sentinel) {
			t.Fatalf("refused %q, yet the destination changed from %+v to %+v", data, sentinel, v)
		}
		return false
	}
	meansWhatItSays(t, data, v)
	roundTrip(t, v)
	return true
}

// agentMark is what a refused request must leave alone: the newest journal
// event, the holds, the lock entries and the override.
func agentMark(t *testing.T, e *env) string {
	t.Helper()
	ctx := t.Context()
	evs, err := e.a.Events(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	es, err := e.a.Locks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	o, err := e.a.Override(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal([]any{evs, settled(t, e).Holds, es, o})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func FuzzHoldRequest(f *testing.F) {
	for _, s := range []string{
		`{"app":"kiosk","service":"ui","reason":"filming","for":"30m"}`,
		`{"all":true}`, `{"app":"a","service":"b","for":"-1s"}`, `{"for":"1h2m3.5s"}`,
		`{"app":1}`, `{} {}`, `{"app":"a","x":1}`, ``, `null`, `[]`,
		`{"app":"kiosk","service":"ui","App":"other"}`, `{"all":false,"all":true}`,
		`{"app":"kiosk","service":"ui","for":"1h","for":"1s"}`, `{"ALL":true}`,
	} {
		f.Add([]byte(s))
	}
	e := newEnv(f, envOpts{quiet: true})
	f.Fuzz(func(t *testing.T, data []byte) {
		sentinel := HoldRequest{App: "sentinel", Reason: "untouched"}
		accepted := checkDecode(t, data, false, sentinel)
		h, d, err := parseHold(data)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("parseHold %q: error %v does not wrap ErrBadRequest", data, err)
			}
			if h != (HoldRequest{}) || d != 0 {
				t.Fatalf("parseHold refused %q, yet returned %+v, %v", data, h, d)
			}
		} else {
			if !accepted {
				t.Fatalf("parseHold accepted %q, which the decoder refuses", data)
			}
			want := time.Duration(0)
			if h.For != "" {
				want, _ = time.ParseDuration(h.For)
			}
			if d != want || d < 0 || (h.For == "") != (d == 0) {
				t.Fatalf("for %q parsed as %v, want a positive %v", h.For, d, want)
			}
		}
		// At the API: a refused body changes nothing; an accepted one
		// makes exactly the hold it asks for, which is then released.
		uc := e.transports()[0]
		before := agentMark(t, e)
		a := uc.call(t, "POST", "/v2/locks", bytes.NewReader(data), nil)
		if a.code != 201 {
			if err == nil && a.code != 400 {
				t.Fatalf("POST /v2/locks %q: got %d %s, want 201 or the agent's 400", data, a.code, a.body)
			}
			if err != nil && a.code != 400 {
				t.Fatalf("POST /v2/locks %q (refused by the parser): got %d %s, want 400", data, a.code, a.body)
			}
			if after := agentMark(t, e); after != before {
				t.Fatalf("POST /v2/locks %q was refused (%d %s), yet the agent changed:\nbefore %s\nafter  %s", data, a.code, a.body, before, after)
			}
			return
		}
		if err != nil {
			t.Fatalf("POST /v2/locks %q: got 201 for a body the parser refuses (%v)", data, err)
		}
		holds := settled(t, e).Holds
		if len(holds) != 1 || holds[0].App != h.App || holds[0].Service != h.Service || holds[0].All != h.All || holds[0].Reason != h.Reason {
			t.Fatalf("POST /v2/locks %q: got holds %+v, want the one asked for: %+v", data, holds, h)
		}
		path := "/v2/locks/" + h.App + "/" + h.Service
		if h.All {
			path = "/v2/locks/all"
		}
		if a := uc.call(t, "DELETE", path, nil, nil); a.code != 200 {
			t.Fatalf("release the fuzzed hold: %d %s", a.code, a.body)
		}
	})
}

func FuzzUpdateRequest(f *testing.F) {
	for _, s := range []string{
		`{"force":true,"cancel":false}`, `{}`, ``, `{"force":1}`, `{"force":true}x`, `{"Force":true}`,
		`{"force":false,"force":true}`, `{"serviceName":"ui","force":true}`, `{"servicename":"ui"}`,
		`{"enabled":true}`, `{"enabled":false,"ENABLED":true}`, `{"enabled":null}`, `null`,
		`{"f\u006frce":true}`, `{"force":true,"cancel":true,"x":{"y":1,"y":2}}`,
	} {
		f.Add([]byte(s))
	}
	e := newEnv(f, envOpts{quiet: true})
	tru := true
	f.Fuzz(func(t *testing.T, data []byte) {
		okUpdate := checkDecode(t, data, true, UpdateRequest{Force: true, Cancel: true})
		checkDecode(t, data, true, PowerRequest{Force: true})
		checkDecode(t, data, false, RestartRequest{ServiceName: "sentinel", Force: true})
		okOverride := checkDecode(t, data, false, OverrideRequest{Enabled: &tru})

		// At the API: a refused update body changes nothing. (An
		// accepted one with nothing pending has nothing to do.)
		uc := e.transports()[0]
		if !okUpdate {
			before := agentMark(t, e)
			if a := uc.call(t, "POST", "/v1/update", bytes.NewReader(data), nil); a.code != 400 {
				t.Fatalf("POST /v1/update %q (refused by the parser): got %d %s, want 400", data, a.code, a.body)
			}
			if after := agentMark(t, e); after != before {
				t.Fatalf("POST /v1/update %q was refused, yet the agent changed:\nbefore %s\nafter  %s", data, before, after)
			}
		}
		// The override: refused changes nothing, accepted sets what it says.
		before := agentMark(t, e)
		was := settled(t, e).OverrideLock
		a := uc.call(t, "PUT", "/v2/device/override", bytes.NewReader(data), nil)
		var req OverrideRequest
		switch {
		case a.code == 200:
			if !okOverride || decodeJSON(data, &req, false) != nil || req.Enabled == nil {
				t.Fatalf("PUT /v2/device/override %q: got 200 for a body without a valid \"enabled\"", data)
			}
			if got := settled(t, e).OverrideLock; got != *req.Enabled {
				t.Fatalf("PUT /v2/device/override %q: override is %v, want %v", data, got, *req.Enabled)
			}
		case a.code == 400:
			if after := agentMark(t, e); after != before || settled(t, e).OverrideLock != was {
				t.Fatalf("PUT /v2/device/override %q was refused, yet the agent changed:\nbefore %s\nafter  %s", data, before, after)
			}
		default:
			t.Fatalf("PUT /v2/device/override %q: got %d %s, want 200 or 400", data, a.code, a.body)
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
			if !errors.Is(err, ErrBadRequest) || n != 0 {
				t.Fatalf("limit %q refused as %d, %v: want 0 and ErrBadRequest", q, n, err)
			}
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
