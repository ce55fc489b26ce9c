package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"latch/agent"
	"latch/agent/api"
	"latch/agent/lock"
	"latch/store"
)

// The client subcommands talk to a running agent over its API: the unix
// socket <run-dir>/api.sock, or --api URL with --api-key-file.

func init() {
	register("hold", "ask the agent to hold a lock that survives reboots", runHold)
	register("release", "end a hold taken with 'latch hold'; 'release build': make a release folder", runRelease)
	register("status", "what the agent is doing and what blocks it", runStatus)
	register("update", "apply the pending update now (--force ignores locks once)", runUpdate)
	register("reboot", "reboot through the agent, honouring locks (--force)", func(ctx context.Context, args []string) error { return runPower(ctx, "reboot", args) })
	register("shutdown", "power off through the agent, honouring locks (--force)", func(ctx context.Context, args []string) error { return runPower(ctx, "shutdown", args) })
	register("override", "on | off | status: the persistent lock override", runOverride)
	register("journal", "history of updates and lock events, newest first", runJournal)
	register("events", "follow what the agent does, as it happens", runEvents)
}

// clientFlags are the flags every client subcommand shares.
type clientFlags struct {
	p       paths
	apiURL  string
	keyFile string
	asJSON  bool
}

func (cf *clientFlags) add(fs *flag.FlagSet, jsonHelp string) {
	cf.p.addFlags(fs)
	fs.StringVar(&cf.apiURL, "api", os.Getenv("LATCH_API"), "talk to the agent at this URL (its --listen address, e.g. http://127.0.0.1:48484) instead of the unix socket (env LATCH_API)")
	fs.StringVar(&cf.keyFile, "api-key-file", os.Getenv("LATCH_API_KEY_FILE"), "file holding the API key, for --api (env LATCH_API_KEY_FILE)")
	fs.BoolVar(&cf.asJSON, "json", false, jsonHelp)
}

// client returns the API client the flags name.
func (cf *clientFlags) client() (*api.Client, error) {
	if err := cf.p.resolve(); err != nil {
		return nil, &exitError{code: exitUsage, msg: err.Error()}
	}
	if cf.apiURL == "" {
		return api.NewClient(cf.p.socket()), nil
	}
	if !strings.HasPrefix(cf.apiURL, "http://") && !strings.HasPrefix(cf.apiURL, "https://") {
		return nil, &exitError{code: exitUsage, msg: fmt.Sprintf("--api %q: want an http:// or https:// URL", cf.apiURL)}
	}
	if cf.keyFile == "" {
		return nil, &exitError{code: exitUsage, msg: "--api needs --api-key-file (the key the agent was started with)"}
	}
	b, err := os.ReadFile(cf.keyFile)
	if err != nil {
		return nil, fmt.Errorf("read API key: %w", err)
	}
	key := strings.TrimSpace(string(b))
	if key == "" {
		return nil, fmt.Errorf("read API key: %s is empty", cf.keyFile)
	}
	return api.NewTCPClient(cf.apiURL, key), nil
}

// parseClient parses args, allowing flags after the positional arguments
// (latch hold kiosk/ui --for 1h), and returns the positional arguments.
func parseClient(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// clientError turns an API error into the CLI's message and status: a
// refusal because of a lock exits 73.
func clientError(err error) error {
	if err == nil {
		return nil
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		code := exitFailure
		if ae.Locked() {
			code = exitLocked
		}
		return &exitError{code: code, msg: termSafe(ae.Message)}
	}
	return err
}

// printJSON prints v as indented JSON, with every character that could
// drive a terminal escaped (see jsonSafe).
func printJSON(v any) error {
	return writeJSON(os.Stdout, v)
}

func writeJSON(w io.Writer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(jsonSafe(buf.Bytes()))
	return err
}

// unsafeRune reports whether r, printed raw, could move the cursor, clear
// the screen, start an escape sequence or reorder what a terminal shows:
// C0 and C1 controls, DEL, and the invisible format characters (bidi
// overrides and isolates, zero-width characters) and line separators.
func unsafeRune(r rune) bool {
	return r < 0x20 || (r >= 0x7f && r < 0xa0) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp)
}

