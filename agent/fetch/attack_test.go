package fetch

import (
	"bytes"
	"context"
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

	"golang.org/x/sys/unix"
)

// These tests attack Install, Restore, Commit and Fetch the way a local user
// would: the install directory belongs to uid 1000 (or is a sticky
// world-writable directory where uid 65534 plants names), the planting is
// done by real processes of those users (setpriv), and the victim is a
// root-owned 0600 file elsewhere that must come out byte-identical with its
// mode. They need root to run latch's side as root.

const (
	kioskUID  = 1000
	nobodyUID = 65534
)

// swapperEnv makes the test binary, started as another user, run the swap
// loop of TestInstallChmodRace instead of the tests.
const swapperEnv = "LATCH_FETCH_SWAPPER"

func TestMain(m *testing.M) {
	if args := os.Getenv(swapperEnv); args != "" {
		dir, victim, _ := strings.Cut(args, "\n")
		swap(dir, victim)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// swap is the attacker of TestInstallChmodRace, run as uid 1000 in the
// install directory it owns: it keeps exchanging DIR/app with a symlink to
// the victim (renameat2 RENAME_EXCHANGE: app is never missing), as fast as
// it can, until killed.
func swap(dir, victim string) {
	app, link := filepath.Join(dir, "app"), filepath.Join(dir, ".link")
	for {
		if err := unix.Renameat2(unix.AT_FDCWD, app, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE); err != nil {
			os.Symlink(victim, link) // an Install left no link to exchange with
		}
	}
}

func needRoot(t *testing.T, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: " + what + " not tested")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv: " + what + " not tested")
	}
}

