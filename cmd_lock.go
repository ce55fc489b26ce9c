package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"latch/agent/lock"
)

func init() {
	register("lock", "take an update lock for as long as a command runs (like flock(1))", runLock)
	register("unlock", "remove a lock taken with 'latch lock --detach'", runUnlock)
	register("locks", "list every lock, who holds it and since when", runLocks)
}

// forwardedSignals are passed on to CMD by `latch lock -- CMD`.
var forwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// recheckEvery is the fallback re-check while waiting for a lock, in case an
// inotify event is missed (a network file system, a watch limit reached).
const recheckEvery = 2 * time.Second

// waitFlag is --wait (forever) or --wait=DURATION.
type waitFlag struct {
	set bool
	d   time.Duration // 0: forever
}

func (w *waitFlag) IsBoolFlag() bool { return true }

func (w *waitFlag) String() string {
	switch {
	case w == nil || !w.set:
		return ""
	case w.d == 0:
		return "true"
	}
	return w.d.String()
}

func (w *waitFlag) Set(v string) error {
	switch v {
	case "true":
		*w = waitFlag{set: true}
		return nil
	case "false":
		*w = waitFlag{}
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return fmt.Errorf("want a positive duration such as 30s or 5m, got %q", v)
	}
	*w = waitFlag{set: true, d: d}
	return nil
}

// lockFlags are the flags shared by lock and unlock.
type lockFlags struct {
	p       paths
	lockUID int
	service string
	path    string
}

// addLockUIDFlag registers --lock-uid: the uid that owns the agent's lock
// entries, whose agent and hold records alone count as the agent's.
func addLockUIDFlag(fs *flag.FlagSet, uid *int) {
	def := os.Geteuid()
	if def == 0 {
		def = 65534
	}
	fs.IntVar(uid, "lock-uid", def, "the uid that owns the agent's lock entries, as given to 'latch agent' (default 65534 as root, else your uid); an agent or hold record on an entry of another owner is an ordinary lock")
}

func (lf *lockFlags) add(fs *flag.FlagSet) {
	lf.p.addFlags(fs)
	addLockUIDFlag(fs, &lf.lockUID)
	fs.StringVar(&lf.service, "service", "", "the lock of service APP/SERVICE: <lock-dir>/services/APP/SERVICE/updates.lock")
	fs.StringVar(&lf.path, "path", "", "the lock file FILE (default $BALENA_APP_LOCK_PATH, else $RESIN_APP_LOCK_PATH, else the first device-wide lock path)")
}

