// Package nspawn boots a throw-away Debian container with a real systemd as PID 1, for tests that
// need systemd: the units, the watchdog, the .deb, reboots.
//
// Guarantees:
//   - The cached rootfs (scripts/nspawn/rootfs.sh) is never written: each container boots an
//     overlay (or, where overlayfs is refused, a copy) in a folder of its own.
//   - The host needs no systemd and no system bus: nspawn runs with --register=no --keep-unit and
//     commands enter the container with nsenter into the namespaces of its PID 1.
//   - A reboot inside the container boots it again on the same root (nspawn exits with status
//     133 on reboot; the container relaunches it), so a test can reboot and look at what stayed.
//   - Close powers the container off, kills nspawn if it does not stop, and unmounts; it is
//     idempotent.
package nspawn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// EnvRootfs names a rootfs folder to boot instead of the cache.
const EnvRootfs = "LATCH_NSPAWN_ROOTFS"

// EnvCache overrides the cache folder of scripts/nspawn/rootfs.sh.
const EnvCache = "LATCH_NSPAWN_CACHE"

// DefaultCache is where scripts/nspawn/rootfs.sh keeps its rootfs trees.
const DefaultCache = "/var/cache/latch/nspawn"

// ErrNoRootfs means no rootfs is available and none can be built here.
var ErrNoRootfs = errors.New("no rootfs to boot")

// exitReboot is nspawn's exit status when the container asked for a reboot.
const exitReboot = 133

// Rootfs returns the rootfs to boot for a Debian architecture (amd64, arm64, armhf): the folder
// named by LATCH_NSPAWN_ROOTFS, or the cached bookworm-<arch> tree. It never builds one; the error
// says how to.
func Rootfs(arch string) (string, error) {
	if dir := os.Getenv(EnvRootfs); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "lib/systemd/systemd")); err != nil {
			return "", fmt.Errorf("%w: %s=%s: no systemd in it: %v", ErrNoRootfs, EnvRootfs, dir, err)
		}
		return dir, nil
	}
	cache := os.Getenv(EnvCache)
	if cache == "" {
		cache = DefaultCache
	}
	dir := filepath.Join(cache, "bookworm-"+arch)
	if _, err := os.Stat(filepath.Join(dir, ".latch-rootfs-ok")); err != nil {
		return "", fmt.Errorf("%w: no cached rootfs at %s (build it with scripts/nspawn/rootfs.sh %s, or set %s)", ErrNoRootfs, dir, arch, EnvRootfs)
	}
	return dir, nil
}

// EnsureRootfs returns Rootfs(arch), building the cache first with scripts/nspawn/rootfs.sh when
// it is missing and debootstrap is installed (a few minutes, once per machine), so that a fresh
// machine still runs the tests. LATCH_NSPAWN_NO_BUILD=1 turns the build off.
func EnsureRootfs(ctx context.Context, arch string) (string, error) {
	dir, err := Rootfs(arch)
	if err == nil || os.Getenv(EnvRootfs) != "" || os.Getenv("LATCH_NSPAWN_NO_BUILD") == "1" {
		return dir, err
	}
	if _, lerr := exec.LookPath("debootstrap"); lerr != nil {
		return "", fmt.Errorf("%w; debootstrap is not installed to build it (apt-get install -y debootstrap)", err)
	}
	script, serr := findScript("scripts/nspawn/rootfs.sh")
	if serr != nil {
		return "", fmt.Errorf("%w; %v", err, serr)
	}
	cmd := exec.CommandContext(ctx, "sh", script, arch)
	var out syncBuffer
	cmd.Stderr = &out
	if berr := cmd.Run(); berr != nil {
		return "", fmt.Errorf("build rootfs %s: %w\n%s", arch, berr, out.String())
	}
	return Rootfs(arch)
}

// findScript looks for rel in the current folder and its parents (tests run in their package's
// folder inside the module).
func findScript(rel string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%s not found above the current folder", rel)
		}
		dir = parent
	}
}

// Available reports why containers cannot run here, or nil.
func Available() error {
	if os.Getenv("LATCH_EMULATED") == "1" {
		return errors.New("running under qemu-user emulation (LATCH_EMULATED=1): containers are booted by the native run, and by LATCH_NSPAWN_ARCH for other architectures")
	}
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	for _, tool := range []string{"systemd-nspawn", "nsenter", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not installed (apt-get install -y systemd-container util-linux)", tool)
		}
	}
	return nil
}

