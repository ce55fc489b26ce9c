package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Progress of one blob, reported as it downloads.
type Progress struct {
	Digest string
	// Done is how many bytes of the blob are on disk, Total its size.
	Done, Total int64
	// Fetched is the bytes received over the network by this call;
	// Refetched is how many of them the device had had already (a
	// partial the server would not resume, or one found corrupt).
	Fetched, Refetched int64
}

// ProgressFunc is called from the fetching goroutine; it must not block
// for long.
type ProgressFunc func(Progress)

// progressStep is how many bytes go by between two progress reports.
const progressStep = 256 << 10

// FetchBlob makes dir/<hex> hold the blob digest of size bytes from the
// repository ref names, and returns that path. A blob already there is
// not fetched again. A download goes to dir/<hex>.partial and resumes from
// what that holds (Range: bytes=N-); it is fsynced, checked against the
// digest and the size, renamed into place and the directory fsynced. A
// server that sends past size is cut off at once. progress may be nil.
// FetchBlob does not retry: on an error the partial file stays (unless its
// bytes were found wrong) and the next call resumes from it.
func (c *Client) FetchBlob(ctx context.Context, ref Reference, digest string, size int64, dir string, progress ProgressFunc) (string, error) {
	op := "fetch blob"
	what := ref.Name() + "@" + digest
	if ref.Domain == "" || ref.Repository == "" {
		return "", fmt.Errorf("%s %s: the reference names no registry or repository", op, what)
	}
	if !ValidDigest(digest) {
		return "", fmt.Errorf("%s %s: digest is not sha256:<64 hex>", op, what)
	}
	if size <= 0 {
		return "", fmt.Errorf("%s %s: size %d; give the size the manifest names", op, what, size)
	}
	hexd := strings.TrimPrefix(digest, "sha256:")
	final := filepath.Join(dir, hexd)
	partial := final + ".partial"

	unlock, err := c.lockPath(ctx, final)
	if err != nil {
		return "", fmt.Errorf("%s %s: waiting for another fetch of it: %w", op, what, err)
	}
	defer unlock()

	if st, err := os.Lstat(final); err == nil {
		if st.Mode().IsRegular() && st.Size() == size {
			if progress != nil {
				progress(Progress{Digest: digest, Done: size, Total: size})
			}
			return final, nil
		}
		// Not what latch renames into place: take it out of the way.
		if err := os.Remove(final); err != nil {
			return "", fmt.Errorf("%s %s: remove %s, which is not the blob: %w", op, what, final, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%s %s: %w", op, what, err)
	}

	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE|syscallNoFollow, 0o600)
	if err != nil {
		return "", fmt.Errorf("%s %s: open %s: %w", op, what, partial, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", op, what, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s %s: %s is not a regular file; remove it", op, what, partial)
	}

	b := &blobFetch{c: c, op: op, what: what, ref: ref, digest: digest, size: size, f: f, progress: progress}
	if err := b.run(ctx); err != nil {
		// What is on disk stays for the next try, made durable so a
		// power cut keeps it.
		f.Sync()
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("%s %s: fsync %s: %w", op, what, partial, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("%s %s: close %s: %w", op, what, partial, err)
	}
	if err := os.Rename(partial, final); err != nil {
		return "", fmt.Errorf("%s %s: rename into place: %w", op, what, err)
	}
	if err := syncDir(dir); err != nil {
		return "", fmt.Errorf("%s %s: %w", op, what, err)
	}
	return final, nil
}

// lockPath serializes fetches of one blob path within this client; a
// fetch waiting for another gives up when ctx ends.
func (c *Client) lockPath(ctx context.Context, p string) (func(), error) {
	c.mu.Lock()
	sem := c.fetching[p]
	if sem == nil {
		sem = make(chan struct{}, 1)
		c.fetching[p] = sem
	}
	c.mu.Unlock()
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

type blobFetch struct {
	c        *Client
	op, what string
	ref      Reference
	digest   string
	size     int64
	f        *os.File
	progress ProgressFunc
	// h hashes the have bytes at the start of f.
	h                  hash.Hash
	have               int64
	fetched, refetched int64
	// pendingRefetch is bytes thrown away that count as refetched as
	// they come again.
	pendingRefetch int64
	// lastReport is the Done of the last progress report.
	lastReport int64
}

func (b *blobFetch) report(force bool) {
	if b.progress == nil || (!force && b.have-b.lastReport < progressStep) {
		return
	}
	b.lastReport = b.have
	b.progress(Progress{Digest: b.digest, Done: b.have, Total: b.size, Fetched: b.fetched, Refetched: b.refetched})
}

func (b *blobFetch) sum() string { return "sha256:" + hex.EncodeToString(b.h.Sum(nil)) }

// run brings the partial file to the whole, verified blob.
func (b *blobFetch) run(ctx context.Context) error {
	if err := b.hashPartial(); err != nil {
		return err
	}
	resumed := b.have > 0
	if b.have == b.size && b.sum() == b.digest {
		b.report(true)
		return nil
	}
	if b.have >= b.size {
		// Too long, or whole and wrong: start over.
		if err := b.restart(); err != nil {
			return err
		}
		resumed = false
	}
	b.report(true)
	for attempt := 0; ; attempt++ {
		err := b.get(ctx)
		if err == nil {
			if b.sum() == b.digest {
				b.report(true)
				return nil
			}
			err = fmt.Errorf("%s %s: %w: the bytes received have %s", b.op, b.what, ErrDigestMismatch, b.sum())
		}
		if errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrSizeMismatch) {
			// Nothing of the partial can be trusted for a resume.
			if rerr := b.restart(); rerr != nil {
				return rerr
			}
			if resumed && attempt == 0 {
				// The partial that was resumed was wrong (a torn
				// write, a corrupt disk): fetch it all once more.
				continue
			}
		}
		return err
	}
}

func (b *blobFetch) hashPartial() error {
	b.h = sha256.New()
	if _, err := b.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("%s %s: %w", b.op, b.what, err)
	}
	n, err := io.Copy(b.h, io.LimitReader(b.f, b.size+1))
	if err != nil {
		return fmt.Errorf("%s %s: read partial download: %w", b.op, b.what, err)
	}
	b.have = n
	return nil
}

// restart empties the partial file; what it held counts as fetched again
// once it comes back.
func (b *blobFetch) restart() error {
	if err := b.f.Truncate(0); err != nil {
		return fmt.Errorf("%s %s: truncate partial download: %w", b.op, b.what, err)
	}
	if _, err := b.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("%s %s: %w", b.op, b.what, err)
	}
	b.pendingRefetch += b.have
	b.have = 0
	b.h = sha256.New()
	return nil
}

