// Package fetch downloads release files into latch's state directory and
// installs them, crash-safely.
//
// Fetch streams a file from an http, https or file URL into DEST.part while
// hashing it, in constant memory whatever the size; it resumes a partial
// download with an HTTP Range request, and DEST appears (fsync, atomic
// rename, directory fsync) only with the expected sha256. Install, Restore
// and Commit put a staged file at its install path atomically, keep the
// previous version, and can be called again after a crash at any point with
// the same result. They work through a descriptor of the install directory
// and never follow a symbolic link that another user could have planted,
// so a user who can write an install directory cannot turn them against
// files elsewhere; Install refuses such a directory unless the target
// allows it (ErrUnsafeDir).
//
// The package imports nothing from the rest of latch.
package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Errors of this package. Callers test them with errors.Is.
var (
	// ErrChecksum: the content does not have the sha256 the target state
	// names. The partial download is removed; nothing is installed.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrTooLarge: the source sends more than the file's size. The partial
	// download is removed; nothing is installed.
	ErrTooLarge = errors.New("file larger than its size")
	// ErrBusy: another Fetch is downloading to the same destination.
	ErrBusy = errors.New("download already in progress")
	// ErrNoPrevious: Restore found an installed file but no previous version.
	ErrNoPrevious = errors.New("no previous version kept")
	// ErrUnsafeDir: an install directory, or a symbolic link on the way to
	// it, can be changed by a user other than the agent's, who could use it
	// to make latch overwrite other files. The error names the directory
	// and what to do.
	ErrUnsafeDir = errors.New("install directory is writable by another user")
)

// bufSize is the copy buffer: the only memory a download uses for its data.
const bufSize = 128 << 10

// progressStep is how many bytes arrive between two progress calls.
const progressStep = 64 << 10

// The .part is fsynced every syncEvery or syncStep bytes, whichever comes
// first: after a power cut, a download resumes from the last sync instead of
// from zero, at the cost of a few fsyncs per second at most.
const (
	syncEvery = time.Second
	syncStep  = 16 << 20
)

// Fetch downloads src (an http, https or file URL) to dest and checks that
// its sha256 is sha256hex, streaming in constant memory:
//   - it writes into dest+".part"; if a .part exists it is hashed first and
//     the download resumes from its size (HTTP Range; a seek for file URLs).
//     A 200 instead of 206, a 416, or a .part larger than the file restarts
//     from zero;
//   - progress(done, total) is called as bytes arrive, every 64 KiB or so
//     and at the end (total is -1 when unknown); progress may be nil;
//   - at the end the sha256 is checked (a mismatch removes the .part and
//     returns an error wrapping ErrChecksum naming the expected digest, and
//     for http and https sources the received one too: the digest of a
//     local file is never quoted, so an error cannot tell anyone the digest
//     of a file they cannot read), the file is fsynced and renamed to dest,
//     and the directory fsynced;
//   - a file URL must name a regular file (a FIFO, device or directory is
//     refused, and opening never blocks); symbolic links are followed, the
//     digest being what vouches for the content;
//   - if dest already has the right sha256, Fetch returns at once;
//   - ctx cancels promptly; a cancelled or interrupted download keeps the
//     .part for the next call to resume.
func Fetch(ctx context.Context, client *http.Client, src, sha256hex, dest string, progress func(done, total int64)) error {
	return FetchSized(ctx, client, src, sha256hex, dest, -1, progress)
}