// Container is one booted container.
type Container struct {
	// Root is the container's root folder on the host: files written under it are seen inside.
	Root string
	Name string

	work    string
	overlay bool
	log     *syncBuffer

	mu      sync.Mutex // guards cmd, exited, closing
	cmd     *exec.Cmd
	exited  chan struct{} // closed when nspawn exits for good (not for a reboot)
	closing bool
}

// ForTest boots a container from the cached rootfs of arch (built when missing, see EnsureRootfs)
// for t, and powers it off at the end
// of the test. It skips t, saying what was not tested, when containers cannot run here.
func ForTest(t testing.TB, arch string) *Container {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("real-systemd test not run: %v", err)
	}
	bctx, bcancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer bcancel()
	rootfs, err := EnsureRootfs(bctx, arch)
	if errors.Is(err, ErrNoRootfs) {
		t.Skipf("real-systemd test not run: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	name := fmt.Sprintf("latch-%d", os.Getpid()%100000)
	c, err := Boot(ctx, rootfs, t.TempDir(), name)
	if err != nil {
		t.Fatalf("boot container: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close container: %v", err)
		}
		if t.Failed() {
			t.Logf("container console:\n%s", c.Log())
		}
	})
	if err := c.WaitRunning(ctx); err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, c.Log())
	}
	return c
}

// Boot mounts an overlay of rootfs under work and boots it with systemd-nspawn. Extra arguments
// go to systemd-nspawn before -D. Call WaitRunning before using it.
func Boot(ctx context.Context, rootfs, work, name string, nspawnArgs ...string) (*Container, error) {
	c := &Container{Name: name, work: work, log: &syncBuffer{}, exited: make(chan struct{})}
	c.Root = filepath.Join(work, "root")
	upper, wdir := filepath.Join(work, "upper"), filepath.Join(work, "work")
	for _, d := range []string{c.Root, upper, wdir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("boot %s: %w", name, err)
		}
	}
	opts := "lowerdir=" + rootfs + ",upperdir=" + upper + ",workdir=" + wdir
	if out, err := exec.CommandContext(ctx, "mount", "-t", "overlay", "overlay", "-o", opts, c.Root).CombinedOutput(); err == nil {
		c.overlay = true
	} else {
		// No overlayfs here (e.g. work is itself on overlayfs): a copy costs seconds, not minutes.
		if out2, err2 := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", rootfs+"/.", c.Root).CombinedOutput(); err2 != nil {
			return nil, fmt.Errorf("boot %s: overlay: %v: %s; copy: %v: %s", name, err, out, err2, out2)
		}
	}
	args := append([]string{"-q", "-b", "--register=no", "--keep-unit", "--console=passive", "--machine=" + name}, nspawnArgs...)
	args = append(args, "-D", c.Root)
	if err := c.launch(args); err != nil {
		c.unmount()
		return nil, fmt.Errorf("boot %s: %w", name, err)
	}
	return c, nil
}

// launch starts nspawn and relaunches it when the container reboots.
func (c *Container) launch(args []string) error {
	cmd := exec.Command("systemd-nspawn", args...)
	cmd.Stdout, cmd.Stderr = c.log, c.log
	if err := cmd.Start(); err != nil {
		return err
	}
	c.mu.Lock()
	c.cmd = cmd
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		var ee *exec.ExitError
		c.mu.Lock()
		closing := c.closing
		c.mu.Unlock()
		if !closing && errors.As(err, &ee) && ee.ExitCode() == exitReboot {
			fmt.Fprintf(c.log, "\n[nspawn: container rebooted; booting it again]\n")
			if err := c.launch(args); err == nil {
				return
			}
		}
		close(c.exited)
	}()
	return nil
}

// Log returns the container's console output so far.
func (c *Container) Log() string { return c.log.String() }

// PID1 returns the host pid of the container's systemd.
func (c *Container) PID1() (int, error) {
	c.mu.Lock()
	cmd := c.cmd
	c.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return 0, errors.New("container not started")
	}
	parent := strconv.Itoa(cmd.Process.Pid)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		j := strings.IndexByte(s, '(')
		if i < 0 || j < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) >= 2 && f[1] == parent && s[j+1:i] == "systemd" {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("container %s: no systemd under nspawn pid %s", c.Name, parent)
}

