package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"latch/agent"
	"latch/agent/api"
	"latch/agent/lock"
	"latch/store"

	"golang.org/x/sys/unix"
)

// errFail marks a breach of a guarantee (printed as AGENT: FAIL).
var errFail = errors.New("FAIL")

func failf(format string, args ...any) error {
	return fmt.Errorf("%w %s", errFail, fmt.Sprintf(format, args...))
}

func mark(format string, args ...any) {
	fmt.Printf("AGENT: "+format+"\n", args...)
}

// runBoot runs one boot of the scenario and returns the exit status.
func runBoot(phase string, args []string) int {
	exp, err := parseExpect(args)
	if err != nil {
		mark("error %v", err)
		return 2
	}
	b := &boot{l: newLayout(), rs: newReleases(), phase: phase, exp: exp}
	err = b.run(context.Background())
	b.stopAgent()
	if err != nil {
		if errors.Is(err, errFail) {
			mark("%v", err)
		} else {
			mark("error %v", err)
		}
		return 1
	}
	return 0
}

// boot is one boot of the scenario.
type boot struct {
	l     layout
	rs    *releases
	phase string
	exp   expect
	self  string // this program's path, for the target's steps

	agent   *exec.Cmd
	exited  chan error // the agent's Wait result
	client  *api.Client
	readyAt time.Time
}

// found is what the disk held before the agent started.
type found struct {
	drive   drive
	current int    // the app's release in the journal (0: none)
	seq     uint64 // the newest event's seq
	pending string // the pending update's state, "-" for none
	apply   *store.Apply
	staged  map[string]bool // sources of files the journal holds as staged
	partial []string        // files partly downloaded: journalled and on-disk bytes
	reqs    int             // request log lines before this boot
	files   string
}

func (b *boot) run(ctx context.Context) error {
	var err error
	if b.self, err = os.Executable(); err != nil {
		return fmt.Errorf("find own path: %w", err)
	}
	for _, d := range []string{b.l.wlDir(), b.l.p("data", "app"), b.l.runDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("make %s: %w", d, err)
		}
	}
	if err := loopbackUp(); err != nil {
		return err
	}
	if err := newServer(b.l, b.rs).listen(ctx, serverAddr); err != nil {
		return err
	}
	dr, err := readDrive(b.l)
	if errors.Is(err, errNoDrive) {
		if b.phase != "first" {
			mark("found nothing: the first boot was cut before it began; starting afresh")
		}
		return b.first(ctx)
	}
	if err != nil {
		return failf("%v", err)
	}
	f, err := b.inspect(dr)
	if err != nil {
		return err
	}
	if err := b.startAgent(ctx); err != nil {
		return err
	}
	if err := b.checkReadyLocks(f); err != nil {
		return err
	}
	cur, err := b.recover(ctx, f)
	if err != nil {
		return err
	}
	if b.phase == "last" {
		return nil
	}
	return b.drive(ctx, cur, max(cur, dr.To)+1)
}

// first prepares the disk, brings release 1 up and drives the first update.
func (b *boot) first(ctx context.Context) error {
	if err := os.RemoveAll(b.l.commandsLog()); err != nil {
		return fmt.Errorf("clear commands log: %w", err)
	}
	if err := writeAtomic(b.l.driveFile(), []byte(drive{From: 0, To: 1}.String())); err != nil {
		return err
	}
	if err := b.publish(1); err != nil {
		return err
	}
	if err := b.startAgent(ctx); err != nil {
		return err
	}
	if _, err := b.waitSettled(ctx, 1, 2*time.Minute); err != nil {
		return err
	}
	mark("setup release=%s", relName(1))
	mark("durable seq=%d release=1", b.lastSeq(ctx))
	if err := b.checkFiles(1); err != nil {
		return err
	}
	return b.drive(ctx, 1, 2)
}

func readDrive(l layout) (drive, error) {
	raw, err := os.ReadFile(l.driveFile())
	if errors.Is(err, os.ErrNotExist) {
		return drive{}, errNoDrive
	}
	if err != nil {
		return drive{}, fmt.Errorf("read %s: %w", l.driveFile(), err)
	}
	return parseDrive(raw)
}

