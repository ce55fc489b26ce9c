package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"latch/agent/lock"
	"latch/agent/target"
	"latch/store"
)

// Driver stops, starts and checks services and reboots the device. The exec
// driver and the systemd driver satisfy it through small adapters in main.
type Driver interface {
	Stop(ctx context.Context, s Service) error
	Start(ctx context.Context, s Service) error
	// Health reports an error when the service did not stay up after Start.
	Health(ctx context.Context, s Service) error
	Reboot(ctx context.Context) error
	Shutdown(ctx context.Context) error
}

// Preparer is implemented by drivers that must prepare the services before
// their units start: the agent calls Prepare at start, before it reports
// ready, and whenever a target names new services.
type Preparer interface {
	Prepare(ctx context.Context, svcs []Service) error
}

// Reaper is implemented by drivers whose commands can outlive a killed
// agent (the exec driver): Reap kills what a previous agent left in flight,
// before this one acts, and says how many it killed.
type Reaper interface {
	Reap() (int, error)
}

// Service is what a driver needs to act on one service.
type Service struct {
	App, Name string
	Spec      target.Service
	LockDir   string // host path of the service's lock directory
}

// Notifier tells the service manager about the agent (systemd's sd_notify).
type Notifier interface {
	Ready() error
	Status(line string) error
	Stopping() error
}

// Config is everything the agent needs; main builds it from flags.
type Config struct {
	StateDir string
	RunDir   string // the API socket's directory: no target may install into it
	Layout   lock.Layout
	// LockUID and LockGID own the agent's lock entries (spec: 65534).
	LockUID, LockGID int
	Driver           Driver
	Notifier         Notifier // nil: none

	TargetFile string        // --target-file
	TargetURL  string        // --target-url
	Poll       time.Duration // --poll, default 5 min
	HTTPClient *http.Client
	TrustKey   ed25519.PublicKey // nil: signatures are not required

	HealthWait  time.Duration // --health-wait, default 10s
	MaxAttempts int           // apply attempts per update, default 3
	RetryDelay  time.Duration // first delay before retrying a failed apply or download, default 10s
	ConfigHook  string        // --config-hook
	// MaxDefer bounds how long an app's update waits for its locks, from
	// the first time one blocked it (--max-defer; 0: no bound); an app's
	// max_defer wins. OnMaxDefer says what happens past it: MaxDeferWait
	// (the default), MaxDeferForce or MaxDeferFail.
	MaxDefer   time.Duration
	OnMaxDefer string
	BreakStale bool // --break-stale

	Rescan time.Duration // fallback lock rescan, default 30s
	Tick   time.Duration // heartbeat of the loop (watchdog), default 1s
	Logf   func(format string, args ...any)
}

func (c *Config) setDefaults() {
	if c.Poll <= 0 {
		c.Poll = 5 * time.Minute
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Transport: http.DefaultTransport}
	}
	if c.HealthWait < 0 {
		c.HealthWait = 0
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 3
	}
	if c.RetryDelay <= 0 {
		c.RetryDelay = 10 * time.Second
	}
	if c.Rescan <= 0 {
		c.Rescan = 30 * time.Second
	}
	if c.Tick <= 0 {
		c.Tick = time.Second
	}
	if c.Logf == nil {
		c.Logf = log.Printf
	}
	if c.OnMaxDefer == "" {
		c.OnMaxDefer = MaxDeferWait
	}
}

// Agent is the update agent. Create it with New, run it with Run.
type Agent struct {
	cfg     Config
	j       *store.Journal
	bootID  string
	lockKey []byte // makes the MAC of the agent's lock records (lock.key in the state dir)

	reqs   chan request    // closures run by the loop
	docs   chan target.Doc // from the target sources
	events chan any        // from the workers
	ready  chan struct{}   // closed once the loop serves requests
	done   chan struct{}   // closed when Run returns
	ctx    context.Context // Run's context, for workers

	hub    eventHub // the journal's events, to subscribers (GET /v2/events)
	status atomic.Pointer[Status]
	beat   atomic.Int64              // unix nanoseconds of the loop's last iteration
	fleet  atomic.Pointer[FleetLink] // the fleet channel (StartFleet), or nil

	// Everything below is owned by the event loop goroutine.
	st loopState
}

