package systemd

import (
	"context"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier speaks sd_notify to the service manager. Outside systemd (no NOTIFY_SOCKET when it was
// created) every call is a silent no-op returning nil. It is safe for concurrent use.
type Notifier struct {
	enabled bool

	mu     sync.Mutex // guards status and sent
	status string     // the last status line given
	sent   string     // the last status line sent to systemd
}

// NewNotifier returns a Notifier for the NOTIFY_SOCKET of the environment.
func NewNotifier() *Notifier {
	return &Notifier{enabled: os.Getenv("NOTIFY_SOCKET") != ""}
}

// Enabled reports whether the process runs under a service manager that listens for
// notifications.
func (n *Notifier) Enabled() bool { return n.enabled }

// Ready sends READY=1, with the current status line when one was set.
func (n *Notifier) Ready() error {
	if !n.enabled {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	state := daemon.SdNotifyReady
	if n.status != "" {
		state += "\nSTATUS=" + n.status
		n.sent = n.status
	}
	return n.notifyLocked(state)
}

// Status sends STATUS=line, folded onto one line, when it differs from the last one sent.
func (n *Notifier) Status(line string) error {
	if !n.enabled {
		return nil
	}
	line = oneLine(line)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.status = line
	if line == n.sent {
		return nil
	}
	if err := n.notifyLocked("STATUS=" + line); err != nil {
		return err
	}
	n.sent = line
	return nil
}

// Stopping sends STOPPING=1.
func (n *Notifier) Stopping() error {
	if !n.enabled {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.notifyLocked(daemon.SdNotifyStopping)
}

// notifyLocked sends one datagram; the mutex keeps datagrams in call order.
func (n *Notifier) notifyLocked(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		return &notifyError{state: state, err: err}
	}
	return nil
}

type notifyError struct {
	state string
	err   error
}

func (e *notifyError) Error() string {
	return "sd_notify " + strings.ReplaceAll(e.state, "\n", " ") + ": " + e.err.Error()
}
func (e *notifyError) Unwrap() error { return e.err }

// oneLine folds line breaks and other control characters into single spaces and trims the ends:
// a status line is one line, whatever the caller built.
func oneLine(s string) string {
	var b strings.Builder
	space := false
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			space = true
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteRune(r)
	}
	return strings.TrimSpace(b.String())
}

// WatchdogInterval returns how often to ping the watchdog: half of WATCHDOG_USEC, when the
// service manager enabled the watchdog for this process (WATCHDOG_PID is ours or unset).
func WatchdogInterval() (time.Duration, bool) {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0, false
	}
	if d/2 <= 0 {
		return d, true
	}
	return d / 2, true
}

// RunWatchdog sends WATCHDOG=1 every interval, but only when alive reports that the main loop
// made progress; a false answer skips the ping, so a loop that stays stalled gets the process
// killed by systemd. It pings once at start (when alive) and returns when ctx ends. Outside
// systemd or with a non-positive interval it just waits for ctx.
func (n *Notifier) RunWatchdog(ctx context.Context, interval time.Duration, alive func() bool) {
	if !n.enabled || interval <= 0 {
		<-ctx.Done()
		return
	}
	ping := func() {
		if alive() {
			n.mu.Lock()
			_ = n.notifyLocked(daemon.SdNotifyWatchdog) // best effort: a lost ping is a late one
			n.mu.Unlock()
		}
	}
	ping()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			ping()
		}
	}
}
