package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// The oracle: every stop and start command of a test release appends one
// line to the commands log, "VERB APP/SERVICE CONTENT [by RELEASE]", then a
// tab and a snapshot of every lock entry that exists at that moment and
// could bear on the step: both lock names and latch-hold.lock in the
// service's lock directory, and every device-wide lock path of the agent.
// Each entry is "PATH=UID:ROLE" (ROLE is the "role" of latch's record, "-"
// for an entry without one: a directory, a symlink, another tool's file).
// When the test has declared the step forced or overridden, the snapshot
// has "forced=HOW". It ends with "pid=PID", the process that ran the command
// (the agent: a line of a killed agent's pid landing after its death is an
// orphaned command).
//
// A step is a violation (spec section 8: no update step ever runs on a
// service whose lock is held, unless forced or overridden) when
//   - either of the agent's two entries is missing, is not owned by the
//     lock uid, or does not carry the agent's record;
//   - any other entry exists: a user's lock of either name, a device-wide
//     lock that is not the agent's own, a hold's entry; except that a forced
//     step may run under the agent's own hold entries (the user entries must
//     be gone: the agent removed them).

// oracleDir holds the files the commands read: the device-wide lock paths,
// the forced marker, the slow-step delay, and gates.
func (d *device) oracleDir() string { return filepath.Join(d.root, "oracle") }

// snapshotSnippet is shell code that sets $o to the snapshot of a step's
// lock entries. It needs only coreutils and sed.
func (d *device) snapshotSnippet() string {
	dir := d.oracleDir()
	return `s=${BALENA_APP_LOCK_PATH%/*}; o=""; ` +
		`for p in "$s/updates.lock" "$s/resin-updates.lock" "$s/latch-hold.lock" $(cat ` + dir + `/globals 2>/dev/null); do ` +
		`if [ -e "$p" ] || [ -L "$p" ]; then r=-; ` +
		`if [ -f "$p" ] && [ ! -L "$p" ]; then r=$(sed -n 's/.*"role": *"\([a-z]*\)".*/\1/p' "$p" 2>/dev/null | head -n 1); fi; ` +
		`o="$o $p=$(stat -c %u "$p" 2>/dev/null || echo gone):${r:--}"; fi; done; ` +
		`if [ -e ` + dir + `/forced ]; then o="$o forced=$(cat ` + dir + `/forced)"; fi; o="$o pid=$PPID dir=$s want=$(cat ` + dir + `/lockuid 2>/dev/null):$(cat ` + dir + `/lockdir 2>/dev/null)"; `
}

// slowSnippet is shell code that waits while the step's gate file exists
// (gate.VERB.APP.SERVICE in the oracle dir), then sleeps for the seconds
// written in the "slow" file, if any: it lets a test hold a command open, or
// land a SIGKILL of the agent inside one.
func (d *device) slowSnippet(verb string) string {
	dir := d.oracleDir()
	return fmt.Sprintf(`while [ -e %s/gate.%s.$LATCH_APP.$LATCH_SERVICE ]; do sleep 0.01; done; `, dir, verb) +
		fmt.Sprintf(`if [ -s %s/slow ]; then sleep "$(cat %s/slow)"; fi; `, dir, dir)
}

// writeOracle writes one of the oracle's files; an empty content removes it.
func (d *device) writeOracle(name, content string) {
	d.t.Helper()
	p := filepath.Join(d.oracleDir(), name)
	if content == "" {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			d.t.Fatal(err)
		}
		return
	}
	if err := os.MkdirAll(d.oracleDir(), 0o755); err != nil {
		d.t.Fatal(err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		d.t.Fatal(err)
	}
}

// allowForced declares the steps from now on forced (a force or the
// override is in effect): they may run under the agent's own hold entries.
// It lasts until the next setTarget or endForced. d.api declares it by
// itself for a request that forces.
func (d *device) allowForced() { d.writeOracle("forced", "once") }

// allowOverride declares every step forced until endForced (the override is
// on); d.api declares it by itself when a request turns the override on.
func (d *device) allowOverride() { d.writeOracle("forced", "override") }

// endForced ends allowForced and allowOverride: steps must respect every
// lock again.
func (d *device) endForced() { d.writeOracle("forced", "") }

// endForcedOnce ends allowForced (not allowOverride): a new target is a new
// update, which a past force does not cover.
func (d *device) endForcedOnce() {
	if b, err := os.ReadFile(filepath.Join(d.oracleDir(), "forced")); err == nil && string(b) == "once" {
		d.endForced()
	}
}

