package target

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Doc is a raw target document as a source delivered it. Sources never parse.
type Doc struct {
	Data   []byte
	Sig    []byte // detached signature as read (FILE.sig or X-Latch-Signature), nil if none
	Source string // "file:/path" or the URL, for messages and the journal
}

// debounce is how long WatchFileReport waits after the last event before
// reading, so that a writer's several writes make one Doc.
const debounce = 20 * time.Millisecond

// retryMin and retryMax bound the wait before WatchFileReport tries again
// after a failure that a change of the file would not end (too many open
// files, an inotify instance or watch that cannot be had, a missing
// directory, an I/O error): it doubles from retryMin up to retryMax.
const (
	retryMin = 100 * time.Millisecond
	retryMax = 10 * time.Second
)

// retryDelay is the wait after n failures in a row (n >= 1).
func retryDelay(n int) time.Duration {
	d := retryMin
	for i := 1; i < n && d < retryMax; i++ {
		d *= 2
	}
	return min(d, retryMax)
}

// WatchFile is WatchFileReport without an onErr: what goes wrong while
// watching is reported nowhere (not logged either). Use WatchFileReport to
// hear about it.
func WatchFile(ctx context.Context, path string, out chan<- Doc) error {
	return WatchFileReport(ctx, path, out, nil)
}

// WatchFileReport sends the file's contents (and FILE.sig's, if present) on
// out at start and every time they change, until ctx ends; it then returns
// nil. It watches the parent directory with inotify, so atomic renames,
// in-place writes and files that appear later are all seen; identical
// contents are not sent twice. A missing file is not an error: it is sent
// when it appears.
//
// When FILE (or FILE.sig) is a symbolic link, the directory of every link on
// the way to the real file is watched too, so that a change of the file the
// link points to, or of the link itself, is seen as well.
//
// Nothing that goes wrong ends the watch. Each failure goes to onErr (if not
// nil), once: the same failure on the same bytes is not reported again until
// something else (a good read, a missing file, another failure) came in
// between. A file that cannot be a target (not a regular file, over MaxSize
// bytes, a loop of links) is left until it changes; any other failure (too
// many open files, an I/O error, an inotify instance or watch that cannot be
// had, a parent directory that is missing or goes away) is retried on its
// own, waiting 100 ms and doubling up to 10 s. The file and FILE.sig are
// opened without blocking and must be regular files, so a FIFO or a device at
// the path never stalls the watch, and ctx ending always returns even while a
// read hangs. The only error returned is for an empty path, at once.
func WatchFileReport(ctx context.Context, path string, out chan<- Doc, onErr func(error)) error {
	if path == "" {
		return errors.New("watch target file: the path is empty: name the file that holds the target state")
	}
	fw := &fileWatch{path: filepath.Clean(path), out: out, onErr: onErr}
	failures := 0
	for {
		watched, err := fw.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if watched {
			failures = 0
		}
		failures++
		d := retryDelay(failures)
		fw.report(err.Error(), fmt.Errorf("%w; retrying", err))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// fileWatch is the state of one WatchFileReport that outlives an inotify
// instance: what was sent and what was reported last. Only the goroutine of
// WatchFileReport uses it.
type fileWatch struct {
	path    string
	out     chan<- Doc
	onErr   func(error)
	last    *Doc   // the last document sent, nil before the first
	lastErr string // what the last failure reported was about; "" since a good read
}

// report hands err to onErr unless the failure that key names was the last
// one reported.
func (fw *fileWatch) report(key string, err error) {
	if key == fw.lastErr {
		return
	}
	fw.lastErr = key
	if fw.onErr != nil {
		fw.onErr(err)
	}
}

// session watches with one inotify instance until ctx ends (nil) or the
// instance is lost (an error). watched says whether the watch was set up, so
// that the caller's backoff starts again after a loss.
func (fw *fileWatch) session(ctx context.Context) (watched bool, err error) {
	path := fw.path
	dir := filepath.Dir(path)
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return false, fmt.Errorf("watch %s: create an inotify instance: %w", path, err)
	}
	ino := os.NewFile(uintptr(fd), "inotify") // non-blocking: Read parks in the runtime poller
	defer ino.Close()
	w := &watchSet{fd: fd, primary: dir, dirs: map[string]int32{}, names: map[int32]map[string]bool{}}
	if err := w.refresh(path); err != nil {
		return false, fmt.Errorf("watch %s: %w", path, err)
	}

	// The reader goroutine turns inotify events into wake-ups; Close on return ends it.
	wake := make(chan struct{}, 1)
	gone := make(chan error, 1)
	go func() {
		buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
		for {
			n, err := ino.Read(buf)
			if err != nil {
				gone <- fmt.Errorf("read inotify events: %w", err)
				return
			}
			relevant, dirGone := w.scan(buf[:n])
			if dirGone {
				gone <- fmt.Errorf("directory %s was removed or moved", dir)
				return
			}
			if relevant {
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}
	}()

	retries := 0              // failed reads in a row that a change would not end
	timer := time.NewTimer(0) // the first read is at once
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case err := <-gone:
			return true, fmt.Errorf("watch %s: %w", path, err)
		case <-wake:
			timer.Reset(debounce)
		case <-timer.C:
			if err := w.refresh(path); err != nil {
				return true, fmt.Errorf("watch %s: %w", path, err)
			}
			r, ok := readTargetCtx(ctx, path)
			if !ok {
				return true, nil
			}
			switch {
			case r.err == nil:
				retries = 0
				fw.lastErr = ""
				if r.doc == nil || fw.last != nil && bytes.Equal(fw.last.Data, r.doc.Data) && bytes.Equal(fw.last.Sig, r.doc.Sig) {
					break
				}
				select {
				case fw.out <- *r.doc:
					fw.last = r.doc
				case <-ctx.Done():
					return true, nil
				}
			case waitsForChange(r.err):
				retries = 0
				fw.report(r.key, fmt.Errorf("watch %s: %w; waiting for the file to change", path, r.err))
			default:
				retries++
				fw.report(r.key, fmt.Errorf("watch %s: %w; retrying", path, r.err))
				timer.Reset(retryDelay(retries))
			}
		}
	}
}