// target resolves the lock path and the layout; create makes the lock
// directory of --service (or the missing parent of a device-wide default).
func (lf *lockFlags) target(create bool) (string, lock.Layout, error) {
	if err := lf.p.resolve(); err != nil {
		return "", lock.Layout{}, &exitError{code: exitUsage, msg: err.Error()}
	}
	if _, err := parseID("--lock-uid", strconv.Itoa(lf.lockUID)); err != nil {
		return "", lock.Layout{}, &exitError{code: exitUsage, msg: err.Error()}
	}
	layout := lock.Layout{Dir: lf.p.lockDir, Global: lf.p.globals, LockUID: lf.lockUID}
	switch {
	case lf.service != "" && lf.path != "":
		return "", layout, &exitError{code: exitUsage, msg: "give --service or --path, not both"}
	case lf.service != "":
		s, err := lock.ParseService(lf.service)
		if err != nil {
			return "", layout, &exitError{code: exitUsage, msg: err.Error()}
		}
		// The agent creates the lock directories of its services; a user's
		// latch lock only locks in one that exists (it cannot make them, and
		// a lock root a user made would be refused by the agent).
		if create && os.Geteuid() == 0 {
			if _, err := layout.EnsureServiceDir(s); err != nil {
				return "", layout, err
			}
		} else if create {
			if fi, err := os.Lstat(layout.ServiceDir(s)); err != nil || !fi.IsDir() {
				return "", layout, fmt.Errorf("lock directory %s of %s does not exist: the agent creates the lock directories of the services in its target (check the name, start the agent, or run as root)", layout.ServiceDir(s), s)
			}
		}
		return filepath.Join(layout.ServiceDir(s), lock.UpdatesName), layout, nil
	case lf.path != "":
		abs, err := filepath.Abs(lf.path)
		if err != nil {
			return "", layout, fmt.Errorf("--path %q: %w", lf.path, err)
		}
		return abs, layout, nil
	}
	// balena's order: BALENA_APP_LOCK_PATH, then the legacy RESIN_APP_LOCK_PATH.
	for _, name := range []string{"BALENA_APP_LOCK_PATH", "RESIN_APP_LOCK_PATH"} {
		if env := os.Getenv(name); env != "" {
			abs, err := filepath.Abs(env)
			if err != nil {
				return "", layout, fmt.Errorf("%s %q: %w", name, env, err)
			}
			return abs, layout, nil
		}
	}
	if len(layout.Global) == 0 {
		return "", layout, &exitError{code: exitUsage, msg: "no lock path: give --path FILE or --service APP/SERVICE (no device-wide lock path is configured)"}
	}
	g := layout.Global[0]
	if create && os.Geteuid() == 0 {
		// Like /tmp/balena on a balena device: root's, mode 1777. A user's
		// lock uses the directory if it exists and never makes it (the
		// agent would count a user's directory as held).
		if err := (lock.Layout{Global: []string{g}}).EnsureGlobalDirs(); err != nil {
			return "", layout, err
		}
	}
	return g, layout, nil
}

func commandUsage(fs *flag.FlagSet, synopsis, description, example string) func() {
	return func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage:\n%s\n\n%s\n\nFlags:\n", synopsis, description)
		fs.PrintDefaults()
		fmt.Fprintf(w, "\nExample:\n%s\n", example)
	}
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(os.Stderr)
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(os.Stdout)
			fs.Usage()
			return flag.ErrHelp
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}

func runLock(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch lock", flag.ContinueOnError)
	var lf lockFlags
	lf.add(fs)
	var wait waitFlag
	fs.Var(&wait, "wait", "if the lock is held, wait until it is free (`--wait` forever, --wait=30s at most that long, then exit 75)")
	detach := fs.Bool("detach", false, "take the lock and exit 0, leaving it in place until 'latch unlock'")
	fs.Usage = commandUsage(fs,
		"  latch lock [--service APP/SERVICE | --path FILE] [--wait[=DURATION]] -- CMD [ARG...]\n"+
			"  latch lock [--service APP/SERVICE | --path FILE] [--wait[=DURATION]] --detach",
		"Take an update lock, so that latch does not stop, update or reboot under CMD, run CMD with the\n"+
			"terminal and signals passed through, and remove the lock when CMD ends. The lock file is created\n"+
			"exclusively and carries latch's holder record; latch also holds a flock(2) on it while CMD runs.\n"+
			"Exit status: CMD's (128+N when CMD dies of signal N); 73 when the lock is held (at once, naming\n"+
			"the holder); 75 when --wait=DURATION runs out.",
		"  latch lock --service kiosk/ui -- /opt/kiosk/bin/migrate-db\n"+
			"  latch lock --wait=30s --path /tmp/balena/updates.lock -- sh -c 'flash-firmware'\n"+
			"  latch lock --detach && do-critical-thing; latch unlock")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	cmdArgs := fs.Args()
	if len(cmdArgs) > 0 && args[len(args)-len(cmdArgs)-1] != "--" {
		fmt.Fprintf(os.Stderr, "latch lock: put -- before CMD (got %q; --wait takes its duration as --wait=30s)\n", cmdArgs[0])
		return errUsage
	}
	switch {
	case *detach && len(cmdArgs) > 0:
		fmt.Fprintln(os.Stderr, "latch lock: give --detach or -- CMD, not both")
		return errUsage
	case !*detach && len(cmdArgs) == 0:
		fmt.Fprintln(os.Stderr, "latch lock: give -- CMD [ARG...] to run under the lock, or --detach")
		return errUsage
	}
	path, layout, err := lf.target(true)
	if err != nil {
		return err
	}

	// Catch the signals at once: until CMD runs, one of them means give up
	// (releasing what was taken); afterwards they are forwarded to CMD.
	// They stay caught until latch exits (no signal.Stop: each signal it
	// gives back costs a round trip with the runtime's signal thread, and a
	// signal that arrives while the lock is being removed must not stop the
	// removal).
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, forwardedSignals...)

	rec := lock.NewRecord(lock.RoleUser)
	if *detach {
		// latch exits at once: the holder is the process that asked for the
		// lock, and the lock goes stale when it dies without unlocking.
		rec.PID = os.Getppid()
		rec.Command = procCmdline(rec.PID)
	}
	lk, err := takeLock(ctx, layout, path, rec, wait, sigc)
	if err != nil {
		return err
	}
	if *detach {
		return nil
	}
	status, err := runUnderLock(cmdArgs, sigc)
	// Remove drops the flock after the unlink, so that no flock(1) waiter
	// wins an unlinked file.
	if rerr := lk.Remove(); rerr != nil {
		if errors.Is(rerr, lock.ErrNotOurs) {
			fmt.Fprintf(os.Stderr, "latch lock: %s was replaced while CMD ran; left the new entry in place\n", path)
		} else {
			fmt.Fprintf(os.Stderr, "latch lock: %v\n", rerr)
		}
	}
	if err != nil {
		return err
	}
	if status != 0 {
		return &exitError{code: status}
	}
	return nil
}

