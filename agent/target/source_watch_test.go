package target

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// reports collects what a watch hands to its onErr, in order.
type reports struct {
	mu   sync.Mutex
	errs []error       // guarded by mu
	seen int           // guarded by mu: errs before it were matched by await
	more chan struct{} // a token after every add
}

func newReports() *reports { return &reports{more: make(chan struct{}, 1)} }

func (r *reports) add(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
	select {
	case r.more <- struct{}{}:
	default:
	}
}

// await waits for a report after the last one awaited that contains every
// one of parts, failing the test if none comes in 10 s (a bound for a hung
// test), and returns it.
func (r *reports) await(t *testing.T, parts ...string) error {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		for i := r.seen; i < len(r.errs); i++ {
			if containsAll(r.errs[i].Error(), parts) {
				r.seen = i + 1
				r.mu.Unlock()
				return r.errs[i]
			}
		}
		r.mu.Unlock()
		select {
		case <-r.more:
		case <-deadline:
			all := r.all()
			t.Fatalf("no report containing %q within 10s; %d reports, the last ones: %v", parts, len(all), all[max(0, len(all)-4):])
			return nil
		}
	}
}

// count is how many reports so far contain every one of parts.
func (r *reports) count(parts ...string) int {
	n := 0
	for _, err := range r.all() {
		if containsAll(err.Error(), parts) {
			n++
		}
	}
	return n
}

func (r *reports) all() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.errs...)
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// watchReport runs WatchFileReport on path until the test ends.
func watchReport(t *testing.T, path string) (<-chan Doc, *reports) {
	ch := make(chan Doc)
	r := newReports()
	runWatch(t, func(ctx context.Context) error { return WatchFileReport(ctx, path, ch, r.add) })
	return ch, r
}

// publish writes content to p by an atomic rename, as deploy tools do.
func publish(t *testing.T, p string, content []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(p), ".tmp-"+filepath.Base(p))
	if err := os.WriteFile(tmp, content, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

func mkfifo(t *testing.T, p string) {
	t.Helper()
	if err := unix.Mkfifo(p, 0o644); err != nil {
		t.Fatalf("mkfifo %s: %v", p, err)
	}
}

// A FIFO, a directory, a directory at FILE.sig and a file over 1 MiB, one
// after the other: each is reported (naming the path and what is wrong),
// none stalls the watch or ends it, none delivers a document, and the good
// file that follows arrives.
func TestWatchFileBadFilesThenGood(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "target.json")
	mkfifo(t, path) // there before the watch starts: the first read meets it
	ch, r := watchReport(t, path)
	r.await(t, path, "named pipe (FIFO)", "not a regular file")

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	r.await(t, path, "is a directory", "not a regular file")

	// The signature is made a directory before the data appears, so that no
	// read sees the data without it.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path+".sig", 0o755); err != nil {
		t.Fatal(err)
	}
	publish(t, path, []byte("data with a bad signature"))
	r.await(t, path+".sig", "is a directory")

	publish(t, path, bytes.Repeat([]byte("x"), 2<<20))
	r.await(t, path, "more than 1048576 bytes")
	if err := os.Remove(path + ".sig"); err != nil {
		t.Fatal(err)
	}
	publish(t, path+".sig", []byte("SIG"))
	publish(t, path, []byte("good"))
	if d := recv(t, ch); string(d.Data) != "good" || string(d.Sig) != "SIG" {
		t.Fatalf("after the bad files: got %q sig %q, want \"good\" sig \"SIG\" (no document from a bad file)", d.Data, d.Sig)
	}
	for _, err := range r.all() {
		if !strings.HasPrefix(err.Error(), "watch "+path+": ") {
			t.Errorf("report %q does not start with \"watch %s: \"", err, path)
		}
	}
}

