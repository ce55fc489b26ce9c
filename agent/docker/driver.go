package docker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"latch/agent/internal/names"
)

// The labels latch puts on every container it creates.
const (
	LabelApp     = LabelPrefix + "app"
	LabelService = LabelPrefix + "service"
	LabelRelease = LabelPrefix + "release"
	// LabelRestart keeps the spec's restart policy while the container is
	// stopped for rollback with the policy "no".
	LabelRestart = LabelPrefix + "restart"
	// LabelConfig is a digest of the create request, so that a container
	// left by a crash is reused only when it is what Create would make.
	LabelConfig = LabelPrefix + "config"
)

// Where each container finds its lock (balena's names).
const (
	LockMount   = "/tmp/balena"
	LegacyMount = "/tmp/resin"
	LockPathEnv = LockMount + "/updates.lock"
)

const (
	healthPoll = 100 * time.Millisecond
	// createRetries bounds the looks again after a create that found its
	// name taken by a container being made.
	createRetries = 8
	logTailLines  = 10
	logTailBytes  = 2048
)

// Service names one container service of one release.
type Service struct {
	App, Service, Release string
	Spec                  Spec
	// Image is the engine's reference to create the container from: the
	// ID (sha256:<config digest>) or a name LoadImage reported. Empty:
	// Spec.Image, which the engine knows only when it pulled the image
	// itself.
	Image string
	// LockDir is the host path of the service's lock directory; it must
	// exist (mode 1777), it is bind-mounted at /tmp/balena and /tmp/resin.
	LockDir string
}

// Found is a container that latch labelled, as Find reports it.
type Found struct {
	ID, Name              string
	App, Service, Release string
	State                 string // created, running, exited, ...
}

// Driver runs container services on one engine.
type Driver struct {
	Client *Client
	// Logf, if set, receives one line for each change the driver makes.
	Logf func(format string, args ...any)
}

// New returns a driver for the engine at host (see NewClient).
func New(host string) (*Driver, error) {
	c, err := NewClient(host)
	if err != nil {
		return nil, err
	}
	return &Driver{Client: c}, nil
}

func (d *Driver) logf(format string, args ...any) {
	if d.Logf != nil {
		d.Logf(format, args...)
	}
}

// ContainerName returns the name of a service's container:
// latch_<app>_<service>_<release-short>, with '.' and '_' of the app and
// the service escaped ("..", "._") so that two services never share a name
// (see agent/internal/names). The short release is the release itself when
// it is at most 24 characters of [A-Za-z0-9_.-], else its first 12 such
// characters and 8 hex digits of its sha256. The labels stay the truth: a
// container of an older name is found by them.
func ContainerName(app, service, release string) (string, error) {
	switch {
	case !isName(app):
		return "", fmt.Errorf("container name: %w: app %q must be letters, digits, _ . - (not first)", ErrInvalid, app)
	case !isName(service):
		return "", fmt.Errorf("container name: %w: service %q must be letters, digits, _ . - (not first)", ErrInvalid, service)
	case release == "":
		return "", fmt.Errorf("container name: %w: empty release of %s/%s", ErrInvalid, app, service)
	}
	return names.Container(app, service, shortRelease(release)), nil
}

func shortRelease(r string) string {
	if len(r) <= 24 && isName(r) {
		return r
	}
	var b strings.Builder
	for _, c := range r {
		if b.Len() == 12 {
			break
		}
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_' {
			b.WriteRune(c)
		}
	}
	sum := sha256.Sum256([]byte(r))
	if b.Len() == 0 {
		return hex.EncodeToString(sum[:])[:8]
	}
	return b.String() + "-" + hex.EncodeToString(sum[:])[:8]
}