// takeLock creates the lock at path, waiting as wait says. The lock holds a
// flock(2) on the new file (lock.Create takes it before the entry appears)
// until it is removed or latch exits.
func takeLock(ctx context.Context, layout lock.Layout, path string, rec lock.Record, wait waitFlag, sigc <-chan os.Signal) (*lock.Lock, error) {
	var (
		w        *lock.Watcher
		deadline <-chan time.Time
		ticker   *time.Ticker
	)
	defer func() {
		if w != nil {
			w.Close()
			ticker.Stop()
		}
	}()
	if wait.set && wait.d > 0 {
		t := time.NewTimer(wait.d)
		defer t.Stop()
		deadline = t.C
	}
	for {
		select {
		case s := <-sigc:
			return nil, &exitError{code: 128 + int(s.(syscall.Signal)), msg: fmt.Sprintf("%v while waiting for %s", s, path)}
		default:
		}
		lk, err := layout.Create(path, rec, -1, -1)
		if err == nil {
			return lk, nil
		}
		if !errors.Is(err, lock.ErrHeld) {
			return nil, err
		}
		if !wait.set {
			return nil, &exitError{code: exitLocked, msg: err.Error()}
		}
		if w == nil {
			// Watch first, then try again, so that no release is missed.
			if w, err = (lock.Layout{Global: []string{path}}).Watch(); err != nil {
				return nil, err
			}
			ticker = time.NewTicker(recheckEvery)
			continue
		}
		select {
		case <-w.C:
		case <-ticker.C:
		case <-deadline:
			return nil, &exitError{code: exitTempFail, msg: fmt.Sprintf("gave up after %v: %v", wait.d, err)}
		case s := <-sigc:
			return nil, &exitError{code: 128 + int(s.(syscall.Signal)), msg: fmt.Sprintf("%v while waiting for %s", s, path)}
		case <-ctx.Done():
			return nil, &exitError{code: exitTempFail, msg: fmt.Sprintf("interrupted while waiting for %s", path)}
		}
	}
}