// request is a closure that the loop runs on behalf of another goroutine.
type request struct {
	fn    func() error
	reply chan error
}

// New returns an agent that uses the opened journal j. It changes nothing
// until Run.
func New(cfg Config, j *store.Journal) (*Agent, error) {
	cfg.setDefaults()
	if cfg.StateDir == "" || !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("%w: state dir %q must be an absolute path", ErrInvalid, cfg.StateDir)
	}
	if cfg.Layout.Dir == "" || !filepath.IsAbs(cfg.Layout.Dir) {
		return nil, fmt.Errorf("%w: lock dir %q must be an absolute path", ErrInvalid, cfg.Layout.Dir)
	}
	if cfg.Driver == nil {
		return nil, fmt.Errorf("%w: no service driver", ErrInvalid)
	}
	switch cfg.OnMaxDefer {
	case MaxDeferWait, MaxDeferForce, MaxDeferFail:
	default:
		return nil, fmt.Errorf("%w: --on-max-defer %q: want wait, force or fail", ErrInvalid, cfg.OnMaxDefer)
	}
	if cfg.MaxDefer < 0 {
		return nil, fmt.Errorf("%w: --max-defer %s: want 0 (no bound) or more", ErrInvalid, cfg.MaxDefer)
	}
	cfg.Layout.LockUID = cfg.LockUID // entries claiming to be the agent's count only when owned by it
	a := &Agent{
		cfg:    cfg,
		j:      j,
		bootID: lock.NewRecord(lock.RoleAgent).BootID,
		reqs:   make(chan request),
		docs:   make(chan target.Doc, 4),
		events: make(chan any, 64),
		ready:  make(chan struct{}),
		done:   make(chan struct{}),
	}
	a.status.Store(&Status{State: StateIdle, BlockedBy: []lock.Entry{}, Holds: []store.Hold{}})
	j.OnEvents(a.hub.publish)
	return a, nil
}

// Status returns the latest snapshot published by the loop.
func (a *Agent) Status() Status { return *a.status.Load() }

// Alive reports whether the event loop has made progress recently: the
// watchdog pings and /v1/healthy answers 200 only while it does.
func (a *Agent) Alive() bool {
	last := a.beat.Load()
	if last == 0 {
		return false
	}
	return time.Since(time.Unix(0, last)) < 3*a.cfg.Tick+2*time.Second
}