// createConfig builds the create request of s; its LabelConfig is the
// digest of everything else.
func (s Service) createConfig() (CreateConfig, error) {
	sp := s.Spec
	if err := sp.check(); err != nil {
		return CreateConfig{}, fmt.Errorf("service %s/%s: %w", s.App, s.Service, err)
	}
	if !filepath.IsAbs(s.LockDir) {
		return CreateConfig{}, fmt.Errorf("service %s/%s: %w: lock dir %q must be an absolute path", s.App, s.Service, ErrInvalid, s.LockDir)
	}
	restart, _ := parseRestart(sp.Restart)
	image := s.Image
	if image == "" {
		image = sp.Image
	}
	stopSignal := sp.StopSignal
	if stopSignal == "" {
		stopSignal = "SIGTERM"
	}
	grace := sp.StopGracePeriod
	if sp.StopGrace == "" && grace == 0 {
		grace = DefaultStopGrace
	}
	graceSecs := int((grace + time.Second - 1) / time.Second)
	cfg := CreateConfig{
		Image:       image,
		Cmd:         sp.Command,
		Entrypoint:  sp.Entrypoint,
		WorkingDir:  sp.WorkingDir,
		User:        sp.User,
		StopSignal:  stopSignal,
		StopTimeout: &graceSecs,
		Labels:      map[string]string{},
		HostConfig: HostConfig{
			NetworkMode: sp.NetworkMode,
			Privileged:  sp.Privileged,
			CapAdd:      sp.CapAdd,
			// Created with "no": Start sets the spec's policy, so that a
			// container never started is not started by the engine.
			RestartPolicy: RestartPolicy{Name: "no"},
			Mounts: []Mount{
				{Type: "bind", Source: s.LockDir, Target: LockMount},
				{Type: "bind", Source: s.LockDir, Target: LegacyMount},
			},
		},
	}
	keys := make([]string, 0, len(sp.Environment))
	for k := range sp.Environment {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cfg.Env = append(cfg.Env, k+"="+sp.Environment[k])
	}
	cfg.Env = append(cfg.Env,
		"BALENA_APP_LOCK_PATH="+LockPathEnv,
		"RESIN_APP_LOCK_PATH="+LockPathEnv,
		"LATCH_APP="+s.App,
		"LATCH_SERVICE="+s.Service,
		"LATCH_RELEASE="+s.Release,
	)
	for _, v := range sp.Volumes {
		src, dst, ro, _ := parseVolume(v)
		b := src + ":" + dst
		if ro {
			b += ":ro"
		}
		cfg.HostConfig.Binds = append(cfg.HostConfig.Binds, b)
	}
	for _, p := range sp.Ports {
		pp, _ := parsePort(p)
		key := pp.container + "/" + pp.proto
		if cfg.ExposedPorts == nil {
			cfg.ExposedPorts = map[string]struct{}{}
			cfg.HostConfig.PortBindings = map[string][]PortBinding{}
		}
		cfg.ExposedPorts[key] = struct{}{}
		if pp.hostPort != "" {
			cfg.HostConfig.PortBindings[key] = append(cfg.HostConfig.PortBindings[key], PortBinding{HostIP: pp.hostIP, HostPort: pp.hostPort})
		}
	}
	for _, dv := range sp.Devices {
		m, _ := parseDevice(dv)
		cfg.HostConfig.Devices = append(cfg.HostConfig.Devices, m)
	}
	for k, v := range sp.Labels {
		cfg.Labels[k] = v
	}
	cfg.Labels[LabelApp] = s.App
	cfg.Labels[LabelService] = s.Service
	cfg.Labels[LabelRelease] = s.Release
	cfg.Labels[LabelRestart] = formatRestart(restart)
	raw, err := json.Marshal(cfg)
	if err != nil {
		return CreateConfig{}, fmt.Errorf("service %s/%s: encode create request: %w", s.App, s.Service, err)
	}
	sum := sha256.Sum256(raw)
	cfg.Labels[LabelConfig] = hex.EncodeToString(sum[:])
	return cfg, nil
}

func formatRestart(p RestartPolicy) string {
	if p.Name == "on-failure" && p.MaximumRetryCount > 0 {
		return "on-failure:" + strconv.Itoa(p.MaximumRetryCount)
	}
	return p.Name
}

// owns reports whether c carries latch's labels of s.
func owns(c Container, s Service) bool {
	l := c.Config.Labels
	return l[LabelApp] == s.App && l[LabelService] == s.Service && l[LabelRelease] == s.Release
}

