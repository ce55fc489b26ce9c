package lock

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Tests of the flock(2) that the agent's own entries carry (spec section
// 12): tools that test a lock with flock -n must see every entry latch
// holds as held, and nothing of it must outlive the holding.

// tryFlock opens path without following a symlink and tries
// flock(LOCK_EX|LOCK_NB) on it.
func tryFlock(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("flock %s: %w", path, err)
	}
	return nil
}

// flockN runs the real flock(1): `flock -n path true`, and reports whether
// it got the lock (exit 0) or found it busy (exit 1).
func flockN(t *testing.T, path string) bool {
	t.Helper()
	out, err := exec.Command("flock", "-n", path, "true").CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return false
	}
	t.Fatalf("flock -n %s true: %v\n%s", path, err, out)
	return false
}

// otherProcessFlock runs this test binary as another process that tries a
// Go flock(LOCK_EX|LOCK_NB) on path, and reports whether it got it.
func otherProcessFlock(t *testing.T, path string) bool {
	t.Helper()
	cmd := exec.Command(os.Args[0], path, "")
	cmd.Env = append(os.Environ(), "LATCH_LOCK_HELPER=flock")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true
	case errors.As(err, &ee) && strings.Contains(string(out), unix.EWOULDBLOCK.Error()):
		return false
	}
	t.Fatalf("helper flock %s: %v\n%s", path, err, out)
	return false
}

// openFDs counts this process's open descriptors, and those of them that
// are open on something under root. (Locks that other tests dropped
// without Remove are closed by the garbage collector at any time, so the
// total may shrink, never grow.)
func openFDs(t *testing.T, root string) (all, under int) {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the directory's own descriptor, closed by now
		}
		all++
		if strings.HasPrefix(target, root+"/") {
			under++
		}
	}
	return all, under
}

// checkNoFDs fails when more descriptors are open than before, or any is
// open on something under root.
func checkNoFDs(t *testing.T, what, root string, before int) {
	t.Helper()
	all, under := openFDs(t, root)
	if all > before || under != 0 {
		t.Errorf("%s: %d descriptors open (%d before), %d of them under %s; want none left", what, all, before, under, root)
	}
}

// myFlocks returns the inodes this process holds a FLOCK on, from /proc/locks.
func myFlocks(t *testing.T) map[uint64]bool {
	t.Helper()
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		pl, ok := parseProcLocksLine(line)
		if ok && pl.pid == os.Getpid() && strings.Contains(line, "FLOCK") {
			out[pl.ino] = true
		}
	}
	return out
}

// checkFlocked checks that lk holds a close-on-exec descriptor on its own
// entry with an exclusive flock that other processes see.
func checkFlocked(t *testing.T, lk *Lock) {
	t.Helper()
	if !lk.Flocked() {
		t.Fatalf("%s: Flocked() = false, want a flock held", lk.Path)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(lk.f.Fd()), &st); err != nil || uint64(st.Ino) != lk.Ino || uint64(st.Dev) != lk.Dev {
		t.Errorf("%s: the flocked descriptor is inode %d (%v), want the entry's %d", lk.Path, st.Ino, err, lk.Ino)
	}
	flags, err := unix.FcntlInt(lk.f.Fd(), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("%s: descriptor flags %#x (%v), want FD_CLOEXEC", lk.Path, flags, err)
	}
	if !myFlocks(t)[lk.Ino] {
		t.Errorf("%s: /proc/locks shows no FLOCK of pid %d on inode %d", lk.Path, os.Getpid(), lk.Ino)
	}
	if flockN(t, lk.Path) {
		t.Errorf("flock -n %s true succeeded while latch holds the entry, want busy", lk.Path)
	}
	if otherProcessFlock(t, lk.Path) {
		t.Errorf("flock(LOCK_EX|LOCK_NB) from another process on %s succeeded while latch holds the entry, want EWOULDBLOCK", lk.Path)
	}
}