// The same bad contents are reported once, however long they stay and even
// when published again; after a good document they are a new failure.
func TestWatchFileSameFailureOnce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "target.json")
	big := bytes.Repeat([]byte("x"), 2<<20)
	publish(t, path, big)
	ch, r := watchReport(t, path)
	r.await(t, "more than 1048576 bytes")
	// Nothing can be awaited here: a watch that tried again on a timer
	// would report again within this second (it retries after 100, 300 and
	// 700 ms), one that reread on every event would report the republished
	// copy.
	time.Sleep(time.Second)
	publish(t, path, big)
	os.WriteFile(filepath.Join(dir, "unrelated"), []byte("x"), 0o644)
	time.Sleep(200 * time.Millisecond)
	publish(t, path, []byte("good"))
	if d := recv(t, ch); string(d.Data) != "good" {
		t.Fatalf("got %q, want \"good\"", d.Data)
	}
	if n := r.count("more than 1048576 bytes"); n != 1 {
		t.Errorf("the same 2 MiB file was reported %d times, want once: %v", n, r.all())
	}
	publish(t, path, big)
	r.await(t, "more than 1048576 bytes")
	if n := r.count("more than 1048576 bytes"); n != 2 {
		t.Errorf("the 2 MiB file back after a good one: reported %d times in all, want 2", n)
	}
}

// fillFDs uses up every file descriptor the process may open: it lowers the
// soft RLIMIT_NOFILE to 256 (so that filling is quick) and opens /dev/null
// until EMFILE. The returned func (also run at cleanup) closes them and
// restores the limit.
func fillFDs(t *testing.T) (release func()) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	lower := old
	lower.Cur = min(old.Cur, 256)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lower); err != nil {
		t.Fatal(err)
	}
	var fds []int
	var once sync.Once
	release = func() {
		once.Do(func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
				t.Errorf("restore RLIMIT_NOFILE: %v", err)
			}
		})
	}
	t.Cleanup(release)
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.EMFILE) {
			return release
		}
		if err != nil {
			release()
			t.Fatalf("fill the descriptor table: %v", err)
		}
		fds = append(fds, fd)
	}
}

// A read that fails for want of file descriptors is reported once, tried
// again, and the document arrives once descriptors are free.
func TestWatchFileEMFILE(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "target.json")
	publish(t, path, []byte("one"))
	ch, r := watchReport(t, path)
	if d := recv(t, ch); string(d.Data) != "one" {
		t.Fatalf("at start: got %q, want \"one\"", d.Data)
	}
	tmp := filepath.Join(dir, ".tmp")
	if err := os.WriteFile(tmp, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	release := fillFDs(t)
	if err := os.Rename(tmp, path); err != nil { // a rename needs no descriptor
		release()
		t.Fatal(err)
	}
	err := r.await(t, path, "too many open files")
	if !errors.Is(err, unix.EMFILE) || !strings.HasSuffix(err.Error(), "; retrying") {
		t.Errorf("report %v: want errors.Is EMFILE, ending in \"; retrying\"", err)
	}
	time.Sleep(time.Second) // the table stays full across several retries
	release()
	if d := recv(t, ch); string(d.Data) != "two" {
		t.Fatalf("after descriptors were freed: got %q, want \"two\"", d.Data)
	}
	if n := r.count("too many open files"); n != 1 {
		t.Errorf("EMFILE reported %d times, want once however many retries: %v", n, r.all())
	}
}

// An inotify instance that cannot be created (EMFILE) is reported and tried
// again; the watch then starts and delivers the file.
func TestWatchFileEMFILEInotify(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "target.json")
	publish(t, path, []byte("one"))
	release := fillFDs(t)
	ch, r := watchReport(t, path)
	err := r.await(t, path, "inotify", "too many open files")
	if !errors.Is(err, unix.EMFILE) || !strings.HasSuffix(err.Error(), "; retrying") {
		t.Errorf("report %v: want errors.Is EMFILE, ending in \"; retrying\"", err)
	}
	release()
	if d := recv(t, ch); string(d.Data) != "one" {
		t.Fatalf("after descriptors were freed: got %q, want \"one\"", d.Data)
	}
}