// termSafe returns s fit to print in one field of a terminal line: unsafe
// runes (unsafeRune) as \xNN or \uNNNN, every byte of invalid UTF-8 as
// \xNN and a backslash as \\, so that text from other users (a holder's
// command line, a hold reason, a lock path) cannot forge rows or drive the
// operator's terminal. Ordinary UTF-8 is kept.
func termSafe(s string) string {
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == '\\' || (r == utf8.RuneError && n == 1) || unsafeRune(r) {
			break
		}
		i += n
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.WriteString(s[:i])
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case r == '\\':
			b.WriteString("\\\\")
		case r < 0x80 && unsafeRune(r):
			fmt.Fprintf(&b, "\\x%02x", r)
		case unsafeRune(r):
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// jsonSafe rewrites encoding/json's output so that it carries no rune that
// could drive a terminal: encoding/json escapes C0 controls, U+2028 and
// U+2029 but leaves DEL, C1 controls and bidi overrides raw. Outside
// strings JSON is ASCII, so each such rune is inside a string, where a
// \uXXXX escape (a surrogate pair above U+FFFF) means the same.
func jsonSafe(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r != '\n' && unsafeRune(r) {
			if r > 0xffff {
				r1, r2 := utf16.EncodeRune(r)
				out = fmt.Appendf(out, "\\u%04x\\u%04x", r1, r2)
			} else {
				out = fmt.Appendf(out, "\\u%04x", r)
			}
		} else {
			out = append(out, b[:n]...)
		}
		b = b[n:]
	}
	return out
}

func usageErr(name, format string, args ...any) error {
	fmt.Fprintf(os.Stderr, "latch %s: %s\n", name, fmt.Sprintf(format, args...))
	return errUsage
}

