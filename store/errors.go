package store

import "errors"

// Errors returned by the journal. Callers test them with errors.Is; the
// returned errors wrap them with the operation and the path, bucket or key.
var (
	// ErrInUse means another process (or another Open in this process)
	// holds the journal's file lock: another latch agent is running on the
	// same state directory.
	ErrInUse = errors.New("journal is in use by another latch agent (stop it, or give this one another --state-dir)")

	// ErrCorrupt means bbolt cannot open the file, its structure is
	// inconsistent, or a record does not decode, or the journal path holds
	// something other than a regular file (a named pipe, a socket, a
	// directory, a device, a symbolic link; the error names which).
	// OpenOrReset moves such a journal aside and starts a fresh one.
	ErrCorrupt = errors.New("journal is corrupt")

	// ErrGone means the journal file that the open Journal writes to is no
	// longer at its path: it was deleted, or something else was put in its
	// place. The open Journal still works, but what it commits is lost at
	// the next start. Journal.Restore writes it back.
	ErrGone = errors.New("journal file is gone from its path")

	// ErrNotFound means the record asked for does not exist.
	ErrNotFound = errors.New("not found in journal")

	// ErrSchema means the journal was written by a newer latch (its schema
	// version is higher than SchemaVersion). The file is left untouched.
	ErrSchema = errors.New("journal was written by a newer latch (schema version too high)")

	// ErrInvalid means a record given to a Put method is not valid (an
	// empty name, a name with NUL or '/', an unknown state) and was not
	// written.
	ErrInvalid = errors.New("invalid journal record")
)
