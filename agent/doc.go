// Package agent is latch's update agent: one event loop that owns the agent's
// state and turns target states into running releases, never touching a
// service whose update lock is held unless an operator forces it.
//
// Data flows one way: a target document (file, URL or API push) is verified
// and parsed, journalled as the pending update, downloaded (locks do not
// matter), then applied once the agent holds the locks of every service it
// touches, all or nothing: stop, install, start, health check, and on failure
// restore the previous files. Every step is journalled before and after its
// side effect, so a crash or power cut at any point resumes or rolls back at
// the next start, with the agent's locks re-taken before anything else and
// before systemd is told that the agent is ready.
//
// Only the event loop (Agent.Run) changes the agent's state. The request
// methods (Hold, SetOverride, Update, Reboot, ...) are safe from any goroutine:
// they hand a closure to the loop and wait for its answer. Workers (a download,
// an apply) run beside the loop and report back to it through channels.
//
// # Failpoints
//
// For crash tests, LATCH_FAILPOINT=<step> makes the agent SIGKILL itself right
// after the journal commit of that step (see failpoint.go for the names), and
// LATCH_TEST_STALL=1 makes SIGUSR2 stall the event loop forever, so that the
// systemd watchdog can be shown to restart it. Both are inert unless set.
package agent
