package target

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// The reasons a target file (or its FILE.sig) is refused whatever the
// moment: they last until the file changes.
var (
	errNotRegular = errors.New("not a regular file")
	errTooLarge   = errors.New("too large")
)

// fileRead is the outcome of one read of a target file and its signature.
type fileRead struct {
	doc *Doc   // nil when the file does not exist or err is set
	err error  // why the file could not be read
	key string // err and a digest of the bytes read with it: the same key is the same failure
}

// readTargetCtx is readTarget that gives up waiting when ctx ends (ok is
// then false): a read that hangs, as on a stuck network or FUSE file system,
// keeps only its own goroutine, which ends with the read.
func readTargetCtx(ctx context.Context, path string) (r fileRead, ok bool) {
	done := make(chan fileRead, 1)
	go func() { done <- readTarget(path) }()
	select {
	case r := <-done:
		return r, true
	case <-ctx.Done():
		return fileRead{}, false
	}
}

// readTarget reads path and path.sig; a missing path gives no doc and no
// error, a missing path.sig a doc without Sig.
func readTarget(path string) fileRead {
	data, err := readRegular(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileRead{}
	}
	if err != nil {
		return fileRead{err: err, key: failureKey(err, data, nil)}
	}
	sig, err := readRegular(path + ".sig")
	if errors.Is(err, fs.ErrNotExist) {
		sig, err = nil, nil
	}
	if err != nil {
		return fileRead{err: err, key: failureKey(err, data, sig)}
	}
	return fileRead{doc: &Doc{Data: data, Sig: sig, Source: "file:" + path}}
}

// failureKey names a failure by its message and the bytes read with it, so
// that the same bad contents read twice are one failure.
func failureKey(err error, data, sig []byte) string {
	d, s := sha256.Sum256(data), sha256.Sum256(sig)
	return fmt.Sprintf("%s\x00%x\x00%x", err, d, s)
}

// waitsForChange says whether err is about what is at the path, so that
// reading again before the file changes would fail the same way.
func waitsForChange(err error) bool {
	return errors.Is(err, errNotRegular) || errors.Is(err, errTooLarge) ||
		errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) ||
		errors.Is(err, unix.ENAMETOOLONG)
}

// readRegular reads the regular file at path (following symbolic links),
// at most MaxSize bytes. Anything else at the path (a FIFO, a socket, a
// directory, a device) is refused by its type without being read, and is
// never waited on: the file is stat'ed first so that nothing else is even
// opened, then opened with O_NONBLOCK and checked again through its
// descriptor, in case it was swapped in between. A file over MaxSize is
// refused after reading MaxSize+1 bytes, which are returned with the error.
func readRegular(path string) ([]byte, error) {
	var st unix.Stat_t
	if err := ignoringEINTR(func() error { return unix.Stat(path, &st) }); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if err := regular(path, st.Mode); err != nil {
		return nil, err
	}
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > MaxSize {
		return data, fmt.Errorf("read %s: %w: it holds more than %d bytes, the most a target document may have", path, errTooLarge, MaxSize)
	}
	return data, nil
}

// openRegular opens path for reading without blocking (a FIFO with no
// writer would block an ordinary open for ever) and without making it a
// controlling terminal, and refuses the descriptor unless it is a regular
// file.
func openRegular(path string) (*os.File, error) {
	var fd int
	err := ignoringEINTR(func() error {
		var err error
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		return err
	})
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := ignoringEINTR(func() error { return unix.Fstat(fd, &st) }); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if err := regular(path, st.Mode); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// O_NONBLOCK does not change how a regular file reads.
	return os.NewFile(uintptr(fd), path), nil
}

// regular refuses a mode that is not a regular file's, naming what it is.
func regular(path string, mode uint32) error {
	var kind string
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return nil
	case unix.S_IFDIR:
		kind = "a directory"
	case unix.S_IFIFO:
		kind = "a named pipe (FIFO)"
	case unix.S_IFSOCK:
		kind = "a socket"
	case unix.S_IFCHR:
		kind = "a character device"
	case unix.S_IFBLK:
		kind = "a block device"
	default:
		kind = fmt.Sprintf("of file type %#o", mode&unix.S_IFMT)
	}
	return fmt.Errorf("read %s: %w: it is %s; replace it with a regular file", path, errNotRegular, kind)
}

// ignoringEINTR calls fn again while it fails with EINTR.
func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