// lookup finds s's container. It returns found=false when there is none,
// and ErrForeign when the container of that name is not latch's one of s.
func (d *Driver) lookup(ctx context.Context, s Service) (c Container, name string, found bool, err error) {
	name, err = ContainerName(s.App, s.Service, s.Release)
	if err != nil {
		return Container{}, "", false, err
	}
	c, err = d.Client.InspectContainer(ctx, name)
	if isNotFound(err) {
		// Renamed by someone: find it by its labels.
		list, err := d.Client.ListContainers(ctx, LabelApp+"="+s.App, LabelService+"="+s.Service, LabelRelease+"="+s.Release)
		if err != nil {
			return Container{}, name, false, err
		}
		switch len(list) {
		case 0:
			return Container{}, name, false, nil
		case 1:
		default:
			return Container{}, name, false, fmt.Errorf("container %s: %w: %d containers carry the labels of %s/%s release %s under other names; remove all but one",
				name, ErrConflict, len(list), s.App, s.Service, s.Release)
		}
		c, err = d.Client.InspectContainer(ctx, list[0].ID)
		if isNotFound(err) {
			return Container{}, name, false, nil
		}
		if err != nil {
			return Container{}, name, false, err
		}
		if !owns(c, s) {
			return Container{}, name, false, nil
		}
		return c, strings.TrimPrefix(c.Name, "/"), true, nil
	}
	if err != nil {
		return Container{}, name, false, err
	}
	if !owns(c, s) {
		l := c.Config.Labels
		return Container{}, name, false, fmt.Errorf("container %s (%.12s): %w: its labels say app %q, service %q, release %q, not %s/%s release %s; latch leaves it alone: rename or remove it yourself",
			name, c.ID, ErrForeign, l[LabelApp], l[LabelService], l[LabelRelease], s.App, s.Service, s.Release)
	}
	return c, name, true, nil
}

