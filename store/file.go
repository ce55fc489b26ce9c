package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The journal path is only ever opened as a regular file. Whatever else is
// found there (a named pipe, a socket, a directory, a device, a symbolic
// link, dangling or not) is reported as ErrCorrupt without being opened,
// so that OpenOrReset moves it aside: opening a named pipe for reading
// blocks until a writer comes, and a symbolic link is not latch's to
// follow as root.

// fileKind names the kind of file m describes, for errors.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	}
	return "a special file"
}

// notRegular is the error for a journal path that holds fi, which is not
// a regular file.
func notRegular(path string, fi os.FileInfo) error {
	what := fileKind(fi.Mode())
	if fi.Mode()&os.ModeSymlink != 0 {
		if target, err := os.Readlink(path); err == nil {
			what += " to " + target + ", which latch does not follow"
		}
	}
	return fmt.Errorf("%w: %s is %s, not a regular file (move it away; the agent moves it aside by itself)", ErrCorrupt, path, what)
}

// checkKind lstats path: it returns exists=false when nothing is there,
// and an error wrapping ErrCorrupt when something other than a regular
// file is.
func checkKind(path string) (exists bool, err error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() {
		return true, notRegular(path, fi)
	}
	return true, nil
}

// openRegular opens path like os.OpenFile, but never follows a symbolic
// link at path, never blocks on a named pipe, never makes a terminal the
// controlling one, and refuses anything but a regular file with an error
// wrapping ErrCorrupt. It guards the moment between checkKind and the open.
func openRegular(path string, flag int, mode os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, flag|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, mode)
	if err != nil {
		// ELOOP: a symbolic link; ENXIO: a socket; EISDIR: a directory.
		if fi, lerr := os.Lstat(path); lerr == nil && !fi.Mode().IsRegular() {
			return nil, notRegular(path, fi)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, notRegular(path, fi)
	}
	// O_NONBLOCK was only for the open: reads and writes of the journal
	// block as usual.
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.SetNonblock(int(fd), false) })
	}
	return f, nil
}

// checkAndRename renames from to to unless something is at to.
func checkAndRename(from, to string) error {
	if _, err := os.Lstat(to); err == nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: syscall.EEXIST}
	}
	return os.Rename(from, to)
}

// moveAside renames whatever is at path (a file, a directory, a link: the
// thing itself, never what it points to) to path+infix+<UTC time>, or that
// with .1, .2, ... when taken, syncs the directory and returns the new
// name. It deletes nothing.
func moveAside(path, infix string) (string, error) {
	base := path + infix + time.Now().UTC().Format("20060102T150405Z")
	aside := base
	for n := 1; ; n++ {
		err := renameNoReplace(path, aside)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) || n > 1000 {
			return "", fmt.Errorf("move %s aside: %w", path, err)
		}
		aside = fmt.Sprintf("%s.%d", base, n)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return aside, fmt.Errorf("move %s aside to %s: %w", path, aside, err)
	}
	return aside, nil
}
