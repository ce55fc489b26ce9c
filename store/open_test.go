package store

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestHelperProcess is not a test: it is the child process of the tests
// that need a second process, selected by LATCH_STORE_HELPER.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv("LATCH_STORE_JOURNAL")
	switch os.Getenv("LATCH_STORE_HELPER") {
	case "":
		t.Skip("helper process for other tests")
	case "hold":
		// Hold the journal open until stdin closes.
		j, err := Open(path, nil)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin)
		j.Close()
		os.Exit(0)
	case "crash":
		crashChild(path)
		os.Exit(0)
	case "dump":
		// Print what the journal file holds, as another process sees it.
		j, err := Open(path, nil)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		var d dump
		err = j.View(func(tx *Tx) error {
			var err error
			if d.Holds, err = tx.Holds(); err != nil {
				return err
			}
			if d.Apps, err = tx.Apps(); err != nil {
				return err
			}
			d.Events, err = tx.Events(0)
			return err
		})
		j.Close()
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		json.NewEncoder(os.Stdout).Encode(d)
		os.Exit(0)
	}
}

// dump is what the "dump" helper process prints.
type dump struct {
	Holds  []Hold
	Apps   []App
	Events []Event
}

// dumpOther reads the journal at path from another process.
func dumpOther(t *testing.T, path string) dump {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "LATCH_STORE_HELPER=dump", "LATCH_STORE_JOURNAL="+path)
	cmd.Stderr = os.Stderr
	var out bytes.Buffer
	cmd.Stdout = &out
	startHelper(t, cmd)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("dump of %s in another process: %v: %s", path, err, out.Bytes())
	}
	var d dump
	if err := json.Unmarshal(out.Bytes(), &d); err != nil {
		t.Fatalf("dump of %s in another process: %v: %s", path, err, out.Bytes())
	}
	return d
}

// helper starts the test binary as a helper process of the given kind.
func helper(t *testing.T, kind, path string) (*exec.Cmd, io.WriteCloser, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "LATCH_STORE_HELPER="+kind, "LATCH_STORE_JOURNAL="+path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	startHelper(t, cmd)
	return cmd, stdin, bufio.NewReader(stdout)
}

// startHelper starts cmd, skipping the test when this (foreign) test binary
// cannot be executed again: under qemu-user without binfmt_misc.
func startHelper(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		if errors.Is(err, syscall.ENOEXEC) {
			t.Skipf("cannot re-execute the test binary %s (%v): register qemu in binfmt_misc; the two-process test did not run", os.Args[0], err)
		}
		t.Fatal(err)
	}
}

// openWithin runs Open and fails the test if it has not returned after a
// generous watchdog: "in use" must be an error, never a hang.
func openWithin(t *testing.T, path string, opts *Options) (*Journal, error) {
	t.Helper()
	type result struct {
		j   *Journal
		err error
	}
	done := make(chan result, 1)
	go func() {
		j, err := Open(path, opts)
		done <- result{j, err}
	}()
	select {
	case r := <-done:
		return r.j, r.err
	case <-time.After(opts.Timeout + 20*time.Second):
		t.Fatalf("Open with Timeout %s still blocked: a held journal must fail, not hang", opts.Timeout)
		return nil, nil
	}
}

// TestInUse checks that a second Open of a held journal fails with ErrInUse
// and a clear message, from this process and from another one, and that the
// journal opens again once the holder is gone (even when it was killed).
func TestInUse(t *testing.T) {
	opts := &Options{Timeout: 200 * time.Millisecond}
	t.Run("same process", func(t *testing.T) {
		j := openTest(t, nil)
		_, err := openWithin(t, j.Path(), opts)
		if !errors.Is(err, ErrInUse) {
			t.Fatalf("second Open: got %v, want ErrInUse", err)
		}
		if !strings.Contains(err.Error(), "in use by another latch agent") || !strings.Contains(err.Error(), j.Path()) {
			t.Errorf("message %q: want the path and 'in use by another latch agent'", err)
		}
		if _, _, err := OpenOrReset(j.Path(), opts); !errors.Is(err, ErrInUse) {
			t.Errorf("OpenOrReset: got %v, want ErrInUse", err)
		}
		j.Close()
		j2, err := openWithin(t, j.Path(), opts)
		if err != nil {
			t.Fatalf("Open after Close: %v", err)
		}
		j2.Close()
	})
	t.Run("other process", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "journal.db")
		for _, kill := range []bool{false, true} {
			cmd, stdin, out := helper(t, "hold", path)
			line, err := out.ReadString('\n')
			if line != "ready\n" {
				t.Fatalf("helper: got %q, %v, want ready", line, err)
			}
			_, err = openWithin(t, path, opts)
			if !errors.Is(err, ErrInUse) {
				t.Fatalf("Open while another process holds it: got %v, want ErrInUse", err)
			}
			if kill {
				cmd.Process.Kill()
			} else {
				stdin.Close()
			}
			cmd.Wait()
			j, err := openWithin(t, path, opts)
			if err != nil {
				t.Fatalf("Open after the holder exited (killed=%v): %v", kill, err)
			}
			j.Close()
		}
	})
}