// runAs runs a command as uid (and gid) uid with no supplementary groups.
func runAs(t *testing.T, uid int, args ...string) {
	t.Helper()
	a := append([]string{fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups"}, args...)
	if out, err := exec.Command("setpriv", a...).CombinedOutput(); err != nil {
		t.Fatalf("setpriv %v: %v\n%s", a, err, out)
	}
}

// openDirTemp is a t.TempDir that other users can reach.
func openDirTemp(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	must(t, os.Chmod(d, 0o755))
	must(t, os.Chmod(filepath.Dir(d), 0o755))
	return d
}

// withProtectedSymlinks runs f once for each value of fs.protected_symlinks
// that the kernel lets the test set, restoring the old value afterwards.
func withProtectedSymlinks(t *testing.T, f func(t *testing.T)) {
	const knob = "/proc/sys/fs/protected_symlinks"
	old, err := os.ReadFile(knob)
	if err != nil {
		t.Logf("%s: %v; running with the kernel's setting only", knob, err)
		f(t)
		return
	}
	t.Cleanup(func() {
		if err := os.WriteFile(knob, old, 0o644); err != nil {
			t.Errorf("restore %s to %s: %v", knob, bytes.TrimSpace(old), err)
		}
	})
	for _, v := range []string{"0", "1"} {
		if err := os.WriteFile(knob, []byte(v), 0o644); err != nil {
			t.Logf("set %s to %s: %v; not tested with that value", knob, v, err)
			continue
		}
		t.Run("protected_symlinks="+v, f)
	}
}

// victim is a root-owned 0600 file in a root-only directory (the test
// user's, when not root).
type victim struct {
	path    string
	content []byte
}

func newVictim(t *testing.T) victim {
	t.Helper()
	dir := t.TempDir() // 0700, root's
	v := victim{path: filepath.Join(dir, "secret"), content: []byte("root:$y$secret:20000:0:99999:7:::\n")}
	must(t, os.WriteFile(v.path, v.content, 0o600))
	return v
}

// check fails the test if the victim changed in any way.
func (v victim) check(t *testing.T, when string) {
	t.Helper()
	st, err := os.Lstat(v.path)
	if err != nil {
		t.Fatalf("%s: victim %s: %v", when, v.path, err)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; st.Mode() != 0o600 || int(uid) != os.Geteuid() {
		t.Fatalf("%s: victim %s has mode %v, uid %d; want -rw------- and uid %d, unchanged", when, v.path, st.Mode(), uid, os.Geteuid())
	}
	if b, err := os.ReadFile(v.path); err != nil || !bytes.Equal(b, v.content) {
		t.Fatalf("%s: victim %s holds %q (%v); want it unchanged, %q", when, v.path, b, err, v.content)
	}
}

// hostileDir is an install directory that a user other than root controls.
type hostileDir struct {
	name string
	uid  int // the user who plants names
	// owner: uid owns the directory, and can replace any name in it (in
	// the sticky one, only the names that root has not made yet)
	owner bool
	make  func(t *testing.T) (dir string) // the directory, made by root
}

var hostileDirs = []hostileDir{
	{"owned by uid 1000", kioskUID, true, func(t *testing.T) string {
		d := filepath.Join(openDirTemp(t), "bin")
		must(t, os.Mkdir(d, 0o755))
		must(t, os.Chown(d, kioskUID, kioskUID))
		return d
	}},
	{"sticky world-writable, planted by uid 65534", nobodyUID, false, func(t *testing.T) string {
		d := filepath.Join(openDirTemp(t), "bin")
		must(t, os.Mkdir(d, 0o755))
		must(t, os.Chmod(d, 0o777|os.ModeSticky))
		return d
	}},
}

// TestInstallPlantedLinks: every name that Install, Restore and Commit touch
// next to DST, planted as a symlink to the victim by the user who can write
// the directory (which the target allowed), before each of them runs. The
// victim must stay as it is, and the install must still work.
func TestInstallPlantedLinks(t *testing.T) {
	needRoot(t, "symlinks planted by uid 1000 and 65534 in the install directory")
	names := []string{
		"app" + newSuffix, "app" + absentSuffix, "app" + prevSuffix,
		"app" + prevSuffix + tmpInfix + "link", ".app" + tmpInfix + "planted", "app",
	}
	withProtectedSymlinks(t, func(t *testing.T) {
		for _, hd := range hostileDirs {
			// dst absent, with older content, with the new content but
			// mode 0644 (Install only has to change the mode)
			for _, before := range []string{"", "v1", "v2"} {
				for _, name := range names {
					if name == "app" && before != "" {
						continue // dst itself is replaced by the planted link
					}
					t.Run(fmt.Sprintf("%s/dst %q/%s", hd.name, before, name), func(t *testing.T) {
						v := newVictim(t)
						dir := hd.make(t)
						dst := filepath.Join(dir, "app")
						if before != "" {
							must(t, os.WriteFile(dst, []byte(before), 0o644))
						}
						staged, sum := stage(t, "v2")
						plant := func() {
							p := filepath.Join(dir, name)
							if _, err := os.Lstat(p); err == nil {
								if !hd.owner {
									return // root's name in a sticky directory: theirs to keep
								}
								runAs(t, hd.uid, "rm", "-f", p)
							}
							runAs(t, hd.uid, "ln", "-s", v.path, p)
						}

						plant()
						must(t, Install(staged, dst, 0o755, sum, AllowWritableDir(true)))
						v.check(t, "after Install")
						wantContent(t, dst, "v2")
						wantMode(t, dst, 0o755)
						must(t, Restore(dst, sum))
						v.check(t, "after Restore")
						switch {
						case before == "" && name == "app":
							// The planted link was what dst was: it is back.
							if got, err := os.Readlink(dst); err != nil || got != v.path {
								t.Errorf("dst after Restore: Readlink got %q, %v; want the link back", got, err)
							}
						case before == "":
							assertMissing(t, dst)
						default:
							wantContent(t, dst, before)
							wantMode(t, dst, 0o644)
						}

						// Planted again before each step. What the steps
						// make of the names the user replaced is the user's
						// loss; the victim must stay as it is.
						plant()
						must(t, Install(staged, dst, 0o755, sum, AllowWritableDir(true)))
						v.check(t, "after Install")
						wantContent(t, dst, "v2")
						plant()
						must(t, Install(staged, dst, 0o755, sum, AllowWritableDir(true))) // a retry
						v.check(t, "after a second Install")
						wantContent(t, dst, "v2")
						plant()
						if err := Restore(dst, sum); err != nil {
							t.Logf("Restore after planting %s: %v", name, err)
						}
						v.check(t, "after Restore")
						plant()
						must(t, Commit(dst))
						v.check(t, "after Commit")
					})
				}
			}
		}
	})
}

// TestInstallPlantedFIFOs: a FIFO planted at a name Install or Restore reads
// must not make them wait for a writer that never comes.
func TestInstallPlantedFIFOs(t *testing.T) {
	needRoot(t, "FIFOs planted by uid 1000 in the install directory")
	for _, name := range []string{"app", "app" + newSuffix, "app" + absentSuffix, "app" + prevSuffix} {
		t.Run(name, func(t *testing.T) {
			dir := hostileDirs[0].make(t)
			dst := filepath.Join(dir, "app")
			staged, sum := stage(t, "v2")
			if name != "app" {
				// dst already has the new content: Install reads the marker.
				must(t, os.WriteFile(dst, []byte("v2"), 0o755))
				must(t, os.Chmod(dst, 0o755))
			}
			fifo := filepath.Join(dir, name)
			runAs(t, kioskUID, "mkfifo", fifo)
			unstick := func() { // a writer that ends any read blocked on the FIFO
				if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
			}
			noHang(t, "Install", unstick, func() error { return Install(staged, dst, 0o755, sum, AllowWritableDir(true)) })
			wantContent(t, dst, "v2")
			if name == "app" || name == "app"+prevSuffix {
				runAs(t, kioskUID, "rm", "-f", fifo)
				runAs(t, kioskUID, "mkfifo", fifo)
			}
			// Restore may refuse (a FIFO is not a previous version) but must return.
			done := make(chan error, 1)
			go func() { done <- Restore(dst, sum) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				unstick()
				t.Fatalf("Restore with a FIFO at %s never returned", name)
			}
		})
	}
}

// noHang runs f, failing the test if it does not return: a hang detector,
// not a timing (the bound is far beyond any honest run).
func noHang(t *testing.T, what string, unstick func(), f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(30 * time.Second):
		unstick()
		t.Fatalf("%s never returned: it waits on a FIFO", what)
	}
}

// TestInstallChmodRace: dst already has the new content, only the mode must
// change, while uid 1000 keeps swapping dst for a symlink to the victim. A
// chmod of the path after checking it would hit the victim.
func TestInstallChmodRace(t *testing.T) {
	needRoot(t, "a symlink swap race run by uid 1000")
	exe, err := os.Executable()
	must(t, err)
	bin := filepath.Join(openDirTemp(t), "fetch.test")
	copyFile(t, exe, bin, 0o755)
	withProtectedSymlinks(t, func(t *testing.T) {
		v := newVictim(t)
		dir := shmDir(t, kioskUID)
		dst := filepath.Join(dir, "app")
		staged, sum := stage(t, "v2")
		must(t, os.WriteFile(dst, []byte("v2"), 0o644))
		must(t, Install(staged, dst, 0o644, sum, AllowWritableDir(true)))

		cmd := exec.Command("setpriv", fmt.Sprintf("--reuid=%d", kioskUID), fmt.Sprintf("--regid=%d", kioskUID), "--clear-groups", bin)
		cmd.Env = append(os.Environ(), swapperEnv+"="+dir+"\n"+v.path)
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		must(t, cmd.Start())
		stopped := false
		stop := func() {
			if !stopped {
				stopped = true
				cmd.Process.Kill()
				cmd.Wait()
			}
		}
		defer stop()

		modes := []os.FileMode{0o755, 0o700}
		var installed, failed int
		for i := 0; i < 1000; i++ {
			// Errors are expected: the swapper moves dst under Install's feet.
			if err := Install(staged, dst, modes[i%2], sum, AllowWritableDir(true)); err != nil {
				failed++
			} else {
				installed++
			}
			v.check(t, fmt.Sprintf("after Install %d while the swapper runs", i))
		}
		stop()
		v.check(t, "after the race")
		t.Logf("%d Installs succeeded and %d failed during the race", installed, failed)
		// Once the attacker stops, an install works again.
		os.Remove(filepath.Join(dir, ".link"))
		must(t, Install(staged, dst, 0o750, sum, AllowWritableDir(true)))
		wantContent(t, dst, "v2")
		wantMode(t, dst, 0o750)
		v.check(t, "at the end")
	})
}

// shmDir is a directory owned by uid on a tmpfs (/dev/shm) where there is
// one, else under t.TempDir: the race makes hundreds of installs, and their
// fsyncs cost nothing there. Links and renames behave the same.
func shmDir(t *testing.T, uid int) string {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "latch-fetch-race-")
	if err != nil {
		t.Logf("no /dev/shm (%v): racing on the test's temporary directory", err)
		return hostileDirs[0].make(t)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	must(t, os.Chmod(d, 0o755))
	must(t, os.Chown(d, uid, uid))
	return d
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	must(t, err)
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	must(t, err)
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	must(t, out.Close())
}

// TestInstallRefusesWritableDir: a directory that others can write, or that
// another user owns, is refused with an error naming it and the opt-in, and
// nothing in it changes; with the opt-in the install goes ahead.
func TestInstallRefusesWritableDir(t *testing.T) {
	tests := []struct {
		name string
		root bool // needs root to set up
		mode os.FileMode
		uid  int
		want string
	}{
		{name: "other-writable", mode: 0o757, uid: -1, want: "has mode drwxr-xrwx"},
		{name: "group-writable", mode: 0o775, uid: -1, want: "has mode drwxrwxr-x"},
		{name: "world-writable", mode: 0o777, uid: -1, want: "has mode drwxrwxrwx"},
		{name: "sticky world-writable", mode: 0o777 | os.ModeSticky, uid: -1, want: "has mode dtrwxrwxrwx"},
		{name: "owned by uid 1000", root: true, mode: 0o755, uid: kioskUID, want: "is owned by uid 1000"},
		{name: "owned by uid 65534", root: true, mode: 0o700, uid: nobodyUID, want: "is owned by uid 65534"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root: a directory of another owner not tested")
			}
			dir := filepath.Join(t.TempDir(), "bin")
			must(t, os.Mkdir(dir, 0o755))
			must(t, os.Chmod(dir, tt.mode))
			if tt.uid >= 0 {
				must(t, os.Chown(dir, tt.uid, tt.uid))
			}
			dst := filepath.Join(dir, "app")
			must(t, os.WriteFile(dst, []byte("v1"), 0o644))
			staged, sum := stage(t, "v2")
			for _, opts := range [][]InstallOption{nil, {AllowWritableDir(false)}} {
				err := Install(staged, dst, 0o755, sum, opts...)
				if !errors.Is(err, ErrUnsafeDir) {
					t.Fatalf("Install into a directory %s: got %v, want ErrUnsafeDir", tt.name, err)
				}
				for _, s := range []string{"directory " + dir, tt.want, `"allow_writable_dir": true`} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not say %q", err, s)
					}
				}
				wantContent(t, dst, "v1")
				wantOnly(t, dir, "app")
			}
			must(t, Install(staged, dst, 0o755, sum, AllowWritableDir(true)))
			wantContent(t, dst, "v2")
			must(t, Restore(dst, sum))
			wantContent(t, dst, "v1")
		})
	}
}

