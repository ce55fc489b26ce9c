package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// paths are the file system locations of spec section 2, shared by every
// subcommand. Flags win over environment variables, which win over defaults;
// --root (LATCH_ROOT) prefixes every default, never an explicit value.
type paths struct {
	root     string
	stateDir string
	lockDir  string
	runDir   string
	globals  []string // device-wide lock paths
	// globalsSet records that --global-lock was given at least once, so that
	// the flag replaces the defaults instead of adding to them.
	globalsSet bool
	// given holds each path flag's value as the operator wrote it (flag or
	// environment), before resolve made it absolute and clean; given
	// globals are in givenGlobals. latch agent refuses what is not already
	// absolute and clean (checkAgent).
	given        map[string]string
	givenGlobals []string
}

var defaultGlobals = []string{"/tmp/balena/updates.lock", "/tmp/resin/resin-updates.lock"}

// addFlags registers the path flags on fs.
func (p *paths) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&p.root, "root", os.Getenv("LATCH_ROOT"), "prefix for every default path, so a whole device fits in one folder (env LATCH_ROOT)")
	fs.StringVar(&p.stateDir, "state-dir", os.Getenv("LATCH_STATE_DIR"), "journal and downloads (default /var/lib/latch; env LATCH_STATE_DIR)")
	fs.StringVar(&p.lockDir, "lock-dir", os.Getenv("LATCH_LOCK_DIR"), "root of the per-service lock directories (default /tmp/latch; env LATCH_LOCK_DIR)")
	fs.StringVar(&p.runDir, "run-dir", os.Getenv("LATCH_RUN_DIR"), "where the API socket lives (default /run/latch; env LATCH_RUN_DIR)")
	fs.Func("global-lock", "a device-wide lock path; repeatable; an empty value means none (default /tmp/balena/updates.lock and /tmp/resin/resin-updates.lock; env LATCH_GLOBAL_LOCKS, colon-separated)", func(v string) error {
		p.globalsSet = true
		if v == "" {
			return nil
		}
		if !filepath.IsAbs(v) {
			return fmt.Errorf("global lock path %q is not absolute", v)
		}
		p.givenGlobals = append(p.givenGlobals, v)
		p.globals = append(p.globals, filepath.Clean(v))
		return nil
	})
}

// resolve fills in defaults after flag parsing and validates the result.
func (p *paths) resolve() error {
	if p.root != "" {
		if !filepath.IsAbs(p.root) {
			abs, err := filepath.Abs(p.root)
			if err != nil {
				return fmt.Errorf("--root %q: %w", p.root, err)
			}
			p.root = abs
		}
	}
	p.given = map[string]string{}
	def := func(v *string, name, d string) error {
		if *v != "" {
			p.given[name] = *v
		}
		if *v == "" {
			*v = filepath.Join(p.root, d)
		}
		if !filepath.IsAbs(*v) {
			abs, err := filepath.Abs(*v)
			if err != nil {
				return fmt.Errorf("--%s %q: %w", name, *v, err)
			}
			*v = abs
		}
		*v = filepath.Clean(*v)
		return nil
	}
	if err := def(&p.stateDir, "state-dir", "/var/lib/latch"); err != nil {
		return err
	}
	if err := def(&p.lockDir, "lock-dir", "/tmp/latch"); err != nil {
		return err
	}
	if err := def(&p.runDir, "run-dir", "/run/latch"); err != nil {
		return err
	}
	if !p.globalsSet {
		if env, ok := os.LookupEnv("LATCH_GLOBAL_LOCKS"); ok {
			for _, v := range strings.Split(env, ":") {
				if v == "" {
					continue
				}
				if !filepath.IsAbs(v) {
					return fmt.Errorf("LATCH_GLOBAL_LOCKS: path %q is not absolute", v)
				}
				p.givenGlobals = append(p.givenGlobals, v)
				p.globals = append(p.globals, filepath.Clean(v))
			}
		} else {
			for _, g := range defaultGlobals {
				p.globals = append(p.globals, filepath.Join(p.root, g))
			}
		}
	}
	return nil
}

// socket is the path of the agent's API socket.
func (p *paths) socket() string { return filepath.Join(p.runDir, "api.sock") }

// journal is the path of the agent's journal.
func (p *paths) journal() string { return filepath.Join(p.stateDir, "journal.db") }

// systemDirs are directories of the board itself. latch agent refuses one of
// them, or a folder that contains one, as its lock directory or as a
// device-wide lock: the agent makes the folders of a lock directory
// world-writable, and a forced update removes the device-wide locks in its
// way.
var systemDirs = []string{
	"/", "/bin", "/boot", "/data", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
	"/media", "/mnt", "/opt", "/proc", "/root", "/run", "/run/lock", "/run/user", "/sbin", "/srv",
	"/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/libexec", "/usr/local", "/usr/local/bin",
	"/usr/sbin", "/usr/share", "/var", "/var/cache", "/var/lib", "/var/local", "/var/lock",
	"/var/log", "/var/mail", "/var/opt", "/var/run", "/var/spool", "/var/tmp",
}

// systemTree returns the tree of the system's programs, libraries,
// configuration, root's home or a kernel file system that path lies in or
// is, or "". Nothing of latch's locks may lie in one.
func systemTree(path string) string {
	top, _, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	switch {
	case top == "bin", top == "boot", top == "dev", top == "etc", top == "proc", top == "root",
		top == "sbin", top == "sys", top == "usr", strings.HasPrefix(top, "lib"):
		return "/" + top
	}
	return ""
}