// A parent directory that is missing at start is reported and waited for.
func TestWatchFileMissingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "later")
	path := filepath.Join(dir, "t.json")
	ch, r := watchReport(t, path)
	err := r.await(t, dir)
	if !errors.Is(err, fs.ErrNotExist) || !strings.HasSuffix(err.Error(), "; retrying") {
		t.Errorf("report %v: want errors.Is ErrNotExist, ending in \"; retrying\"", err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	publish(t, path, []byte("late"))
	if d := recv(t, ch); string(d.Data) != "late" {
		t.Fatalf("after the directory appeared: got %q, want \"late\"", d.Data)
	}
}

// A parent directory removed under the watch is reported; the watch takes
// up the new one when it is back.
func TestWatchFileDirRemoved(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "t.json")
	publish(t, path, []byte("one"))
	ch, r := watchReport(t, path)
	if d := recv(t, ch); string(d.Data) != "one" {
		t.Fatalf("at start: got %q, want \"one\"", d.Data)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	r.await(t, dir, "removed or moved")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	publish(t, path, []byte("two"))
	if d := recv(t, ch); string(d.Data) != "two" {
		t.Fatalf("after the directory came back: got %q, want \"two\"", d.Data)
	}
}

func TestWatchFileEmptyPath(t *testing.T) {
	err := WatchFileReport(context.Background(), "", make(chan Doc), nil)
	if err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("WatchFileReport with an empty path: got %v, want an error saying the path is empty", err)
	}
}

// inTime runs fn and fails the test if it has not returned within 10 s (a
// bound for a hung test: a read that blocks never returns).
func inTime(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return within 10s", what)
	}
}

// Everything that is not a regular file of at most MaxSize bytes is refused
// with an error naming the path and what it is, without blocking; a link to
// a good file is followed.
func TestReadTargetRefuses(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	if err := os.WriteFile(good, bytes.Repeat([]byte("g"), MaxSize), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		setup func(p string) // makes p (the target file) and perhaps p.sig
		want  []string       // in the error, with the path that is bad
		bad   string         // the bad path's suffix: "" or ".sig"
	}{
		{"fifo", func(p string) { mkfifo(t, p) }, []string{"named pipe (FIFO)"}, ""},
		{"socket", func(p string) {
			l, err := net.Listen("unix", p)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}, []string{"a socket"}, ""},
		{"directory", func(p string) { os.Mkdir(p, 0o755) }, []string{"a directory"}, ""},
		{"link to a character device", func(p string) { os.Symlink("/dev/null", p) }, []string{"a character device"}, ""},
		{"MaxSize+1 bytes", func(p string) {
			os.WriteFile(p, bytes.Repeat([]byte("x"), MaxSize+1), 0o644)
		}, []string{"more than 1048576 bytes"}, ""},
		{"2 MiB", func(p string) {
			os.WriteFile(p, bytes.Repeat([]byte("x"), 2<<20), 0o644)
		}, []string{"more than 1048576 bytes"}, ""},
		{"fifo at .sig", func(p string) {
			os.Symlink(good, p)
			mkfifo(t, p+".sig")
		}, []string{"named pipe (FIFO)"}, ".sig"},
		{"directory at .sig", func(p string) {
			os.Symlink(good, p)
			os.Mkdir(p+".sig", 0o755)
		}, []string{"a directory"}, ".sig"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub := filepath.Join(dir, "case"+string(rune('a'+i)))
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(sub, "t.json")
			tt.setup(p)
			var r fileRead
			inTime(t, "readTarget", func() { r = readTarget(p) })
			if r.err == nil {
				t.Fatalf("readTarget(%s): got no error (doc %v), want one", tt.name, r.doc != nil)
			}
			if r.doc != nil {
				t.Errorf("readTarget(%s): got a doc with the error", tt.name)
			}
			if want := append([]string{p + tt.bad + ":"}, tt.want...); !containsAll(r.err.Error(), want) {
				t.Errorf("readTarget(%s): got %q, want it to contain %q", tt.name, r.err, want)
			}
			if !waitsForChange(r.err) {
				t.Errorf("readTarget(%s): %v would be retried on a timer, want it left until the file changes", tt.name, r.err)
			}
		})
	}
	// Exactly MaxSize bytes, through a link: accepted, with a missing .sig.
	link := filepath.Join(dir, "link.json")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	r := readTarget(link)
	if r.err != nil || r.doc == nil || len(r.doc.Data) != MaxSize || r.doc.Sig != nil {
		t.Errorf("readTarget of a link to a %d-byte file: got err %v doc %v, want the document, no sig", MaxSize, r.err, r.doc != nil)
	}
}