// noteRequest declares forced steps for an API request that forces or turns
// the override on, and ends them when the override is turned off.
func (d *device) noteRequest(method, path string, body any) {
	m, ok := body.(map[string]any)
	if !ok {
		m = map[string]any{}
		switch b := body.(type) {
		case map[string]bool:
			for k, v := range b {
				m[k] = v
			}
		}
	}
	switch {
	case path == "/v2/device/override" && method == "PUT":
		if m["enabled"] == true {
			d.allowOverride()
		} else {
			d.endForced()
		}
	case m["force"] == true:
		d.allowForced()
	}
}

// setSlow makes every stop and start command sleep for seconds first ("" or
// "0": no delay).
func (d *device) setSlow(seconds string) {
	if seconds == "0" {
		seconds = ""
	}
	d.writeOracle("slow", seconds)
}

// globalLocks are the device-wide lock paths the agent is started with
// (spec section 2): --global-lock flags in d.args, else LATCH_GLOBAL_LOCKS
// from env or the test's environment, else the defaults under the root.
func (d *device) globalLocks(env []string) []string {
	var out []string
	set := false
	for i := 0; i < len(d.args); i++ {
		a := d.args[i]
		switch {
		case a == "--global-lock" || a == "-global-lock":
			set = true
			if i+1 < len(d.args) {
				if v := d.args[i+1]; v != "" {
					out = append(out, v)
				}
				i++
			}
		case strings.HasPrefix(a, "--global-lock=") || strings.HasPrefix(a, "-global-lock="):
			set = true
			if _, v, _ := strings.Cut(a, "="); v != "" {
				out = append(out, v)
			}
		}
	}
	if set {
		return out
	}
	envVal, ok := os.LookupEnv("LATCH_GLOBAL_LOCKS")
	for _, e := range env {
		if v, found := strings.CutPrefix(e, "LATCH_GLOBAL_LOCKS="); found {
			envVal, ok = v, true
		}
	}
	if ok {
		for _, v := range strings.Split(envVal, ":") {
			if v != "" {
				out = append(out, v)
			}
		}
		return out
	}
	return []string{filepath.Join(d.root, "tmp/balena/updates.lock"), filepath.Join(d.root, "tmp/resin/resin-updates.lock")}
}

// lockUID is the owner of the agent's entries: --lock-uid (default 65534)
// when the agent runs as root, else the agent's own uid.
func (d *device) lockUID() int {
	if os.Geteuid() != 0 {
		return os.Geteuid()
	}
	uid := 65534
	for i, a := range d.args {
		v, ok := strings.CutPrefix(a, "--lock-uid=")
		if !ok && a == "--lock-uid" && i+1 < len(d.args) {
			v, ok = d.args[i+1], true
		}
		if ok {
			if n, err := strconv.Atoi(v); err == nil {
				uid = n
			}
		}
	}
	return uid
}

// agentLockDir is the lock root the agent is started with: the last
// --lock-dir in d.args, else d.lockDir.
func (d *device) agentLockDir() string {
	dir := d.lockDir
	for i, a := range d.args {
		if v, ok := strings.CutPrefix(a, "--lock-dir="); ok {
			dir = v
		} else if a == "--lock-dir" && i+1 < len(d.args) {
			dir = d.args[i+1]
		}
	}
	return dir
}

// writeAgentOracle records, for the commands, what the agent is started
// with: its device-wide lock paths, its lock uid and its lock root.
func (d *device) writeAgentOracle(env []string) {
	d.writeOracle("globals", strings.Join(d.globalLocks(env), "\n")+"\n")
	d.writeOracle("lockuid", strconv.Itoa(d.lockUID()))
	d.writeOracle("lockdir", d.agentLockDir())
}

// lockEntry is one entry of a step's snapshot.
type lockEntry struct {
	Path string
	UID  string // "gone" when it went between the test and the stat
	Role string // "-" without latch's record
}

// step is one stop or start command that ran, as the oracle saw it.
type step struct {
	Line    string // the whole log line, snapshot included
	Verb    string // stop or start
	App     string
	Service string
	Content string // the installed file's content when the step ran
	By      string // the release whose command ran
	Entries []lockEntry
	Forced  string // "" unless the test declared the step forced ("once", "override")
	PID     int    // the process that ran the command (the agent)
	Dir     string // the lock directory the agent gave the command
	WantUID string // the agent's lock uid when the step ran ("" if unknown)
	WantDir string // the agent's lock root when the step ran ("" if unknown)
}

