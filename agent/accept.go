package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"latch/agent/lock"
	"latch/agent/target"
	"latch/agent/trust"
	"latch/store"
)

// PushTarget hands a target document to the agent (the API's
// POST /v2/local/target-state). It returns once the document is accepted or
// rejected: a bad signature wraps target.ErrBadSignature or
// target.ErrNoSignature, a bad document wraps target.ErrInvalid; in both cases
// nothing changed.
func (a *Agent) PushTarget(ctx context.Context, doc target.Doc, by string) error {
	return a.do(ctx, func() error { return a.accept(doc, by) })
}

// accept verifies and parses a target document, journals it, then applies
// its configuration and prepares its services. Nothing changes before the
// journal has it: a document refused for any reason, a full disk included,
// leaves no trace but the refusal in the log. One accepted while an action
// is in flight is journalled as queued, and taken up once the action ends,
// also after a crash.
//
// Under a root of trust (UseTrustRoot) the document is first decided on by
// trust.Verify: a refusal is journalled once per distinct bytes and changes
// nothing else; the new trust state is journalled in the same transaction
// as the update (or the queued target) it goes with. A re-delivery of the
// accepted target journals only a root its bundle rotated in, then goes the
// way of any document already accepted (nothing new is asked for).
func (a *Agent) accept(doc target.Doc, by string) error {
	var ts *trust.State
	tc := a.trust()
	switch {
	case tc != nil:
		var err error
		if ts, err = a.verifyTrust(tc, doc, by); err != nil {
			return err
		}
	case a.cfg.TrustKey != nil:
		if err := target.Verify(a.cfg.TrustKey, doc.Data, doc.Sig); err != nil {
			a.event("rejected", by, "target from %s rejected: %v", doc.Source, err)
			return err
		}
	}
	st, err := target.Parse(doc.Data)
	if err == nil {
		err = a.checkPaths(st)
	}
	if err == nil {
		err = checkContainers(st) // the container fields, by the driver's rules (section 9)
	}
	if err != nil {
		a.event("rejected", by, "target from %s rejected: %v", doc.Source, err)
		return err
	}
	if tc != nil {
		if missing := st.MissingSizes(); len(missing) > 0 {
			return a.refuse(tc, doc, by, fmt.Errorf("%s: missing: under a root of trust every file needs its size in bytes (latch release sets it)", strings.Join(missing, ", ")))
		}
	}
	if a.busy() {
		return a.queue(doc, st, by, ts)
	}
	if err := a.journalUpdate(doc, st, by, ts); err != nil {
		return err
	}
	return a.accepted(doc, st, by)
}

// queue journals a target that arrived during an action; it is taken up
// when the action ends. A target asking for the releases that run, while an
// interrupted apply waits to resume, is a cancel: the apply is rolled back.
func (a *Agent) queue(doc target.Doc, st *target.State, by string, ts *trust.State) error {
	if p := a.st.pending; p != nil && p.ID == target.Digest(doc.Data) && a.st.queued == nil {
		return a.journalTrust(ts, doc, by) // the update under way (a source re-reads it at every start)
	}
	q := &store.Queued{Doc: bytes.Clone(doc.Data), Source: doc.Source, By: by, Accepted: time.Now()}
	p := a.st.pending
	revert := a.st.resume != nil && !isRestart(a.st.resume) && p != nil && len(makePlan(st, a.st.apps, a.st.running, nil)) == 0
	err := a.journal(func(tx *store.Tx) error {
		if err := tx.SetQueued(q); err != nil {
			return err
		}
		if err := putTrust(tx, ts); err != nil {
			return err
		}
		msg := fmt.Sprintf("target from %s accepted during an action: it is taken up once the action ends", doc.Source)
		if revert {
			p.Reason, p.Updated = cancelPrefix+by+": the target asks for the releases that ran before; rolling back", time.Now()
			if err := tx.PutPending(p); err != nil {
				return err
			}
			msg = fmt.Sprintf("target from %s asks for the releases that ran before update %s: it is rolled back once its locks can be taken", doc.Source, short(p.ID))
		}
		_, err := tx.Log(store.Event{Kind: "update", By: by, Message: msg})
		return err
	})
	if err != nil {
		return fmt.Errorf("journal the target: %w", err)
	}
	a.trusted(ts)
	a.st.queued = q
	return nil
}