// inspect reads the journal (with latch's store, before the agent starts)
// and the app's files, and checks them against what the host saw durable.
func (b *boot) inspect(dr drive) (*found, error) {
	f := &found{drive: dr, pending: "-", staged: map[string]bool{}}
	j, err := store.Open(b.l.journal(), &store.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, failf("the journal does not open: %v", err)
	}
	var events []store.Event
	err = j.View(func(tx *store.Tx) error {
		app, err := tx.App(appName)
		if err == nil {
			f.current, _ = parseRel(app.Current)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		p, err := tx.Pending()
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if p != nil {
			f.pending = string(p.State)
			for _, fl := range p.Files {
				if fl.Complete {
					f.staged[urlPath(fl.Source)] = true
				} else if fl.Done > 0 || fl.Size > 0 {
					var disk int64 = -1
					if fi, err := os.Stat(filepath.Join(b.l.stateDir(), "downloads", fl.SHA256+".part")); err == nil {
						disk = fi.Size()
					}
					f.partial = append(f.partial, fmt.Sprintf("%s:journal=%d,disk=%d", fl.Service, fl.Done, disk))
				}
			}
		}
		if f.apply, err = tx.Apply(); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		events, err = tx.Events(0)
		return err
	})
	j.Close()
	if err != nil {
		return nil, failf("read the journal: %v", err)
	}
	for _, e := range events {
		f.seq = max(f.seq, e.Seq)
	}
	if raw, err := os.ReadFile(b.l.requestLog()); err == nil {
		reqs, _, err := parseRequestLog(raw)
		if err != nil {
			return nil, failf("%v", err)
		}
		f.reqs = len(reqs)
	}
	f.files = b.fileStates(dr)
	apply := "none"
	if f.apply != nil {
		apply = fmt.Sprintf("%d-locks", len(f.apply.Locks))
	}
	partial := ""
	if len(f.partial) > 0 {
		partial = " partial=" + strings.Join(f.partial, ",")
	}
	mark("found journal=ok seq=%d current=%s pending=%s apply=%s staged=%d%s files=%s drive=%s->%s",
		f.seq, relName(f.current), f.pending, apply, len(f.staged), partial, f.files, relName(dr.From), relName(dr.To))
	switch {
	case f.seq < b.exp.Seq:
		return nil, failf("journal events end at seq %d, but seq %d was seen committed before the cut", f.seq, b.exp.Seq)
	case f.current < b.exp.Release:
		return nil, failf("journal says %s runs, but %s was seen applied before the cut", relName(f.current), relName(b.exp.Release))
	case f.current != dr.From && f.current != dr.To:
		return nil, failf("journal says %s runs, want %s or %s", relName(f.current), relName(dr.From), relName(dr.To))
	case strings.Contains(f.files, "torn"):
		return nil, failf("app files not whole: %s", f.files)
	}
	if b.exp.Release > 0 && countApplied(events, b.exp.Release) != 1 {
		return nil, failf("%d \"applied\" events for %s, want the one seen before the cut", countApplied(events, b.exp.Release), relName(b.exp.Release))
	}
	return f, nil
}

// fileStates says, per service, whether its file is the old release's, the
// new one's, missing, or torn (neither).
func (b *boot) fileStates(dr drive) string {
	var out []string
	for _, s := range services {
		out = append(out, s+":"+b.fileState(s, dr.From, dr.To))
	}
	return strings.Join(out, ",")
}

func (b *boot) fileState(svc string, old, new int) string {
	sum, err := fileSHA(b.l.appFile(svc))
	if errors.Is(err, os.ErrNotExist) {
		return "missing"
	}
	if err != nil {
		return "torn"
	}
	if _, s := b.rs.get(svc, new); s == sum {
		return "new"
	}
	if old > 0 {
		if _, s := b.rs.get(svc, old); s == sum {
			return "old"
		}
	}
	return "torn"
}

func fileSHA(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkFiles checks that every file is release k's, byte for byte.
func (b *boot) checkFiles(k int) error {
	for _, s := range services {
		if st := b.fileState(s, 0, k); st != "new" {
			return failf("%s's file is not %s's after the update settled: %s", s, relName(k), st)
		}
	}
	return nil
}

func countApplied(events []store.Event, k int) int {
	n := 0
	for _, e := range events {
		if e.Kind == "applied" && containsRelease(e.Message, k) {
			n++
		}
	}
	return n
}

// containsRelease reports whether an event message names demo=rK.
func containsRelease(msg string, k int) bool {
	want := appName + "=" + relName(k)
	for _, f := range strings.FieldsFunc(msg, func(r rune) bool { return r == ' ' || r == ',' || r == ':' }) {
		if f == want {
			return true
		}
	}
	return false
}

func urlPath(src string) string {
	if i := strings.Index(src, "://"); i >= 0 {
		src = src[i+3:]
		if j := strings.Index(src, "/"); j >= 0 {
			return src[j:]
		}
		return "/"
	}
	return src
}

// publish writes the target file for release k.
func (b *boot) publish(k int) error {
	doc, err := targetDoc(b.l, b.rs, b.self, k)
	if err != nil {
		return err
	}
	return writeAtomic(b.l.targetFile(), doc)
}

// startAgent runs latch agent and waits for READY=1 on its NOTIFY_SOCKET.
func (b *boot) startAgent(ctx context.Context) error {
	sock := b.l.notifySocket()
	os.Remove(sock)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	defer conn.Close()
	bin := os.Getenv("LATCH_BIN")
	if bin == "" {
		bin = "/bin/latch"
	}
	b.agent = exec.Command(bin, "agent", "--driver", "exec",
		"--root", b.l.p("data", "dev"), "--lock-dir", b.l.lockDir(), "--run-dir", b.l.runDir(),
		"--state-dir", b.l.stateDir(), "--target-file", b.l.targetFile(),
		"--health-wait", "200ms", "--retry-delay", "1s")
	b.agent.Stdout, b.agent.Stderr = os.Stdout, os.Stdout
	b.agent.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	up0 := uptime()
	t0 := time.Now()
	if err := b.agent.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	b.exited = make(chan error, 1)
	go func() { b.exited <- b.agent.Wait() }()
	ready := make(chan struct{})
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			if bytes.Contains(buf[:n], []byte("READY=1")) {
				close(ready)
				return
			}
		}
	}()
	select {
	case <-ready:
	case err := <-b.exited:
		b.exited <- err
		return failf("the agent exited before READY=1: %v", err)
	case <-time.After(3 * time.Minute):
		return failf("no READY=1 from the agent after 3 minutes")
	}
	b.readyAt = time.Now()
	rss, hwm := memOf(b.agent.Process.Pid)
	mark("ready uptime=%s exec-uptime=%s exec-to-ready=%dms rss=%s hwm=%s",
		uptime(), up0, b.readyAt.Sub(t0).Milliseconds(), rss, hwm)
	b.client = api.NewClient(b.l.p("run", "latch", "api.sock"))
	return nil
}

