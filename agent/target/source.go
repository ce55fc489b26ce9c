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
	"time"

	"golang.org/x/sys/unix"
)

// Doc is a raw target document as a source delivered it. Sources never parse.
type Doc struct {
	Data   []byte
	Sig    []byte // detached signature as read (FILE.sig or X-Latch-Signature), nil if none
	Source string // "file:/path" or the URL, for messages and the journal
}

// debounce is how long WatchFile waits after the last event before reading,
// so that a writer's several writes make one Doc.
const debounce = 20 * time.Millisecond

// WatchFile sends the file's contents (and FILE.sig's, if present) on out at
// start and every time they change, until ctx ends; it then returns nil. It
// watches the parent directory with inotify, so atomic renames, in-place
// writes and files that appear later are all seen; identical contents are
// not sent twice. A missing file is not an error: it is sent when it appears.
// A missing parent directory is an error.
func WatchFile(ctx context.Context, path string, out chan<- Doc) error {
	path = filepath.Clean(path)
	dir, base := filepath.Dir(path), filepath.Base(path)
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("watch %s: inotify: %w", path, err)
	}
	ino := os.NewFile(uintptr(fd), "inotify") // non-blocking: Read parks in the runtime poller
	defer ino.Close()
	const mask = unix.IN_CLOSE_WRITE | unix.IN_MODIFY | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
		unix.IN_CREATE | unix.IN_DELETE | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		return fmt.Errorf("watch %s: watch directory %s: %w", path, dir, err)
	}

	// The reader goroutine turns inotify events into wake-ups; Close on return ends it.
	wake := make(chan struct{}, 1)
	gone := make(chan error, 1)
	go func() {
		buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
		for {
			n, err := ino.Read(buf)
			if err != nil {
				gone <- err
				return
			}
			relevant, dirGone := scanEvents(buf[:n], base)
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

	var last *Doc
	send := func() error {
		doc, err := readFileDoc(path)
		if err != nil || doc == nil {
			return err // a missing file waits for the next event
		}
		if last != nil && bytes.Equal(last.Data, doc.Data) && bytes.Equal(last.Sig, doc.Sig) {
			return nil
		}
		select {
		case out <- *doc:
			last = doc
		case <-ctx.Done():
		}
		return nil
	}
	if err := send(); err != nil {
		return fmt.Errorf("watch %s: %w", path, err)
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-gone:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("watch %s: %w", path, err)
		case <-wake:
			timer.Reset(debounce)
		case <-timer.C:
			if err := send(); err != nil {
				return fmt.Errorf("watch %s: %w", path, err)
			}
		}
	}
}

// scanEvents reports whether buf holds an event about base or base.sig (or
// a queue overflow, after which anything may have changed), and whether the
// watched directory itself went away.
func scanEvents(buf []byte, base string) (relevant, dirGone bool) {
	for off := 0; off+unix.SizeofInotifyEvent <= len(buf); {
		// struct inotify_event: int32 wd, uint32 mask, uint32 cookie, uint32 len, name.
		mask := binary.NativeEndian.Uint32(buf[off+4:])
		nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
		end := off + unix.SizeofInotifyEvent + nameLen
		if end > len(buf) {
			break
		}
		name := string(bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:end], "\x00"))
		switch {
		case mask&unix.IN_Q_OVERFLOW != 0:
			relevant = true
		case mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0:
			dirGone = true
		case name == base || name == base+".sig":
			relevant = true
		}
		off = end
	}
	return relevant, dirGone
}

// readFileDoc reads path and path.sig; (nil, nil) when path does not exist.
func readFileDoc(path string) (*Doc, error) {
	data, err := readLimited(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sig, err := readLimited(path + ".sig")
	if errors.Is(err, fs.ErrNotExist) {
		sig, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &Doc{Data: data, Sig: sig, Source: "file:" + path}, nil
}

// readLimited reads a file of at most MaxSize bytes; a larger one is an
// error rather than a memory hazard.
func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAllLimited(f, path)
}

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
// X-Latch-Signature header (or, for a file URL, FILE.sig) becomes Doc.Sig.
// Errors go to onErr (if not nil) and are never fatal: after n failures in a
// row the wait is interval·2ⁿ, capped at 32·interval or an hour, whichever is
// smaller (but never below interval), and success resets it.
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
}

// poll returns the document if it changed since the last one, nil if not.
func (p *poller) poll(ctx context.Context) (*Doc, error) {
	var doc *Doc
	var err error
	if p.url.Scheme == "file" {
		doc, err = readFileDoc(p.url.Path)
		if err == nil && doc == nil {
			err = fmt.Errorf("poll %s: %w", p.raw, fs.ErrNotExist)
		}
		if doc != nil {
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

func (p *poller) get(ctx context.Context) (*Doc, error) {
	if p.client.Timeout == 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.raw, nil)
	if err != nil {
		return nil, fmt.Errorf("poll %s: %w", p.raw, err)
	}
	if p.etag != "" {
		req.Header.Set("If-None-Match", p.etag)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("poll: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotModified:
		return nil, nil
	case http.StatusOK:
	default:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("poll %s: server answered %s", p.raw, resp.Status)
	}
	data, err := readAllLimited(resp.Body, p.raw)
	if err != nil {
		return nil, fmt.Errorf("poll: %w", err)
	}
	p.etag = resp.Header.Get("ETag")
	var sig []byte
	if s := resp.Header.Get("X-Latch-Signature"); s != "" {
		sig = []byte(s)
	}
	return &Doc{Data: data, Sig: sig, Source: p.raw}, nil
}