// takeQueued accepts the target that was queued during an action.
func (a *Agent) takeQueued() {
	q := a.st.queued
	st, err := target.Parse(q.Doc)
	if err == nil {
		err = a.journalUpdate(target.Doc{Data: q.Doc, Source: q.Source}, st, q.By, nil) // its trust state was journalled with it
	}
	if err != nil && !errors.Is(err, target.ErrInvalid) {
		a.st.retryAt = time.Now().Add(a.cfg.RetryDelay)
		a.logf("queued target from %s: %v", q.Source, err)
		return
	}
	if err != nil {
		a.event("rejected", q.By, "queued target from %s rejected: %v", q.Source, err)
	}
	if a.journal(func(tx *store.Tx) error { return tx.DeleteQueued() }) != nil {
		return
	}
	a.st.queued = nil
	if err == nil {
		if err := a.accepted(target.Doc{Data: q.Doc, Source: q.Source}, st, q.By); err != nil {
			a.logf("%v", err)
			a.retrySource(target.Doc{Data: q.Doc, Source: q.Source}, q.By)
		}
	}
}

// retrySource keeps a document whose acceptance failed for a reason of the
// device's (a full disk), not of the document, and accepts it again after
// --retry-delay: a file or URL source sends a document once, so it would
// be lost otherwise.
func (a *Agent) retrySource(doc target.Doc, by string) {
	d := doc
	a.st.retryDoc, a.st.retryDocBy, a.st.retryDocAt = &d, by, time.Now().Add(a.cfg.RetryDelay)
}

// refusedForGood reports whether err is about the document itself (it will
// never be accepted as it is), not about the device.
func refusedForGood(err error) bool {
	return errors.Is(err, target.ErrInvalid) || errors.Is(err, target.ErrBadSignature) || errors.Is(err, target.ErrNoSignature) || errors.Is(err, ErrRefused)
}

// checkPaths refuses a target that would install a file into latch's own
// state: the state dir (journal, downloads, key), the lock directories, the
// run dir (API socket), the device-wide lock paths and their directories.
func (a *Agent) checkPaths(st *target.State) error {
	for _, app := range sortedKeys(st.Apps) {
		for _, name := range sortedKeys(st.Apps[app].Services) {
			for i, f := range st.Apps[app].Services[name].Files {
				if d := a.ownPath(f.Path); d != "" {
					return fmt.Errorf("%w: apps.%s.services.%s.files[%d].path %s is in %s, which latch keeps for itself (journal, downloads, locks, API socket)", target.ErrInvalid, app, name, i, f.Path, d)
				}
			}
		}
	}
	return nil
}

// ownPath says which of latch's own paths p is in ("" when none), as written
// and as the file system resolves it (a symlink, /proc/self/root), so that
// no alias gets past.
func (a *Agent) ownPath(p string) string {
	var trees, exact []string // a tree is refused with all it holds
	for _, d := range []string{a.cfg.StateDir, a.cfg.Layout.Dir, a.cfg.RunDir} {
		if d != "" {
			trees = append(trees, filepath.Clean(d))
		}
	}
	for _, g := range a.cfg.Layout.Global {
		g = filepath.Clean(g)
		exact = append(exact, g)
		// /tmp/balena and /tmp/resin are lock directories (sticky, open to
		// all) and latch's whole; /data of the legacy /data/resin-updates.lock
		// is not, and only the lock path itself is refused there.
		if fi, err := os.Lstat(filepath.Dir(g)); err == nil && fi.IsDir() && fi.Mode()&os.ModeSticky != 0 && fi.Mode().Perm()&0o002 != 0 {
			trees = append(trees, filepath.Dir(g))
		} else {
			exact = append(exact, filepath.Dir(g))
		}
	}
	in := func(p, d string, tree bool) bool {
		return p == d || tree && strings.HasPrefix(p, d+"/")
	}
	for _, cand := range []string{filepath.Clean(p), resolvePath(p)} {
		for _, d := range trees {
			if in(cand, d, true) || in(cand, resolvePath(d), true) {
				return d
			}
		}
		for _, d := range exact {
			if in(cand, d, false) || in(cand, resolvePath(d), false) {
				return d
			}
		}
	}
	return ""
}

// resolvePath is p with the symlinks of its deepest existing ancestor
// resolved (the rest is appended as written).
func resolvePath(p string) string {
	p = filepath.Clean(p)
	rest := ""
	for dir := p; ; dir = filepath.Dir(dir) {
		if r, err := filepath.EvalSymlinks(dir); err == nil {
			return filepath.Join(r, rest)
		}
		if dir == "/" || dir == "." {
			return p
		}
		rest = filepath.Join(filepath.Base(dir), rest)
	}
}

