package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// Check reports, with one fstat and one lstat, whether the file that j
// writes to is still the one at j's path. It returns an error wrapping
// ErrGone when the file was deleted, moved away, or replaced by another
// file (or a link, a directory, anything else) at the path: the Journal
// still works, but the next start would not see what it holds. Restore
// writes it back.
func (j *Journal) Check() error {
	j.mu.RLock()
	defer j.mu.RUnlock()
	_, err := j.checkLocked()
	return err
}

// checkLocked is Check; it also returns what replaced the file (nil when
// nothing is at the path). j.mu must be held.
func (j *Journal) checkLocked() (os.FileInfo, error) {
	fi, err := j.file.Stat()
	if errors.Is(err, os.ErrClosed) {
		return nil, fmt.Errorf("check journal %s: %w (the journal was closed)", j.path, os.ErrClosed)
	}
	if err != nil {
		return nil, fmt.Errorf("check journal %s: %w", j.path, err)
	}
	links := uint64(1)
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		links = uint64(st.Nlink)
	}
	li, err := os.Lstat(j.path)
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		how := "deleted"
		if links > 0 {
			how = "moved away"
		}
		return nil, fmt.Errorf("check journal %s: %w: the file was %s while the agent ran (Restore writes it back)", j.path, ErrGone, how)
	case err != nil:
		return nil, fmt.Errorf("check journal %s: %w", j.path, err)
	case !os.SameFile(fi, li):
		how := "deleted or renamed over"
		if links > 0 {
			how = "moved away"
		}
		return li, fmt.Errorf("check journal %s: %w: the file was %s while the agent ran, and the path now holds %s (Restore moves it aside and writes the journal back)",
			j.path, ErrGone, how, fileKind(li.Mode()))
	case links == 0:
		return nil, fmt.Errorf("check journal %s: %w: the file was deleted while the agent ran (Restore writes it back)", j.path, ErrGone)
	}
	return nil, nil
}

// Restore writes the open journal back to its path after Check reported
// ErrGone, and switches to the file it wrote; it does nothing when Check
// reports no error. See "Losing the file" in the package documentation.
func (j *Journal) Restore() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	other, gone := j.checkLocked()
	if gone == nil {
		return nil
	}
	if !errors.Is(gone, ErrGone) {
		return fmt.Errorf("restore journal %s: %w", j.path, gone)
	}
	dir := filepath.Dir(j.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("restore journal %s: create directory: %w", j.path, err)
	}
	tmp, err := j.writeCopyLocked(dir)
	if err != nil {
		return fmt.Errorf("restore journal %s: write a copy of the open journal: %w", j.path, err)
	}
	aside := ""
	if _, err := os.Lstat(j.path); err == nil {
		if aside, err = moveAside(j.path, ".replaced-"); aside == "" {
			os.Remove(tmp) // the copy is ours; the file at the path is left as it was
			return fmt.Errorf("restore journal %s: %w", j.path, err)
		}
	}
	if err := renameNoReplace(tmp, j.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("restore journal %s: put the copy in place: %w", j.path, err)
	}
	syncErr := syncDir(dir)
	old := j.db
	if err := j.open(); err != nil {
		return fmt.Errorf("restore journal %s: open the copy written back (this agent goes on with the journal it has open): %w", j.path, err)
	}
	old.Close()

	msg := fmt.Sprintf("journal file %s was gone from its path while the agent ran: wrote the open journal back", j.path)
	if other != nil {
		msg = fmt.Sprintf("journal file %s was replaced by %s while the agent ran: moved that aside to %s and wrote the open journal back", j.path, fileKind(other.Mode()), aside)
	} else if aside != "" {
		msg = fmt.Sprintf("journal file %s was gone from its path while the agent ran: moved what was put there since aside to %s and wrote the open journal back", j.path, aside)
	}
	err = j.db.Update(func(btx *bolt.Tx) error {
		_, err := (&Tx{tx: btx, j: j}).Log(Event{Kind: "journal", Message: msg})
		return err
	})
	if err != nil {
		return fmt.Errorf("restore journal %s: written back, but logging it: %w", j.path, err)
	}
	if syncErr != nil {
		return fmt.Errorf("restore journal %s: written back, but a power cut may still lose it: %w", j.path, syncErr)
	}
	return nil
}

// writeCopyLocked writes a consistent copy of the open journal (one read
// transaction, read through the file bbolt has open) to a new temporary
// file in dir, fsyncs it and returns its name. j.mu must be held.
func (j *Journal) writeCopyLocked(dir string) (string, error) {
	f, err := os.CreateTemp(dir, filepath.Base(j.path)+".restore-*") // O_EXCL, 0600
	if err != nil {
		return "", err
	}
	name := f.Name()
	err = guard(func() error {
		return j.db.View(func(tx *bolt.Tx) error {
			_, err := tx.WriteTo(f)
			return err
		})
	})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}