func runHold(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch hold", flag.ContinueOnError)
	var cf clientFlags
	cf.add(fs, "print the hold as JSON")
	all := fs.Bool("all", false, "hold every service of every app")
	reason := fs.String("reason", "", "why, for the journal and 'latch status'")
	dur := fs.Duration("for", 0, "release the hold by itself after this long (e.g. 30m, 8h); default: until 'latch release'")
	fs.Usage = commandUsage(fs,
		"  latch hold APP/SERVICE|--all [--reason TEXT] [--for DURATION]",
		"Ask the agent to hold the update lock of a service (or of every service with --all) until\n"+
			"'latch release'. The agent keeps the hold in its journal and its entry (latch-hold.lock) in the\n"+
			"service's lock directory, re-creating it at every start, so the hold survives reboots.",
		"  latch hold kiosk/ui --reason 'trade show' --for 8h\n  latch hold --all --reason 'field test'")
	pos, err := parseClient(fs, args)
	if err != nil {
		return helpOK(err)
	}
	req := api.HoldRequest{All: *all, Reason: *reason}
	if *dur < 0 {
		return usageErr("hold", "--for %s: want a positive duration", *dur)
	}
	if *dur > 0 {
		req.For = dur.String()
	}
	switch {
	case *all && len(pos) == 0:
	case !*all && len(pos) == 1:
		s, err := lock.ParseService(pos[0])
		if err != nil {
			return usageErr("hold", "%v", err)
		}
		req.App, req.Service = s.App, s.Service
	default:
		return usageErr("hold", "give one APP/SERVICE or --all")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	h, err := c.Hold(ctx, req)
	if err != nil {
		return clientError(err)
	}
	if cf.asJSON {
		return printJSON(h)
	}
	fmt.Printf("holding %s", termSafe(holdName(h)))
	if !h.Expires.IsZero() {
		fmt.Printf(" until %s", h.Expires.Local().Format(time.DateTime))
	}
	fmt.Println("; end it with 'latch release " + termSafe(releaseArg(h)) + "'")
	return nil
}

func holdName(h store.Hold) string {
	if h.All {
		return "all services"
	}
	return h.App + "/" + h.Service
}

func releaseArg(h store.Hold) string {
	if h.All {
		return "--all"
	}
	return h.App + "/" + h.Service
}

func runRelease(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "build" { // an APP/SERVICE always has a slash
		return runReleaseBuild(ctx, args[1:])
	}
	fs := flag.NewFlagSet("latch release", flag.ContinueOnError)
	var cf clientFlags
	cf.add(fs, "print the answer as JSON")
	all := fs.Bool("all", false, "end the --all hold")
	fs.Usage = commandUsage(fs,
		"  latch release APP/SERVICE|--all\n  latch release build ...   (make a release folder to publish: latch release build -h)",
		"End a hold taken with 'latch hold': the agent removes its entry (unless another hold still needs\n"+
			"it) and journals the release. Exits 1 when there is no such hold.",
		"  latch release kiosk/ui\n  latch release --all")
	pos, err := parseClient(fs, args)
	if err != nil {
		return helpOK(err)
	}
	var app, svc string
	switch {
	case *all && len(pos) == 0:
	case !*all && len(pos) == 1:
		s, err := lock.ParseService(pos[0])
		if err != nil {
			return usageErr("release", "%v", err)
		}
		app, svc = s.App, s.Service
	default:
		return usageErr("release", "give one APP/SERVICE or --all")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	if err := c.Release(ctx, app, svc, *all); err != nil {
		return clientError(err)
	}
	name := holdName(store.Hold{App: app, Service: svc, All: *all})
	if cf.asJSON {
		return printJSON(map[string]string{"status": "success", "released": name})
	}
	fmt.Printf("released the hold on %s\n", termSafe(name))
	return nil
}

func runStatus(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch status", flag.ContinueOnError)
	var cf clientFlags
	cf.add(fs, "print the agent's status object (GET /v1/device) with the last events as JSON")
	events := fs.Int("events", 5, "how many recent events to show")
	fs.Usage = commandUsage(fs,
		"  latch status [--json] [--events N]",
		"Show at a glance what the agent is doing: the release each app runs, the pending update and\n"+
			"its download progress, what blocks it (which lock, held by whom, for how long), the lock\n"+
			"override, a pending reboot, the holds, and the last events.",
		"  latch status\n  latch status --json | jq .blocked_by")
	pos, err := parseClient(fs, args)
	if err != nil {
		return helpOK(err)
	}
	if len(pos) > 0 {
		return usageErr("status", "unexpected argument %q", pos[0])
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	st, err := c.Device(ctx)
	if err != nil {
		return clientError(err)
	}
	var evs []store.Event
	if *events > 0 {
		if evs, err = c.Journal(ctx, *events); err != nil {
			return clientError(err)
		}
	}
	if cf.asJSON {
		return printJSON(struct {
			agent.Status
			Events []store.Event `json:"events"`
		}{st, evs})
	}
	printStatus(os.Stdout, st, evs, time.Now())
	return nil
}

// printStatus renders the status for a person, in one screen.
func printStatus(w io.Writer, st agent.Status, evs []store.Event, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "State:\t%s\n", termSafe(st.Line()))
	if len(st.Apps) == 0 {
		fmt.Fprintf(tw, "Apps:\tnone yet (no target state received)\n")
	}
	for i, a := range st.Apps {
		label := ""
		if i == 0 {
			label = "Apps:"
		}
		line := fmt.Sprintf("%s\truns %s", termSafe(a.Name), termSafe(orDash(a.Current)))
		switch {
		case a.Target != "" && a.Target != a.Current:
			line += " -> " + termSafe(a.Target) + " pending"
		case a.Target == "" && a.Current != "":
			line += ", to be removed (no longer in the target)"
		}
		if len(a.BlockedBy) > 0 {
			line += ", waiting for " + termSafe(a.BlockedBy[0].Path)
			if n := len(a.BlockedBy) - 1; n > 0 {
				line += fmt.Sprintf(" and %d more", n)
			}
		}
		if a.Reason != "" {
			line += "; " + termSafe(a.Reason)
		}
		if !a.Deadline.IsZero() {
			if left := a.Deadline.Sub(now); left >= 0 {
				line += fmt.Sprintf("; max-defer deadline in %s", left.Round(time.Second))
			} else {
				line += fmt.Sprintf("; %s past its max-defer deadline", (-left).Round(time.Second))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, line)
	}
	switch {
	case st.UpdatePending:
		u := "pending " + termSafe(shortID(st.UpdateID))
		if st.UpdateDownloaded {
			u += ", downloaded"
		} else {
			u += fmt.Sprintf(", downloading %d%%", st.DownloadProgress)
			if st.DownloadTotal > 0 {
				u += fmt.Sprintf(" (%s of %s)", bytesStr(st.DownloadDone), bytesStr(st.DownloadTotal))
			}
		}
		if st.Attempts > 0 {
			u += fmt.Sprintf(", attempt %d", st.Attempts)
		}
		if st.UpdateFailed {
			u += ", FAILED: " + termSafe(st.Reason)
		} else if st.Reason != "" && len(st.BlockedBy) == 0 {
			u += " (" + termSafe(st.Reason) + ")"
		}
		fmt.Fprintf(tw, "Update:\t%s\n", u)
	case st.UpdateFailed:
		fmt.Fprintf(tw, "Update:\tfailed: %s\n", termSafe(st.Reason))
	default:
		fmt.Fprintf(tw, "Update:\tnone pending\n")
	}
	if r := st.Refused; r != nil {
		fmt.Fprintf(tw, "Refused:\t%s, from %s: %s\n", r.At.Local().Format("2006-01-02 15:04:05"), termSafe(r.Source), termSafe(r.Reason))
	}
	for i, c := range st.Containers {
		label := ""
		if i == 0 {
			label = "Containers:"
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, containerLine(c))
	}
	for i, e := range st.BlockedBy {
		label := ""
		if i == 0 {
			label = "Blocked by:"
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, describeEntry(e, st.BlockedSince, now))
	}
	if f := st.Fleet; f != nil {
		line := fmt.Sprintf("%s, device %s, broker %s: ", termSafe(f.Fleet), termSafe(f.Device), termSafe(f.Broker))
		if f.Connected {
			line += fmt.Sprintf("connected (%d connection(s) since start)", f.Connects)
		} else {
			line += "not connected"
		}
		if f.LastError != "" {
			line += "; last error " + ago(now, f.LastErrorAt) + ": " + termSafe(f.LastError)
		}
		fmt.Fprintf(tw, "Fleet:\t%s\n", line)
	}
	ov := "off"
	if st.OverrideLock {
		ov = "ON: locks are ignored (turn off with 'latch override off')"
	}
	fmt.Fprintf(tw, "Override:\t%s\n", ov)
	if r := st.PendingReboot; r != nil {
		fmt.Fprintf(tw, "Reboot:\t%s pending since %s: %s\n", termSafe(r.Kind), ago(now, r.Requested), termSafe(r.Reason))
	}
	if len(st.Holds) == 0 {
		fmt.Fprintf(tw, "Holds:\tnone\n")
	}
	for i, h := range st.Holds {
		label := ""
		if i == 0 {
			label = "Holds:"
		}
		line := termSafe(holdName(h))
		if h.Reason != "" {
			line += " (" + termSafe(h.Reason) + ")"
		}
		if h.Expires.IsZero() {
			line += ", until released"
		} else {
			line += ", until " + h.Expires.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, line)
	}
	tw.Flush()
	if len(evs) > 0 {
		fmt.Fprintln(w, "\nRecent events (newest first):")
		printEvents(w, evs)
	}
}

// describeEntry names a blocking lock and its holder for a person.
func describeEntry(e lock.Entry, blockedSince, now time.Time) string {
	s := termSafe(e.Path)
	if e.App != "" {
		s = termSafe(e.App+"/"+e.Service) + ": " + s
	}
	switch {
	case e.Holder != nil && e.Holder.PID > 0:
		s += fmt.Sprintf(", held by pid %d", e.Holder.PID)
		if e.Holder.Command != "" {
			s += " (" + termSafe(e.Holder.Command) + ")"
		}
	case e.State == lock.StateStale && e.Record != nil:
		s += fmt.Sprintf(", stale: pid %d (%s) is dead", e.Record.PID, termSafe(e.Record.Command))
	default:
		s += fmt.Sprintf(", %s by uid %d, holder unknown", termSafe(orDash(string(e.State))), e.UID)
	}
	if !e.Since.IsZero() {
		s += ", since " + ago(now, e.Since)
	}
	if !blockedSince.IsZero() {
		s += fmt.Sprintf("; blocking for %s", now.Sub(blockedSince).Round(time.Second))
	}
	return s
}

func printEvents(w io.Writer, evs []store.Event) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, e := range evs {
		by := e.By
		if by == "" {
			by = "-"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", e.Time.Local().Format(time.DateTime), termSafe(e.Kind), termSafe(by), termSafe(e.Message))
	}
	tw.Flush()
}

func ago(now, t time.Time) string {
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// containerLine is one container service of latch status: app/service,
// release, image short digest, container state, and the image's pull while
// it is under way.
func containerLine(c agent.ContainerStatus) string {
	line := fmt.Sprintf("%s/%s %s, image %s, %s", termSafe(c.App), termSafe(c.Service), termSafe(orDash(c.Release)),
		termSafe(orDash(c.Image)), termSafe(orDash(c.State)))
	if c.PullTotal > 0 && c.PullDone < c.PullTotal {
		line += fmt.Sprintf(", pulling %d%% (%s of %s)", c.PullDone*100/c.PullTotal, bytesStr(c.PullDone), bytesStr(c.PullTotal))
		if p := c.Pull; p != nil && p.Layers > 0 {
			line += fmt.Sprintf(", %d of %d layers", p.LayersDone, p.Layers)
		}
	}
	return line
}

func bytesStr(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return strconv.FormatInt(n, 10) + " B"
}

// helpOK makes -h exit 0.
func helpOK(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

// updatePoll is how often `latch update` asks for the status while it waits
// when the agent's event stream cannot be followed; with the stream it asks
// on every event, and every updateTick in a terminal (whose "for 5s" ticks
// on).
const (
	updatePoll = 500 * time.Millisecond
	updateTick = time.Second
	updateIdle = 5 * time.Second
)

func runUpdate(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch update", flag.ContinueOnError)
	var cf clientFlags
	cf.add(fs, "print the outcome as JSON ({\"triggered\":bool,\"status\":{...}})")
	force := fs.Bool("force", false, "apply once even if locks are held: the user locks in its way are removed")
	cancel := fs.Bool("cancel", false, "drop the pending update (unless it is being applied)")
	noWait := fs.Bool("no-wait", false, "return at once instead of waiting until the apply is done")
	fs.Usage = commandUsage(fs,
		"  latch update [--force] [--cancel] [--no-wait]",
		"Ask the agent to apply the pending update now, and wait until it is applied, showing what it\n"+
			"waits for (a lock, held by whom). Without --force the agent still honours the locks; with\n"+
			"--force it applies once, removing the user locks in its way. Exit status: 0 applied (or\n"+
			"nothing to do), 1 the update failed.",
		"  latch update\n  latch update --force --no-wait\n  latch update --cancel")
	pos, err := parseClient(fs, args)
	if err != nil {
		return helpOK(err)
	}
	if len(pos) > 0 {
		return usageErr("update", "unexpected argument %q", pos[0])
	}
	if *force && *cancel {
		return usageErr("update", "give --force or --cancel, not both")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	before, err := c.Device(ctx)
	if err != nil {
		return clientError(err)
	}
	triggered, err := c.Update(ctx, *force, *cancel)
	if err != nil {
		return clientError(err)
	}
	if !triggered || *cancel || *noWait {
		if cf.asJSON {
			st, err := c.Device(ctx)
			if err != nil {
				return clientError(err)
			}
			return printJSON(map[string]any{"triggered": triggered, "status": st})
		}
		switch {
		case !triggered:
			fmt.Println("nothing to do: no update is pending")
		case *cancel:
			fmt.Printf("update %s cancelled\n", termSafe(shortID(before.UpdateID)))
		default:
			fmt.Printf("update %s requested; follow it with 'latch status'\n", termSafe(shortID(before.UpdateID)))
		}
		return nil
	}
	st, err := waitApplied(ctx, c, before.UpdateID, cf.asJSON)
	if err != nil {
		return err
	}
	if cf.asJSON {
		if err := printJSON(map[string]any{"triggered": true, "status": st}); err != nil {
			return err
		}
	}
	if st.UpdateFailed && st.UpdateID == before.UpdateID {
		return &exitError{code: exitFailure, msg: "update failed: " + termSafe(st.Reason)}
	}
	if !cf.asJSON {
		fmt.Printf("update applied: %s\n", termSafe(st.Release))
	}
	return nil
}

// waitApplied follows the agent's events and reads the status on each,
// until the update id is no longer pending (or has failed), showing what it
// waits for: a refreshed line in a terminal, one line per change otherwise.
// When the event stream cannot be followed it polls every updatePoll.
func waitApplied(ctx context.Context, c *api.Client, id string, quiet bool) (agent.Status, error) {
	tty := isTerminal(os.Stderr)
	last := ""
	defer func() {
		if tty && last != "" && !quiet {
			fmt.Fprint(os.Stderr, "\r\033[K")
		}
	}()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	streamErr := make(chan error, 1)
	go func() {
		streamErr <- c.Events(sctx, 0, false, poke, func(store.Event) error { poke(); return nil })
	}()
	interval := updatePoll // until the stream answers
	for {
		st, err := c.Device(ctx)
		if err != nil {
			return st, clientError(err)
		}
		if !st.UpdatePending || st.UpdateID != id || st.UpdateFailed {
			return st, nil
		}
		// In a terminal the line is rewritten on every wake (its "for 5s"
		// ticks on); otherwise a line is printed only when it changes.
		if line := termSafe(st.Line()); !quiet && (tty || line != last) {
			if tty {
				fmt.Fprintf(os.Stderr, "\r\033[K%s", line)
			} else {
				fmt.Fprintln(os.Stderr, line)
			}
			last = line
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return st, &exitError{code: exitTempFail, msg: "stopped waiting; the update is still pending: 'latch status' shows it"}
		case <-wake:
			if interval == updatePoll {
				interval = updateIdle // the stream is up: it wakes us
				if tty {
					interval = updateTick
				}
			}
		case <-streamErr:
			streamErr = nil // the stream failed or ended: poll from now on
			interval = updatePoll
		case <-t.C:
		}
		t.Stop()
	}
}

// runEvents follows the agent's events as they happen (GET /v2/events):
// one line each, or one JSON object a line with --json. A stream that the
// agent ends (it restarts, or this reader fell behind) is followed again,
// resuming after the last event seen.
func runEvents(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch events", flag.ContinueOnError)
	var cf clientFlags
	cf.add(fs, "print each event as one JSON object a line (seq, time, kind, app, service, release, by, message)")
	fs.Usage = commandUsage(fs,
		"  latch events [--json]",
		"Follow what the agent does as it happens: updates accepted, deferred, locks taken, applied,\n"+
			"failed, holds, overrides, reboots, one line each, until interrupted. 'latch journal' shows\n"+
			"the history.",
		"  latch events\n  latch events --json | jq -r 'select(.kind == \"applied\") | .message'")
	pos, err := parseClient(fs, args)
	if err != nil {
		return helpOK(err)
	}
	if len(pos) > 0 {
		return usageErr("events", "unexpected argument %q", pos[0])
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	var seq uint64
	resume := false
	print := func(e store.Event) error {
		seq, resume = e.Seq, true
		if cf.asJSON {
			b, err := json.Marshal(e)
			if err != nil {
				return err
			}
			_, err = os.Stdout.Write(append(jsonSafe(b), '\n'))
			return err
		}
		printEvents(os.Stdout, []store.Event{e})
		return nil
	}
	for {
		err := c.Events(ctx, seq, resume, nil, print)
		if ctx.Err() != nil {
			return nil
		}
		// Once followed, the stream is followed again when it ends or the
		// agent restarts; the first connection's failure is reported.
		if !errors.Is(err, api.ErrStreamEnded) && !(resume && errors.Is(err, api.ErrNotRunning)) {
			return clientError(err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func runPower(ctx context.Context, kind string, args []string) error {
	fs := flag.NewFlagSet("latch "+kind, flag.ContinueOnError)
	var cf clientFlags
	cf.add(fs, "print the answer as JSON")
	force := fs.Bool("force", false, "go ahead even if locks are held: the user locks are removed")
	verb := map[string]string{"reboot": "Reboot", "shutdown": "Power off"}[kind]
	fs.Usage = commandUsage(fs,
		"  latch "+kind+" [--force]",
		verb+" the device through the agent once it can take the lock of every service of every app and\n"+
			"no device-wide lock exists. A held lock refuses it at once with exit status 73, naming the\n"+
			"lock and its holder; --force removes the user locks and goes ahead.",
		"  latch "+kind+"\n  latch "+kind+" --force")
	pos, err := parseClient(fs, args)
	if err != nil {
		return helpOK(err)
	}
	if len(pos) > 0 {
		return usageErr(kind, "unexpected argument %q", pos[0])
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	if kind == "shutdown" {
		err = c.Shutdown(ctx, *force)
	} else {
		err = c.Reboot(ctx, *force)
	}
	if err != nil {
		var ae *api.Error
		if cf.asJSON && errors.As(err, &ae) {
			printJSON(map[string]any{"status": "failed", "message": ae.Message, "blocked_by": ae.BlockedBy})
		}
		return clientError(err)
	}
	if cf.asJSON {
		return printJSON(map[string]string{"status": "success", "message": kind + " issued"})
	}
	fmt.Printf("%s issued\n", kind)
	return nil
}

func runOverride(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch override", flag.ContinueOnError)
	var cf clientFlags
	cf.add(fs, "print the override as JSON ({\"enabled\",\"by\",\"at\"})")
	fs.Usage = commandUsage(fs,
		"  latch override on|off|status",
		"The persistent lock override. While it is on, the agent ignores update locks and removes the\n"+
			"existing user locks (when it is turned on); off respects locks again. Both are journalled\n"+
			"with who asked. 'status' (the default) shows it.",
		"  latch override on\n  latch override status --json")
	pos, err := parseClient(fs, args)
	if err != nil {
		return helpOK(err)
	}
	action := "status"
	if len(pos) == 1 {
		action = pos[0]
	} else if len(pos) > 1 {
		return usageErr("override", "give one of on, off, status")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	var o store.Override
	switch action {
	case "on", "off":
		o, err = c.SetOverride(ctx, action == "on")
	case "status":
		o, err = c.Override(ctx)
	default:
		return usageErr("override", "unknown action %q: give on, off or status", action)
	}
	if err != nil {
		return clientError(err)
	}
	if cf.asJSON {
		return printJSON(o)
	}
	state := "off: locks are respected"
	if o.Enabled {
		state = "ON: locks are ignored"
	}
	fmt.Printf("lock override %s", state)
	if o.By != "" {
		fmt.Printf(" (set by %s, %s)", termSafe(o.By), ago(time.Now(), o.At))
	}
	fmt.Println()
	return nil
}

func runJournal(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch journal", flag.ContinueOnError)
	var cf clientFlags
	cf.add(fs, "print a JSON array of events (seq, time, kind, app, service, release, by, message)")
	limit := fs.Int("limit", 50, "show at most N events (0: all the journal keeps)")
	fs.Usage = commandUsage(fs,
		"  latch journal [--limit N] [--json]",
		"Show the history of updates and lock events that the agent journals, newest first: updates\n"+
			"accepted, deferred, applied, forced or failed, holds, releases, overrides, reboots, with who\n"+
			"asked.",
		"  latch journal --limit 20\n  latch journal --json | jq '.[] | select(.kind == \"forced\")'")
	pos, err := parseClient(fs, args)
	if err != nil {
		return helpOK(err)
	}
	if len(pos) > 0 {
		return usageErr("journal", "unexpected argument %q", pos[0])
	}
	if *limit < 0 {
		return usageErr("journal", "--limit %d: want 0 or more", *limit)
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	evs, err := c.Journal(ctx, *limit)
	if err != nil {
		return clientError(err)
	}
	if cf.asJSON {
		if evs == nil {
			evs = []store.Event{}
		}
		return printJSON(evs)
	}
	if len(evs) == 0 {
		fmt.Println("the journal has no events yet")
		return nil
	}
	printEvents(os.Stdout, evs)
	return nil
}
