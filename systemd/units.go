package systemd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// DefaultDropInRoot is where runtime drop-ins go: systemd reads it, and it is emptied at boot.
const DefaultDropInRoot = "/run/systemd/system"

// Units controls units of the system's service manager over D-Bus. It is safe for concurrent use.
type Units struct {
	// DropInRoot is the folder that receives <unit>.d/ drop-ins; DefaultDropInRoot unless changed
	// before first use (tests do).
	DropInRoot string

	dial func(ctx context.Context) (*sdbus.Conn, error)

	mu   sync.Mutex  // guards conn
	conn *sdbus.Conn // nil after Close
	dmu  sync.Mutex  // serialises WriteDropIn, so that "changed" and the reload agree
}

// UnitState is what systemd says of a unit. NRestarts and MainPID are zero for units that are not
// services.
type UnitState struct {
	LoadState   string // loaded, not-found, masked, error, ...
	ActiveState string // active, inactive, failed, activating, deactivating, reloading
	SubState    string // running, dead, exited, auto-restart, ...
	Result      string // success, exit-code, signal, watchdog, ... ("" when the unit type has none)
	NRestarts   uint32 // automatic restarts since the unit was last started by a job
	MainPID     uint32
}

// Connect dials systemd on the system bus (directly on systemd's private socket when there is no
// bus daemon and the process is root). It returns ErrNotSystemd when the machine was not booted
// with systemd or no bus answers.
func Connect(ctx context.Context) (*Units, error) {
	if fi, err := os.Stat("/run/systemd/system"); err != nil || !fi.IsDir() {
		return nil, ErrNotSystemd
	}
	u := &Units{DropInRoot: DefaultDropInRoot, dial: dialSystem}
	c, err := u.dial(ctx)
	if err != nil {
		return nil, err
	}
	u.conn = c
	return u, nil
}

func dialSystem(ctx context.Context) (*sdbus.Conn, error) {
	c, err := sdbus.NewSystemConnectionContext(ctx)
	if err == nil {
		return c, nil
	}
	if os.Geteuid() == 0 {
		if c2, err2 := sdbus.NewSystemdConnectionContext(ctx); err2 == nil {
			return c2, nil
		}
	}
	return nil, fmt.Errorf("connect to systemd: %w (%w)", ErrNotSystemd, err)
}

// Close closes the connection. Later calls fail.
func (u *Units) Close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.conn != nil {
		u.conn.Close()
		u.conn = nil
	}
}

var (
	errClosed     = errors.New("systemd connection closed")
	errBusDropped = errors.New("bus connection dropped while waiting for the job")
)

// connection returns a live connection, dialling again when the previous one dropped.
func (u *Units) connection(ctx context.Context) (*sdbus.Conn, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.conn == nil {
		return nil, errClosed
	}
	if u.conn.Connected() {
		return u.conn, nil
	}
	c, err := u.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("reconnect: %w", err)
	}
	u.conn.Close()
	u.conn = c
	return c, nil
}

// call runs f on a live connection, and once more on a fresh one when the bus dropped during
// the call (e.g. systemd re-executed itself). Unit jobs are idempotent, so a retry is safe.
func (u *Units) call(ctx context.Context, f func(c *sdbus.Conn) error) error {
	c, err := u.connection(ctx)
	if err != nil {
		return err
	}
	err = f(c)
	if err == nil || c.Connected() || ctx.Err() != nil {
		return err
	}
	c, err2 := u.connection(ctx)
	if err2 != nil {
		return fmt.Errorf("%w (then %w)", err, err2)
	}
	return f(c)
}

type jobFunc func(c *sdbus.Conn, ctx context.Context, name, mode string, ch chan<- string) (int, error)