// Ready is closed once the agent has re-taken its locks, told the service
// manager it is ready, and serves requests.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// do runs fn on the event loop and returns its error.
func (a *Agent) do(ctx context.Context, fn func() error) error {
	r := request{fn: fn, reply: make(chan error, 1)}
	select {
	case a.reqs <- r:
	case <-a.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.reply:
		return err
	case <-a.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// send delivers a worker's event to the loop, or gives up when the agent stops.
func (a *Agent) send(ev any) {
	select {
	case a.events <- ev:
	case <-a.done:
	}
}

func (a *Agent) logf(format string, args ...any) { a.cfg.Logf(format, args...) }

// Run starts the agent: it recovers from the journal (re-taking holds and the
// locks of an interrupted apply), tells the notifier it is ready, starts the
// target sources, and runs the event loop until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	defer close(a.done)
	a.ctx = ctx
	a.st.init()
	for _, d := range []string{a.cfg.StateDir, a.downloadDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create state dir %s: %w", d, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(a.cfg.Layout.Dir), 0o755); err != nil {
		return fmt.Errorf("create the parent of lock dir %s: %w", a.cfg.Layout.Dir, err)
	}
	if err := a.loadLockKey(); err != nil {
		return err
	}
	a.claimLockRoot()
	// /tmp/balena and /tmp/resin belong to root from the start: a user who
	// made them first could point them anywhere.
	if err := a.cfg.Layout.EnsureGlobalDirs(); err != nil {
		a.logf("warning: %v", err)
	}
	w, err := a.cfg.Layout.Watch()
	if err != nil {
		return fmt.Errorf("watch lock directories: %w", err)
	}
	defer w.Close()

	if r, ok := a.cfg.Driver.(Reaper); ok {
		n, err := r.Reap()
		if err != nil {
			return fmt.Errorf("stop the commands a previous agent left running: %w", err)
		}
		if n > 0 {
			a.logf("killed %d command(s) that the previous agent left running", n)
		}
	}
	if err := a.recover(); err != nil {
		return err
	}
	a.beat.Store(time.Now().UnixNano())
	a.publish()
	if n := a.cfg.Notifier; n != nil {
		if err := n.Ready(); err != nil {
			a.logf("notify ready: %v", err)
		}
	}
	close(a.ready)
	a.logf("latch agent ready (state %s, locks %s)", a.cfg.StateDir, a.cfg.Layout.Dir)

	var wg sync.WaitGroup
	defer wg.Wait()
	srcCtx, stopSources := context.WithCancel(ctx)
	defer stopSources()
	a.startSources(srcCtx, &wg)

	err = a.loop(ctx, w)
	stopSources()
	a.shutdown()
	if n := a.cfg.Notifier; n != nil {
		n.Stopping()
	}
	return err
}

// loop is the event loop: the only goroutine that changes the agent's state.
// After every event it advances the state machine and publishes the status;
// a heartbeat tick only proves the loop is alive, and costs one rescan every
// Rescan as the watcher's fallback.
func (a *Agent) loop(ctx context.Context, w *lock.Watcher) error {
	stall := stallSignals()
	tick := time.NewTicker(a.cfg.Tick)
	defer tick.Stop()
	lastScan := time.Now()
	watched := "-"
	for {
		a.advance()
		a.syncNotices()
		a.publish()
		// Only the services some target names are watched: lock
		// directories that users make cost no watch and no rescan.
		if known := a.knownServices(); svcList(known) != watched {
			w.SetServices(known)
			watched = svcList(known)
		}
		a.beat.Store(time.Now().UnixNano())
		for woke := false; !woke; {
			var wake <-chan time.Time
			var timer *time.Timer
			if d, ok := a.st.nextWake(time.Now()); ok {
				timer = time.NewTimer(d)
				wake = timer.C
			}
			woke = true
			select {
			case <-ctx.Done():
				return nil
			case r := <-a.reqs:
				err := r.fn()
				a.publish() // the caller then reads a status that shows what it did
				r.reply <- err
			case doc := <-a.docs:
				a.st.retryDoc = nil // a newer document wins
				if err := a.accept(doc, "target:"+doc.Source); err != nil {
					a.logf("target from %s rejected: %v", doc.Source, err)
					if !refusedForGood(err) {
						a.retrySource(doc, "target:"+doc.Source)
					}
				}
			case <-w.C:
				lastScan = time.Now() // a lock appeared or disappeared: advance() rescans
			case ev := <-a.events:
				a.handle(ev)
			case <-wake:
			case <-tick.C:
				a.beat.Store(time.Now().UnixNano())
				a.checkJournal()
				if time.Since(lastScan) < a.cfg.Rescan {
					woke = false
				} else {
					lastScan = time.Now()
				}
			case <-stall:
				a.logf("LATCH_TEST_STALL: stalling the event loop")
				select {}
			}
			if timer != nil {
				timer.Stop()
			}
		}
	}
}

// claimLockRoot deals with a lock root (or its services/ directory) that is
// not latch's own before the agent starts using it:
//   - one that another user made inside a sticky, world-writable directory
//     such as /tmp (anyone may create /tmp/latch right after boot) is renamed
//     aside, never deleted or followed, and reported: refusing to start
//     would let any user keep every update out;
//   - a services/ directory of root's that an older latch made mode 1777 is
//     narrowed to 0755 where it stands (nobody but root could have replaced
//     it, and the applications' locks inside stay where they are).
//
// Anything else is left alone: the lock core refuses to act in it, with an
// error that names it.
func (a *Agent) claimLockRoot() {
	root := filepath.Clean(a.cfg.Layout.Dir)
	for _, dir := range []string{root, filepath.Join(root, "services")} {
		fi, err := os.Lstat(dir)
		if err != nil {
			return // missing: the agent makes it
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return
		}
		ours := fi.IsDir() && (st.Uid == 0 || int(st.Uid) == os.Geteuid())
		if ours {
			if dir != root && fi.Mode().Perm()&0o022 != 0 {
				if err := narrowDir(dir); err != nil {
					a.logf("warning: lock directory %s: %v", dir, err)
				} else {
					a.logf("lock directory %s was %s: narrowed to 0755 (applications lock in the service directories)", dir, fi.Mode())
				}
			}
			continue
		}
		parent, err := os.Lstat(filepath.Dir(dir))
		if err != nil || parent.Mode()&os.ModeSticky == 0 || parent.Mode().Perm()&0o002 == 0 {
			a.logf("warning: lock directory %s (%s, owner uid %d) was not made by latch; remove it, or give --lock-dir another path", dir, fi.Mode(), st.Uid)
			return
		}
		aside := fmt.Sprintf("%s.untrusted-%d", dir, time.Now().UnixNano())
		if err := os.Rename(dir, aside); err != nil {
			a.logf("warning: lock directory %s (%s, owner uid %d) was not made by latch and cannot be moved aside: %v", dir, fi.Mode(), st.Uid, err)
			return
		}
		a.logf("warning: lock directory %s (%s, owner uid %d) was not made by latch: moved aside to %s", dir, fi.Mode(), st.Uid, aside)
		a.event("lock-removed", "", "lock directory %s (%s, owner uid %d) was not made by latch: moved aside to %s", dir, fi.Mode(), st.Uid, aside)
		return
	}
}

// narrowDir makes the directory dir (never a symlink) mode 0755.
func narrowDir(dir string) error {
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	return syscall.Fchmod(fd, 0o755)
}

// checkJournal puts the journal file back when it was deleted or replaced
// while the agent runs (a cleanup of the state dir): what it holds would
// otherwise be gone at the next start.
func (a *Agent) checkJournal() {
	err := a.j.Check()
	if err == nil || !errors.Is(err, store.ErrGone) {
		return
	}
	a.logf("journal: %v: writing it back from the open journal", err)
	if err := a.j.Restore(); err != nil {
		a.logf("journal: restore %s: %v", a.j.Path(), err)
		return
	}
	a.event("journal", "", "journal file %s was deleted or replaced while the agent ran: written back from the open journal", a.j.Path())
}

// startSources starts the goroutines that deliver target documents.
func (a *Agent) startSources(ctx context.Context, wg *sync.WaitGroup) {
	if a.cfg.TargetFile != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := target.WatchFileReport(ctx, a.cfg.TargetFile, a.docs, func(err error) {
				a.logf("%v", err) // the message names the file
			})
			if err != nil && !errors.Is(err, context.Canceled) {
				a.logf("watch target file %s: %v", a.cfg.TargetFile, err)
			}
		}()
	}
	if a.cfg.TargetURL != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := target.PollURL(ctx, a.cfg.HTTPClient, a.cfg.TargetURL, a.cfg.Poll, a.docs, func(err error) {
				a.logf("poll %s: %v", a.cfg.TargetURL, err)
			})
			if err != nil && !errors.Is(err, context.Canceled) {
				a.logf("poll target url %s: %v", a.cfg.TargetURL, err)
			}
		}()
	}
}