// wantOnly fails unless dir holds exactly names.
func wantOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	must(t, err)
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != strings.Join(names, " ") {
		t.Errorf("%s holds %q, want %q", dir, got, names)
	}
}

// TestInstallDirLinks: a symlink on the way to the install directory is
// followed only where no other user could have put it.
func TestInstallDirLinks(t *testing.T) {
	staged, sum := stage(t, "v2")

	t.Run("in a trusted directory", func(t *testing.T) {
		base := t.TempDir()
		real := filepath.Join(base, "real")
		must(t, os.Mkdir(real, 0o755))
		must(t, os.Symlink("real", filepath.Join(base, "rel")))
		must(t, os.Symlink(real, filepath.Join(base, "abs")))
		for _, l := range []string{"rel", "abs"} {
			dst := filepath.Join(base, l, "app-"+l)
			must(t, Install(staged, dst, 0o644, sum))
			wantContent(t, filepath.Join(real, "app-"+l), "v2")
			must(t, Restore(dst, sum))
			assertMissing(t, filepath.Join(real, "app-"+l))
		}
	})

	t.Run("in a writable directory", func(t *testing.T) {
		base := t.TempDir()
		real := filepath.Join(base, "real")
		must(t, os.Mkdir(real, 0o755))
		open := filepath.Join(base, "open")
		must(t, os.Mkdir(open, 0o755))
		must(t, os.Chmod(open, 0o777))
		must(t, os.Symlink(real, filepath.Join(open, "bin")))
		dst := filepath.Join(open, "bin", "app")
		// The opt-in is for the install directory, not for links on the way.
		for _, opts := range [][]InstallOption{nil, {AllowWritableDir(true)}} {
			err := Install(staged, dst, 0o644, sum, opts...)
			if !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), filepath.Join(open, "bin")+": it is a symbolic link in "+open) {
				t.Fatalf("Install through a link in a world-writable directory: got %v, want ErrUnsafeDir naming the link", err)
			}
			wantOnly(t, real)
		}
		for _, f := range []func() error{func() error { return Restore(dst, sum) }, func() error { return Commit(dst) }} {
			if err := f(); !errors.Is(err, ErrUnsafeDir) {
				t.Errorf("Restore or Commit through a link in a world-writable directory: got %v, want ErrUnsafeDir", err)
			}
		}
	})

	t.Run("another user's link in a sticky directory", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root: a link owned by another user not tested")
		}
		base := t.TempDir()
		real := filepath.Join(base, "real")
		must(t, os.Mkdir(real, 0o755))
		tmp := filepath.Join(base, "tmp")
		must(t, os.Mkdir(tmp, 0o755))
		must(t, os.Chmod(tmp, 0o777|os.ModeSticky))
		mine, theirs := filepath.Join(tmp, "mine"), filepath.Join(tmp, "theirs")
		must(t, os.Symlink(real, mine))
		must(t, os.Symlink(real, theirs))
		must(t, os.Lchown(theirs, nobodyUID, nobodyUID))
		must(t, Install(staged, filepath.Join(mine, "app"), 0o644, sum))
		wantContent(t, filepath.Join(real, "app"), "v2")
		if err := Install(staged, filepath.Join(theirs, "app2"), 0o644, sum); !errors.Is(err, ErrUnsafeDir) {
			t.Fatalf("Install through uid 65534's link in a sticky directory: got %v, want ErrUnsafeDir", err)
		}
		assertMissing(t, filepath.Join(real, "app2"))
	})

	t.Run("not a directory", func(t *testing.T) {
		base := t.TempDir()
		must(t, os.WriteFile(filepath.Join(base, "file"), nil, 0o644))
		if err := Install(staged, filepath.Join(base, "file", "app"), 0o644, sum); err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Fatalf("Install under a regular file: got %v, want an error saying not a directory", err)
		}
	})
}