// WaitRunning waits until the container's systemd reports "running" or "degraded" (polling: there
// is nothing to wait on from outside the container).
func (c *Container) WaitRunning(ctx context.Context) error {
	last := ""
	for {
		select {
		case <-c.exited:
			return fmt.Errorf("container %s: nspawn exited while booting", c.Name)
		default:
		}
		if pid, err := c.PID1(); err == nil {
			out, _ := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(pid), "-a", "systemctl", "is-system-running").Output()
			last = strings.TrimSpace(string(out))
			if last == "running" || last == "degraded" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("container %s: not running (last state %q): %w", c.Name, last, ctx.Err())
		case <-c.exited:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Command returns a command that runs args inside the container, in all the namespaces of its
// PID 1, with env added to the environment (as for env(1): NAME=VALUE). The host's environment is
// not passed in.
func (c *Container) Command(ctx context.Context, env []string, args ...string) (*exec.Cmd, error) {
	pid, err := c.PID1()
	if err != nil {
		return nil, err
	}
	full := []string{"-t", strconv.Itoa(pid), "-a", "env", "-i",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"}
	full = append(append(full, env...), args...)
	return exec.CommandContext(ctx, "nsenter", full...), nil
}

// Exec runs args inside the container and returns its combined output; a non-zero exit is an
// error that carries the output.
func (c *Container) Exec(ctx context.Context, args ...string) (string, error) {
	cmd, err := c.Command(ctx, nil, args...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w: %s", c.Name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// WriteFile writes data at path inside the container (creating parent folders).
func (c *Container) WriteFile(path string, data []byte, mode os.FileMode) error {
	p := filepath.Join(c.Root, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		return err
	}
	return os.Chmod(p, mode)
}

// CopyIn copies the host file src to dst inside the container, keeping its permission bits.
func (c *Container) CopyIn(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s into %s: %w", src, c.Name, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	p := filepath.Join(c.Root, dst)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return fmt.Errorf("copy %s into %s: %w", src, c.Name, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s into %s: %w", src, c.Name, err)
	}
	return out.Close()
}

// Reboot reboots the container with systemctl reboot and waits until it runs again.
func (c *Container) Reboot(ctx context.Context) error {
	before, err := c.PID1()
	if err != nil {
		return err
	}
	_, _ = c.Exec(ctx, "systemctl", "reboot") // may be cut off by the reboot itself
	return c.WaitRebooted(ctx, before)
}

// Exited is closed when the container has stopped for good (powered off, or nspawn failed); a
// reboot does not close it.
func (c *Container) Exited() <-chan struct{} { return c.exited }

// WaitRebooted waits until the container runs again with a PID 1 other than before (read with
// PID1 before triggering the reboot).
func (c *Container) WaitRebooted(ctx context.Context, before int) error {
	for {
		if pid, err := c.PID1(); err == nil && pid != before {
			return c.WaitRunning(ctx)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("reboot %s: %w", c.Name, ctx.Err())
		case <-c.exited:
			return fmt.Errorf("reboot %s: nspawn exited", c.Name)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// PowerOff powers the container off and waits for nspawn to exit.
func (c *Container) PowerOff(ctx context.Context) error {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	select {
	case <-c.exited:
		return nil
	default:
	}
	_, _ = c.Exec(ctx, "systemctl", "poweroff")
	select {
	case <-c.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("power off %s: %w", c.Name, ctx.Err())
	}
}

// Close powers off (killing nspawn after 30 s) and unmounts the overlay. It is idempotent.
func (c *Container) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := c.PowerOff(ctx)
	if err != nil {
		c.mu.Lock()
		if c.cmd != nil && c.cmd.Process != nil {
			_ = c.cmd.Process.Kill()
		}
		c.mu.Unlock()
		<-c.exited
	}
	if uerr := c.unmount(); uerr != nil && err == nil {
		err = uerr
	}
	return err
}

func (c *Container) unmount() error {
	if !c.overlay {
		return nil
	}
	c.overlay = false
	if out, err := exec.Command("umount", c.Root).CombinedOutput(); err != nil {
		return fmt.Errorf("unmount %s: %v: %s", c.Root, err, out)
	}
	return nil
}

// syncBuffer is a bytes.Buffer safe for nspawn's writers and the test's readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