// steps parses every stop and start line of the commands log.
func (d *device) steps() []step {
	var out []step
	for _, l := range d.rawCommands() {
		if st, ok := parseStep(l); ok {
			out = append(out, st)
		}
	}
	return out
}

// parseStep parses one line of the commands log; ok is false for a line
// that is not a stop or a start.
func parseStep(l string) (st step, ok bool) {
	head, snap, _ := strings.Cut(l, "\t")
	verb, rest, ok := strings.Cut(head, " ")
	if !ok || (verb != "stop" && verb != "start") {
		return step{}, false
	}
	st = step{Line: l, Verb: verb}
	name, rest, _ := strings.Cut(rest, " ")
	st.App, st.Service, _ = strings.Cut(name, "/")
	if i := strings.LastIndex(rest, " [by "); i >= 0 {
		st.Content = rest[:i]
		st.By = strings.TrimSuffix(rest[i+len(" [by "):], "]")
	} else if strings.HasPrefix(rest, "[by ") {
		st.By = strings.TrimSuffix(strings.TrimPrefix(rest, "[by "), "]")
	}
	for _, f := range strings.Fields(snap) {
		if v, ok := strings.CutPrefix(f, "forced="); ok {
			st.Forced = v
			continue
		}
		if v, ok := strings.CutPrefix(f, "pid="); ok {
			st.PID, _ = strconv.Atoi(v)
			continue
		}
		if v, ok := strings.CutPrefix(f, "dir="); ok {
			st.Dir = v
			continue
		}
		if v, ok := strings.CutPrefix(f, "want="); ok {
			st.WantUID, st.WantDir, _ = strings.Cut(v, ":")
			continue
		}
		i := strings.LastIndex(f, "=")
		if i < 0 {
			continue
		}
		uid, role, _ := strings.Cut(f[i+1:], ":")
		st.Entries = append(st.Entries, lockEntry{Path: f[:i], UID: uid, Role: role})
	}
	return st, true
}

// stepViolations says what is wrong with each step that ran without the
// agent holding both of its entries or under anyone else's entry.
func (d *device) stepViolations(steps []step) []string {
	var out []string
	for _, st := range steps {
		// What the agent was started with when the step ran (a test may
		// restart it with another --lock-uid or --lock-dir).
		uid, root := st.WantUID, st.WantDir
		if uid == "" {
			uid = strconv.Itoa(d.lockUID())
		}
		if root == "" {
			root = d.agentLockDir()
		}
		dir := filepath.Join(root, "services", st.App, st.Service)
		own := map[string]bool{}
		var problems []string
		if st.Dir != "" && st.Dir != dir {
			problems = append(problems, fmt.Sprintf("with BALENA_APP_LOCK_PATH in %s, not the service's lock directory %s", st.Dir, dir))
		}
		for _, e := range st.Entries {
			name := filepath.Base(e.Path)
			inDir := filepath.Dir(e.Path) == dir
			switch {
			case inDir && (name == "updates.lock" || name == "resin-updates.lock"):
				if e.Role == "agent" && e.UID == uid {
					own[name] = true
					continue
				}
				problems = append(problems, fmt.Sprintf("under another's entry %s (uid %s, role %s)", e.Path, e.UID, e.Role))
			case inDir && name == "latch-hold.lock" && st.Forced != "" && e.Role == "hold" && e.UID == uid:
				// A forced step passes the agent's own hold.
			case !inDir && e.Role == "agent" && e.UID == uid:
				// The agent may take the device-wide paths for its action too.
			case inDir && name == "latch-hold.lock" && e.Role == "hold" && e.UID == uid:
				problems = append(problems, fmt.Sprintf("under the hold %s without force", e.Path))
			default:
				problems = append(problems, fmt.Sprintf("under another's entry %s (uid %s, role %s)", e.Path, e.UID, e.Role))
			}
		}
		var missing []string
		for _, n := range []string{"updates.lock", "resin-updates.lock"} {
			if !own[n] {
				missing = append(missing, n)
			}
		}
		if len(missing) > 0 {
			problems = append(problems, fmt.Sprintf("without the agent's %s (owned by uid %s, role agent)", strings.Join(missing, " and "), uid))
		}
		if len(problems) > 0 {
			sort.Strings(problems)
			out = append(out, fmt.Sprintf("%s/%s %s ran %s: %q", st.App, st.Service, st.Verb, strings.Join(problems, "; "), st.Line))
		}
	}
	return out
}
