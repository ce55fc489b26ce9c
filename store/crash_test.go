package store

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The crash test's child runs transactions that each write several related
// records carrying the same counter n; crashCheck verifies that a reopened
// journal holds exactly one such n everywhere.
const (
	crashFiles     = 5
	crashMaxEvents = 50
)

func crashTarget(n int) []byte {
	// Larger than a page, so that a commit spans several pages.
	return bytes.Repeat([]byte(fmt.Sprintf(`{"n":%d}`, n)), 600)
}

func crashChild(path string) {
	j, err := Open(path, &Options{Timeout: 10 * time.Second, MaxEvents: crashMaxEvents})
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(2)
	}
	n := 0
	j.View(func(tx *Tx) error {
		if u, err := tx.Pending(); err == nil {
			n, _ = strconv.Atoi(strings.TrimPrefix(u.ID, "u-"))
		}
		return nil
	})
	for {
		n++
		err := j.Update(func(tx *Tx) error {
			id := fmt.Sprintf("u-%d", n)
			u := &Update{ID: id, Target: crashTarget(n), State: Applying, Attempts: n, By: "crash"}
			for i := 0; i < crashFiles; i++ {
				u.Files = append(u.Files, File{App: "kiosk", Service: fmt.Sprint("s", i), Path: fmt.Sprint("/opt/", i), Size: -1})
			}
			if err := tx.PutPending(u); err != nil {
				return err
			}
			for i := 0; i < crashFiles; i++ {
				if err := tx.SetFileProgress(i, int64(n), n%2 == 0); err != nil {
					return err
				}
			}
			a := &Apply{UpdateID: id, Locks: []LockRef{{Path: "/tmp/l", Ino: uint64(n)}}}
			for i := 0; i < 3; i++ {
				a.Steps = append(a.Steps, Step{App: "kiosk", Service: fmt.Sprint("s", i), Phase: fmt.Sprint("p", n)})
			}
			if err := tx.PutApply(a); err != nil {
				return err
			}
			if _, err := tx.Log(Event{Kind: "applied", Release: id, Message: strconv.Itoa(n)}); err != nil {
				return err
			}
			if err := tx.PutApp(App{Name: "kiosk", Current: id}); err != nil {
				return err
			}
			if n%3 == 0 {
				return tx.DeleteHold("kiosk", "ui", false)
			}
			return tx.PutHold(Hold{App: "kiosk", Service: "ui", Reason: id})
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "crash child:", err)
			os.Exit(3)
		}
		fmt.Println(n) // one write(2): a line on the pipe is whole or absent
	}
}