// FetchSized is Fetch for a file whose size the target state gives (size >=
// 0; -1: unknown, as Fetch). A download stops at once when it passes size,
// and a Content-Length or Content-Range total above it is refused before
// reading: the .part never holds more than size bytes, is removed, and the
// error wraps ErrTooLarge naming the file, its size and the source.
func FetchSized(ctx context.Context, client *http.Client, src, sha256hex, dest string, size int64, progress func(done, total int64)) error {
	want, err := normHex(sha256hex)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", src, err)
	}
	u, err := url.Parse(src)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", src, err)
	}
	switch u.Scheme {
	case "http", "https", "file":
	default:
		return fmt.Errorf("fetch %s: want an http, https or file URL", src)
	}
	if got, err := FileSHA256(dest); err == nil && got == want {
		return nil
	}
	part := dest + ".part"
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", src, err)
	}
	defer f.Close()
	// Two downloads into one .part would interleave; the lock ends with f.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("fetch %s to %s: %w", src, dest, ErrBusy)
	}
	d := &download{ctx: ctx, f: f, h: sha256.New(), progress: progress, part: part, limit: size}
	if err := d.hashExisting(); err != nil {
		return fmt.Errorf("fetch %s: resume %s: %w", src, part, err)
	}
	if size >= 0 && d.done > size { // left by a download without a size
		if err := d.restart(); err != nil {
			return fmt.Errorf("fetch %s: %w", src, err)
		}
	}
	if u.Scheme == "file" {
		err = d.fromFile(u.Path)
	} else {
		if client == nil {
			client = http.DefaultClient
		}
		err = d.fromHTTP(client, src)
	}
	if errors.Is(err, ErrTooLarge) {
		f.Close()
		os.Remove(part)
		return fmt.Errorf("fetch %s to %s: the target state gives it %d bytes: %w; nothing was kept: fix the file's size or its source", src, dest, size, err)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("fetch %s (%d bytes kept in %s): %w", src, d.done, part, err)
	}
	got := hex.EncodeToString(d.h.Sum(nil))
	if got != want {
		f.Close()
		os.Remove(part)
		if u.Scheme == "file" {
			return fmt.Errorf("fetch %s: the content does not have the expected sha256 %s: %w", src, want, ErrChecksum)
		}
		return fmt.Errorf("fetch %s: sha256 %s, want %s: %w", src, got, want, ErrChecksum)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fetch %s: sync %s: %w", src, part, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("fetch %s: close %s: %w", src, part, err)
	}
	if err := os.Rename(part, dest); err != nil {
		return fmt.Errorf("fetch %s: %w", src, err)
	}
	if err := syncDir(filepath.Dir(dest)); err != nil {
		return fmt.Errorf("fetch %s: %w", src, err)
	}
	return nil
}

// download is one Fetch in progress: the .part file, the running hash of
// everything in it, and how many bytes that is.
type download struct {
	ctx      context.Context
	f        *os.File
	h        hash.Hash
	done     int64     // bytes in the .part, all hashed
	total    int64     // size of the whole file, -1 when unknown
	reported int64     // done at the last progress call
	synced   int64     // done at the last fsync of the .part
	syncedAt time.Time // when that was
	started  bool      // progress was called since the last restart
	progress func(done, total int64)
	part     string
	buf      []byte
	limit    int64 // the file's size from the target state, -1: unknown
}

// checkTotal refuses a source that announces more than the file's size.
func (d *download) checkTotal(total int64, what string) error {
	if d.limit >= 0 && total > d.limit {
		return fmt.Errorf("the source announces %s %d: %w", what, total, ErrTooLarge)
	}
	return nil
}

// hashExisting hashes what a previous Fetch left in the .part.
func (d *download) hashExisting() error {
	if _, err := d.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	n, err := io.CopyBuffer(d.h, d.f, d.buffer())
	d.done, d.synced = n, n
	return err
}

// restart empties the .part and the hash.
func (d *download) restart() error {
	if err := d.f.Truncate(0); err != nil {
		return fmt.Errorf("truncate %s: %w", d.part, err)
	}
	if _, err := d.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("seek %s: %w", d.part, err)
	}
	d.h.Reset()
	d.done, d.reported, d.synced, d.started = 0, 0, 0, false
	return nil
}

func (d *download) buffer() []byte {
	if d.buf == nil {
		d.buf = make([]byte, bufSize)
	}
	return d.buf
}

