// Package execdriver is latch's exec service driver: each service is stopped,
// started and health-checked by shell commands from the target state, and the
// device reboots and powers off by configured commands. It serves boards
// without systemd, and tests.
//
// Guarantees: every command runs as `sh -c CMD` in a process group of its own,
// with the service's lock path in BALENA_APP_LOCK_PATH and RESIN_APP_LOCK_PATH
// (and LATCH_APP, LATCH_SERVICE), over any value of the agent's environment or
// the configuration; it is killed, with everything it started in that group, at
// the timeout or when ctx ends; a non-zero exit is an error naming the
// service, the command, the status and the last lines of output. A start
// command may leave a daemon running in the background: the call returns when
// the shell exits, even if the daemon keeps the output open. A command's
// shell dies with the driver's process (Pdeathsig); with RunFile, every
// command's process group is recorded there while it runs, and Reap kills
// the groups a killed driver left in flight, so that nothing a dead agent
// started lands after the next agent acts.
//
// The package imports nothing from the rest of latch.
package execdriver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Errors of this package. Callers test them with errors.Is.
var (
	// ErrNoCommand: Reboot or Shutdown without --reboot-command or
	// --shutdown-command.
	ErrNoCommand = errors.New("no command configured")
	// ErrTimeout: a command ran longer than Driver.Timeout and was killed.
	ErrTimeout = errors.New("command timed out")
)

// DefaultTimeout bounds each command when Driver.Timeout is zero.
const DefaultTimeout = 5 * time.Minute

// outputGrace is how long a call waits, after the shell exits, for its
// output to end; a background child that keeps the output open is then left
// running with its output drained (and logged) in the background.
const outputGrace = 200 * time.Millisecond

// tailLines and tailBytes bound the output quoted in an error.
const (
	tailLines = 10
	tailBytes = 2048
)

// Service is what the driver needs to know about one service.
type Service struct {
	App, Service        string
	Stop, Start, Health string // shell commands; "" = nothing to do (Health "" = healthy)
	LockPath            string // host path of the service's updates.lock → BALENA_APP_LOCK_PATH, RESIN_APP_LOCK_PATH
}

// Driver runs the commands. The zero value is usable (no reboot or shutdown).
type Driver struct {
	Shell           string        // default "/bin/sh"
	RebootCommand   string        // --reboot-command
	ShutdownCommand string        // --shutdown-command
	Timeout         time.Duration // per command; default DefaultTimeout
	Env             []string      // extra environment (e.g. config.env's values)
	// Log, if set, receives every line of command output, prefixed with
	// the service and the step.
	Log func(format string, args ...any)
	// RunFile, if set, records the process group of every command in
	// flight (see Reap), so that what the commands of a driver that was
	// killed started never runs on beside the next one.
	RunFile string

	mu      sync.Mutex           // guards running
	running map[int]runningGroup // pgid -> what it is
}

// Stop runs the service's stop command.
func (d *Driver) Stop(ctx context.Context, s Service) error {
	return d.runService(ctx, "stop", s.Stop, s)
}

// Start runs the service's start command. It returns when the shell exits;
// anything the command started in the background keeps running.
func (d *Driver) Start(ctx context.Context, s Service) error {
	return d.runService(ctx, "start", s.Start, s)
}

// Health runs the service's health command: exit 0 is healthy.
func (d *Driver) Health(ctx context.Context, s Service) error {
	return d.runService(ctx, "health", s.Health, s)
}

// Reboot runs the reboot command; without one it returns ErrNoCommand.
func (d *Driver) Reboot(ctx context.Context) error {
	if d.RebootCommand == "" {
		return fmt.Errorf("reboot: %w (set --reboot-command)", ErrNoCommand)
	}
	return d.run(ctx, "reboot", d.RebootCommand, nil)
}

// Shutdown runs the shutdown command; without one it returns ErrNoCommand.
func (d *Driver) Shutdown(ctx context.Context) error {
	if d.ShutdownCommand == "" {
		return fmt.Errorf("shutdown: %w (set --shutdown-command)", ErrNoCommand)
	}
	return d.run(ctx, "shutdown", d.ShutdownCommand, nil)
}

func (d *Driver) runService(ctx context.Context, step, command string, s Service) error {
	if command == "" {
		return nil
	}
	env := []string{"LATCH_APP=" + s.App, "LATCH_SERVICE=" + s.Service}
	if s.LockPath != "" {
		// Both names balena sets, to the same path: older applications
		// read RESIN_APP_LOCK_PATH.
		env = append(env, "BALENA_APP_LOCK_PATH="+s.LockPath, "RESIN_APP_LOCK_PATH="+s.LockPath)
	}
	return d.run(ctx, step+" "+s.App+"/"+s.Service, command, env)
}

