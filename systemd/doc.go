// Package systemd is latch's side of systemd: sd_notify readiness, status and watchdog, units
// driven over D-Bus, the runtime drop-ins that give each managed unit its update lock, and reboot
// and power-off through systemd.
//
// Guarantees:
//   - Outside systemd every Notifier call is a silent no-op returning nil, so the agent runs the
//     same way on a board without systemd and in tests.
//   - The watchdog is pinged only while the caller's alive check says the main loop made progress:
//     a stalled loop stops the pings and lets systemd kill and restart the agent.
//   - Every D-Bus call takes a context. A unit job counts as successful only when systemd reports
//     the job result "done"; any other result is an error naming the unit and the result. The
//     job-result channel is buffered, so a caller whose context ends first never blocks go-systemd's
//     signal dispatch (which would stall every later job of the connection).
//   - A dropped bus connection (systemd re-executed, dbus restarted) is re-dialled once per call,
//     transparently.
//   - Drop-ins are written atomically (temporary file, fsync, rename) and systemd is reloaded only
//     when a drop-in's content changed.
//
// This package imports nothing from latch; the agent consumes it through its own small interfaces.
//
// # Caveats
//
// Reboot and PowerOff enqueue the job and return; the caller is expected to be stopped by systemd
// shortly after. They do not go through logind, which a minimal board may not run.
package systemd