// runUnderLock runs CMD with the terminal, forwarding signals, and returns
// its exit status (128+N for signal N).
//
// CMD is started with syscall.ForkExec rather than os/exec: the first use of
// os.StartProcess probes for pidfd support by forking a child of its own,
// which costs as much as the rest of latch lock's start-up. Without a pidfd,
// a signal must never reach a pid that was reaped and reused: CMD is waited
// for without reaping it (waitid WNOWAIT), forwarding stops, and only then
// is it reaped.
func runUnderLock(argv []string, sigc <-chan os.Signal) (int, error) {
	select {
	case s := <-sigc:
		return 128 + int(s.(syscall.Signal)), nil
	default:
	}
	path, err := exec.LookPath(argv[0])
	if err == nil {
		var pid int
		pid, err = syscall.ForkExec(path, argv, &syscall.ProcAttr{
			Env:   os.Environ(),
			Files: []uintptr{0, 1, 2},
		})
		if err == nil {
			return waitForwarding(argv[0], pid, sigc)
		}
	}
	code := 127
	if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.ENOEXEC) {
		code = 126 // found but cannot be run, as shells say
	}
	return 0, &exitError{code: code, msg: fmt.Sprintf("run %s: %v", argv[0], err)}
}

// waitForwarding forwards the signals of sigc to the process pid until it
// ends, then reaps it and returns its exit status (128+N for signal N).
func waitForwarding(name string, pid int, sigc <-chan os.Signal) (int, error) {
	done := make(chan struct{})
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		for {
			select {
			case s := <-sigc:
				if (s == syscall.SIGINT || s == syscall.SIGQUIT) && terminalForeground() {
					continue // the terminal sent it to CMD's process group already
				}
				syscall.Kill(pid, s.(syscall.Signal)) // not yet reaped: still CMD
			case <-done:
				return
			}
		}
	}()
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			close(done)
			<-forwarded
			return 0, fmt.Errorf("wait for %s (pid %d): %w", name, pid, err)
		}
	}
	close(done)
	<-forwarded
	var ws syscall.WaitStatus
	for {
		_, err := syscall.Wait4(pid, &ws, 0, nil)
		if err == nil {
			break
		}
		if err != syscall.EINTR {
			return 0, fmt.Errorf("wait for %s (pid %d): %w", name, pid, err)
		}
	}
	if ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	return ws.ExitStatus(), nil
}

// terminalForeground reports whether latch (and so CMD, in its process
// group) is the foreground job of the terminal on stdin: then a terminal's
// ^C or ^\ reaches CMD directly and forwarding it would deliver it twice.
func terminalForeground() bool {
	pg, err := unix.IoctlGetInt(0, unix.TIOCGPGRP)
	return err == nil && pg == unix.Getpgrp()
}

func procCmdline(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return ""
	}
	return strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
}

func runUnlock(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch unlock", flag.ContinueOnError)
	var lf lockFlags
	lf.add(fs)
	force := fs.Bool("force", false, "remove the entry even if latch lock did not create it (another tool's lock, a directory, a symlink, the agent's)")
	fs.Usage = commandUsage(fs,
		"  latch unlock [--service APP/SERVICE | --path FILE] [--force]",
		"Remove a lock taken with 'latch lock --detach'. An entry that latch lock did not create (no holder\n"+
			"record, or the agent's) is refused unless --force: removing another program's lock lets an\n"+
			"update interrupt it.",
		"  latch unlock --service kiosk/ui\n  latch unlock --path /tmp/balena/updates.lock --force")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "latch unlock: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	path, layout, err := lf.target(false)
	if err != nil {
		return err
	}
	e, err := layout.Inspect(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no lock at %s", path)
	}
	if err != nil {
		return err
	}
	if e.Reason != "" {
		// A symlinked or foreign device-wide lock directory: it counts as
		// held and nothing is removed through it, forced or not.
		return fmt.Errorf("%s is held: %s; latch removes nothing through it", e.Path, e.Reason)
	}
	inLayout := layout.IsEntryPath(path)
	if *force && !inLayout {
		return fmt.Errorf("unlock --force %s: %w: --force removes only a lock entry (%s, %s or %s in %s/APP/SERVICE, or a device-wide lock path); remove anything else yourself",
			path, lock.ErrOutside, lock.UpdatesName, lock.ResinName, lock.HoldName, filepath.Join(layout.Dir, "services"))
	}
	if !*force {
		switch {
		case e.State == lock.StateAgent || e.State == lock.StateHold:
			return fmt.Errorf("%s is the agent's lock (state %s); use 'latch release', or --force", path, e.State)
		case e.Record == nil || e.Kind != lock.KindFile:
			return fmt.Errorf("%s (%s, uid %d) was not created by latch lock; if you are sure nobody holds it, use --force", path, e.Kind, e.UID)
		}
	}
	if !inLayout {
		// A latch lock --detach at a path of the caller's choice: a regular
		// file carrying latch's user record, removed only while it is the
		// entry just looked at.
		layout.Global = append(layout.Global, path)
	}
	return layout.RemoveEntry(e)
}