const watchMask = unix.IN_CLOSE_WRITE | unix.IN_MODIFY | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
	unix.IN_CREATE | unix.IN_DELETE | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// maxLinks bounds how many symbolic links WatchFileReport follows from one name.
const maxLinks = 8

// watchSet is the directories WatchFileReport watches and, in each, the names that
// matter: the file, FILE.sig, and every link on the way to where they point.
type watchSet struct {
	fd      int
	primary string // the file's own directory: its loss ends the watch

	mu    sync.Mutex
	dirs  map[string]int32          // directory -> watch descriptor
	names map[int32]map[string]bool // watch descriptor -> names that matter
}

// refresh follows path and path.sig through their links and watches every
// directory on the way; a directory that does not exist (a dangling link's)
// is left out until the next refresh. Only the primary directory must exist.
func (w *watchSet) refresh(path string) error {
	want := map[string]map[string]bool{}
	for _, p := range []string{path, path + ".sig"} {
		for range maxLinks {
			d, b := filepath.Dir(p), filepath.Base(p)
			if want[d] == nil {
				want[d] = map[string]bool{}
			}
			want[d][b] = true
			t, err := os.Readlink(p)
			if err != nil {
				break // not a link (or gone): the chain ends here
			}
			if !filepath.IsAbs(t) {
				t = filepath.Join(d, t)
			}
			p = filepath.Clean(t)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for d, names := range want {
		wd, ok := w.dirs[d]
		if !ok {
			n, err := unix.InotifyAddWatch(w.fd, d, watchMask)
			if err != nil {
				if d == w.primary {
					return fmt.Errorf("watch directory %s: %w", d, err)
				}
				continue
			}
			wd = int32(n)
			w.dirs[d] = wd
		}
		w.names[wd] = names
	}
	for d, wd := range w.dirs {
		if want[d] == nil {
			unix.InotifyRmWatch(w.fd, uint32(wd))
			delete(w.dirs, d)
			delete(w.names, wd)
		}
	}
	return nil
}

// scan reports whether buf holds an event about a name that matters (or a
// queue overflow, after which anything may have changed), and whether the
// primary directory itself went away. The loss of another directory is
// relevant: the next refresh watches it again if it comes back.
func (w *watchSet) scan(buf []byte) (relevant, dirGone bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	primary := w.dirs[w.primary]
	for off := 0; off+unix.SizeofInotifyEvent <= len(buf); {
		// struct inotify_event: int32 wd, uint32 mask, uint32 cookie, uint32 len, name.
		wd := int32(binary.NativeEndian.Uint32(buf[off:]))
		mask := binary.NativeEndian.Uint32(buf[off+4:])
		nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
		end := off + unix.SizeofInotifyEvent + nameLen
		if end > len(buf) {
			break
		}
		name := bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:end], "\x00")
		switch {
		case mask&unix.IN_Q_OVERFLOW != 0:
			relevant = true
		case mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0:
			if wd == primary {
				dirGone = true
			} else if _, ours := w.names[wd]; ours {
				relevant = true
				for d, x := range w.dirs {
					if x == wd {
						delete(w.dirs, d)
					}
				}
				delete(w.names, wd)
			}
		case w.names[wd][string(name)]:
			relevant = true
		}
		off = end
	}
	return relevant, dirGone
}

