package agent

import (
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Failpoint names: each is hit right after the journal commit of the step it
// names. An apply step's failpoint may name a service: "stopping:kiosk/ui".
const (
	FPAccepted   = "accepted"    // pending update journalled
	FPFileStaged = "file-staged" // one file downloaded, verified and journalled
	FPDownloaded = "downloaded"  // every file staged
	FPLocksTaken = "locks-taken" // the apply's locks taken and journalled
	FPFinished   = "finished"    // release recorded as current, locks not yet removed
	FPRolledBack = "rolled-back" // failed apply restored, not yet marked
	// Apply phases double as failpoints: stopping, stopped, installing,
	// installed, starting, started, healthy, restoring, restored.
)

// failpoint is LATCH_FAILPOINT, read once. Empty: every hit is a no-op.
var failpoint = os.Getenv("LATCH_FAILPOINT")

// hit kills the process with SIGKILL if LATCH_FAILPOINT names this step
// (optionally qualified with the service, "phase:app/service").
func hit(step string, svc ...string) {
	if failpoint == "" {
		return
	}
	name, target, qualified := strings.Cut(failpoint, ":")
	if name != step {
		return
	}
	if qualified && (len(svc) == 0 || svc[0] != target) {
		return
	}
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not deliverable late; never continue past the failpoint
}

// stallSignals returns a channel that receives SIGUSR2 when LATCH_TEST_STALL=1,
// else nil (a nil channel never fires in a select).
func stallSignals() <-chan os.Signal {
	if os.Getenv("LATCH_TEST_STALL") != "1" {
		return nil
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR2)
	return ch
}
