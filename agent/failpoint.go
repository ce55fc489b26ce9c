package agent

import (
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
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

// commitFailpoint is N of LATCH_FAILPOINT=commit:N (0: none), and commits
// counts the journal commits so far (a worker and the loop may both commit).
var (
	commitFailpoint = func() int64 {
		n, ok := strings.CutPrefix(failpoint, "commit:")
		if !ok {
			return 0
		}
		v, _ := strconv.ParseInt(n, 10, 64)
		return v
	}()
	commits atomic.Int64
)

// hitCommit kills the process right after its Nth journal commit when
// LATCH_FAILPOINT=commit:N: a test sweeping N kills the agent between any
// two commits, whatever a step's commits are.
func hitCommit() {
	if commitFailpoint > 0 && commits.Add(1) == commitFailpoint {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

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
