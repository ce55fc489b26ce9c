package systemd

import "errors"

// Sentinel errors of the package; test with errors.Is.
var (
	// ErrNotSystemd is returned by Connect when the machine was not booted with systemd or has
	// no system bus to reach it.
	ErrNotSystemd = errors.New("not running under systemd (no /run/systemd/system or no system bus)")
	// ErrBadUnit is returned for a unit name that systemd would not accept or that latch refuses
	// to manage (empty, too long, a '/', a NUL, or no known unit suffix).
	ErrBadUnit = errors.New("invalid unit name")
	// ErrJobFailed is returned when a unit job ends with a result other than "done".
	ErrJobFailed = errors.New("unit job did not complete")
	// ErrUnhealthy is returned by Health when a unit is not active or restarted since the
	// reference point.
	ErrUnhealthy = errors.New("unit is not healthy")
	// ErrBadLockDir is returned by WriteDropIn for a lock directory that cannot be written into a
	// unit file safely (relative, not clean, or holding whitespace, quotes, backslash or ':').
	ErrBadLockDir = errors.New("invalid lock directory for a drop-in")
)