// rawBolt opens path with bbolt directly, for tests that write what latch
// would not.
func rawBolt(t testing.TB, path string, fn func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// TestSchema checks the migration of an unversioned file and the refusal of
// a newer one.
func TestSchema(t *testing.T) {
	if len(migrations) != SchemaVersion {
		t.Fatalf("got %d migrations, want SchemaVersion=%d (one per version step)", len(migrations), SchemaVersion)
	}
	t.Run("v0 empty bbolt file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "journal.db")
		rawBolt(t, path, func(*bolt.Tx) error { return nil })
		j, err := Open(path, nil)
		if err != nil {
			t.Fatalf("Open of a v0 file: %v", err)
		}
		defer j.Close()
		if err := j.Update(func(tx *Tx) error { return tx.PutApp(App{Name: "a"}) }); err != nil {
			t.Errorf("write after migration: %v", err)
		}
		j.db.View(func(tx *bolt.Tx) error {
			v, err := schemaVersion(tx)
			if v != SchemaVersion || err != nil {
				t.Errorf("schema after migration: got %d, %v, want %d", v, err, SchemaVersion)
			}
			return nil
		})
	})
	t.Run("v0 with records", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "journal.db")
		rawBolt(t, path, func(tx *bolt.Tx) error {
			b, err := tx.CreateBucket([]byte(bucketApps))
			if err != nil {
				return err
			}
			return b.Put([]byte("kiosk"), []byte(`{"name":"kiosk","current":"r1"}`))
		})
		j, err := Open(path, nil)
		if err != nil {
			t.Fatalf("Open of a v0 file: %v", err)
		}
		defer j.Close()
		j.View(func(tx *Tx) error {
			a, err := tx.App("kiosk")
			if err != nil || a.Current != "r1" {
				t.Errorf("app kept by migration: got %+v, %v, want current r1", a, err)
			}
			return nil
		})
	})
	t.Run("newer schema", func(t *testing.T) {
		j := openTest(t, nil)
		path := j.Path()
		j.Update(func(tx *Tx) error { return tx.PutApp(App{Name: "kiosk"}) })
		j.Close()
		rawBolt(t, path, func(tx *bolt.Tx) error {
			return tx.Bucket([]byte(bucketMeta)).Put([]byte(keySchema), []byte(fmt.Sprint(SchemaVersion+1)))
		})
		before, _ := os.ReadFile(path)
		fiBefore, _ := os.Stat(path)
		_, err := Open(path, nil)
		if !errors.Is(err, ErrSchema) {
			t.Fatalf("Open: got %v, want ErrSchema", err)
		}
		if errors.Is(err, ErrCorrupt) {
			t.Errorf("Open: %v is also ErrCorrupt: OpenOrReset would discard a newer journal", err)
		}
		j2, aside, err := OpenOrReset(path, nil)
		if !errors.Is(err, ErrSchema) || j2 != nil || aside != "" {
			t.Errorf("OpenOrReset: got %v, %q, %v, want ErrSchema and nothing moved", j2, aside, err)
		}
		after, _ := os.ReadFile(path)
		fiAfter, _ := os.Stat(path)
		if !bytes.Equal(before, after) || !fiBefore.ModTime().Equal(fiAfter.ModTime()) {
			t.Errorf("file changed by refusing a newer schema")
		}
	})
}

// TestEventsBounded logs 100,000 events and checks that exactly MaxEvents
// remain, the newest ones, and that the file stays small.
func TestEventsBounded(t *testing.T) {
	const total, max = 100_000, 1000
	j := openTest(t, &Options{MaxEvents: max})
	const perTx = 500
	for n := 0; n < total; n += perTx {
		err := j.Update(func(tx *Tx) error {
			for i := 0; i < perTx; i++ {
				if _, err := tx.Log(Event{Kind: "lock-taken", App: "kiosk", Service: "ui", Message: "lock taken by pid 1234 (sh -c sleep)"}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	j = reopen(t, j, &Options{MaxEvents: max})
	var events []Event
	j.View(func(tx *Tx) error {
		var err error
		events, err = tx.Events(0)
		return err
	})
	if len(events) != max {
		t.Fatalf("events kept: got %d, want %d", len(events), max)
	}
	if events[0].Seq != total || events[max-1].Seq != total-max+1 {
		t.Errorf("kept seqs %d..%d, want %d..%d", events[max-1].Seq, events[0].Seq, total-max+1, total)
	}
	fi, err := os.Stat(j.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("file size after %d events (MaxEvents %d): %d bytes", total, max, fi.Size())
	if fi.Size() > 4<<20 {
		t.Errorf("file size %d bytes, want under 4 MiB: free pages are not reused", fi.Size())
	}
	// A smaller bound at the next open trims at the next Log.
	j = reopen(t, j, &Options{MaxEvents: 10})
	j.Update(func(tx *Tx) error { _, err := tx.Log(Event{Kind: "k"}); return err })
	j.View(func(tx *Tx) error {
		events, _ = tx.Events(0)
		return nil
	})
	if len(events) != 10 || events[0].Seq != total+1 {
		t.Errorf("after lowering MaxEvents to 10: got %d events, newest %d, want 10, newest %d", len(events), events[0].Seq, total+1)
	}
}