// get asks for the bytes from have on and appends them, hashing.
func (b *blobFetch) get(ctx context.Context) error {
	hdr := http.Header{}
	if b.have > 0 {
		hdr.Set("Range", "bytes="+strconv.FormatInt(b.have, 10)+"-")
	}
	resp, err := b.c.do(ctx, b.op, b.ref, http.MethodGet, b.ref.Repository+"/blobs/"+b.digest, hdr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		if b.have > 0 {
			// The server will not resume: what is there comes again.
			if err := b.restart(); err != nil {
				return err
			}
		}
	case http.StatusPartialContent:
		start, err := contentRangeStart(resp.Header.Get("Content-Range"))
		if err != nil || start != b.have {
			return fmt.Errorf("%s %s: asked for bytes from %d, the registry sent Content-Range %q", b.op, b.what, b.have, resp.Header.Get("Content-Range"))
		}
	case http.StatusRequestedRangeNotSatisfiable:
		// The server has no bytes past have: what is there is all of
		// it, or wrong; the caller checks the digest.
		if b.have != b.size {
			return fmt.Errorf("%s %s: %w: the registry has no bytes past %d, the manifest gives %d", b.op, b.what, ErrSizeMismatch, b.have, b.size)
		}
		return nil
	default:
		return registryError(b.op, b.what, resp)
	}
	if resp.ContentLength >= 0 && b.have+resp.ContentLength > b.size {
		return fmt.Errorf("%s %s: %w: the registry announces %d bytes from %d, the manifest gives %d in all", b.op, b.what, ErrSizeMismatch, resp.ContentLength, b.have, b.size)
	}
	return b.copy(ctx, resp.Body)
}