// readAllLimited reads r to its end, refusing more than MaxSize bytes
// rather than holding them.
func readAllLimited(r io.Reader, what string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("read %s: larger than %d bytes", what, MaxSize)
	}
	return data, nil
}

// requestTimeout bounds one poll request when the client sets no timeout.
const requestTimeout = time.Minute

// PollURL fetches rawURL (http, https or file) now and then every interval
// (±10% jitter), sending each new document on out, until ctx ends; it then
// returns nil. HTTP polls send If-None-Match with the last ETag, and a 304
// sends nothing; neither does a document identical to the last one sent. The
// X-Latch-Signature header becomes Doc.Sig; without it, <url>.sig does (a
// 404: no signature; another failure is an error, retried like the
// document's), fetched after the document and paired with it only if the
// document is unchanged after (see get). For a file URL FILE.sig does.
// Errors go to onErr (if not nil) and are never fatal: after n failures in a
// row the wait is interval·2ⁿ, capped at 32·interval or an hour, whichever is
// smaller (but never below interval), and success resets it. A file URL is
// read as WatchFileReport reads its file: only a regular file of at most
// MaxSize bytes, opened without blocking, and ctx ending returns even while
// a read hangs.
func PollURL(ctx context.Context, client *http.Client, rawURL string, interval time.Duration, out chan<- Doc, onErr func(error)) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("poll %s: %w", rawURL, err)
	}
	switch u.Scheme {
	case "http", "https":
	case "file":
		if u.Host != "" && u.Host != "localhost" || !filepath.IsAbs(u.Path) {
			return fmt.Errorf("poll %s: want file:///absolute/path", rawURL)
		}
	default:
		return fmt.Errorf("poll %s: want an http, https or file URL", rawURL)
	}
	if interval <= 0 {
		return fmt.Errorf("poll %s: interval %v must be positive", rawURL, interval)
	}
	if client == nil {
		client = http.DefaultClient
	}
	p := poller{client: client, url: u, raw: rawURL}
	failures := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		doc, err := p.poll(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			failures++
			if onErr != nil {
				onErr(err)
			}
		} else {
			failures = 0
			if doc != nil {
				select {
				case out <- *doc:
				case <-ctx.Done():
					return nil
				}
			}
		}
		timer.Reset(jitter(backoff(interval, failures)))
	}
}