// within reports whether path is dir or lies inside it (both clean and
// absolute).
func within(path, dir string) bool {
	return path == dir || dir == "/" || strings.HasPrefix(path, dir+"/")
}

// relation says how a and b (clean, absolute) overlap: "is", "lies inside",
// "contains" (a contains b) or "" when they are apart.
func relation(a, b string) string {
	switch {
	case a == b:
		return "is"
	case within(a, b):
		return "lies inside"
	case within(b, a):
		return "contains"
	}
	return ""
}

// namedPath is a path the agent uses, with the flag that names it.
type namedPath struct{ flag, path string }

// checkAgent refuses, after resolve, lock paths that would turn the agent
// against its board: a lock directory or device-wide lock that is not
// absolute and clean as written, that is or contains a system directory or
// lies in the system's own trees, that overlaps the state directory (and
// so the journal), the run directory (the API socket) or each other, or a
// lock directory that would hold one of files (the target file, keys: a
// lock directory is world-writable). Nothing is created or changed.
func (p *paths) checkAgent(files []namedPath) error {
	lockFlag := "--lock-dir"
	if _, ok := p.given["lock-dir"]; !ok {
		lockFlag = "--lock-dir (the default under --root " + orDash(p.root) + ")"
	}
	globalFlag := "--global-lock"
	if len(p.givenGlobals) == 0 {
		globalFlag = "--global-lock (the default under --root " + orDash(p.root) + ")"
	} else if !p.globalsSet {
		globalFlag = "LATCH_GLOBAL_LOCKS"
	}
	if raw, ok := p.given["lock-dir"]; ok {
		if err := checkWritten(lockFlag, raw); err != nil {
			return err
		}
	}
	for _, raw := range p.givenGlobals {
		if err := checkWritten(globalFlag, raw); err != nil {
			return err
		}
	}
	own := []namedPath{
		{"the journal", p.journal()},
		{"the state dir (--state-dir)", p.stateDir},
		{"the run dir (--run-dir)", p.runDir},
	}
	if err := checkLockPath(lockFlag, p.lockDir, "lock directory", own); err != nil {
		return err
	}
	for _, f := range files {
		if f.path == "" {
			continue
		}
		abs, err := filepath.Abs(f.path)
		if err != nil {
			return fmt.Errorf("%s %s: %w", f.flag, f.path, err)
		}
		if within(abs, p.lockDir) {
			return fmt.Errorf("%s %s lies inside the lock directory %s (%s), which every user may write to: keep it out of the lock directory", f.flag, f.path, p.lockDir, lockFlag)
		}
		own = append(own, namedPath{f.flag, abs})
	}
	own = append(own, namedPath{"the lock directory (" + lockFlag + ")", p.lockDir})
	for _, g := range p.globals {
		if err := checkLockPath(globalFlag, g, "device-wide lock", own); err != nil {
			return err
		}
	}
	return nil
}

// checkWritten refuses a lock path that is not absolute and clean as the
// operator wrote it, or that holds a control character.
func checkWritten(flag, raw string) error {
	for _, r := range raw {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s %q: a lock path must not hold control characters", flag, raw)
		}
	}
	if !filepath.IsAbs(raw) {
		return fmt.Errorf("%s %s: not an absolute path: give the full path (for example /tmp/latch)", flag, raw)
	}
	if c := filepath.Clean(raw); c != raw {
		return fmt.Errorf("%s %s: not a clean path: write it as %s", flag, raw, c)
	}
	return nil
}

// checkLockPath refuses a lock directory or device-wide lock (what) at path
// that is or contains a system directory, lies in a system tree, or
// overlaps one of own.
func checkLockPath(flag, path, what string, own []namedPath) error {
	for _, d := range systemDirs {
		if within(d, path) {
			if d == path {
				return fmt.Errorf("%s %s: %s is a system directory of the board, not a %s: give a path of latch's own (for example %s)", flag, path, path, what, example(what))
			}
			return fmt.Errorf("%s %s: contains the system directory %s, so it cannot be a %s: give a path of latch's own (for example %s)", flag, path, d, what, example(what))
		}
	}
	if what == "device-wide lock" && filepath.Dir(path) == "/" {
		return fmt.Errorf("%s %s: lies directly in /, among the board's own entries, and a forced update removes a device-wide lock: put it in a folder of its own (for example /tmp/balena/updates.lock)", flag, path)
	}
	if t := systemTree(path); t != "" {
		return fmt.Errorf("%s %s: lies inside %s, which holds the system's own files: a %s belongs in /tmp or /run (for example %s)", flag, path, t, what, example(what))
	}
	// The path that it is says most, then the first it overlaps.
	for _, exact := range []bool{true, false} {
		for _, o := range own {
			if r := relation(path, o.path); r != "" && (r == "is") == exact {
				return fmt.Errorf("%s %s: %s %s %s: give the %s a path apart from it", flag, path, r, o.flag, o.path, what)
			}
		}
	}
	return nil
}

// example is a good path for a lock directory or a device-wide lock.
func example(what string) string {
	if what == "device-wide lock" {
		return "/tmp/balena/updates.lock"
	}
	return "/tmp/latch"
}