// TestInstallModes: mode 0 installs a file of mode 0000; special bits are
// refused with nothing changed.
func TestInstallModes(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "app")
	staged, sum := stage(t, "v2")
	must(t, Install(staged, dst, 0, sum))
	wantMode(t, dst, 0)
	if os.Geteuid() == 0 { // only root reads a 0000 file back
		must(t, Install(staged, dst, 0, sum))
		wantMode(t, dst, 0)
		wantContent(t, dst, "v2")
		must(t, Restore(dst, sum))
		assertMissing(t, dst)
	} else {
		t.Log("not root: a second Install and a Restore of the 0000 file not tested (they must read it)")
		must(t, os.Remove(dst))
		must(t, Commit(dst))
	}

	must(t, os.WriteFile(dst, []byte("v1"), 0o644))
	for _, m := range []os.FileMode{0o755 | os.ModeSetuid, 0o755 | os.ModeSetgid, 0o777 | os.ModeSticky, os.ModeDir | 0o755, 0o4755} {
		err := Install(staged, dst, m, sum)
		if err == nil || !strings.Contains(err.Error(), "only permission bits are installed") {
			t.Errorf("Install with mode %v: got %v, want an error refusing the special bits", m, err)
		}
		wantContent(t, dst, "v1")
		wantOnly(t, dir, "app")
	}
}

