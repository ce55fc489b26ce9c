package store

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// The decoders read bytes from disk, which a power cut, a bad SD card or an
// older latch may have left in any state: each must either return the
// record or ErrCorrupt, never panic, and a record it accepts must survive
// encoding and decoding again unchanged. Seed corpora are in
// testdata/fuzz/<FuzzName>/.

func checkDecoded[T any](t *testing.T, err error, got T, again func([]byte) (T, error)) {
	t.Helper()
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decode error %v is not ErrCorrupt", err)
		}
		return
	}
	data, err := json.Marshal(got)
	if err != nil {
		t.Fatalf("re-encode %+v: %v", got, err)
	}
	got2, err := again(data)
	if err != nil {
		t.Fatalf("decode of re-encoded %s: %v", data, err)
	}
	if diff := cmp.Diff(got, got2, cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("round trip (-first +second):\n%s", diff)
	}
}

func FuzzDecodeApp(f *testing.F) {
	f.Add([]byte("kiosk"), []byte(`{"name":"kiosk","current":"r1","target":"r2","updated":"2026-11-02T10:04:05Z","by":"cli"}`))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		a, err := decodeApp(key, val)
		checkDecoded(t, err, a, func(b []byte) (App, error) { return decodeApp(key, b) })
	})
}

func FuzzDecodeUpdate(f *testing.F) {
	f.Add([]byte(`{"id":"sha256:00","state":"waiting","files":2,"attempts":1,"reason":"kiosk/ui locked","forced":true,"created":"2026-11-02T10:04:05Z","updated":"2026-11-02T10:04:05Z","by":"target-file"}`))
	f.Fuzz(func(t *testing.T, val []byte) {
		r, err := decodeUpdate(val)
		checkDecoded(t, err, r, decodeUpdate)
	})
}

func FuzzDecodeFile(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1}, []byte(`{"app":"kiosk","service":"ui","source":"https://updates.example/ui","sha256":"ab","path":"/opt/ui","mode":493,"size":-1,"done":10,"complete":false}`))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		fl, err := decodeFile(key, val)
		checkDecoded(t, err, fl, func(b []byte) (File, error) { return decodeFile(key, b) })
	})
}

func FuzzDecodeApply(f *testing.F) {
	f.Add([]byte(`{"update_id":"sha256:00","steps":[{"app":"kiosk","service":"ui","phase":"stopped","at":"2026-11-02T10:04:05Z"}],"locks":[{"path":"/tmp/latch/services/kiosk/ui/updates.lock","dev":2049,"ino":18446744073709551615}],"started":"2026-11-02T10:04:05Z"}`))
	f.Fuzz(func(t *testing.T, val []byte) {
		a, err := decodeApply(val)
		checkDecoded(t, err, a, decodeApply)
	})
}

func FuzzDecodeHold(f *testing.F) {
	f.Add([]byte("kiosk/ui"), []byte(`{"app":"kiosk","service":"ui","reason":"filming","expires":"2026-11-02T11:04:05Z","created":"2026-11-02T10:04:05Z","by":"cli"}`))
	f.Add([]byte("all"), []byte(`{"all":true,"expires":"0001-01-01T00:00:00Z","created":"2026-11-02T10:04:05Z"}`))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		h, err := decodeHold(key, val)
		checkDecoded(t, err, h, func(b []byte) (Hold, error) { return decodeHold(key, b) })
	})
}

func FuzzDecodeOverride(f *testing.F) {
	f.Add([]byte(`{"enabled":true,"by":"api:uid=0","at":"2026-11-02T10:04:05Z"}`))
	f.Fuzz(func(t *testing.T, val []byte) {
		o, err := decodeOverride(val)
		checkDecoded(t, err, o, decodeOverride)
	})
}

func FuzzDecodeReboot(f *testing.F) {
	f.Add([]byte(`{"kind":"reboot","boot_id":"0f3c","reason":"GPU_MEM","requested":"2026-11-02T10:04:05Z","by":"config"}`))
	f.Fuzz(func(t *testing.T, val []byte) {
		r, err := decodeReboot(val)
		checkDecoded(t, err, r, decodeReboot)
	})
}

func FuzzDecodeConfig(f *testing.F) {
	f.Add([]byte(`{"KIOSK_URL":"http://localhost:8080","GPU_MEM":"128"}`))
	f.Fuzz(func(t *testing.T, val []byte) {
		m, err := decodeConfig(val)
		checkDecoded(t, err, m, decodeConfig)
	})
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add(seqKey(7), []byte(`{"seq":7,"time":"2026-11-02T10:04:05Z","kind":"deferred","app":"kiosk","service":"ui","release":"r2","by":"api:uid=0","message":"held by pid 42"}`))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		e, err := decodeEvent(key, val)
		checkDecoded(t, err, e, func(b []byte) (Event, error) { return decodeEvent(key, b) })
	})
}

func FuzzDecodeVersion(f *testing.F) {
	f.Add([]byte("1"))
	f.Fuzz(func(t *testing.T, val []byte) {
		v, err := decodeVersion(val)
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decode error %v is not ErrCorrupt", err)
		}
		if err == nil && v < 0 {
			t.Fatalf("version %d accepted", v)
		}
	})
}

// FuzzParseMeta feeds the meta-page parser of Open's pre-check.
func FuzzParseMeta(f *testing.F) {
	f.Add(make([]byte, 80))
	f.Fuzz(func(t *testing.T, page []byte) {
		parseMeta(page)
	})
}