// The open itself never waits on a FIFO (O_NONBLOCK) and refuses it by its
// descriptor: the stat before the open is not what keeps a FIFO out when one
// is swapped in between.
func TestOpenRegularFIFO(t *testing.T) {
	p := filepath.Join(t.TempDir(), "t.json")
	mkfifo(t, p)
	var err error
	inTime(t, "openRegular on a FIFO", func() {
		var f *os.File
		if f, err = openRegular(p); f != nil {
			f.Close()
		}
	})
	if err == nil || !strings.Contains(err.Error(), p+": not a regular file: it is a named pipe (FIFO)") {
		t.Errorf("openRegular on a FIFO: got %v, want it refused, naming %s and what it is", err, p)
	}
}

// A file URL reads through the same rules: a FIFO, a directory at FILE.sig
// and a file over 1 MiB are reported, never hang the poll, and the good file
// that follows arrives.
func TestPollURLFileBad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "t.json")
	mkfifo(t, path)
	ch := make(chan Doc)
	r := newReports()
	runWatch(t, func(ctx context.Context) error {
		return PollURL(ctx, nil, "file://"+path, time.Millisecond, ch, r.add)
	})
	r.await(t, "poll file://"+path, path, "named pipe (FIFO)")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path+".sig", 0o755); err != nil {
		t.Fatal(err)
	}
	publish(t, path, []byte("data with a bad signature"))
	r.await(t, path+".sig", "a directory")
	publish(t, path, bytes.Repeat([]byte("x"), 2<<20))
	r.await(t, path, "more than 1048576 bytes")
	if err := os.Remove(path + ".sig"); err != nil {
		t.Fatal(err)
	}
	publish(t, path+".sig", []byte("S"))
	publish(t, path, []byte("good"))
	if d := recv(t, ch); string(d.Data) != "good" || string(d.Sig) != "S" {
		t.Fatalf("after the bad files: got %q sig %q, want \"good\" sig \"S\"", d.Data, d.Sig)
	}
}

// readTarget does not even open a FIFO (its stat refuses it first): an open
// would release a writer blocked in its own open, and what it writes would be
// lost.
func TestReadTargetLeavesFIFOWriter(t *testing.T) {
	p := filepath.Join(t.TempDir(), "t.json")
	mkfifo(t, p)
	writer := exec.Command("sh", "-c", `echo from-the-writer > "$0"`, p)
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { writer.Process.Kill(); writer.Wait() })
	wchan := fmt.Sprintf("/proc/%d/wchan", writer.Process.Pid)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile(wchan)
		if err != nil || time.Now().After(deadline) { // "0" while it runs
			t.Skipf("needs to see the writer wait in open(2) (%s: %q, %v): whether readTarget opens a FIFO was not tested", wchan, b, err)
		}
		if string(b) == "wait_for_partner" {
			break
		}
	}
	if r := readTarget(p); !errors.Is(r.err, errNotRegular) {
		t.Fatalf("readTarget of a FIFO: got %v, want it refused as not a regular file", r.err)
	}
	// An open would have woken the writer at once (it is then running, "0").
	if b, err := os.ReadFile(wchan); string(b) != "wait_for_partner" {
		t.Errorf("the FIFO's writer after readTarget: %s is %q (%v), want still \"wait_for_partner\": readTarget opened the FIFO", wchan, b, err)
	}
	// Be the reader the writer waits for: what it writes must still come.
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	f.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(f)
	if string(got) != "from-the-writer\n" {
		t.Errorf("the FIFO's writer, after readTarget: read %q (%v), want %q: readTarget opened the FIFO", got, err, "from-the-writer\n")
	}
}

// WatchFile (no onErr) lives through bad files the same way.
func TestWatchFileNoOnErr(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "target.json")
	mkfifo(t, path)
	ch := watch(t, path)
	publish(t, path, bytes.Repeat([]byte("x"), 2<<20))
	publish(t, path, []byte("good"))
	if d := recv(t, ch); string(d.Data) != "good" {
		t.Fatalf("after a FIFO and a 2 MiB file: got %q, want \"good\"", d.Data)
	}
}
