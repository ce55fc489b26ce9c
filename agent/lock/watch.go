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
// lock root, services, every app and service directory (or, after
// SetServices, those of the named services alone) and the parent of every
// device-wide path with inotify; a directory that does not exist yet is
// awaited by watching its nearest existing ancestor. Only events about the
// names that matter wake it: a held name in a service directory, the
// device-wide name in its directory, a directory appearing or going in
// services/ and the app directories; any other file a user makes there
// (notes.txt, an editor's .swp) is ignored. It has no polling goroutine: its
// one goroutine sleeps in read(2) until the kernel has news.
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

	mu    sync.Mutex          // guards the fields below
	wds   map[int]string      // watch descriptor -> directory
	paths map[string]int      // directory -> watch descriptor
	want  map[string]interest // directory -> what matters in it
	svcs  []Service           // nil: every service
	syncs int                 // how many times the watches were computed
}

// interest says which events in one watched directory matter.
type interest struct {
	names  map[string]bool // these names
	dirs   bool            // any directory with a valid name
	resync bool            // such an event changes what is watched
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
	w.mu.Lock()
	w.sync()
	w.mu.Unlock()
	return w, nil
}

// SetServices narrows the watcher to svcs: afterwards only the lock root,
// services/, the app and service directories of svcs and the device-wide
// directories are watched, so that directories other users make cost no
// watch and no rescan. nil watches every service again.
func (w *Watcher) SetServices(svcs []Service) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if svcs == nil {
		w.svcs = nil
	} else {
		w.svcs = slices.Clone(svcs)
		if w.svcs == nil {
			w.svcs = []Service{}
		}
	}
	w.sync()
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
	w.mu.Lock()
	relevant := w.handleLocked(buf)
	w.mu.Unlock()
	if relevant {
		w.notify()
	}
}

func (w *Watcher) handleLocked(buf []byte) bool {
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
			in, ok := w.want[dir]
			if !ok {
				continue
			}
			if in.names[name] || in.dirs && ev.Mask&unix.IN_ISDIR != 0 && validName(name) == nil {
				relevant = true
				resync = resync || in.resync
			}
		}
	}
	if resync {
		w.sync()
	}
	return relevant
}

func clen(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return len(b)
}

// sync computes the directories to watch and adds or removes watches (w.mu
// is held). It
// repeats until no watch is new: a directory created between listing its
// parent and watching the parent is then seen by the next listing, since
// the parent's watch is in place before it.
func (w *Watcher) sync() {
	w.syncs++
	for i := 0; i < 64 && w.syncOnce(); i++ {
	}
}

// syncOnce adds and removes watches once and reports whether it added one.
// w.mu is held.
func (w *Watcher) syncOnce() bool {
	added := false
	want := map[string]interest{}
	add := func(dir, name string, resync bool) {
		in := want[dir]
		if in.names == nil {
			in.names = map[string]bool{}
		}
		in.names[name] = true
		in.resync = in.resync || resync
		want[dir] = in
	}
	addDirs := func(dir string) {
		in := want[dir]
		in.dirs, in.resync = true, true
		want[dir] = in
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
				add(parent, filepath.Base(dir), true)
				return
			}
			dir = parent
		}
	}
	service := func(sd string) {
		for _, n := range HeldNames {
			add(sd, n, false)
		}
	}
	if w.l.Dir != "" {
		root := filepath.Clean(w.l.Dir)
		services := filepath.Join(root, "services")
		switch {
		case !isDir(root):
			await(root)
		case !isDir(services):
			add(root, "services", true)
		case w.svcs == nil:
			addDirs(services)
			for _, app := range listDirs(services) {
				ad := filepath.Join(services, app)
				addDirs(ad)
				for _, svc := range listDirs(ad) {
					service(filepath.Join(ad, svc))
				}
			}
		default:
			add(root, "services", true)
			for _, s := range w.svcs {
				ad := filepath.Join(services, s.App)
				add(services, s.App, true)
				if !isDir(ad) {
					continue
				}
				add(ad, s.Service, true)
				if sd := filepath.Join(ad, s.Service); isDir(sd) {
					service(sd)
				}
			}
		}
	}
	for _, g := range w.l.Global {
		g = filepath.Clean(g)
		parent := filepath.Dir(g)
		if isDir(parent) {
			add(parent, filepath.Base(g), false)
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