// TestFetchFileDigestNotQuoted: a checksum error for a file URL never says
// what the digest of the file is, so it cannot be used to learn the digest
// of a file that only root can read.
func TestFetchFileDigestNotQuoted(t *testing.T) {
	v := newVictim(t)
	_, wrong := randomContent(t, 8)
	real := sumOf(string(v.content))
	srcs := []string{"file://" + v.path}
	if os.Geteuid() == 0 {
		// The way a user would ask: through a link of theirs.
		mine := openDirTemp(t)
		must(t, os.Chown(mine, kioskUID, kioskUID))
		runAs(t, kioskUID, "ln", "-s", v.path, filepath.Join(mine, "shadow"))
		srcs = append(srcs, "file://"+filepath.Join(mine, "shadow"))
	}
	for _, src := range srcs {
		dest := filepath.Join(t.TempDir(), "f")
		err := Fetch(context.Background(), nil, src, wrong, dest, nil)
		if !errors.Is(err, ErrChecksum) {
			t.Fatalf("Fetch(%s) with a wrong sha256: got %v, want ErrChecksum", src, err)
		}
		if strings.Contains(strings.ToLower(err.Error()), real) {
			t.Errorf("error %q quotes the sha256 of %s", err, v.path)
		}
		if !strings.Contains(err.Error(), wrong) {
			t.Errorf("error %q does not name the expected sha256 %s", err, wrong)
		}
		assertMissing(t, dest)
		assertMissing(t, dest+".part")
		v.check(t, "after Fetch")
	}

	// Install of a staged file that does not match does not quote it either.
	staged := filepath.Join(t.TempDir(), "staged")
	must(t, os.WriteFile(staged, v.content, 0o600))
	err := Install(staged, filepath.Join(t.TempDir(), "app"), 0o644, wrong)
	if !errors.Is(err, ErrChecksum) || strings.Contains(err.Error(), real) {
		t.Errorf("Install of a mismatching staged file: got %v, want ErrChecksum not quoting its sha256", err)
	}
}