// Create makes the container of s and returns its ID, without starting it;
// it never stops anything, so it may run before the locks are taken.
// When latch's container of that name and release exists already with the
// same configuration (a step repeated after a crash) it is reused; with
// another configuration it is removed and made again when it is stopped,
// and ErrConflict when it runs. A container
// of that name without latch's labels is ErrForeign, and is not touched.
// The lock directory must exist and be a directory (not a symlink); the
// image must be in the engine.
func (d *Driver) Create(ctx context.Context, s Service) (string, error) {
	cfg, err := s.createConfig()
	if err != nil {
		return "", err
	}
	name, err := ContainerName(s.App, s.Service, s.Release)
	if err != nil {
		return "", err
	}
	if fi, err := os.Lstat(s.LockDir); err != nil {
		return "", fmt.Errorf("create container %s: lock dir: %w (the agent creates it before the container)", name, err)
	} else if !fi.IsDir() {
		return "", fmt.Errorf("create container %s: %w: lock dir %s is not a directory (a symlink or a file)", name, ErrInvalid, s.LockDir)
	}
	if real, err := filepath.EvalSymlinks(s.LockDir); err != nil {
		return "", fmt.Errorf("create container %s: lock dir: %w", name, err)
	} else if real != filepath.Clean(s.LockDir) {
		return "", fmt.Errorf("create container %s: %w: lock dir %s resolves through a symlink to %s; give the real path", name, ErrInvalid, s.LockDir, real)
	}
	for attempt := 0; ; attempt++ {
		c, _, found, err := d.lookup(ctx, s)
		if err != nil {
			return "", fmt.Errorf("create container: %w", err)
		}
		if found {
			if c.Config.Labels[LabelConfig] == cfg.Labels[LabelConfig] {
				return c.ID, nil
			}
			if c.State.Running || c.State.Restarting || c.State.Paused {
				return "", fmt.Errorf("create container %s: %w: it runs with another configuration of release %s; Stop it (under the service's lock) first", name, ErrConflict, s.Release)
			}
			d.logf("container %s has another configuration of release %s: replacing it", name, s.Release)
			if err := d.removeOwned(ctx, c, name); err != nil {
				return "", fmt.Errorf("replace container %s: %w", name, err)
			}
		}
		if _, err := d.Client.InspectImage(ctx, cfg.Image); isNotFound(err) {
			return "", fmt.Errorf("create container %s: image %s is not in the engine at %s: load it first: %w", name, cfg.Image, d.Client.Host(), err)
		} else if err != nil {
			return "", fmt.Errorf("create container %s: %w", name, err)
		}
		id, err := d.Client.CreateContainer(ctx, name, cfg)
		if errors.Is(err, ErrConflict) && attempt < createRetries {
			// Made meanwhile: look again and reuse it if it is ours. The
			// engine reserves the name before the container can be
			// inspected, so the next look may come too early: wait a bit.
			select {
			case <-ctx.Done():
				return "", fmt.Errorf("create container %s: %w", name, ctx.Err())
			case <-time.After(time.Duration(attempt+1) * 50 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return "", err
		}
		d.logf("created container %s (%.12s) for %s/%s release %s", name, id, s.App, s.Service, s.Release)
		return id, nil
	}
}

// Start starts the container of s (made by Create) with the restart policy
// of its spec. Starting a running container is no error; starting one while
// a container of another release of the service runs is ErrConflict.
func (d *Driver) Start(ctx context.Context, s Service) error {
	c, name, found, err := d.lookup(ctx, s)
	if err != nil {
		return fmt.Errorf("start container: %w", err)
	}
	if !found {
		return fmt.Errorf("start container %s: %w: create it first", name, ErrNotFound)
	}
	policy, err := parseRestart(c.Config.Labels[LabelRestart])
	if err != nil {
		return fmt.Errorf("start container %s: label %s: %w", name, LabelRestart, err)
	}
	if c.HostConfig.RestartPolicy != policy {
		if err := d.Client.UpdateRestartPolicy(ctx, c.ID, policy); err != nil {
			return err
		}
	}
	if c.State.Running && !c.State.Restarting {
		return nil
	}
	// Two releases of a service never run at once: the old one is
	// stopped (apply) or the new one removed (rollback) first.
	others, err := d.Client.ListContainers(ctx, LabelApp+"="+s.App, LabelService+"="+s.Service)
	if err != nil {
		return fmt.Errorf("start container %s: %w", name, err)
	}
	for _, o := range others {
		if o.ID != c.ID && (o.State == "running" || o.State == "restarting" || o.State == "paused") {
			return fmt.Errorf("start container %s: %w: %s of release %s still runs; stop it first", name, ErrConflict, o.Name(), o.Labels[LabelRelease])
		}
	}
	if err := d.Client.StartContainer(ctx, c.ID); err != nil {
		return err
	}
	d.logf("started container %s", name)
	return nil
}

// Stop stops the container of s and keeps it (for rollback): its restart
// policy becomes "no", so that neither the engine nor a reboot starts it
// again, then it gets its stop signal and, after its grace period,
// SIGKILL. A stopped or missing container is no error.
func (d *Driver) Stop(ctx context.Context, s Service) error {
	c, name, found, err := d.lookup(ctx, s)
	if err != nil {
		return fmt.Errorf("stop container: %w", err)
	}
	if !found {
		return nil
	}
	return d.stopOwned(ctx, c, name)
}

// stopOwned stops c, which the caller checked is latch's.
func (d *Driver) stopOwned(ctx context.Context, c Container, name string) error {
	if c.HostConfig.RestartPolicy.Name != "no" && c.HostConfig.RestartPolicy.Name != "" {
		if err := d.Client.UpdateRestartPolicy(ctx, c.ID, RestartPolicy{Name: "no"}); err != nil {
			return err
		}
	}
	if !c.State.Running && !c.State.Restarting {
		return nil
	}
	sig := c.Config.StopSignal
	if sig == "" {
		sig = "SIGTERM"
	}
	grace := DefaultStopGrace
	if c.Config.StopTimeout != nil && *c.Config.StopTimeout >= 0 {
		grace = time.Duration(*c.Config.StopTimeout) * time.Second
	}
	if sig == "SIGTERM" {
		if err := d.Client.StopContainer(ctx, c.ID, grace); err != nil && !isNotFound(err) {
			return err
		}
		d.logf("stopped container %s (SIGTERM, SIGKILL after %s)", name, grace)
		return nil
	}
	// Another signal is sent by latch itself, once: engines whose stop
	// always sends SIGTERM still deliver it, and the service never gets
	// it twice (the engine's stop would send it again).
	if err := d.Client.KillContainer(ctx, c.ID, sig); err != nil {
		if isNotFound(err) || errors.Is(err, ErrConflict) || isNotRunning(err) {
			return nil
		}
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, grace)
	_, err := d.Client.WaitContainer(wctx, c.ID, "not-running")
	cancel()
	if err == nil {
		d.logf("stopped container %s (%s)", name, sig)
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stop container %s: %w", name, ctx.Err())
	}
	if isNotFound(err) {
		return nil
	}
	// The grace is over (or the wait failed): SIGKILL, and wait for it.
	if err := d.Client.KillContainer(ctx, c.ID, "SIGKILL"); err != nil && !isNotFound(err) && !errors.Is(err, ErrConflict) && !isNotRunning(err) {
		return err
	}
	if _, err := d.Client.WaitContainer(ctx, c.ID, "not-running"); err != nil && !isNotFound(err) {
		return err
	}
	d.logf("stopped container %s (%s, SIGKILL after %s)", name, sig, grace)
	return nil
}

// isNotRunning reports the engine's refusal to signal a stopped container.
func isNotRunning(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && strings.Contains(ae.Message, "is not running")
}

// Remove stops and removes the container of s (a service the target
// drops, or the new container of a rollback); its volumes stay. A missing
// container is no error.
func (d *Driver) Remove(ctx context.Context, s Service) error {
	c, name, found, err := d.lookup(ctx, s)
	if err != nil {
		return fmt.Errorf("remove container: %w", err)
	}
	if !found {
		return nil
	}
	return d.removeOwned(ctx, c, name)
}

func (d *Driver) removeOwned(ctx context.Context, c Container, name string) error {
	if err := d.stopOwned(ctx, c, name); err != nil {
		return err
	}
	if err := d.Client.RemoveContainer(ctx, c.ID, true); err != nil && !isNotFound(err) {
		return err
	}
	d.logf("removed container %s", name)
	return nil
}

// Rollback undoes an apply of a service: it removes the new release's
// container and starts the old one again (old nil: the service is new, there
// is nothing to start). Each part can be repeated.
func (d *Driver) Rollback(ctx context.Context, old *Service, new Service) error {
	if old != nil && (old.App != new.App || old.Service != new.Service || old.Release == new.Release) {
		return fmt.Errorf("roll back %s/%s: %w: the old container must be another release of the same service, got %s/%s release %s",
			new.App, new.Service, ErrInvalid, old.App, old.Service, old.Release)
	}
	if err := d.Remove(ctx, new); err != nil {
		return fmt.Errorf("roll back %s/%s to the previous release: %w", new.App, new.Service, err)
	}
	if old == nil {
		return nil
	}
	if err := d.Start(ctx, *old); err != nil {
		return fmt.Errorf("roll back %s/%s to release %s: %w", old.App, old.Service, old.Release, err)
	}
	return nil
}

// Health checks the container of s after Start: it must keep running (no
// exit, no restart) for wait, and, when it has a HEALTHCHECK, report
// healthy. It returns an error matching ErrUnhealthy with the exit code and
// the last lines of its output when the container exits or restarts, or
// when its health check reports unhealthy; while the check still says
// "starting" after wait, it keeps waiting, until the check's own budget
// (start period plus retries of interval and timeout) is spent or ctx ends.
func (d *Driver) Health(ctx context.Context, s Service, wait time.Duration) error {
	c, name, found, err := d.lookup(ctx, s)
	if err != nil {
		return fmt.Errorf("health of container: %w", err)
	}
	if !found {
		return fmt.Errorf("health of container %s: %w: it does not exist", name, ErrUnhealthy)
	}
	hc := c.Config.Healthcheck
	if hc == nil {
		if img, err := d.Client.InspectImage(ctx, c.Image); err == nil {
			hc = img.Config.Healthcheck
		}
	}
	checked := hc.Enabled()
	begin := time.Now()
	deadline := begin.Add(wait)
	giveUp := deadline
	if checked {
		giveUp = deadline.Add(healthBudget(hc))
	}
	restarts := c.RestartCount
	tick := time.NewTicker(healthPoll)
	defer tick.Stop()
	for {
		st := c.State
		switch {
		case c.RestartCount > restarts:
			return d.unhealthy(ctx, c, name, fmt.Sprintf("restarted %d times (last exit code %d)", c.RestartCount-restarts, st.ExitCode))
		case st.Restarting:
			return d.unhealthy(ctx, c, name, fmt.Sprintf("exited (exit code %d) and is restarting", st.ExitCode))
		case !st.Running:
			why := fmt.Sprintf("is %s, exit code %d", st.Status, st.ExitCode)
			if st.OOMKilled {
				why += " (killed: out of memory)"
			}
			if st.Error != "" {
				why += ": " + st.Error
			}
			return d.unhealthy(ctx, c, name, why)
		case checked && st.Health != nil && st.Health.Status == "unhealthy":
			why := "health check reports unhealthy"
			if n := len(st.Health.Log); n > 0 {
				why += fmt.Sprintf(" (check exit code %d: %s)", st.Health.Log[n-1].ExitCode, tail(st.Health.Log[n-1].Output))
			}
			return d.unhealthy(ctx, c, name, why)
		}
		now := time.Now()
		healthy := !checked || st.Health != nil && st.Health.Status == "healthy"
		if !now.Before(deadline) && healthy {
			return nil
		}
		if !now.Before(giveUp) {
			return d.unhealthy(ctx, c, name, fmt.Sprintf("health check still %q after %s", healthStatus(st), now.Sub(begin).Round(time.Millisecond)))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("health of container %s: %w", name, ctx.Err())
		case <-tick.C:
		}
		c, err = d.Client.InspectContainer(ctx, c.ID)
		if isNotFound(err) {
			return fmt.Errorf("health of container %s: %w: it was removed", name, ErrUnhealthy)
		}
		if err != nil {
			return fmt.Errorf("health of container %s: %w", name, err)
		}
	}
}

func healthStatus(st ContainerState) string {
	if st.Health == nil {
		return "none"
	}
	return st.Health.Status
}

// healthBudget is how long a health check may take to decide, with the
// engine's defaults (interval 30s, timeout 30s, 3 retries).
func healthBudget(h *Healthcheck) time.Duration {
	interval, timeout, retries := h.Interval, h.Timeout, h.Retries
	if interval <= 0 {
		interval = 30 * time.Second
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	if retries <= 0 {
		retries = 3
	}
	return h.StartPeriod + time.Duration(retries+1)*(interval+timeout)
}

func (d *Driver) unhealthy(ctx context.Context, c Container, name, why string) error {
	msg := fmt.Sprintf("container %s %s", name, why)
	if out, err := d.Client.Logs(ctx, c.ID, logTailLines); err == nil && strings.TrimSpace(out) != "" {
		msg += "; last output:\n" + tail(out)
	}
	return fmt.Errorf("%w: %s", ErrUnhealthy, msg)
}

// tail returns the end of out, at most logTailBytes.
func tail(out string) string {
	out = strings.TrimRight(out, "\n")
	if len(out) > logTailBytes {
		out = "..." + out[len(out)-logTailBytes:]
	}
	return out
}

// Find lists the containers latch labelled for app, ordered by service and
// release: what an agent resuming after a crash compares with its journal.
func (d *Driver) Find(ctx context.Context, app string) ([]Found, error) {
	list, err := d.Client.ListContainers(ctx, LabelApp+"="+app)
	if err != nil {
		return nil, fmt.Errorf("find containers of app %s: %w", app, err)
	}
	var out []Found
	for _, c := range list {
		l := c.Labels
		if l[LabelApp] != app || l[LabelService] == "" || l[LabelRelease] == "" {
			continue
		}
		out = append(out, Found{ID: c.ID, Name: c.Name(), App: app, Service: l[LabelService], Release: l[LabelRelease], State: c.State})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Release < out[j].Release
	})
	return out, nil
}
