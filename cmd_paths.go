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
	def := func(v *string, name, d string) error {
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
