package systemd

import (
	"context"
	"fmt"
	"os"
	"testing"
)

// envHelper makes the test binary act as a service instead of running tests: the nspawn test
// starts it from unit files inside the container. Nothing happens unless it is set.
const envHelper = "LATCH_SYSTEMD_HELPER"

// stallFile, once it exists, makes the watchdog helper's alive() answer false.
const stallFile = "/run/latch-t-stall"

func TestMain(m *testing.M) {
	switch os.Getenv(envHelper) {
	case "":
		os.Exit(m.Run())
	case "watchdog":
		os.Exit(helperWatchdog())
	default:
		fmt.Fprintf(os.Stderr, "%s: unknown helper %q\n", envHelper, os.Getenv(envHelper))
		os.Exit(2)
	}
}

// helperWatchdog is a Type=notify service: ready at once, watchdog pings while stallFile is
// absent. It removes stallFile when it starts, so the instance systemd restarts is healthy.
func helperWatchdog() int {
	_ = os.Remove(stallFile)
	n := NewNotifier()
	interval, ok := WatchdogInterval()
	if !n.Enabled() || !ok {
		fmt.Fprintln(os.Stderr, "watchdog helper: not under systemd with a watchdog")
		return 1
	}
	if err := n.Status("watchdog helper: alive"); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	if err := n.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("watchdog helper: ready, pinging every %v while %s is absent\n", interval, stallFile)
	n.RunWatchdog(context.Background(), interval, func() bool {
		_, err := os.Stat(stallFile)
		return err != nil
	})
	return 0
}
