// Package store is latch's journal: one bbolt file, <state-dir>/journal.db,
// that keeps everything the agent must not lose across crashes, power cuts
// and reboots. Nothing else in latch touches bbolt; callers see typed
// records only (apps, the pending update, the apply in progress, holds, the
// override, a pending reboot, the configuration last applied, and a bounded
// event log).
//
// # Transactions
//
// Every read and write goes through Journal.View or Journal.Update. One
// Update is one bbolt commit: all of its writes become durable together,
// fsynced before Update returns, or none of them does. Records that must
// agree (an apply step and the event that tells of it, a pending update and
// its state) are therefore written in the same Update. The function given
// to View or Update must not call View, Update, Check or Restore of the same
// Journal: a nested transaction can wait for ever (on bbolt's locks, or on a
// Restore that waits for the outer one).
//
// # Opening
//
// Open takes bbolt's exclusive file lock (flock) and waits for it at most
// Options.Timeout: a second agent on the same state directory, or a second
// Open in the same process, gets ErrInUse, never a hang. Open then migrates
// an older schema (one transaction: all steps or none), refuses a newer one
// with ErrSchema without writing to the file, and reads and decodes every
// record and runs bbolt's consistency check, so that a damaged file is found
// at start-up, as ErrCorrupt, and not half-way through an apply. The agent
// calls OpenOrReset, which moves such a file aside as
// journal.db.corrupt-<UTC time> and starts a fresh one.
//
// The journal path is looked at with lstat before anything opens it, and
// only a regular file is opened, with O_NOFOLLOW and O_NONBLOCK: a named
// pipe, a socket, a directory, a device or a symbolic link (dangling or
// not) at the path is ErrCorrupt naming its kind. It is never read, never
// waited on, and a link is never followed: OpenOrReset renames the thing
// itself aside (a directory with all it holds; a link, not what it points
// to) and deletes nothing.
//
// # Losing the file
//
// The journal file can be deleted or replaced while the agent runs (an
// operator cleaning up, a script that rewrites the state directory). The
// open Journal goes on working on the file it has open, so nothing fails,
// but everything it holds would be gone at the next start. Journal.Check
// tells (one fstat of the open file, one lstat of the path): ErrGone when
// the path holds nothing, another file, or anything else, or the open file
// has no link left. The agent calls it now and then, and at ErrGone calls
// Journal.Restore, which promises:
//
//   - a consistent copy: one read transaction of the open journal, read
//     through the file bbolt has open, written to a new file in the same
//     directory (created when it is gone too), fsynced, renamed to the path
//     without replacing anything, and the directory fsynced;
//   - nothing deleted: whatever was put at the path meanwhile (a file, a
//     directory, a link) is first renamed aside as <path>.replaced-<UTC
//     time>, the thing itself and not what a link points to;
//   - one switch: the Journal then opens the file at the path, checks it
//     like Open, and closes the old one; every later commit lands in the
//     file at the path. Views and Updates that run meanwhile wait for the
//     switch (a copy of a small journal takes milliseconds) and are never
//     lost: each lands in the old file before the copy or in the new one;
//   - a trace: an event of kind "journal" in the restored journal says what
//     was found and where it was moved;
//   - when it fails, the Journal goes on with the file it has open and the
//     error says what failed; Check still reports ErrGone, so Restore can
//     be tried again.
//
// Restore does nothing when Check reports no error. A crash during Restore
// can leave a <path>.restore-* file behind; nothing reads or removes it.
//
// # Caveats
//
// Durability is bbolt's default: a commit writes its pages, fsyncs the
// file, then writes and fsyncs the meta page that makes it visible. After a
// crash or a power cut the journal is exactly the state of the last Update
// that returned nil (or, if the power failed during the very last commit,
// of the one before it: a commit that had not returned may or may not be
// there, but never in part). What each record promises after a crash:
//
//   - App: the current release is the one recorded by the last committed
//     Update; the agent records it after the service is started and healthy,
//     so a crash between the two re-runs the health check, not the install.
//   - Update: the pending update, its target document and its files survive
//     whole. File progress (Done, Complete) is what was committed: a download
//     that ran further than its last SetFileProgress resumes from the
//     committed offset; the staged bytes past it are re-verified or fetched
//     again. Attempts counts apply attempts started and committed, so a crash
//     loop is bounded.
//   - Apply: the step recorded before a side effect is there after a crash;
//     a side effect is never recorded as done unless its Update returned.
//     The agent must journal a step before it acts, and resume or roll back
//     from the last recorded phase. The lock references (path, device,
//     inode) let it adopt or remove exactly its own lock entries.
//   - Hold, Override, Reboot, Config: the last committed value.
//   - Event: the log keeps the newest Options.MaxEvents events; sequence
//     numbers only grow (they survive trimming), so a reader can tell that
//     events were dropped.
//
// What a power cut can lose: the last Update if it had not returned. What it
// cannot do: leave a record half-written, or mix records of two commits.
// bbolt relies on the disk honouring fsync; storage that lies about it (some
// SD cards and USB sticks) can still damage the file, which Open then
// reports as ErrCorrupt. A journal file truncated to zero bytes is treated
// as a new, empty journal.
//
// The file stays small: free pages are reused, the event log is bounded, and
// bbolt maps the file's size (rounded up, at least 32 KiB) rather than a
// large fixed area, which matters on 32-bit boards. Only a garbled file makes
// bbolt panic or fault while reading it; Open catches that in its own check
// and reports ErrCorrupt, but a page damaged while the agent runs can still
// crash it (systemd restarts it and Open then finds the damage). Some damage
// bbolt cannot survive at all, even inside a recover: an overflow count that
// makes its check loop over billions of pages, a freelist count that makes it
// allocate without bound, a page that refers back to its ancestor. Before
// bbolt maps the file, Open therefore reads every page bbolt would reach
// (from the file, with a work list, each page once) and refuses, as
// ErrCorrupt, a page out of bounds, reached twice, of the wrong type, or
// with elements past its end, and a freelist naming pages that do not
// exist.
package store
