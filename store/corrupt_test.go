package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// fillJournal writes one of every record, with enough events and files
// to span many pages, and returns the file's path.
func fillJournal(t testing.TB, events, files int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "journal.db")
	j, err := Open(path, &Options{MaxEvents: events})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	err = j.Update(func(tx *Tx) error {
		for _, name := range []string{"kiosk", "sensor", "web"} {
			if err := tx.PutApp(App{Name: name, Current: "r1", Target: "r2", Updated: t0, By: "target-file"}); err != nil {
				return err
			}
		}
		u := sampleUpdate()
		for i := 0; i < files; i++ {
			u.Files = append(u.Files, File{App: "kiosk", Service: fmt.Sprint("svc", i), Source: fmt.Sprintf("https://updates.example/kiosk/r2/svc%d", i),
				SHA256: strings.Repeat("ab", 32), Path: fmt.Sprintf("/opt/kiosk/svc%d/bin", i), Mode: 0o755, Size: 1 << 20, Done: int64(i)})
		}
		if err := tx.PutPending(u); err != nil {
			return err
		}
		if err := tx.PutApply(sampleApply()); err != nil {
			return err
		}
		if err := tx.PutHold(Hold{App: "kiosk", Service: "ui", Reason: "filming", Created: t0}); err != nil {
			return err
		}
		if err := tx.SetOverride(Override{Enabled: true, At: t0}); err != nil {
			return err
		}
		if err := tx.SetPendingReboot(&Reboot{Kind: "reboot", BootID: "b"}); err != nil {
			return err
		}
		if err := tx.PutConfig(map[string]string{"GPU_MEM": "128"}); err != nil {
			return err
		}
		for i := 0; i < events; i++ {
			if _, err := tx.Log(Event{Time: t0, Kind: "lock-taken", App: "kiosk", Service: "ui", Message: "lock taken by pid 1234 (sh -c sleep 10)"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// checkReset checks that path fails with ErrCorrupt and that OpenOrReset
// moves it aside, bytes intact, and gives a fresh, empty, usable journal.
func checkReset(t *testing.T, path string, wantInErr string) {
	t.Helper()
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(path, nil)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open: got %v, want ErrCorrupt", err)
	}
	if !strings.Contains(err.Error(), wantInErr) {
		t.Errorf("Open error %q does not name %q", err, wantInErr)
	}
	before := time.Now().UTC().Truncate(time.Second)
	j, aside, err := OpenOrReset(path, nil)
	if err != nil {
		t.Fatalf("OpenOrReset: %v", err)
	}
	defer j.Close()
	prefix := path + ".corrupt-"
	if !strings.HasPrefix(aside, prefix) {
		t.Fatalf("aside path %q, want prefix %q", aside, prefix)
	}
	stamp, err := time.Parse("20060102T150405Z", strings.TrimPrefix(aside, prefix))
	if err != nil || stamp.Before(before) || stamp.After(time.Now().Add(time.Second)) {
		t.Errorf("aside time stamp %q: %v, want the UTC time now as 20060102T150405Z", aside, err)
	}
	moved, err := os.ReadFile(aside)
	if err != nil || !bytes.Equal(moved, old) {
		t.Errorf("aside file %s: %v, same bytes as the corrupt journal %v", aside, err, bytes.Equal(moved, old))
	}
	err = j.View(func(tx *Tx) error {
		if apps, err := tx.Apps(); err != nil || len(apps) != 0 {
			return fmt.Errorf("apps %v, %v", apps, err)
		}
		if ev, err := tx.Events(0); err != nil || len(ev) != 0 {
			return fmt.Errorf("events %v, %v", ev, err)
		}
		if _, err := tx.Pending(); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("pending: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Errorf("fresh journal is not empty: %v", err)
	}
	if err := j.Update(func(tx *Tx) error { return tx.PutApp(App{Name: "kiosk", Current: "r9"}) }); err != nil {
		t.Errorf("write to the fresh journal: %v", err)
	}
	j.Close()
	j2, aside2, err := OpenOrReset(path, nil)
	if err != nil || aside2 != "" {
		t.Fatalf("OpenOrReset of the fresh journal: %q, %v, want nothing moved", aside2, err)
	}
	j2.View(func(tx *Tx) error {
		if a, err := tx.App("kiosk"); err != nil || a.Current != "r9" {
			t.Errorf("fresh journal after reopen: %+v, %v", a, err)
		}
		return nil
	})
	j2.Close()
}

func TestCorruptFile(t *testing.T) {
	const pageSize = 4096
	tests := []struct {
		name   string
		damage func(t *testing.T, path string)
		inErr  string
	}{
		{"truncated to half", func(t *testing.T, path string) {
			fi, _ := os.Stat(path)
			os.Truncate(path, fi.Size()/2)
		}, "truncated"},
		{"truncated inside the meta pages", func(t *testing.T, path string) { os.Truncate(path, 100) }, "journal is corrupt"},
		{"not a bbolt file", func(t *testing.T, path string) {
			os.WriteFile(path, bytes.Repeat([]byte("latch\n"), 3000), 0o600)
		}, "invalid database"},
		{"both meta pages garbled", func(t *testing.T, path string) {
			garble(t, path, rand.New(rand.NewPCG(1, 1)), []int64{64, pageSize + 64}, 128)
		}, "journal is corrupt"},
	}
	tests = append(tests, struct {
		name   string
		damage func(t *testing.T, path string)
		inErr  string
	}{"freelist page garbled", func(t *testing.T, path string) {
		// bbolt reads the freelist inside its own Open and panics on a
		// bad one: the journal must still be reported, and its lock freed.
		page := make([]byte, 2*pageSize)
		f, _ := os.Open(path)
		f.ReadAt(page, 0)
		f.Close()
		m0, ok0 := parseMeta(page[:pageSize])
		m1, ok1 := parseMeta(page[pageSize:])
		if !ok0 || !ok1 {
			t.Fatal("fresh journal has an invalid meta page")
		}
		m := m0
		if m1.txid > m.txid {
			m = m1
		}
		garble(t, path, rand.New(rand.NewPCG(3, 3)), []int64{int64(m.freelist) * pageSize}, 16)
	}, "freelist"})
	for seed := uint64(0); seed < 12; seed++ {
		tests = append(tests, struct {
			name   string
			damage func(t *testing.T, path string)
			inErr  string
		}{fmt.Sprintf("pages garbled seed %d", seed), func(t *testing.T, path string) {
			fi, _ := os.Stat(path)
			rng := rand.New(rand.NewPCG(seed, 2))
			var offs []int64
			for p := int64(2); p < fi.Size()/pageSize; p++ {
				offs = append(offs, p*pageSize+int64(rng.IntN(pageSize-256)))
			}
			garble(t, path, rng, offs, 16+int(seed)*16)
		}, "journal is corrupt"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := fillJournal(t, 300, 40)
			tt.damage(t, path)
			checkReset(t, path, tt.inErr)
		})
	}
}

// garble overwrites n random bytes at each offset.
func garble(t *testing.T, path string, rng *rand.Rand, offs []int64, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	for _, off := range offs {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCorruptRecords writes garbage, with bbolt itself, where each kind of
// record lives: the file is a valid bbolt file, but Open must still refuse
// it, naming the bucket and key.
func TestCorruptRecords(t *testing.T) {
	put := func(bucket, key string, val []byte) func(*bolt.Tx) error {
		return func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte(bucket))
			for _, sub := range strings.Split(bucket, "/")[1:] {
				b = tx.Bucket([]byte(strings.Split(bucket, "/")[0])).Bucket([]byte(sub))
			}
			return b.Put([]byte(key), val)
		}
	}
	garbage := []byte("\x00\xffnot json{")
	tests := []struct {
		name  string
		edit  func(*bolt.Tx) error
		inErr string
	}{
		{"schema", put(bucketMeta, keySchema, garbage), "meta/schema"},
		{"app", put(bucketApps, "kiosk", garbage), `apps/"kiosk"`},
		{"app under another name", put(bucketApps, "kiosk", []byte(`{"name":"web"}`)), `apps/"kiosk"`},
		{"app key with NUL", put(bucketApps, "a\x00b", []byte(`{"name":"a\u0000b"}`)), `apps/"a\x00b"`},
		{"update", put(bucketPending, keyUpdate, garbage), "pending/update"},
		{"update unknown state", put(bucketPending, keyUpdate, []byte(`{"id":"x","state":"exploded"}`)), "pending/update"},
		{"update file count", put(bucketPending, keyUpdate, []byte(`{"id":"x","state":"waiting","files":3}`)), "pending/files"},
		{"file", put(bucketPending+"/"+keyFiles, "\x00\x00\x00\x01", garbage), "pending/files/1"},
		{"file key", put(bucketPending+"/"+keyFiles, "xy", []byte(`{}`)), "pending/files/"},
		{"apply", put(bucketState, keyApply, garbage), "state/apply"},
		{"override", put(bucketState, keyOverride, garbage), "state/override"},
		{"reboot", put(bucketState, keyReboot, garbage), "state/reboot"},
		{"config", put(bucketState, keyConfig, []byte(`[1,2]`)), "state/config"},
		{"running", put(bucketState, keyRunning, garbage), "state/running"},
		{"queued", put(bucketState, keyQueued, garbage), "state/queued"},
		{"queued not JSON", put(bucketState, keyQueued, []byte(`{"doc":"bm90IGpzb24=","accepted":"2026-11-02T10:04:05Z"}`)), "state/queued"},
		{"hold", put(bucketHolds, "kiosk/ui", garbage), `holds/"kiosk/ui"`},
		{"event", put(bucketEvents, string(seqKey(250)), garbage), "events/250"},
		{"event seq", put(bucketEvents, string(seqKey(250)), []byte(`{"seq":7,"kind":"k"}`)), "events/250"},
		{"event key", put(bucketEvents, "short", []byte(`{"seq":7,"kind":"k"}`)), "events/"},
		{"bucket where an app belongs", func(tx *bolt.Tx) error {
			_, err := tx.Bucket([]byte(bucketApps)).CreateBucket([]byte("zz"))
			return err
		}, `apps/"zz"`},
		{"bucket missing", func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte(bucketEvents)) }, "bucket events missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := fillJournal(t, 300, 5)
			rawBolt(t, path, tt.edit)
			checkReset(t, path, tt.inErr)
		})
	}
}

// TestCorruptInTransaction checks that a record that fails to decode inside a
// transaction is ErrCorrupt naming it (the damage came after Open).
func TestCorruptInTransaction(t *testing.T) {
	j := openTest(t, nil)
	j.Update(func(tx *Tx) error { return tx.PutApp(App{Name: "kiosk"}) })
	err := j.db.Update(put1(bucketApps, "kiosk", []byte("{")))
	if err != nil {
		t.Fatal(err)
	}
	err = j.View(func(tx *Tx) error { _, err := tx.App("kiosk"); return err })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), `apps/"kiosk"`) {
		t.Errorf("App of a garbled record: got %v, want ErrCorrupt naming apps/\"kiosk\"", err)
	}
}

func put1(bucket, key string, val []byte) func(*bolt.Tx) error {
	return func(tx *bolt.Tx) error { return tx.Bucket([]byte(bucket)).Put([]byte(key), val) }
}

// TestCorruptStructure damages the page structure that bbolt trusts, in
// ways that bbolt cannot recover from by itself (it loops for billions of
// pages, allocates without bound, or goes round a cycle for ever): Open
// must still return, with ErrCorrupt, and OpenOrReset start afresh.
func TestCorruptStructure(t *testing.T) {
	ne := binary.NativeEndian
	type layout struct {
		pageSize         int64
		freelist, events uint64 // the freelist page, the events bucket's root (a branch page)
		child0, child1   uint64 // the first two children of that branch page
		child1Off        int64  // where the second child's page id is written
	}
	look := func(t *testing.T, path string) layout {
		t.Helper()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var m metaInfo
		for _, off := range []int{0, 4096} {
			if mi, ok := parseMeta(data[off:]); ok && mi.txid > m.txid {
				m = mi
			}
		}
		l := layout{pageSize: int64(m.pageSize), freelist: m.freelist}
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		db.View(func(tx *bolt.Tx) error {
			l.events = uint64(tx.Bucket([]byte(bucketEvents)).RootPage())
			return nil
		})
		db.Close()
		page := data[int64(l.events)*l.pageSize:]
		if flags := ne.Uint16(page[8:]); flags != branchPageFlag || ne.Uint16(page[10:]) < 2 {
			t.Fatalf("events root page %d: flags %#x, %d elements, want a branch page with two or more", l.events, flags, ne.Uint16(page[10:]))
		}
		l.child0 = ne.Uint64(page[pageHeaderSize+8:])
		l.child1Off = int64(l.events)*l.pageSize + pageHeaderSize + pageElementSize + 8
		l.child1 = ne.Uint64(data[l.child1Off:])
		return l
	}
	put := func(t *testing.T, path string, off int64, v any) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var b []byte
		switch v := v.(type) {
		case uint16:
			b = ne.AppendUint16(nil, v)
		case uint32:
			b = ne.AppendUint32(nil, v)
		case uint64:
			b = ne.AppendUint64(nil, v)
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name   string
		damage func(t *testing.T, path string, l layout)
		inErr  string
	}{
		{"freelist overflow count huge", func(t *testing.T, path string, l layout) {
			put(t, path, int64(l.freelist)*l.pageSize+12, uint32(0xFFFFFFF0))
		}, "overflow pages"},
		{"leaf overflow count huge", func(t *testing.T, path string, l layout) {
			put(t, path, int64(l.child0)*l.pageSize+12, uint32(0x7FFFFFFF))
		}, "overflow pages"},
		{"freelist count huge", func(t *testing.T, path string, l layout) {
			put(t, path, int64(l.freelist)*l.pageSize+10, uint16(0xFFFF))
			put(t, path, int64(l.freelist)*l.pageSize+pageHeaderSize, uint64(1)<<40)
		}, "do not fit"},
		{"freelist frees a page past the end", func(t *testing.T, path string, l layout) {
			put(t, path, int64(l.freelist)*l.pageSize+10, uint16(1))
			put(t, path, int64(l.freelist)*l.pageSize+pageHeaderSize, uint64(1)<<40)
		}, "out of bounds"},
		{"branch page points to itself", func(t *testing.T, path string, l layout) {
			put(t, path, l.child1Off, l.events)
		}, "reached twice"},
		{"two elements point to one page", func(t *testing.T, path string, l layout) {
			put(t, path, l.child1Off, l.child0)
		}, "reached twice"},
		{"child page past the end", func(t *testing.T, path string, l layout) {
			put(t, path, l.child1Off, uint64(1)<<50)
		}, "out of bounds"},
		{"page names another page", func(t *testing.T, path string, l layout) {
			put(t, path, int64(l.child1)*l.pageSize, l.child0)
		}, "says it is page"},
		{"elements past the end of the page", func(t *testing.T, path string, l layout) {
			put(t, path, int64(l.child1)*l.pageSize+10, uint16(0xFFF0))
		}, "do not fit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := fillJournal(t, 300, 5)
			tt.damage(t, path, look(t, path))
			err := within(t, "Open", nil, func() error {
				j, err := Open(path, nil)
				if err == nil {
					j.Close()
				}
				return err
			})
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.inErr) {
				t.Fatalf("Open: got %v, want ErrCorrupt saying %q", err, tt.inErr)
			}
			checkReset(t, path, tt.inErr)
		})
	}
}