// copyFrom appends r to the .part and the hash, reporting progress and
// checking ctx between chunks.
func (d *download) copyFrom(r io.Reader) error {
	buf := d.buffer()
	d.syncedAt = time.Now()
	d.report(false)
	for {
		if err := d.ctx.Err(); err != nil {
			return err
		}
		n, rerr := r.Read(buf)
		if d.limit >= 0 && d.done+int64(n) > d.limit {
			return fmt.Errorf("the source sent more than %d bytes: %w", d.limit, ErrTooLarge)
		}
		if n > 0 {
			if _, err := d.f.Write(buf[:n]); err != nil {
				return fmt.Errorf("write %s: %w", d.part, err)
			}
			d.h.Write(buf[:n])
			d.done += int64(n)
			if d.done-d.synced >= syncStep || time.Since(d.syncedAt) >= syncEvery {
				if err := d.f.Sync(); err != nil {
					return fmt.Errorf("sync %s: %w", d.part, err)
				}
				d.synced, d.syncedAt = d.done, time.Now()
			}
			d.report(false)
		}
		if rerr == io.EOF {
			d.report(true)
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// report calls progress at the start, every progressStep bytes, and when
// forced (the end).
func (d *download) report(force bool) {
	if d.progress == nil || !force && d.started && d.done-d.reported < progressStep {
		return
	}
	d.started, d.reported = true, d.done
	d.progress(d.done, d.total)
}

func (d *download) fromFile(path string) error {
	src, err := openRegular(path)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	d.total = st.Size()
	if err := d.checkTotal(d.total, "a file of"); err != nil {
		return err
	}
	if d.done > d.total {
		if err := d.restart(); err != nil {
			return err
		}
	}
	if _, err := src.Seek(d.done, io.SeekStart); err != nil {
		return err
	}
	return d.copyFrom(src)
}

func (d *download) fromHTTP(client *http.Client, src string) error {
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(d.ctx, http.MethodGet, src, nil)
		if err != nil {
			return err
		}
		// Transparent gzip would make byte ranges meaningless.
		req.Header.Set("Accept-Encoding", "identity")
		if d.done > 0 {
			req.Header.Set("Range", "bytes="+strconv.FormatInt(d.done, 10)+"-")
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		retry, err := d.response(resp)
		resp.Body.Close()
		if !retry || attempt > 0 {
			return err
		}
	}
}

// response handles one HTTP answer; retry says to ask again from zero.
func (d *download) response(resp *http.Response) (retry bool, err error) {
	switch resp.StatusCode {
	case http.StatusOK:
		if d.done > 0 { // the server ignored Range: start over
			if err := d.restart(); err != nil {
				return false, err
			}
		}
		if err := d.checkTotal(resp.ContentLength, "Content-Length"); err != nil {
			return false, err
		}
		d.total = resp.ContentLength
		return false, d.copyFrom(resp.Body)
	case http.StatusPartialContent:
		start, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != d.done {
			if err := d.restart(); err != nil {
				return false, err
			}
			return true, fmt.Errorf("server answered range %q to a request from byte %d", resp.Header.Get("Content-Range"), d.done)
		}
		if err := d.checkTotal(total, "a total length of"); err != nil {
			return false, err
		}
		if resp.ContentLength >= 0 {
			if err := d.checkTotal(d.done+resp.ContentLength, "a length of"); err != nil {
				return false, err
			}
		}
		d.total = total
		return false, d.copyFrom(resp.Body)
	case http.StatusRequestedRangeNotSatisfiable:
		// The .part is as long as the file or longer. If exactly as long it
		// may be complete: the hash check decides. Otherwise start over.
		_, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if ok && total == d.done {
			d.total = total
			d.report(true)
			return false, nil
		}
		if err := d.restart(); err != nil {
			return false, err
		}
		return true, fmt.Errorf("server refused range from byte %d (%s)", d.done, resp.Status)
	default:
		return false, fmt.Errorf("server answered %s", resp.Status)
	}
}

// parseContentRange reads "bytes START-END/TOTAL" or "bytes */TOTAL";
// total is -1 when the server wrote "*".
func parseContentRange(s string) (start, total int64, ok bool) {
	rest, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	total = -1
	if tot != "*" {
		t, err := strconv.ParseInt(tot, 10, 64)
		if err != nil || !digits(tot) {
			return 0, 0, false
		}
		total = t
	}
	if rng == "*" {
		return -1, total, true
	}
	first, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || !digits(first) {
		return 0, 0, false
	}
	return start, total, true
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// FileSHA256 hashes a regular file, streaming, and returns lowercase hex.
// Anything else (a FIFO, a device, a directory) is an error.
func FileSHA256(path string) (string, error) {
	f, err := openRegular(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 64<<10)); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// openRegular opens path for reading if it is a regular file. O_NONBLOCK
// makes opening a FIFO return at once instead of waiting for a writer; the
// type is checked on the open descriptor, so a swap after a stat does not
// matter.
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file (%s): want a regular file", path, kindOf(st.Mode()))
	}
	return f, nil
}

func kindOf(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeDevice != 0:
		return "a device"
	case m.IsDir():
		return "a directory"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return "mode " + m.String()
}

// normHex checks a sha256 hex digest and lowercases it.
func normHex(s string) (string, error) {
	if len(s) != 64 {
		return "", fmt.Errorf("sha256 %q: want 64 hex digits", s)
	}
	if _, err := hex.DecodeString(s); err != nil {
		return "", fmt.Errorf("sha256 %q: want 64 hex digits", s)
	}
	return strings.ToLower(s), nil
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