// checkReadyLocks checks, right after READY=1, that the locks of the apply
// the journal held as interrupted exist and are the agent's, made before
// READY=1. The resumed apply holds them for at least the health wait, so
// they are still there when this runs.
func (b *boot) checkReadyLocks(f *found) error {
	if f.apply == nil {
		return nil
	}
	ok := 0
	var bad []string
	for _, ref := range f.apply.Locks {
		raw, err := os.ReadFile(ref.Path)
		r, isRec := lock.ParseRecord(raw)
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s: %v", ref.Path, err))
		case !isRec || r.Role != lock.RoleAgent:
			bad = append(bad, ref.Path+": not the agent's")
		case r.Created.After(b.readyAt):
			bad = append(bad, fmt.Sprintf("%s: made at %s, after READY=1 at %s", ref.Path, r.Created, b.readyAt))
		default:
			ok++
		}
	}
	mark("locks-at-ready %d/%d", ok, len(f.apply.Locks))
	if len(bad) > 0 || len(f.apply.Locks) == 0 {
		return failf("interrupted apply's locks at READY=1: %d/%d: %s", ok, len(f.apply.Locks), strings.Join(bad, "; "))
	}
	return nil
}

// recover waits until the interrupted update settles and checks the outcome.
func (b *boot) recover(ctx context.Context, f *found) (int, error) {
	want := f.drive.To
	raw, err := os.ReadFile(b.l.targetFile())
	if err == nil && !bytes.Contains(raw, []byte(`"release": "`+relName(f.drive.To)+`"`)) {
		want = f.drive.From // cut before the target was published
	}
	t0 := time.Now()
	st, err := b.waitSettled(ctx, want, 4*time.Minute)
	if err != nil {
		return 0, err
	}
	cur, _ := parseRel(releaseOf(st))
	outcome := "applied"
	switch {
	case cur == f.current && cur == f.drive.To:
		outcome = "already-applied"
	case cur == f.drive.From && want == f.drive.From:
		outcome = "unpublished"
	case cur == f.drive.From:
		outcome = "rolled-back"
	}
	if err := b.checkFiles(cur); err != nil {
		return 0, err
	}
	evs, err := b.client.Journal(ctx, 0)
	if err != nil {
		return 0, fmt.Errorf("read the journal over the API: %w", err)
	}
	if n := countApplied(evs, cur); n != 1 {
		return 0, failf("%d \"applied\" events for %s, want exactly one", n, relName(cur))
	}
	if n := countApplied(evs, f.drive.To); cur == f.drive.From && n != 0 {
		return 0, failf("%s runs but %d \"applied\" events name %s", relName(cur), n, relName(f.drive.To))
	}
	cmds, _ := os.ReadFile(b.l.commandsLog())
	if v := countViolations(cmds); len(v) > 0 {
		return 0, failf("%d steps ran without the agent's lock: %s", len(v), v[0])
	}
	raw, err = os.ReadFile(b.l.requestLog())
	if err != nil {
		return 0, fmt.Errorf("read request log: %w", err)
	}
	reqs, _, err := parseRequestLog(raw)
	if err != nil {
		return 0, failf("%v", err)
	}
	resumed, again := 0, 0
	for _, r := range reqs[min(f.reqs, len(reqs)):] {
		if f.staged[r.Path] {
			return 0, failf("%s was requested again (from byte %d) though the journal held it as staged", r.Path, r.Start)
		}
		if r.Start > 0 {
			resumed++
		} else {
			again++
		}
	}
	var seq uint64
	for _, e := range evs {
		seq = max(seq, e.Seq)
	}
	mark("check ok outcome=%s release=%s recovered-in=%.1fs requests=%d resumed=%d from-zero=%d starts=%d seq=%d",
		outcome, relName(cur), time.Since(t0).Seconds(), len(reqs)-f.reqs, resumed, again,
		bytes.Count(cmds, []byte("start "+appName+"/ui "+appName+"/ui "+relName(cur)+"\n")), seq)
	mark("durable seq=%d release=%d", seq, cur)
	return cur, nil
}

