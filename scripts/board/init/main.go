// Command init is /init of the QEMU test board's initramfs.
//
// It mounts proc, sys, devtmpfs and a tmpfs at /tmp and /run, loads the kernel
// modules named in /etc/board/modules.load (from /lib/modules/board), waits for
// the disk (/dev/vda), mounts it as ext4 at /data, runs the workload named on
// the kernel command line and powers the board off. It reaps every process
// that is orphaned onto it, as a PID 1 must.
//
// Kernel command line parameters (repeatable ones in order):
//
//	latch.run=PATH     the program to run (required)
//	latch.arg=ARG      an argument for it (repeatable)
//	latch.env=K=V      an environment variable for it (repeatable)
//	latch.disk=DEV     the disk to mount at /data (default /dev/vda; "none" for no disk)
//	latch.timeout=D    power off after D (a Go duration, default 10m) if it has not exited
//
// It prints markers on the console, one a line, for the host to read:
//
//	BOARD: ready uptime=S      the disk is mounted and the workload starts; S is
//	                           the kernel's uptime in seconds (boot-to-init time)
//	BOARD: exit N              the workload exited with status N (128+signal if killed)
//	BOARD: error MSG           the board could not be set up; it powers off
//	BOARD: timeout             the workload ran past latch.timeout
package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	modulesList = "/etc/board/modules.load"
	modulesDir  = "/lib/modules/board"
	dataDir     = "/data"
)

// config is what the kernel command line asks of the board.
type config struct {
	run     string
	args    []string
	env     []string
	disk    string
	timeout time.Duration
}

func main() {
	boot()
	unix.Sync()
	if err := unix.Unmount(dataDir, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		fmt.Printf("BOARD: unmount %s: %v\n", dataDir, err)
	}
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Printf("BOARD: error power off: %v\n", err)
	}
	select {} // PID 1 must not exit: that panics the kernel
}

// boot sets the board up and runs the workload, printing the markers.
func boot() {
	if err := mountAll(); err != nil {
		fmt.Printf("BOARD: error %v\n", err)
		return
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		fmt.Printf("BOARD: error read kernel command line: %v\n", err)
		return
	}
	cfg, err := parseCmdline(string(cmdline))
	if err != nil {
		fmt.Printf("BOARD: error %v\n", err)
		return
	}
	if err := loadModules(); err != nil {
		fmt.Printf("BOARD: error %v\n", err)
		return
	}
	if cfg.disk != "none" {
		if err := mountDisk(cfg.disk, 30*time.Second); err != nil {
			fmt.Printf("BOARD: error %v\n", err)
			return
		}
	}
	fmt.Printf("BOARD: ready uptime=%s\n", uptime())
	code, err := runWorkload(cfg)
	if err != nil {
		fmt.Printf("BOARD: error %v\n", err)
		return
	}
	fmt.Printf("BOARD: exit %d\n", code)
}

func mountAll() error {
	mounts := []struct{ src, dir, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
		{"tmpfs", "/run", "tmpfs"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return fmt.Errorf("make mount point %s: %w", m.dir, err)
		}
		err := unix.Mount(m.src, m.dir, m.fstype, unix.MS_NOSUID, "")
		if err != nil && !(m.fstype == "devtmpfs" && errors.Is(err, unix.EBUSY)) {
			return fmt.Errorf("mount %s at %s: %w", m.fstype, m.dir, err)
		}
	}
	if err := os.Chmod("/tmp", 0o1777); err != nil {
		return fmt.Errorf("chmod /tmp: %w", err)
	}
	return nil
}

// parseCmdline reads the latch.* parameters of a kernel command line.
func parseCmdline(s string) (config, error) {
	cfg := config{disk: "/dev/vda", timeout: 10 * time.Minute}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "latch.run":
			cfg.run = v
		case "latch.arg":
			cfg.args = append(cfg.args, v)
		case "latch.env":
			cfg.env = append(cfg.env, v)
		case "latch.disk":
			cfg.disk = v
		case "latch.timeout":
			d, err := time.ParseDuration(v)
			if err != nil {
				return cfg, fmt.Errorf("parse latch.timeout %q: %w", v, err)
			}
			cfg.timeout = d
		}
	}
	if cfg.run == "" {
		return cfg, errors.New("no latch.run= on the kernel command line")
	}
	return cfg, nil
}

// loadModules loads the listed modules in order; one already loaded is fine.
func loadModules() error {
	f, err := os.Open(modulesList)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open module list: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name := strings.TrimSpace(sc.Text())
		if name == "" || strings.HasPrefix(name, "#") {
			continue
		}
		if err := loadModule(filepath.Join(modulesDir, name)); err != nil {
			return err
		}
	}
	return sc.Err()
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	return nil
}

// mountDisk waits for dev to appear (the driver probes it asynchronously
// after its module loads) and mounts it at /data.
func mountDisk(dev string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		if _, err := os.Stat(dev); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for disk %s: not there after %s", dev, wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return fmt.Errorf("make mount point %s: %w", dataDir, err)
	}
	if err := unix.Mount(dev, dataDir, "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s at %s: %w", dev, dataDir, err)
	}
	return nil
}

// runWorkload starts the workload and reaps every child until the workload
// itself exits; orphans of the workload are reaped along the way.
func runWorkload(cfg config) (int, error) {
	cmd := exec.Command(cfg.run, cfg.args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Dir = "/"
	cmd.Env = append([]string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/", "LATCH_BOARD=1"}, cfg.env...)
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", cfg.run, err)
	}
	timer := time.AfterFunc(cfg.timeout, func() {
		fmt.Printf("BOARD: timeout after %s\n", cfg.timeout)
		unix.Sync()
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	})
	defer timer.Stop()
	main := cmd.Process.Pid
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("wait for %s: %w", cfg.run, err)
		}
		if pid != main {
			continue
		}
		if ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ws.ExitStatus(), nil
	}
}

// uptime is the kernel's uptime in seconds, as /proc/uptime gives it.
func uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	up, _, _ := strings.Cut(string(b), " ")
	return up
}
