package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
)

// The decoders read bytes from disk, which a power cut, a bad SD card or an
// older latch may have left in any state: each must either return the
// record or ErrCorrupt naming where the record lives, never panic; a record
// it accepts must be one the matching Put method would write, and must
// survive encoding (as the Put methods encode: encoding/json) and decoding
// again unchanged, the second encoding byte for byte the first. Seed
// corpora are in testdata/fuzz/<FuzzName>/.

// checkDecoded checks the properties above for one decoded value: err and
// got are what the decoder returned for some input, where is the
// "bucket/" or "bucket/key" its errors must name, valid is what the writer
// checks before it writes, and again decodes re-encoded bytes.
func checkDecoded[T any](t *testing.T, err error, got T, where string, valid func(T) error, again func([]byte) (T, error)) {
	t.Helper()
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decode error %v is not ErrCorrupt", err)
		}
		if !strings.Contains(err.Error(), "decode "+where) {
			t.Fatalf("decode error %q does not name %s", err, where)
		}
		return
	}
	if valid != nil {
		if err := valid(got); err != nil {
			t.Fatalf("decoded %+v, which the writer refuses: %v", got, err)
		}
	}
	data, err := json.Marshal(got)
	if err != nil {
		t.Fatalf("re-encode %+v: %v", got, err)
	}
	got2, err := again(data)
	if err != nil {
		t.Fatalf("decode of re-encoded %s: %v", data, err)
	}
	if diff := cmp.Diff(got, got2); diff != "" {
		t.Fatalf("round trip of %s (-first +second):\n%s", data, diff)
	}
	data2, err := json.Marshal(got2)
	if err != nil || !bytes.Equal(data, data2) {
		t.Fatalf("second encoding %s (%v), want the first one %s", data2, err, data)
	}
}

func FuzzDecodeApp(f *testing.F) {
	f.Add([]byte("kiosk"), []byte(`{"name":"kiosk","current":"r1","target":"r2","updated":"2026-11-02T10:04:05Z","by":"cli"}`))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		a, err := decodeApp(key, val)
		checkDecoded(t, err, a, "apps/", App.validate, func(b []byte) (App, error) { return decodeApp(key, b) })
	})
}

func FuzzDecodeUpdate(f *testing.F) {
	f.Add([]byte(`{"id":"sha256:00","state":"waiting","files":2,"attempts":1,"reason":"kiosk/ui locked","forced":true,"created":"2026-11-02T10:04:05Z","updated":"2026-11-02T10:04:05Z","by":"target-file"}`))
	f.Fuzz(func(t *testing.T, val []byte) {
		r, err := decodeUpdate(val)
		checkDecoded(t, err, r, "pending/update", updateRecord.validate, decodeUpdate)
	})
}

func FuzzDecodeFile(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1}, []byte(`{"app":"kiosk","service":"ui","source":"https://updates.example/ui","sha256":"ab","path":"/opt/ui","mode":493,"size":-1,"done":10,"complete":false}`))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		fl, err := decodeFile(key, val)
		checkDecoded(t, err, fl, "pending/files/", File.validate, func(b []byte) (File, error) { return decodeFile(key, b) })
	})
}

func FuzzDecodeApply(f *testing.F) {
	f.Add([]byte(`{"update_id":"sha256:00","steps":[{"app":"kiosk","service":"ui","phase":"stopped","at":"2026-11-02T10:04:05Z"}],"locks":[{"path":"/tmp/latch/services/kiosk/ui/updates.lock","dev":2049,"ino":18446744073709551615}],"started":"2026-11-02T10:04:05Z"}`))
	f.Fuzz(func(t *testing.T, val []byte) {
		a, err := decodeApply(val)
		checkDecoded(t, err, a, "state/apply", (*Apply).validate, decodeApply)
	})
}

func FuzzDecodeHold(f *testing.F) {
	f.Add([]byte("kiosk/ui"), []byte(`{"app":"kiosk","service":"ui","reason":"filming","expires":"2026-11-02T11:04:05Z","created":"2026-11-02T10:04:05Z","by":"cli"}`))
	f.Add([]byte("all"), []byte(`{"all":true,"expires":"0001-01-01T00:00:00Z","created":"2026-11-02T10:04:05Z"}`))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		h, err := decodeHold(key, val)
		checkDecoded(t, err, h, "holds/", Hold.validate, func(b []byte) (Hold, error) { return decodeHold(key, b) })
	})
}

func FuzzDecodeOverride(f *testing.F) {
	f.Add([]byte(`{"enabled":true,"by":"api:uid=0","at":"2026-11-02T10:04:05Z"}`))
	f.Fuzz(func(t *testing.T, val []byte) {
		o, err := decodeOverride(val)
		checkDecoded(t, err, o, "state/override", nil, decodeOverride)
	})
}

