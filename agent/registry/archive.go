package registry

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// WriteDockerArchive streams img as a docker-archive tarball (what
// POST /images/load and `docker load` read) to w: the config as
// <hex>.json, each layer as <hex>/layer.tar, read from the blobs
// FetchImage put in dir, and manifest.json last. repoTag ("name:tag") is
// the tag the engine gives the image; empty loads it untagged. Every blob
// is checked for its size before anything is written and for its digest
// as it streams; on a mismatch WriteDockerArchive returns before
// manifest.json, so an archive without it reaches the engine, which loads
// nothing (close the pipe with the error too: io.PipeWriter.CloseWithError).
func WriteDockerArchive(w io.Writer, img Image, dir string, repoTag string) error {
	return WriteDockerArchiveOmitting(w, img, dir, repoTag, nil)
}

// WriteDockerArchiveOmitting is WriteDockerArchive leaving out layer i
// when omit(i) says so: one the engine already has, by its chain id (see
// ChainIDs), need not be fetched nor sent, as the engine reads a layer's
// file only when it lacks that chain. manifest.json still lists it.
func WriteDockerArchiveOmitting(w io.Writer, img Image, dir string, repoTag string, omit func(i int) bool) error {
	op := "write docker archive"
	if repoTag != "" {
		r, err := ParseReference(repoTag)
		if err != nil {
			return fmt.Errorf("%s of %s: tag: %w", op, img.Ref, err)
		}
		if r.Digest != "" || r.Tag == "" {
			return fmt.Errorf("%s of %s: tag %q must be name:tag, with no digest", op, img.Ref, repoTag)
		}
	}
	blobs := []Blob{img.Config}
	for i, l := range img.Layers {
		if omit == nil || !omit(i) {
			blobs = append(blobs, l)
		}
	}
	for _, b := range blobs {
		if !ValidDigest(b.Digest) {
			return fmt.Errorf("%s of %s: blob digest %q is not sha256:<64 hex>", op, img.Ref, b.Digest)
		}
		st, err := os.Lstat(filepath.Join(dir, b.Hex()))
		if err != nil {
			return fmt.Errorf("%s of %s: blob %s is not downloaded: %w", op, img.Ref, b.Digest, err)
		}
		if !st.Mode().IsRegular() || st.Size() != b.Size {
			return fmt.Errorf("%s of %s: %w: blob %s in %s is %d bytes, the manifest gives %d; fetch it again", op, img.Ref, ErrSizeMismatch, b.Digest, dir, st.Size(), b.Size)
		}
	}

	type entry struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	e := entry{Config: img.Config.Hex() + ".json"}
	if repoTag != "" {
		e.RepoTags = []string{repoTag}
	}
	for _, l := range img.Layers {
		e.Layers = append(e.Layers, l.Hex()+"/layer.tar")
	}
	manifest, err := json.Marshal([]entry{e})
	if err != nil {
		return fmt.Errorf("%s of %s: %w", op, img.Ref, err)
	}

	tw := tar.NewWriter(w)
	mtime := time.Unix(0, 0)
	written := map[string]bool{}
	if err := writeBlob(tw, dir, img.Config, e.Config, mtime); err != nil {
		return fmt.Errorf("%s of %s: %w", op, img.Ref, err)
	}
	for i, l := range img.Layers {
		if written[l.Digest] || (omit != nil && omit(i)) {
			continue // a layer used twice is stored once
		}
		written[l.Digest] = true
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: l.Hex() + "/", Mode: 0o755, ModTime: mtime}); err != nil {
			return fmt.Errorf("%s of %s: %w", op, img.Ref, err)
		}
		if err := writeBlob(tw, dir, l, e.Layers[i], mtime); err != nil {
			return fmt.Errorf("%s of %s: %w", op, img.Ref, err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "manifest.json", Mode: 0o644, Size: int64(len(manifest)), ModTime: mtime}); err != nil {
		return fmt.Errorf("%s of %s: %w", op, img.Ref, err)
	}
	if _, err := tw.Write(manifest); err != nil {
		return fmt.Errorf("%s of %s: %w", op, img.Ref, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("%s of %s: %w", op, img.Ref, err)
	}
	return nil
}

// writeBlob streams one blob file into the archive as name, checking its
// digest on the way.
func writeBlob(tw *tar.Writer, dir string, b Blob, name string, mtime time.Time) error {
	p := filepath.Join(dir, b.Hex())
	f, err := os.OpenFile(p, os.O_RDONLY|syscallNoFollow, 0)
	if err != nil {
		return fmt.Errorf("open blob %s: %w", b.Digest, err)
	}
	defer f.Close()
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: b.Size, ModTime: mtime}); err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tw, h), io.LimitReader(f, b.Size))
	if err != nil {
		return fmt.Errorf("copy blob %s: %w", b.Digest, err)
	}
	if n != b.Size {
		return fmt.Errorf("copy blob %s: %w: %s has %d bytes, the manifest gives %d", b.Digest, ErrSizeMismatch, p, n, b.Size)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != b.Digest {
		return fmt.Errorf("copy blob %s: %w: %s now has %s; remove it and fetch it again", b.Digest, ErrDigestMismatch, p, got)
	}
	return nil
}

// ChainIDs gives the chain id of each layer from the diff ids, bottom
// first: the engine's name for a layer with all those below it (the first
// diff id, then sha256 of "<chain id below> <diff id>").
func ChainIDs(diffIDs []string) []string {
	out := make([]string, len(diffIDs))
	for i, d := range diffIDs {
		if i == 0 {
			out[i] = d
			continue
		}
		sum := sha256.Sum256([]byte(out[i-1] + " " + d))
		out[i] = "sha256:" + hex.EncodeToString(sum[:])
	}
	return out
}