// TestCreateFlocks: every entry Create and Acquire make is flocked by
// latch while held (flock(1) and another process's flock(2) both fail),
// and after Remove the entry is gone and no descriptor is left open.
func TestCreateFlocks(t *testing.T) {
	needTool(t, "flock")
	l := testLayout(t)
	if err := l.EnsureGlobalDirs(); err != nil {
		t.Fatal(err)
	}
	g, err := l.Create(l.Global[0], NewRecord(RoleAgent), agentUID(), agentUID())
	if err != nil {
		t.Fatal(err)
	}
	checkFlocked(t, g)

	root := filepath.Dir(l.Dir)
	before, _ := openFDs(t, root)
	svcs := []Service{{"app", "a"}, {"app", "b"}}
	_, err = l.Acquire(svcs, []string{UpdatesName, ResinName}, NewRecord(RoleAgent), agentUID(), agentUID())
	if err == nil || !errors.Is(err, ErrHeld) {
		t.Fatalf("Acquire under a device-wide lock: %v, want ErrHeld", err)
	}
	if all, under := openFDs(t, root); all > before || under != 1 {
		t.Errorf("a refused Acquire: %d descriptors open (%d before), %d under %s; want only the device-wide lock's", all, before, under, root)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if exists(g.Path) || g.Flocked() {
		t.Errorf("after Remove: exists=%v flocked=%v, want gone and unflocked", exists(g.Path), g.Flocked())
	}
	if myFlocks(t)[g.Ino] {
		t.Errorf("after Remove, /proc/locks still shows this process's flock on inode %d", g.Ino)
	}

	locks, err := l.Acquire(svcs, []string{UpdatesName, ResinName}, NewRecord(RoleAgent), agentUID(), agentUID())
	if err != nil {
		t.Fatal(err)
	}
	if len(locks) != 4 {
		t.Fatalf("Acquire: %d locks, want 4", len(locks))
	}
	for _, lk := range locks {
		checkFlocked(t, lk)
	}
	if err := ReleaseAll(locks); err != nil {
		t.Fatal(err)
	}
	for _, lk := range locks {
		if exists(lk.Path) {
			t.Errorf("%s still exists after ReleaseAll", lk.Path)
		}
	}
	checkNoFDs(t, "after ReleaseAll", root, before)
	f := myFlocks(t)
	for _, lk := range locks {
		if f[lk.Ino] {
			t.Errorf("after ReleaseAll this process still holds a flock on %s's inode %d", lk.Path, lk.Ino)
		}
	}
}

// TestFlockNoLeak: 200 rounds of take and release (including a replaced
// entry and a refused, rolled-back Acquire) leave the descriptor count
// where it was.
func TestFlockNoLeak(t *testing.T) {
	l := testLayout(t)
	svcs := []Service{{"app", "a"}, {"app", "b"}}
	blocked := filepath.Join(l.ServiceDir(svcs[1]), UpdatesName)
	round := func(i int) {
		locks, err := l.Acquire(svcs, []string{UpdatesName, ResinName}, NewRecord(RoleAgent), agentUID(), agentUID())
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if i%3 == 1 {
			// Someone (a --force, an operator) replaced an entry: Remove
			// leaves the new one, and the old descriptor is still closed.
			os.Remove(locks[0].Path)
			os.WriteFile(locks[0].Path, nil, 0o644)
		}
		if err := ReleaseAll(locks); err != nil && !errors.Is(err, ErrNotOurs) {
			t.Fatalf("round %d: release: %v", i, err)
		}
		os.Remove(locks[0].Path)
		if i%5 == 2 {
			// A user lock in the last service: the first service's
			// entries are rolled back.
			os.WriteFile(blocked, nil, 0o644)
			if _, err := l.Acquire(svcs, []string{UpdatesName, ResinName}, NewRecord(RoleAgent), agentUID(), agentUID()); !errors.Is(err, ErrHeld) {
				t.Fatalf("round %d: Acquire with a user lock: %v, want ErrHeld", i, err)
			}
			os.Remove(blocked)
		}
	}
	round(0) // the directories, and anything the runtime opens once
	root := filepath.Dir(l.Dir)
	before, _ := openFDs(t, root)
	for i := 1; i <= 200; i++ {
		round(i)
	}
	checkNoFDs(t, "after 200 take/release rounds", root, before)
}

// TestFlockDiesWithHolder: an agent process killed while it holds entries
// takes its flocks with it (the kernel drops them), and the entries it
// leaves are dead records: state agent, no holder, record not alive.
func TestFlockDiesWithHolder(t *testing.T) {
	needTool(t, "flock")
	l := testLayout(t)
	s := Service{"app", "svc"}
	if _, err := l.EnsureServiceDir(s); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], l.Dir, s.String())
	cmd.Env = append(os.Environ(), "LATCH_LOCK_HELPER=acquire")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		t.Fatalf("helper said %q, want ready", line)
	}
	paths := []string{filepath.Join(l.ServiceDir(s), UpdatesName), filepath.Join(l.ServiceDir(s), ResinName)}
	for _, p := range paths {
		if flockN(t, p) {
			t.Errorf("flock -n %s true succeeded while the holder runs, want busy", p)
		}
		if err := tryFlock(p); !errors.Is(err, unix.EWOULDBLOCK) {
			t.Errorf("flock(LOCK_EX|LOCK_NB) on %s while the holder runs: %v, want EWOULDBLOCK", p, err)
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	killed = true
	for _, p := range paths {
		if !flockN(t, p) {
			t.Errorf("flock -n %s true failed after the holder was killed, want the flock gone with it", p)
		}
		e, err := l.Inspect(p)
		if err != nil {
			t.Fatalf("the killed holder's entry %s: %v, want it left behind", p, err)
		}
		if e.State != StateAgent || e.Holder != nil || e.Record == nil || e.Record.Alive() || e.Record.PID != cmd.Process.Pid {
			t.Errorf("%s after the holder was killed: state %s, holder %+v, record %+v; want a dead agent record of pid %d", p, e.State, e.Holder, e.Record, cmd.Process.Pid)
		}
	}
}

// TestReclaim: an entry taken over from a dead agent is flocked like one
// made by Create; an entry another process flocks, a symlink or a fifo is
// refused, without following or hanging.
func TestReclaim(t *testing.T) {
	needTool(t, "flock")
	l := testLayout(t)
	dir, err := l.EnsureServiceDir(Service{"app", "svc"})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, UpdatesName)
	rec := NewRecord(RoleAgent)
	rec.PID = deadPID(t)
	writeRecord(t, p, rec)
	root := filepath.Dir(l.Dir)
	before, _ := openFDs(t, root)
	lk, err := Reclaim(p)
	if err != nil {
		t.Fatal(err)
	}
	checkFlocked(t, lk)
	if err := lk.Remove(); err != nil || exists(p) {
		t.Fatalf("Remove of a reclaimed entry: %v, exists=%v", err, exists(p))
	}
	checkNoFDs(t, "after Reclaim and Remove", root, before)

	// Held by a live flock(1): refused, naming it held.
	writeRecord(t, p, rec)
	holder := exec.Command("flock", p, "sh", "-c", "echo ready; exec cat >/dev/null")
	hin, _ := holder.StdinPipe()
	hout, _ := holder.StdoutPipe()
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	if line, _ := bufio.NewReader(hout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("flock said %q", line)
	}
	if _, err := Reclaim(p); !errors.Is(err, ErrHeld) {
		t.Errorf("Reclaim of an entry flock(1) holds: %v, want ErrHeld", err)
	}
	hin.Close()
	holder.Wait()
	os.Remove(p)

	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("x"), 0o644)
	if err := os.Symlink(secret, p); err != nil {
		t.Fatal(err)
	}
	if _, err := Reclaim(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("Reclaim of a symlink: %v, want an error naming %s", err, p)
	}
	if myFlocks(t)[inode(t, secret)] {
		t.Errorf("Reclaim followed the symlink and flocked %s", secret)
	}
	os.Remove(p)
	if err := unix.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Reclaim(p); err == nil {
		t.Errorf("Reclaim of a fifo succeeded, want refused")
	}
	checkNoFDs(t, "after the refused Reclaims", root, before)
}