// journalUpdate journals the update that st asks for (if any) in one
// transaction, or drops a pending update that it makes moot. The loop's
// state is changed only once the journal has it.
//
// ts (nil: none) is the trust state that goes with the document: it is
// journalled in the same transaction as the update.
func (a *Agent) journalUpdate(doc target.Doc, st *target.State, by string, ts *trust.State) error {
	id := target.Digest(doc.Data)
	if p := a.st.pending; p != nil && p.ID == id {
		return a.journalTrust(ts, doc, by) // the update already pending (or failed) for this document
	}
	plan := makePlan(st, a.st.apps, a.st.running, nil)
	if len(plan) == 0 {
		if err := a.journalTrust(ts, doc, by); err != nil {
			return err
		}
		if p := a.st.pending; p != nil {
			a.cancelPending(by, "the target now asks for the releases that run")
		}
		return nil
	}
	u := &store.Update{
		ID:      id,
		Target:  bytes.Clone(doc.Data),
		State:   store.Downloading,
		Created: time.Now(),
		Updated: time.Now(),
		By:      by,
	}
	changed := map[string]bool{}
	for _, pl := range plan {
		changed[pl.Svc.App] = true
		if pl.Remove {
			continue // stopped only: nothing to download
		}
		for _, f := range pl.Spec.Files {
			u.Files = append(u.Files, store.File{
				App: pl.Svc.App, Service: pl.Svc.Service,
				Source: f.Source, SHA256: f.SHA256, Path: f.Path,
				Mode: uint32(f.FileMode().Perm()), Size: -1,
			})
		}
	}
	var names []string
	err := a.journal(func(tx *store.Tx) error {
		if err := tx.PutPending(u); err != nil {
			return err
		}
		if err := putTrust(tx, ts); err != nil {
			return err
		}
		for app := range changed {
			ap := a.st.apps[app]
			ap.Name, ap.Target, ap.Updated, ap.By = app, st.Apps[app].Release, time.Now(), by
			if err := tx.PutApp(ap); err != nil {
				return err
			}
			names = append(names, fmt.Sprintf("%s %s -> %s", app, orNone(a.st.apps[app].Current), orNone(ap.Target)))
		}
		sort.Strings(names)
		_, err := tx.Log(store.Event{Kind: "update", By: by, Message: fmt.Sprintf("new update %s from %s: %s", short(id), doc.Source, strings.Join(names, ", "))})
		return err
	})
	if err != nil {
		return fmt.Errorf("journal the update: %w", err)
	}
	a.trusted(ts)
	if a.st.cancelDownload != nil {
		a.st.cancelDownload() // the old download's completion is ignored
	}
	for app := range changed {
		ap := a.st.apps[app]
		ap.Name, ap.Target = app, st.Apps[app].Release
		a.st.apps[app] = ap
	}
	hit(FPAccepted)
	a.st.retryAt = time.Time{}
	a.setPending(u, st)
	a.logf("update %s accepted: %s", short(id), strings.Join(names, ", "))
	return nil
}