// run runs command with the shell; what names the step for errors and logs.
func (d *Driver) run(ctx context.Context, what, command string, env []string) error {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	shell := d.Shell
	if shell == "" {
		shell = "/bin/sh"
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// The output goes through a pipe that we own and drain ourselves (not
	// cmd.Stdout = writer, whose copying goroutine would make Wait wait for
	// every background child to close it).
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	cmd := exec.CommandContext(cctx, shell, "-c", command)
	cmd.Env = append(append(os.Environ(), d.Env...), env...)
	cmd.Stdout, cmd.Stderr = pw, pw
	// Pdeathsig: a command dies with the driver's process, instead of
	// running on beside the next agent (Reap kills what it started).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error {
		// The whole group: the shell and whatever it started.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("%s: run %q: %w", what, command, err)
	}
	pw.Close()
	if d.RunFile != "" {
		pgid := cmd.Process.Pid
		if err := d.track(pgid, true); err != nil {
			syscall.Kill(-pgid, syscall.SIGKILL)
			cmd.Wait()
			pr.Close()
			return fmt.Errorf("%s: record the command's process group in %s: %w", what, d.RunFile, err)
		}
		defer d.track(pgid, false)
	}
	out := &tail{}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		defer pr.Close()
		out.drain(pr, d.Log, what)
	}()
	werr := cmd.Wait()
	select {
	case <-drained:
	case <-time.After(outputGrace):
		// A background child holds the output: keep draining it so the
		// child never blocks on a full pipe, and go on.
	}
	if werr == nil {
		return nil
	}
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %q killed: %w", what, command, ctx.Err())
	case errors.Is(cctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%s: %q killed after %v: %w%s", what, command, timeout, ErrTimeout, out.quote())
	}
	var ee *exec.ExitError
	if errors.As(werr, &ee) {
		return fmt.Errorf("%s: %q failed: %s%s", what, command, describe(ee), out.quote())
	}
	return fmt.Errorf("%s: %q: %w", what, command, werr)
}

// runningGroup identifies a process group leader across pid reuse.
type runningGroup struct {
	start string // field 22 of /proc/PID/stat: its start time since boot
	boot  string // the boot it ran in
}

// track records (or forgets) a command's process group in RunFile, durably,
// before the command may run.
func (d *Driver) track(pgid int, add bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.running == nil {
		d.running = map[int]runningGroup{}
	}
	if add {
		d.running[pgid] = runningGroup{start: startTime(pgid), boot: bootID()}
	} else {
		delete(d.running, pgid)
	}
	var b bytes.Buffer
	for pgid, g := range d.running {
		fmt.Fprintf(&b, "%d %s %s\n", pgid, g.start, g.boot)
	}
	return writeSync(d.RunFile, b.Bytes())
}

// Reap kills the process groups of commands that RunFile says were in
// flight when a previous driver died (the same boot, the same process start
// time: never a process that merely reused the pid), then forgets them. It
// returns how many groups it killed. Call it before running any command.
func (d *Driver) Reap() (int, error) {
	if d.RunFile == "" {
		return 0, nil
	}
	b, err := os.ReadFile(d.RunFile)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", d.RunFile, err)
	}
	killed := 0
	for _, line := range strings.Split(string(b), "\n") {
		var pgid int
		var start, boot string
		if n, _ := fmt.Sscanf(line, "%d %s %s", &pgid, &start, &boot); n != 3 || pgid <= 1 {
			continue
		}
		if boot != bootID() || start != startTime(pgid) {
			continue // gone, or the pid now names another process
		}
		if err := syscall.Kill(-pgid, syscall.SIGKILL); err == nil {
			killed++
		}
	}
	return killed, writeSync(d.RunFile, nil)
}

// startTime is a process's start time (in clock ticks since boot), "" when
// it does not exist.
func startTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19] // field 22 overall
}

func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// writeSync replaces path's content durably (temporary file, fsync, rename).
func writeSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func describe(ee *exec.ExitError) string {
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "killed by signal " + ws.Signal().String()
	}
	return fmt.Sprintf("exit status %d", ee.ExitCode())
}

// tail keeps the last lines of a command's output for error messages.
type tail struct {
	mu    sync.Mutex // guards lines
	lines []string
}

func (t *tail) drain(r io.Reader, log func(string, ...any), what string) {
	buf := make([]byte, 4096)
	var partial []byte
	for {
		n, err := r.Read(buf)
		data := buf[:n]
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				partial = append(partial, data...)
				if len(partial) > tailBytes { // an endless line: cut it
					t.add(string(partial), log, what)
					partial = partial[:0]
				}
				break
			}
			line := string(append(partial, data[:i]...))
			partial = partial[:0]
			t.add(line, log, what)
			data = data[i+1:]
		}
		if err != nil {
			if len(partial) > 0 {
				t.add(string(partial), log, what)
			}
			return
		}
	}
}

func (t *tail) add(line string, log func(string, ...any), what string) {
	if log != nil {
		log("%s: %s", what, line)
	}
	if len(line) > tailBytes {
		line = line[:tailBytes]
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	if len(t.lines) > tailLines {
		t.lines = t.lines[len(t.lines)-tailLines:]
	}
}

// quote is the last output lines for an error message, "" if none.
func (t *tail) quote() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return ""
	}
	s := strings.Join(t.lines, "\n")
	if len(s) > tailBytes {
		s = "..." + s[len(s)-tailBytes:]
	}
	return "; last output:\n" + s
}