// copy appends body to the partial file, never past size.
func (b *blobFetch) copy(ctx context.Context, body io.Reader) error {
	buf := make([]byte, 64<<10)
	w := io.MultiWriter(b.f, b.h)
	for {
		want := b.size - b.have + 1 // one byte more shows a server sending too much
		if want > int64(len(buf)) {
			want = int64(len(buf))
		}
		n, rerr := body.Read(buf[:want])
		if int64(n) > b.size-b.have {
			return fmt.Errorf("%s %s: %w: the registry sent more than the %d bytes the manifest gives; cut off", b.op, b.what, ErrSizeMismatch, b.size)
		}
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return fmt.Errorf("%s %s: write partial download: %w", b.op, b.what, err)
			}
			b.have += int64(n)
			b.fetched += int64(n)
			if b.pendingRefetch > 0 {
				r := min(int64(n), b.pendingRefetch)
				b.refetched += r
				b.pendingRefetch -= r
			}
			b.report(false)
		}
		if rerr == io.EOF {
			if b.have < b.size {
				return fmt.Errorf("%s %s: the connection ended at byte %d of %d; the next try resumes there", b.op, b.what, b.have, b.size)
			}
			return nil
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s %s: stopped at byte %d of %d: %w", b.op, b.what, b.have, b.size, ctx.Err())
			}
			return fmt.Errorf("%s %s: the connection broke at byte %d of %d (the next try resumes there): %w", b.op, b.what, b.have, b.size, rerr)
		}
	}
}

// contentRangeStart reads N of "bytes N-M/T".
func contentRangeStart(v string) (int64, error) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, fmt.Errorf("content range %q is not bytes N-M/T", v)
	}
	start, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, fmt.Errorf("content range %q is not bytes N-M/T", v)
	}
	return strconv.ParseInt(start, 10, 64)
}

// FetchImage fetches img's config (see FetchConfig) and all its layers
// into dir (see FetchBlob).
func (c *Client) FetchImage(ctx context.Context, img Image, dir string, progress ProgressFunc) error {
	if _, err := c.FetchConfig(ctx, img, dir, progress); err != nil {
		return err
	}
	for _, l := range img.Layers {
		if _, err := c.FetchBlob(ctx, img.Ref, l.Digest, l.Size, dir, progress); err != nil {
			return err
		}
	}
	return nil
}

// ImageConfig is what latch reads from an image's config.
type ImageConfig struct {
	Platform Platform
	// DiffIDs are the sha256 of each layer uncompressed, bottom first:
	// what the engine names layers by (see ChainIDs).
	DiffIDs []string
}

// maxConfig bounds the config latch parses.
const maxConfig = 8 << 20

// FetchConfig fetches img's config blob into dir (see FetchBlob), checks
// that it is for the client's platform and lists as many layers as the
// manifest, and returns it. The caller can then fetch only the layers the
// engine lacks (see ChainIDs and WriteDockerArchiveOmitting).
func (c *Client) FetchConfig(ctx context.Context, img Image, dir string, progress ProgressFunc) (ImageConfig, error) {
	p, err := c.FetchBlob(ctx, img.Ref, img.Config.Digest, img.Config.Size, dir, progress)
	if err != nil {
		return ImageConfig{}, err
	}
	cfg, err := ReadConfig(img, dir)
	if err != nil {
		return ImageConfig{}, err
	}
	if c.platform.matchRank(cfg.Platform) < 0 {
		return ImageConfig{}, fmt.Errorf("read image %s: %w: its config %s says %s, this device is %s", img.Ref, ErrWrongPlatform, p, cfg.Platform, c.platform)
	}
	return cfg, nil
}

// ReadConfig reads img's config from dir, where FetchConfig put it.
func ReadConfig(img Image, dir string) (ImageConfig, error) {
	p := filepath.Join(dir, img.Config.Hex())
	f, err := os.OpenFile(p, os.O_RDONLY|syscallNoFollow, 0)
	if err != nil {
		return ImageConfig{}, fmt.Errorf("read image config of %s: %w", img.Ref, err)
	}
	defer f.Close()
	var doc struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
		RootFS       struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.NewDecoder(io.LimitReader(f, maxConfig)).Decode(&doc); err != nil {
		return ImageConfig{}, fmt.Errorf("read image config of %s from %s: not JSON: %w", img.Ref, p, err)
	}
	if len(doc.RootFS.DiffIDs) != len(img.Layers) {
		return ImageConfig{}, fmt.Errorf("read image config of %s: it lists %d layers, the manifest %d", img.Ref, len(doc.RootFS.DiffIDs), len(img.Layers))
	}
	for i, d := range doc.RootFS.DiffIDs {
		if !ValidDigest(d) {
			return ImageConfig{}, fmt.Errorf("read image config of %s: diff id %d is %q, not sha256:<64 hex>", img.Ref, i, d)
		}
	}
	return ImageConfig{Platform: Platform{OS: doc.OS, Architecture: doc.Architecture, Variant: doc.Variant}, DiffIDs: doc.RootFS.DiffIDs}, nil
}