// TestFetchFileNotRegular: a file URL naming a FIFO, a device or a directory
// is refused at once, also through a symlink; nothing is kept.
func TestFetchFileNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	must(t, syscall.Mkfifo(fifo, 0o644))
	must(t, os.Symlink(fifo, filepath.Join(dir, "to-fifo")))
	must(t, os.Symlink("/dev/zero", filepath.Join(dir, "to-zero")))
	must(t, os.Mkdir(filepath.Join(dir, "subdir"), 0o755))
	_, sum := randomContent(t, 8)
	unstick := func() {
		if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	}
	for _, c := range []struct{ src, want string }{
		{fifo, "is not a regular file (a FIFO)"},
		{filepath.Join(dir, "to-fifo"), "is not a regular file (a FIFO)"},
		{"/dev/zero", "is not a regular file (a device)"},
		{filepath.Join(dir, "to-zero"), "is not a regular file (a device)"},
		{filepath.Join(dir, "subdir"), "is not a regular file (a directory)"},
	} {
		dest := filepath.Join(t.TempDir(), "f")
		done := make(chan error, 1)
		go func() { done <- Fetch(context.Background(), nil, "file://"+c.src, sum, dest, nil) }()
		var err error
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			unstick()
			t.Fatalf("Fetch(file://%s) never returned: it waits on the FIFO", c.src)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Fetch(file://%s): got %v, want an error containing %q", c.src, err, c.want)
		}
		assertMissing(t, dest)
	}
	if _, err := FileSHA256(fifo); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("FileSHA256 of a FIFO: got %v, want an error saying it is not a regular file", err)
	}
	dst := filepath.Join(t.TempDir(), "app")
	noHang(t, "Install of a staged FIFO", unstick, func() error {
		if err := Install(fifo, dst, 0o644, sum); err == nil || !strings.Contains(err.Error(), "is not a regular file (a FIFO)") {
			return fmt.Errorf("got %v, want an error saying the staged file is not a regular file", err)
		}
		return nil
	})
	assertMissing(t, dst)
}