// crashCheck reads the journal after a kill and returns its counter n,
// failing if the records do not all agree on it.
func crashCheck(j *Journal) (int, error) {
	var n int
	err := j.View(func(tx *Tx) error {
		u, err := tx.Pending()
		if errors.Is(err, ErrNotFound) {
			// Nothing committed yet: then nothing at all may be there.
			a, _ := tx.Apps()
			e, _ := tx.Events(0)
			h, _ := tx.Holds()
			if len(a)+len(e)+len(h) != 0 {
				return fmt.Errorf("no pending update but %d apps, %d events, %d holds", len(a), len(e), len(h))
			}
			if _, err := tx.Apply(); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("no pending update but apply: %v", err)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if n, err = strconv.Atoi(strings.TrimPrefix(u.ID, "u-")); err != nil {
			return fmt.Errorf("pending id %q", u.ID)
		}
		id := u.ID
		if u.Attempts != n || !bytes.Equal(u.Target, crashTarget(n)) || len(u.Files) != crashFiles {
			return fmt.Errorf("update %s: attempts %d, %d files, target ok %v", id, u.Attempts, len(u.Files), bytes.Equal(u.Target, crashTarget(n)))
		}
		for i, f := range u.Files {
			if f.Done != int64(n) || f.Complete != (n%2 == 0) {
				return fmt.Errorf("update %s file %d: done %d complete %v", id, i, f.Done, f.Complete)
			}
		}
		a, err := tx.Apply()
		if err != nil {
			return err
		}
		if a.UpdateID != id || len(a.Steps) != 3 || len(a.Locks) != 1 || a.Locks[0].Ino != uint64(n) {
			return fmt.Errorf("apply %+v does not match update %s", a, id)
		}
		for _, s := range a.Steps {
			if s.Phase != fmt.Sprint("p", n) {
				return fmt.Errorf("apply step %+v does not match update %s", s, id)
			}
		}
		events, err := tx.Events(0)
		if err != nil {
			return err
		}
		if want := min(n, crashMaxEvents); len(events) != want {
			return fmt.Errorf("%d events, want %d", len(events), want)
		}
		for i, e := range events {
			if want := uint64(n - i); e.Seq != want || e.Message != strconv.FormatUint(want, 10) {
				return fmt.Errorf("event %d: seq %d message %q, want seq %d", i, e.Seq, e.Message, want)
			}
		}
		app, err := tx.App("kiosk")
		if err != nil || app.Current != id {
			return fmt.Errorf("app: %+v, %v, want current %s", app, err, id)
		}
		holds, err := tx.Holds()
		if err != nil {
			return err
		}
		if n%3 == 0 && len(holds) != 0 || n%3 != 0 && (len(holds) != 1 || holds[0].Reason != id) {
			return fmt.Errorf("holds %+v do not match update %s", holds, id)
		}
		return nil
	})
	return n, err
}

// TestCrashConsistency SIGKILLs a child that loops journal transactions at
// random moments and checks after each kill that the reopened journal holds
// every committed transaction whole, none in part, and never goes back.
func TestCrashConsistency(t *testing.T) {
	kills := 200
	if testing.Short() {
		kills = 30
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	path := filepath.Join(t.TempDir(), "journal.db")
	last, progressed := 0, 0
	for k := 0; k < kills; k++ {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), "LATCH_STORE_HELPER=crash", "LATCH_STORE_JOURNAL="+path)
		cmd.Stdout, cmd.Stderr = w, os.Stderr
		startHelper(t, cmd)
		w.Close()
		first := make(chan struct{})
		reported := make(chan int, 1)
		go func() {
			c, once := 0, false
			s := bufio.NewScanner(r)
			for s.Scan() {
				if v, err := strconv.Atoi(s.Text()); err == nil {
					c = v
				}
				if !once {
					close(first)
					once = true
				}
			}
			r.Close()
			reported <- c
		}()
		// Half of the kills land anywhere (also during start-up and
		// Open); the other half after at least one commit.
		if k%2 == 1 {
			select {
			case <-first:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("kill %d: child reported no commit", k)
			}
			time.Sleep(time.Duration(rng.IntN(10_000)) * time.Microsecond) // a random moment, not a wait
		} else {
			time.Sleep(time.Duration(rng.IntN(30_000)) * time.Microsecond)
		}
		cmd.Process.Signal(syscall.SIGKILL)
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("kill %d: child ended by itself (%v): it must only ever be killed", k, err)
		}
		committed := <-reported

		j, err := Open(path, &Options{MaxEvents: crashMaxEvents})
		if err != nil {
			t.Fatalf("kill %d: reopen: %v", k, err)
		}
		n, err := crashCheck(j)
		j.Close()
		if err != nil {
			t.Fatalf("kill %d: inconsistent journal: %v", k, err)
		}
		if n < committed {
			t.Fatalf("kill %d: journal has %d, child had reported %d committed: a commit was lost", k, n, committed)
		}
		if n < last {
			t.Fatalf("kill %d: journal went back from %d to %d", k, last, n)
		}
		if n > last {
			progressed++
		}
		last = n
	}
	t.Logf("%d kills, %d transactions committed, %d kills after progress", kills, last, progressed)
	if last == 0 {
		t.Fatalf("no transaction committed in %d runs: the test tested nothing", kills)
	}
}
