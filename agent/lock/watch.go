package lock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Watcher reports, within milliseconds, that an entry appeared or
// disappeared in a lock directory or at a device-wide path. It watches the
// lock root, services, every app and service directory and the parent of
// every device-wide path with inotify; a directory that does not exist yet is
// awaited by watching its nearest existing ancestor. It has no polling
// goroutine: its one goroutine sleeps in read(2) until the kernel has news.
type Watcher struct {
	// C receives a value (coalesced, buffered 1) whenever the locks may have
	// changed, including after an inotify queue overflow: rescan then.
	C <-chan struct{}

	c      chan struct{}
	l      Layout
	f      *os.File
	fd     int
	done   chan struct{}
	closeO sync.Once

	// Owned by the reading goroutine (and New before it starts).
	wds   map[int]string             // watch descriptor -> directory
	paths map[string]int             // directory -> watch descriptor
	want  map[string]map[string]bool // directory -> names of interest (nil: all)
}

const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW | unix.IN_EXCL_UNLINK

// Watch starts watching the lock directories and device-wide paths of l.
func (l Layout) Watch() (*Watcher, error) {
	w, err := l.newWatcher()
	if err != nil {
		return nil, err
	}
	go w.loop()
	return w, nil
}

// newWatcher sets up the watches without starting the reading goroutine.
func (l Layout) newWatcher() (*Watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("watch locks: inotify: %w", err)
	}
	c := make(chan struct{}, 1)
	w := &Watcher{
		C: c, c: c, l: l, fd: fd,
		f:     os.NewFile(uintptr(fd), "inotify"),
		done:  make(chan struct{}),
		wds:   map[int]string{},
		paths: map[string]int{},
	}
	w.sync()
	return w, nil
}

// Close stops the watcher. C is not closed.
func (w *Watcher) Close() error {
	var err error
	w.closeO.Do(func() {
		err = w.f.Close()
		<-w.done
	})
	return err
}

func (w *Watcher) notify() {
	select {
	case w.c <- struct{}{}:
	default:
	}
}

func (w *Watcher) loop() {
	defer close(w.done)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		w.handle(buf[:n])
	}
}

// handle processes one read's worth of inotify events.
func (w *Watcher) handle(buf []byte) {
	n := len(buf)
	relevant, resync := false, false
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		nameb := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
		off += unix.SizeofInotifyEvent + int(ev.Len)
		name := string(nameb[:clen(nameb)])
		switch {
		case ev.Mask&unix.IN_Q_OVERFLOW != 0:
			relevant, resync = true, true
		case ev.Mask&unix.IN_IGNORED != 0:
			if p, ok := w.wds[int(ev.Wd)]; ok {
				delete(w.wds, int(ev.Wd))
				if w.paths[p] == int(ev.Wd) {
					delete(w.paths, p)
				}
			}
			resync = true
		case ev.Mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0:
			relevant, resync = true, true
		default:
			dir, ok := w.wds[int(ev.Wd)]
			if !ok {
				continue
			}
			names, ok := w.want[dir]
			if ok && (names == nil || names[name]) {
				relevant = true
				if ev.Mask&unix.IN_ISDIR != 0 || names != nil && !slices.Contains(HeldNames, name) {
					resync = true
				}
				if names == nil { // lock root tree: a new app or service
					resync = true
				}
			}
		}
	}
	if resync {
		w.sync()
	}
	if relevant {
		w.notify()
	}
}

func clen(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return len(b)
}

// sync computes the directories to watch and adds or removes watches. It
// repeats until no watch is new: a directory created between listing its
// parent and watching the parent is then seen by the next listing, since
// the parent's watch is in place before it.
func (w *Watcher) sync() {
	for i := 0; i < 64 && w.syncOnce(); i++ {
	}
}

// syncOnce adds and removes watches once and reports whether it added one.
func (w *Watcher) syncOnce() bool {
	added := false
	want := map[string]map[string]bool{}
	add := func(dir string, name string) {
		names, seen := want[dir]
		switch {
		case name == "":
			want[dir] = nil
		case seen && names == nil:
		default:
			if names == nil {
				names = map[string]bool{}
				want[dir] = names
			}
			names[name] = true
		}
	}
	// await watches the nearest existing ancestor of the missing dir for
	// the next component towards it.
	await := func(dir string) {
		for {
			parent := filepath.Dir(dir)
			if parent == dir {
				return
			}
			if isDir(parent) {
				add(parent, filepath.Base(dir))
				return
			}
			dir = parent
		}
	}
	if w.l.Dir != "" {
		root := filepath.Clean(w.l.Dir)
		services := filepath.Join(root, "services")
		switch {
		case !isDir(root):
			await(root)
		case !isDir(services):
			add(root, "services")
		default:
			add(services, "")
			for _, app := range listDirs(services) {
				ad := filepath.Join(services, app)
				add(ad, "")
				for _, svc := range listDirs(ad) {
					sd := filepath.Join(ad, svc)
					for _, n := range HeldNames {
						add(sd, n)
					}
				}
			}
		}
	}
	for _, g := range w.l.Global {
		g = filepath.Clean(g)
		parent := filepath.Dir(g)
		if isDir(parent) {
			add(parent, filepath.Base(g))
		} else {
			await(parent)
		}
	}
	for dir, wd := range w.paths {
		if _, ok := want[dir]; !ok {
			unix.InotifyRmWatch(w.fd, uint32(wd))
			delete(w.paths, dir)
			delete(w.wds, wd)
		}
	}
	for dir := range want {
		if _, ok := w.paths[dir]; ok {
			continue
		}
		wd, err := unix.InotifyAddWatch(w.fd, dir, watchMask)
		if err != nil {
			continue // vanished meanwhile: its parent's event resyncs
		}
		w.paths[dir] = wd
		w.wds[wd] = dir
		added = true
	}
	w.want = want
	return added
}

// isDir reports whether path is a directory, not following a final symlink.
func isDir(path string) bool {
	var st unix.Stat_t
	return unix.Lstat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR
}

// listDirs lists the valid-named real directories in dir.
func listDirs(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && validName(e.Name()) == nil {
			out = append(out, e.Name())
		}
	}
	return out
}