// TestInstallCreatesDirs: the directories Install makes are 0755 and the
// agent's whatever the umask (a umask of 077 would make them 0700, and the
// services running as other users could not reach their files).
func TestInstallCreatesDirs(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	base := t.TempDir()
	dst := filepath.Join(base, "opt", "kiosk", "bin", "app")
	staged, sum := stage(t, "v2")
	must(t, Install(staged, dst, 0o755, sum))
	wantContent(t, dst, "v2")
	for p := filepath.Dir(dst); p != base; p = filepath.Dir(p) {
		st, err := os.Lstat(p)
		must(t, err)
		if st.Mode() != os.ModeDir|0o755 || int(st.Sys().(*syscall.Stat_t).Uid) != os.Geteuid() {
			t.Errorf("%s: mode %v, uid %d; want drwxr-xr-x and uid %d", p, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, os.Geteuid())
		}
	}
}

// TestInstallUserOwnsAncestor: uid 1000 owns /…/kiosk, root owns the
// install directory /…/kiosk/bin below it. The install works; what the
// user can then put at bin in its place (a link to a directory of root's,
// a directory of their own) is refused, and the victim directory is left
// alone.
func TestInstallUserOwnsAncestor(t *testing.T) {
	needRoot(t, "an ancestor directory owned by uid 1000")
	base := openDirTemp(t)
	kiosk := filepath.Join(base, "kiosk")
	must(t, os.Mkdir(kiosk, 0o755))
	must(t, os.Chown(kiosk, kioskUID, kioskUID))
	bin := filepath.Join(kiosk, "bin")
	must(t, os.Mkdir(bin, 0o755))
	dst := filepath.Join(bin, "app")
	staged, sum := stage(t, "v2")
	must(t, Install(staged, dst, 0o755, sum))
	must(t, Commit(dst))
	wantContent(t, dst, "v2")

	etc := filepath.Join(base, "etc") // a directory of root's, outside
	must(t, os.Mkdir(etc, 0o755))
	runAs(t, kioskUID, "mv", "-T", bin, filepath.Join(kiosk, "old"))
	runAs(t, kioskUID, "ln", "-s", etc, bin)
	err := Install(staged, dst, 0o755, sum)
	if !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), bin+": it is a symbolic link in "+kiosk) {
		t.Fatalf("Install through uid 1000's link: got %v, want ErrUnsafeDir naming the link", err)
	}
	wantOnly(t, etc)

	runAs(t, kioskUID, "rm", bin)
	runAs(t, kioskUID, "mkdir", bin)
	err = Install(staged, dst, 0o755, sum)
	if !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), "directory "+bin+" is owned by uid 1000") {
		t.Fatalf("Install into uid 1000's own directory: got %v, want ErrUnsafeDir naming it", err)
	}
	wantOnly(t, bin)
}