// shutdown stops the workers in order: the download is cancelled (its partial
// file stays for the resume), the apply finishes the step in flight and
// leaves the rest journalled.
func (a *Agent) shutdown() {
	if a.st.cancelDownload != nil {
		a.st.cancelDownload()
	}
	for a.st.downloading || a.st.applying {
		ev := <-a.events
		a.handle(ev)
	}
}

// publish stores a fresh status snapshot and tells the notifier.
func (a *Agent) publish() {
	s := a.snapshot()
	a.status.Store(&s)
	if n := a.cfg.Notifier; n != nil {
		n.Status(s.Line())
	}
	if l := a.fleet.Load(); l != nil {
		l.statusChanged() // never blocks: the fleet channel publishes the newest when it changed
	}
}

func (a *Agent) downloadDir() string { return filepath.Join(a.cfg.StateDir, "downloads") }

// staged is where a file with the given digest is downloaded to.
func (a *Agent) staged(sha string) string { return filepath.Join(a.downloadDir(), sha) }

// VerifiesTargets reports whether the agent accepts only signed target
// states (--trust-key). Without it, whoever may push a target may make root
// install any file and run any command, so the API takes pushes only from
// root.
func (a *Agent) VerifiesTargets() bool { return a.cfg.TrustKey != nil }