// backoff is the wait after failures failed polls in a row.
func backoff(interval time.Duration, failures int) time.Duration {
	limit := min(32*interval, time.Hour)
	limit = max(limit, interval)
	d := interval
	for i := 0; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// jitter spreads d by ±10% so that a fleet does not poll in lockstep.
func jitter(d time.Duration) time.Duration {
	spread := int64(d) / 5
	if spread <= 0 {
		return d
	}
	return d - time.Duration(spread/2) + time.Duration(rand.Int64N(spread+1))
}

// poller remembers what the last poll saw.
type poller struct {
	client   *http.Client
	url      *url.URL
	raw      string
	etag     string
	lastData []byte
	lastSig  []byte
	sent     bool
	// headerSig: the last document delivered came with X-Latch-Signature,
	// so a 304 means nothing changed (else its .sig is fetched again).
	headerSig bool
}

// poll returns the document if it changed since the last one, nil if not.
func (p *poller) poll(ctx context.Context) (*Doc, error) {
	var doc *Doc
	var err error
	if p.url.Scheme == "file" {
		r, ok := readTargetCtx(ctx, p.url.Path)
		switch {
		case !ok:
			return nil, ctx.Err()
		case r.err != nil:
			err = fmt.Errorf("poll %s: %w", p.raw, r.err)
		case r.doc == nil:
			err = fmt.Errorf("poll %s: %w", p.raw, fs.ErrNotExist)
		default:
			doc = r.doc
			doc.Source = p.raw
		}
	} else {
		doc, err = p.get(ctx)
	}
	if err != nil || doc == nil {
		return nil, err
	}
	if p.sent && bytes.Equal(doc.Data, p.lastData) && bytes.Equal(doc.Sig, p.lastSig) {
		return nil, nil
	}
	p.sent, p.lastData, p.lastSig = true, doc.Data, doc.Sig
	return doc, nil
}

// sigTries bounds how often get fetches a document and its <url>.sig again
// when the document changed in between.
const sigTries = 3

// get fetches the document and, when the answer carries no
// X-Latch-Signature header, <url>.sig (404: no signature), also when the
// document is not modified (a signature may be added to it). The signature is
// fetched after the document and the document is then asked for again (by
// its ETag, or compared byte for byte), so that a .sig is never paired with
// a document it was not fetched for; on a change both are fetched again.
// The ETag is remembered only for a document delivered whole.
func (p *poller) get(ctx context.Context) (*Doc, error) {
	if p.client.Timeout == 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	for try := 0; try < sigTries; try++ {
		r, err := p.fetch(ctx, p.raw, p.etag, true)
		if err != nil || r.notModified && p.headerSig {
			return nil, err
		}
		if r.notModified { // the same document: its .sig may have changed
			r.data, r.header = p.lastData, http.Header{"Etag": {p.etag}}
		}
		doc := &Doc{Data: r.data, Source: p.raw}
		if s := r.header.Get("X-Latch-Signature"); s != "" {
			doc.Sig = []byte(s)
			p.etag, p.headerSig = r.header.Get("ETag"), true
			return doc, nil
		}
		sig, err := p.fetch(ctx, p.raw+".sig", "", false)
		if err != nil {
			return nil, err
		}
		if !sig.missing {
			doc.Sig = sig.data
		}
		etag := r.header.Get("ETag")
		again, err := p.fetch(ctx, p.raw, etag, true)
		if err != nil {
			return nil, err
		}
		if again.notModified && etag != "" || !again.notModified && again.header.Get("X-Latch-Signature") == "" && bytes.Equal(again.data, r.data) {
			p.etag, p.headerSig = etag, false
			return doc, nil
		}
	}
	return nil, fmt.Errorf("poll %s: the document changed while its signature %s.sig was fetched, %d times in a row: will try again", p.raw, p.raw, sigTries)
}

// answer is one HTTP answer of a poll.
type answer struct {
	data        []byte
	header      http.Header
	notModified bool // 304 to If-None-Match
	missing     bool // 404, when allowed
}

// fetch GETs rawURL (If-None-Match etag when not ""); a 404 is an answer
// with missing set unless doc (the document itself must exist).
func (p *poller) fetch(ctx context.Context, rawURL, etag string, doc bool) (answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return answer{}, fmt.Errorf("poll %s: %w", rawURL, err)
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	if doc {
		req.Header.Set("Accept", "application/json")
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return answer{}, fmt.Errorf("poll: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified && etag != "":
		return answer{notModified: true, header: resp.Header}, nil
	case resp.StatusCode == http.StatusNotFound && !doc:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return answer{missing: true, header: resp.Header}, nil
	case resp.StatusCode == http.StatusOK:
	default:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return answer{}, fmt.Errorf("poll %s: server answered %s", rawURL, resp.Status)
	}
	data, err := readAllLimited(resp.Body, rawURL)
	if err != nil {
		return answer{}, fmt.Errorf("poll: %w", err)
	}
	return answer{data: data, header: resp.Header}, nil
}