func FuzzDecodeReboot(f *testing.F) {
	f.Add([]byte(`{"kind":"reboot","boot_id":"0f3c","reason":"GPU_MEM","requested":"2026-11-02T10:04:05Z","by":"config"}`))
	f.Fuzz(func(t *testing.T, val []byte) {
		r, err := decodeReboot(val)
		checkDecoded(t, err, r, "state/reboot", (*Reboot).validate, decodeReboot)
	})
}

func FuzzDecodeConfig(f *testing.F) {
	f.Add([]byte(`{"KIOSK_URL":"http://localhost:8080","GPU_MEM":"128"}`))
	f.Fuzz(func(t *testing.T, val []byte) {
		m, err := decodeConfig(val)
		checkDecoded(t, err, m, "state/config", validConfig, decodeConfig)
	})
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add(seqKey(7), []byte(`{"seq":7,"time":"2026-11-02T10:04:05Z","kind":"deferred","app":"kiosk","service":"ui","release":"r2","by":"api:uid=0","message":"held by pid 42"}`))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		e, err := decodeEvent(key, val)
		checkDecoded(t, err, e, "events/", validEvent, func(b []byte) (Event, error) { return decodeEvent(key, b) })
	})
}

// validEvent is what Tx.Log refuses to write.
func validEvent(e Event) error {
	if e.Kind == "" {
		return fmt.Errorf("event: empty kind: %w", ErrInvalid)
	}
	return nil
}

// FuzzDecodeVersion: a schema version is a non-negative decimal number;
// one that decodes is the number the text says, and the text Open writes
// for it (fmt.Sprint) decodes to it again.
func FuzzDecodeVersion(f *testing.F) {
	f.Add([]byte("1"))
	f.Fuzz(func(t *testing.T, val []byte) {
		v, err := decodeVersion(val)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "decode meta/schema") {
				t.Fatalf("decode error %v is not ErrCorrupt naming meta/schema", err)
			}
			if n, perr := strconv.ParseUint(strings.TrimPrefix(string(val), "+"), 10, strconv.IntSize-1); perr == nil {
				t.Fatalf("%q (the number %d) refused: %v", val, n, err)
			}
			return
		}
		if v < 0 {
			t.Fatalf("version %d accepted", v)
		}
		if n, perr := strconv.ParseInt(string(val), 10, 64); perr != nil || n != int64(v) {
			t.Fatalf("%q decoded as %d, but it is %d (%v)", val, v, n, perr)
		}
		again, err := decodeVersion([]byte(fmt.Sprint(v)))
		if err != nil || again != v {
			t.Fatalf("version %d written as %q decodes as %d, %v", v, fmt.Sprint(v), again, err)
		}
	})
}

// realMetaPages returns the two meta pages of a journal written by bbolt,
// with the page size and the newest transaction id bbolt reports for it.
func realMetaPages(t testing.TB) (pages [2][]byte, pageSize int, txid uint64, size int64) {
	t.Helper()
	path := fillJournal(t, 50, 5)
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	pageSize = db.Info().PageSize
	db.View(func(tx *bolt.Tx) error {
		txid = uint64(tx.ID())
		return nil
	})
	db.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 2*pageSize {
		t.Fatalf("journal of %d bytes, page size %d", len(data), pageSize)
	}
	return [2][]byte{data[:pageSize], data[pageSize : 2*pageSize]}, pageSize, txid, int64(len(data))
}