// accepted does what follows a journalled target: it becomes the latest
// (kept for the next start, so that its services get their lock directories
// and drop-ins before READY even when its source is unreachable at boot), its
// services are prepared and its configuration applied.
//
// A configuration that cannot be written (a full disk) is an error: the
// source is told, and the same document sent again applies it then (the
// update it asks for is journalled already, and not asked for twice).
func (a *Agent) accepted(doc target.Doc, st *target.State, by string) error {
	a.st.latest = st
	if err := writeFileAtomic(a.latestPath(), doc.Data, 0o600); err != nil {
		a.logf("keep the target state: %v", err)
	}
	a.prepare(st)
	err := a.applyConfig(st, by)
	if err != nil {
		err = fmt.Errorf("configuration of the target from %s: %w", doc.Source, err)
	}
	a.reconcileHolds(false)
	return err
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func (a *Agent) latestPath() string { return filepath.Join(a.cfg.StateDir, "target.json") }

// prepare gives every service of st its lock directory, so that its
// application can lock before the first update arrives, and lets the driver
// prepare the units (the systemd driver writes the drop-in that shows a unit
// its lock directory).
func (a *Agent) prepare(st *target.State) {
	var svcs []Service
	for _, app := range sortedKeys(st.Apps) {
		for _, name := range sortedKeys(st.Apps[app].Services) {
			ls := lock.Service{App: app, Service: name}
			dir, err := a.cfg.Layout.EnsureServiceDir(ls)
			if err != nil {
				a.logf("lock directory of %s: %v", ls, err)
				continue
			}
			svcs = append(svcs, Service{App: app, Name: name, Spec: st.Apps[app].Services[name], LockDir: dir})
		}
	}
	if p, ok := a.cfg.Driver.(Preparer); ok && len(svcs) > 0 {
		if err := p.Prepare(context.WithoutCancel(a.ctx), svcs); err != nil {
			a.logf("prepare services: %v", err)
		}
	}
}

// cancelPending drops a pending update that is not being applied.
func (a *Agent) cancelPending(by, why string) {
	p := a.st.pending
	if a.st.cancelDownload != nil {
		a.st.cancelDownload()
	}
	a.journal(func(tx *store.Tx) error {
		if err := tx.DeletePending(); err != nil {
			return err
		}
		if err := tx.DeleteApply(); err != nil { // a cancelled half-done apply was rolled back
			return err
		}
		for _, pl := range a.st.plan {
			ap := a.st.apps[pl.Svc.App]
			ap.Target = ap.Current
			a.st.apps[pl.Svc.App] = ap
			if err := tx.PutApp(ap); err != nil {
				return err
			}
		}
		_, err := tx.Log(store.Event{Kind: "cancelled", By: by, Message: "update " + short(p.ID) + " cancelled: " + why})
		return err
	})
	a.setPending(nil, nil)
}

// applyConfig writes the target's configuration when it changed: the
// EnvironmentFile first (atomically), then the hook, then the journal. A
// changed value marked "reboot" makes a reboot pending.
func (a *Agent) applyConfig(st *target.State, by string) error {
	want := map[string]string{}
	for k, v := range st.Config {
		want[k] = v.Value
	}
	var have map[string]string
	if err := a.j.View(func(tx *store.Tx) error {
		var err error
		have, err = tx.Config()
		return err
	}); err != nil {
		return fmt.Errorf("read applied config: %w", err)
	}
	if maps.Equal(want, have) {
		return nil
	}
	var changed []string
	reboot := false
	for k, v := range want {
		if old, ok := have[k]; !ok || old != v {
			changed = append(changed, k)
			reboot = reboot || st.Config[k].Reboot
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			changed = append(changed, k)
		}
	}
	sort.Strings(changed)
	path := filepath.Join(a.cfg.StateDir, "config.env")
	if err := writeFileAtomic(path, envFile(want), 0o644); err != nil {
		a.event("failed", by, "write %s: %v", path, err)
		return fmt.Errorf("write config: %w", err)
	}
	if a.cfg.ConfigHook != "" {
		if err := runHook(a.ctx, a.cfg.ConfigHook, path, changed); err != nil {
			a.event("failed", by, "config hook: %v", err)
			a.logf("config hook: %v", err)
		}
	}
	err := a.journal(func(tx *store.Tx) error {
		if err := tx.PutConfig(want); err != nil {
			return err
		}
		msg := "configuration changed: " + strings.Join(changed, ", ")
		if reboot {
			r := &store.Reboot{Kind: "reboot", BootID: a.bootID, Reason: "configuration " + strings.Join(changed, ", ") + " needs a reboot", Requested: time.Now(), By: by}
			if err := tx.SetPendingReboot(r); err != nil {
				return err
			}
			a.st.reboot = r
			msg += " (reboot pending)"
		}
		_, err := tx.Log(store.Event{Kind: "config", By: by, Message: msg})
		return err
	})
	if err != nil {
		return fmt.Errorf("journal config: %w", err)
	}
	for _, k := range changed {
		if k == "LATCH_OVERRIDE_LOCK" {
			on := want[k] == "1" || strings.EqualFold(want[k], "true")
			if on != a.st.override.Enabled {
				a.setOverride(on, "target-state config LATCH_OVERRIDE_LOCK")
			}
		}
	}
	return nil
}

// envFile renders values as a systemd EnvironmentFile.
func envFile(m map[string]string) []byte {
	var b bytes.Buffer
	b.WriteString("# Written by latch from the target state; do not edit.\n")
	for _, k := range sortedKeys(m) {
		v := m[k]
		v = strings.ReplaceAll(v, `\`, `\\`)
		v = strings.ReplaceAll(v, `"`, `\"`)
		v = strings.ReplaceAll(v, `$`, `\$`)
		v = strings.ReplaceAll(v, "`", "\\`")
		fmt.Fprintf(&b, "%s=\"%s\"\n", k, v)
	}
	return b.Bytes()
}

// runHook runs the --config-hook command with the config file's path as $1
// and LATCH_CONFIG_CHANGED naming the changed keys.
func runHook(ctx context.Context, hook, path string, changed []string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", hook, "latch-config-hook", path)
	cmd.Env = append(os.Environ(), "LATCH_CONFIG_FILE="+path, "LATCH_CONFIG_CHANGED="+strings.Join(changed, " "))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%q: %w: %s", hook, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// writeFileAtomic writes data to path through a temporary file, fsync and
// rename, so a crash leaves the old or the new content, never a mix.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
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
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