// job enqueues a unit job and waits for its result.
func (u *Units) job(ctx context.Context, op string, unit string, mode string, start jobFunc) error {
	if err := ValidUnit(unit); err != nil {
		return fmt.Errorf("%s unit: %w", op, err)
	}
	err := u.call(ctx, func(c *sdbus.Conn) error {
		// Buffered: go-systemd sends the result while holding its job-listener lock, so an
		// unread unbuffered channel would stall every later job of the connection.
		ch := make(chan string, 1)
		if _, err := start(c, ctx, unit, mode, ch); err != nil {
			return err
		}
		// A bus that drops while the job runs never delivers the result: look at the
		// connection now and then, and let call dial again and re-issue the (idempotent) job.
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case res := <-ch:
				if res != "done" {
					return fmt.Errorf("%w: job result %q", ErrJobFailed, res)
				}
				return nil
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
				if !c.Connected() {
					return errBusDropped
				}
			}
		}
	})
	if err != nil {
		return fmt.Errorf("%s unit %s: %w", op, unit, err)
	}
	return nil
}

// Stop stops unit (mode "replace") and waits for the job to finish. A unit
// that systemd does not know (its unit file is gone, as when a release that
// drops a service removes it too) is not running: stopping it succeeds.
func (u *Units) Stop(ctx context.Context, unit string) error {
	err := u.job(ctx, "stop", unit, "replace", (*sdbus.Conn).StopUnitContext)
	if noSuchUnit(err) {
		return nil
	}
	return err
}

// noSuchUnit reports whether err is systemd's answer for a unit it cannot load.
func noSuchUnit(err error) bool {
	const name = "org.freedesktop.systemd1.NoSuchUnit"
	var e dbus.Error
	if errors.As(err, &e) {
		return e.Name == name
	}
	var pe *dbus.Error
	return errors.As(err, &pe) && pe.Name == name
}

// Start starts unit (mode "replace") and waits for the job to finish.
func (u *Units) Start(ctx context.Context, unit string) error {
	return u.job(ctx, "start", unit, "replace", (*sdbus.Conn).StartUnitContext)
}

// Restart restarts unit (mode "replace"), starting it when it was stopped, and waits for the job
// to finish.
func (u *Units) Restart(ctx context.Context, unit string) error {
	return u.job(ctx, "restart", unit, "replace", (*sdbus.Conn).RestartUnitContext)
}

// Reload makes systemd re-read its unit files and drop-ins (daemon-reload).
func (u *Units) Reload(ctx context.Context) error {
	err := u.call(ctx, func(c *sdbus.Conn) error { return c.ReloadContext(ctx) })
	if err != nil {
		return fmt.Errorf("reload systemd: %w", err)
	}
	return nil
}

// ResetFailed clears the failed state and the restart counter of unit.
func (u *Units) ResetFailed(ctx context.Context, unit string) error {
	if err := ValidUnit(unit); err != nil {
		return fmt.Errorf("reset-failed unit: %w", err)
	}
	err := u.call(ctx, func(c *sdbus.Conn) error { return c.ResetFailedUnitContext(ctx, unit) })
	if err != nil {
		return fmt.Errorf("reset-failed unit %s: %w", unit, err)
	}
	return nil
}

// State reads the unit's state.
func (u *Units) State(ctx context.Context, unit string) (UnitState, error) {
	if err := ValidUnit(unit); err != nil {
		return UnitState{}, fmt.Errorf("state of unit: %w", err)
	}
	var s UnitState
	err := u.call(ctx, func(c *sdbus.Conn) error {
		p, err := c.GetUnitPropertiesContext(ctx, unit)
		if err != nil {
			return err
		}
		s = UnitState{}
		s.LoadState, _ = p["LoadState"].(string)
		s.ActiveState, _ = p["ActiveState"].(string)
		s.SubState, _ = p["SubState"].(string)
		tp, err := c.GetUnitTypePropertiesContext(ctx, unit, unitType(unit))
		if err != nil {
			return err
		}
		s.Result, _ = tp["Result"].(string)
		s.NRestarts, _ = tp["NRestarts"].(uint32)
		s.MainPID, _ = tp["MainPID"].(uint32)
		return nil
	})
	if err != nil {
		return UnitState{}, fmt.Errorf("state of unit %s: %w", unit, err)
	}
	return s, nil
}