func runLocks(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch locks", flag.ContinueOnError)
	var p paths
	p.addFlags(fs)
	var lockUID int
	addLockUIDFlag(fs, &lockUID)
	asJSON := fs.Bool("json", false, "print a JSON array of lock objects (app, service, path, kind, uid, since, state, holder)")
	fs.Usage = commandUsage(fs,
		"  latch locks [--json]",
		"List every lock entry that exists: the per-service locks under <lock-dir>/services and the\n"+
			"device-wide locks, with kind, owner, age, state (held, stale, agent, hold) and the holder where it\n"+
			"is known (a flock(2) holder from /proc/locks, or latch's holder record). Works without the agent.",
		"  latch locks\n  latch locks --json | jq '.[] | select(.state == \"stale\")'")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "latch locks: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	if err := p.resolve(); err != nil {
		return &exitError{code: exitUsage, msg: err.Error()}
	}
	if _, err := parseID("--lock-uid", strconv.Itoa(lockUID)); err != nil {
		return &exitError{code: exitUsage, msg: err.Error()}
	}
	es, err := lock.Layout{Dir: p.lockDir, Global: p.globals, LockUID: lockUID}.Scan()
	if errors.Is(err, lock.ErrTruncated) {
		// The entries found are listed; say what was not looked at.
		fmt.Fprintf(os.Stderr, "latch locks: warning: %v\n", err)
	} else if err != nil {
		return err
	}
	if *asJSON {
		if es == nil {
			es = []lock.Entry{}
		}
		return printJSON(es)
	}
	printLocks(os.Stdout, es, time.Now())
	return nil
}

func printLocks(out io.Writer, es []lock.Entry, now time.Time) {
	if len(es) == 0 {
		fmt.Fprintln(out, "no locks held")
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tAPP/SERVICE\tKIND\tUID\tAGE\tSTATE\tHOLDER")
	for _, e := range es {
		// Paths, names and command lines come from users: escaped, so
		// that they cannot move the cursor or forge a row.
		svc := "(device)"
		if e.App != "" {
			svc = termSafe(e.App + "/" + e.Service)
		}
		holder := "unknown"
		if e.Holder != nil {
			holder = "pid " + strconv.Itoa(e.Holder.PID)
			if e.Holder.Command != "" {
				holder += " (" + termSafe(e.Holder.Command) + ")"
			}
		} else if e.State == lock.StateStale && e.Record != nil {
			holder = fmt.Sprintf("dead pid %d (%s)", e.Record.PID, termSafe(e.Record.Command))
		}
		age := now.Sub(e.Since).Round(time.Second)
		if age < 0 {
			age = 0
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", termSafe(e.Path), svc, e.Kind, e.UID, age, e.State, holder)
	}
	tw.Flush()
}
