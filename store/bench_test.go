package store

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The baselines are raw bbolt operations of the same size with the same
// options, so that the figures read as the journal's overhead over bbolt
// (JSON encoding, validation, trimming) on this disk.

func rawDB(b *testing.B, path string) *bolt.DB {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	return db
}

// BenchmarkCommit measures the latency of one fsynced journal step.
func BenchmarkCommit(b *testing.B) {
	a := sampleApply()
	val, _ := json.Marshal(a)
	b.Run("raw-bbolt-put", func(b *testing.B) {
		db := rawDB(b, filepath.Join(b.TempDir(), "raw.db"))
		db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err })
		b.SetBytes(int64(len(val)))
		for b.Loop() {
			err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte("apply"), val) })
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("journal-PutApply", func(b *testing.B) {
		j := openTest(b, nil)
		b.SetBytes(int64(len(val)))
		for b.Loop() {
			if err := j.Update(func(tx *Tx) error { return tx.PutApply(a) }); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("journal-PutApply+Log", func(b *testing.B) {
		j := openTest(b, nil)
		for b.Loop() {
			err := j.Update(func(tx *Tx) error {
				if err := tx.PutApply(a); err != nil {
					return err
				}
				_, err := tx.Log(Event{Kind: "step", App: "kiosk", Service: "ui", Message: "stopped"})
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

var phases = []string{"pending", "stopping", "stopped", "installing", "installed", "starting", "started", "healthy"}

// BenchmarkWholeUpdate journals a whole update the way the agent does: 10
// services x 8 phases, each step its own commit with an event, then the
// finish (apps current, apply and pending removed).
func BenchmarkWholeUpdate(b *testing.B) {
	const services = 10
	b.Run("raw-bbolt-81-puts", func(b *testing.B) {
		db := rawDB(b, filepath.Join(b.TempDir(), "raw.db"))
		db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err })
		val := make([]byte, 600)
		for b.Loop() {
			for i := 0; i < services*len(phases)+1; i++ {
				err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte("apply"), val) })
				if err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("journal", func(b *testing.B) {
		j := openTest(b, nil)
		for b.Loop() {
			a := &Apply{UpdateID: "sha256:00", Started: time.Now()}
			for s := 0; s < services; s++ {
				a.Steps = append(a.Steps, Step{App: "kiosk", Service: fmt.Sprint("svc", s), Phase: "pending"})
			}
			for s := 0; s < services; s++ {
				for _, p := range phases {
					a.Steps[s].Phase, a.Steps[s].At = p, time.Now()
					err := j.Update(func(tx *Tx) error {
						if err := tx.PutApply(a); err != nil {
							return err
						}
						_, err := tx.Log(Event{Kind: "step", App: "kiosk", Service: a.Steps[s].Service, Message: p})
						return err
					})
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			err := j.Update(func(tx *Tx) error {
				if err := tx.PutApp(App{Name: "kiosk", Current: "r2", Target: "r2"}); err != nil {
					return err
				}
				if err := tx.DeleteApply(); err != nil {
					return err
				}
				_, err := tx.Log(Event{Kind: "applied", App: "kiosk", Release: "r2"})
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkOpen opens a journal with a full event log (1000 events) and a
// pending update of 100 files. Open reads and checks every record.
func BenchmarkOpen(b *testing.B) {
	path := fillJournal(b, defaultMaxEvents, 100)
	b.Run("raw-bbolt-open", func(b *testing.B) {
		for b.Loop() {
			db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType})
			if err != nil {
				b.Fatal(err)
			}
			db.Close()
		}
	})
	b.Run("journal-open", func(b *testing.B) {
		for b.Loop() {
			j, err := Open(path, nil)
			if err != nil {
				b.Fatal(err)
			}
			j.Close()
		}
	})
}

// BenchmarkSetFileProgress compares recording progress with rewriting the
// whole pending update (100 files, a 40 KiB target document).
func BenchmarkSetFileProgress(b *testing.B) {
	u := sampleUpdate()
	u.Target = make([]byte, 40<<10)
	for i := 0; i < 100; i++ {
		u.Files = append(u.Files, File{App: "kiosk", Service: fmt.Sprint("s", i), Path: fmt.Sprint("/opt/", i), Size: -1})
	}
	j := openTest(b, nil)
	j.Update(func(tx *Tx) error { return tx.PutPending(u) })
	b.Run("PutPending", func(b *testing.B) {
		for b.Loop() {
			if err := j.Update(func(tx *Tx) error { return tx.PutPending(u) }); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("SetFileProgress", func(b *testing.B) {
		n := int64(0)
		for b.Loop() {
			n++
			if err := j.Update(func(tx *Tx) error { return tx.SetFileProgress(50, n, false) }); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkCheck measures Journal.Check (one fstat, one lstat), which the
// agent runs now and then.
func BenchmarkCheck(b *testing.B) {
	j, err := Open(fillJournal(b, defaultMaxEvents, 100), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	for b.Loop() {
		if err := j.Check(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRestore measures how long Views and Updates wait while Restore
// writes back a journal of 1000 events and 100 files and switches to it.
func BenchmarkRestore(b *testing.B) {
	j, err := Open(fillJournal(b, defaultMaxEvents, 100), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	for b.Loop() {
		if err := os.Remove(j.Path()); err != nil {
			b.Fatal(err)
		}
		if err := j.Restore(); err != nil {
			b.Fatal(err)
		}
	}
	fi, _ := os.Stat(j.Path())
	b.ReportMetric(float64(fi.Size()), "file-bytes")
}