// FuzzParseMeta feeds the meta-page parser of Open's pre-check. It must
// accept exactly the pages with bbolt's magic, version and a matching
// FNV-64a checksum, return the fields at their place, and refuse a page
// with any one byte of the checked meta changed (FNV-1a always tells a
// one-byte change). The seeds include the meta pages bbolt wrote, which
// must parse as what bbolt reports: its page size, its newest txid, and no
// page past the end of the file.
func FuzzParseMeta(f *testing.F) {
	pages, pageSize, txid, size := realMetaPages(f)
	var newest uint64
	for i, p := range pages {
		m, ok := parseMeta(p)
		if !ok {
			f.Fatalf("meta page %d that bbolt wrote does not parse", i)
		}
		if m.pageSize != uint32(pageSize) || int64(m.pgid)*int64(m.pageSize) > size {
			f.Fatalf("meta page %d parses as %+v: bbolt's page size is %d, the file %d bytes", i, m, pageSize, size)
		}
		newest = max(newest, m.txid)
		f.Add(p)
	}
	if newest != txid {
		f.Fatalf("newest txid of the meta pages %d, bbolt's %d", newest, txid)
	}
	// A wrong magic or version with a checksum that matches: refused only
	// for what the fields say.
	for _, field := range []int{0, 4} {
		p := bytes.Clone(pages[0])
		binary.NativeEndian.PutUint32(p[metaOffset+field:], binary.NativeEndian.Uint32(p[metaOffset+field:])+1)
		h := fnv.New64a()
		h.Write(p[metaOffset : metaOffset+metaSumOffset])
		binary.NativeEndian.PutUint64(p[metaOffset+metaSumOffset:], h.Sum64())
		f.Add(p)
	}
	f.Add(make([]byte, 80))
	f.Fuzz(func(t *testing.T, page []byte) {
		m, ok := parseMeta(page)
		ne := binary.NativeEndian
		valid := false
		if len(page) >= metaOffset+metaSumOffset+8 {
			mp := page[metaOffset:]
			h := fnv.New64a()
			h.Write(mp[:metaSumOffset])
			valid = ne.Uint32(mp[0:]) == boltMagic && ne.Uint32(mp[4:]) == boltVersion && h.Sum64() == ne.Uint64(mp[metaSumOffset:])
		}
		if ok != valid {
			t.Fatalf("parseMeta says %v for a page whose magic, version and checksum say %v", ok, valid)
		}
		if !ok {
			return
		}
		mp := page[metaOffset:]
		want := metaInfo{pageSize: ne.Uint32(mp[8:]), root: ne.Uint64(mp[16:]), freelist: ne.Uint64(mp[32:]), pgid: ne.Uint64(mp[40:]), txid: ne.Uint64(mp[48:])}
		if m != want {
			t.Fatalf("parsed %+v, the page holds %+v", m, want)
		}
		flipped := bytes.Clone(page)
		for i := metaOffset; i < metaOffset+metaSumOffset+8; i++ {
			flipped[i] ^= 0x5a
			if _, ok := parseMeta(flipped); ok {
				t.Fatalf("page with byte %d changed still parses", i)
			}
			flipped[i] ^= 0x5a
		}
	})
}

// FuzzOpenGarbled writes data over a real journal at off (or truncates it
// there when data is empty): Open must either open a journal that reads
// whole and takes a write, or fail with ErrCorrupt (ErrSchema when the
// schema number was hit), never another error, a hang or a panic; and
// OpenOrReset must always end with a usable journal, the garbled bytes
// moved aside intact, unless the file is a newer schema, which it leaves
// alone.
func FuzzOpenGarbled(f *testing.F) {
	tmpl, err := os.ReadFile(fillJournal(f, 100, 10))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(uint32(0), []byte{})
	f.Add(uint32(64), []byte("garbage in the meta page"))
	f.Add(uint32(4096+64), []byte("garbage in the second meta page"))
	f.Add(uint32(3*4096+100), bytes.Repeat([]byte{0xff}, 300))
	f.Add(uint32(len(tmpl)/2), []byte{})
	f.Fuzz(func(t *testing.T, off uint32, data []byte) {
		b := bytes.Clone(tmpl)
		o := int(off % uint32(len(b)+1))
		if len(data) == 0 {
			b = b[:o]
		} else {
			b = append(b[:o], append(data, b[min(o+len(data), len(b)):]...)...)
		}
		path := filepath.Join(t.TempDir(), "journal.db")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		j, err := Open(path, &Options{Timeout: 100 * time.Millisecond})
		switch {
		case err == nil:
			err = j.View(func(tx *Tx) error { return tx.j.verify(tx.tx) })
			if err == nil {
				err = j.Update(func(tx *Tx) error { return tx.PutApp(App{Name: "fuzz"}) })
			}
			if cerr := j.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatalf("Open accepted the file, then: %v", err)
			}
			return
		case errors.Is(err, ErrSchema):
			if errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open: %v is both ErrSchema and ErrCorrupt", err)
			}
		case !errors.Is(err, ErrCorrupt):
			t.Fatalf("Open: %v, want ErrCorrupt or ErrSchema", err)
		}
		j, aside, err := OpenOrReset(path, &Options{Timeout: 100 * time.Millisecond})
		if errors.Is(err, ErrSchema) {
			if now, _ := os.ReadFile(path); !bytes.Equal(now, b) || aside != "" {
				t.Fatalf("OpenOrReset changed a newer journal")
			}
			return
		}
		if err != nil {
			t.Fatalf("OpenOrReset: %v", err)
		}
		defer j.Close()
		if moved, err := os.ReadFile(aside); err != nil || !bytes.Equal(moved, b) {
			t.Fatalf("aside %q: %v, want the garbled bytes", aside, err)
		}
		err = j.Update(func(tx *Tx) error { return tx.PutApp(App{Name: "fuzz", Current: "r1"}) })
		if err == nil {
			err = j.View(func(tx *Tx) error {
				a, err := tx.App("fuzz")
				if err == nil && a.Current != "r1" {
					err = fmt.Errorf("read back %+v", a)
				}
				return err
			})
		}
		if err != nil {
			t.Fatalf("journal after OpenOrReset is not usable: %v", err)
		}
	})
}