// Health reports an error wrapping ErrUnhealthy unless unit is active and has not been restarted
// automatically since its restart count was restartsBefore (read with State before the action).
func (u *Units) Health(ctx context.Context, unit string, restartsBefore uint32) error {
	s, err := u.State(ctx, unit)
	if err != nil {
		return err
	}
	if s.LoadState != "loaded" {
		return fmt.Errorf("health of unit %s: %w: load state %s", unit, ErrUnhealthy, s.LoadState)
	}
	if s.ActiveState != "active" {
		return fmt.Errorf("health of unit %s: %w: state %s/%s, result %s", unit, ErrUnhealthy, s.ActiveState, s.SubState, s.Result)
	}
	if s.NRestarts != restartsBefore {
		return fmt.Errorf("health of unit %s: %w: restarted %d times (was %d before)", unit, ErrUnhealthy, s.NRestarts, restartsBefore)
	}
	return nil
}

// Reboot asks systemd to reboot: it enqueues reboot.target with "replace-irreversibly" (what
// systemctl reboot does, without logind) and returns once systemd accepted the job.
func (u *Units) Reboot(ctx context.Context) error {
	return u.special(ctx, "reboot.target")
}

// PowerOff asks systemd to power off, like Reboot.
func (u *Units) PowerOff(ctx context.Context) error {
	return u.special(ctx, "poweroff.target")
}

func (u *Units) special(ctx context.Context, target string) error {
	err := u.call(ctx, func(c *sdbus.Conn) error {
		ch := make(chan string, 1) // never read: buffered so the result never blocks dispatch
		_, err := c.StartUnitContext(ctx, target, "replace-irreversibly", ch)
		return err
	})
	if err != nil {
		return fmt.Errorf("start %s: %w", target, err)
	}
	return nil
}

// unitSuffixes are the unit types latch accepts, with the D-Bus interface of each.
var unitSuffixes = map[string]string{
	".service":   "Service",
	".socket":    "Socket",
	".target":    "Target",
	".timer":     "Timer",
	".mount":     "Mount",
	".automount": "Automount",
	".path":      "Path",
	".swap":      "Swap",
	".slice":     "Slice",
	".scope":     "Scope",
	".device":    "Device",
}

func unitType(unit string) string {
	if i := strings.LastIndexByte(unit, '.'); i >= 0 {
		return unitSuffixes[unit[i:]]
	}
	return ""
}

// ValidUnit checks that unit is a unit name that latch may hand to systemd and use in a drop-in
// path: at most 255 bytes, no '/', no NUL or other control character, no leading '.', and a
// known suffix such as .service or .target.
func ValidUnit(unit string) error {
	i := strings.LastIndexByte(unit, '.')
	switch {
	case unit == "":
		return fmt.Errorf("%w: empty", ErrBadUnit)
	case len(unit) > 255:
		return fmt.Errorf("%w %.40q...: longer than 255 bytes", ErrBadUnit, unit)
	case strings.ContainsRune(unit, '/'):
		return fmt.Errorf("%w %q: contains '/'", ErrBadUnit, unit)
	case strings.IndexFunc(unit, func(r rune) bool { return r < 0x20 || r == 0x7f || r == ' ' }) >= 0:
		return fmt.Errorf("%w %q: contains a space or a control character", ErrBadUnit, unit)
	case unit[0] == '.' || i <= 0:
		return fmt.Errorf("%w %q: no name before the suffix", ErrBadUnit, unit)
	case unitSuffixes[unit[i:]] == "":
		return fmt.Errorf("%w %q: unknown suffix %q (want .service, .target, ...)", ErrBadUnit, unit, unit[i:])
	}
	return nil
}