// waitSettled waits until the app runs release want with no update pending,
// or the update has failed for good (rolled back, no attempts left).
func (b *boot) waitSettled(ctx context.Context, want int, limit time.Duration) (agent.Status, error) {
	deadline := time.Now().Add(limit)
	for {
		st, err := b.client.Device(ctx)
		if err == nil {
			rel := releaseOf(st)
			if (!st.UpdatePending && rel == relName(want)) || st.State == agent.StateFailed {
				return st, nil
			}
		}
		select {
		case err := <-b.exited:
			b.exited <- err
			return st, failf("the agent exited while the update settled: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return st, failf("the update did not settle in %s: status %s release %q pending %v", limit, st.State, releaseOf(st), st.UpdatePending)
		}
	}
}

// releaseOf is the demo app's current release in a status.
func releaseOf(st agent.Status) string {
	for _, a := range st.Apps {
		if a.Name == appName {
			return a.Current
		}
	}
	return ""
}

// drive makes one update, from release cur to next, with a user lock on
// demo/ui held while it downloads and released once it is blocked. next is
// past any release tried before, so that a failed one is never asked again.
func (b *boot) drive(ctx context.Context, cur, next int) error {
	for _, s := range services { // warm the cache: the server and the checks need both
		b.rs.get(s, cur)
		b.rs.get(s, next)
	}
	if err := writeAtomic(b.l.driveFile(), []byte(drive{From: cur, To: next}.String())); err != nil {
		return err
	}
	userLock := b.l.userLock("ui")
	lf, err := os.OpenFile(userLock, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("take user lock: %w", err)
	}
	lf.Close()
	if err := b.publish(next); err != nil {
		return err
	}
	t0 := time.Now()
	mark("downloading release=%s", relName(next))
	step := "download"
	var tBlocked, tReleased time.Time
	applying := false
	for {
		st, err := b.client.Device(ctx)
		if err == nil {
			switch step {
			case "download":
				if st.UpdateDownloaded && st.State == agent.StateWaiting && len(st.BlockedBy) > 0 {
					tBlocked = time.Now()
					seq := b.lastSeq(ctx)
					mark("blocked by=%s download=%.1fs seq=%d", st.BlockedBy[0].Path, tBlocked.Sub(t0).Seconds(), seq)
					mark("durable seq=%d release=%d", seq, cur)
					if st.State == agent.StateApplying || st.Attempts > 0 {
						return failf("the update started applying under the user's lock")
					}
					if err := os.Remove(userLock); err != nil {
						return fmt.Errorf("release user lock: %w", err)
					}
					tReleased = time.Now()
					mark("released")
					step = "apply"
				}
			case "apply":
				if st.State == agent.StateApplying && !applying {
					applying = true
					mark("applying")
				}
				if !st.UpdatePending && releaseOf(st) == relName(next) {
					seq := b.lastSeq(ctx)
					rss, hwm := memOf(b.agent.Process.Pid)
					mark("applied release=%s apply=%.1fs blocked=%.1fs seq=%d rss=%s hwm=%s",
						relName(next), time.Since(tReleased).Seconds(), tReleased.Sub(tBlocked).Seconds(), seq, rss, hwm)
					mark("durable seq=%d release=%d", seq, next)
					if err := b.checkFiles(next); err != nil {
						return err
					}
					if os.Getenv("AGENTWL_ONCE") == "1" {
						return nil
					}
					mark("idle: waiting for the power cut")
					select {
					case err := <-b.exited:
						return failf("the agent exited while idle: %v", err)
					case <-ctx.Done():
						return nil
					}
				}
				if st.UpdateFailed {
					return failf("the update to %s failed: %s", relName(next), st.Reason)
				}
			}
		}
		select {
		case err := <-b.exited:
			b.exited <- err
			return failf("the agent exited during the update: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Since(t0) > 5*time.Minute {
			return failf("the update to %s did not finish in 5 minutes (step %s)", relName(next), step)
		}
	}
}

func (b *boot) lastSeq(ctx context.Context) uint64 {
	evs, err := b.client.Journal(ctx, 1)
	if err != nil || len(evs) == 0 {
		return 0
	}
	return evs[0].Seq
}

// stopAgent ends the agent, if it runs, with SIGTERM.
func (b *boot) stopAgent() {
	if b.agent == nil || b.agent.Process == nil {
		return
	}
	b.agent.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
	case <-time.After(30 * time.Second):
		b.agent.Process.Kill()
	}
}

// loopbackUp brings lo up (the board's init leaves it down); the kernel
// gives it 127.0.0.1 as it comes up.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: get flags: %w", err)
	}
	if ifr.Uint16()&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: set flags: %w", err)
	}
	return nil
}

// uptime is the kernel's uptime in seconds.
func uptime() string {
	raw, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	up, _, _ := strings.Cut(string(raw), " ")
	return up
}

// memOf returns VmRSS and VmHWM of pid, from /proc.
func memOf(pid int) (rss, hwm string) {
	rss, hwm = "?", "?"
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		v = strings.ReplaceAll(strings.TrimSpace(v), " ", "")
		switch k {
		case "VmRSS":
			rss = v
		case "VmHWM":
			hwm = v
		}
	}
	return
}
