package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
)

// Media types latch reads.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeOCIManifest        = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeOCIIndex           = "application/vnd.oci.image.index.v1+json"

	MediaTypeDockerConfig = "application/vnd.docker.container.image.v1+json"
	MediaTypeOCIConfig    = "application/vnd.oci.image.config.v1+json"

	MediaTypeDockerLayer        = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	MediaTypeDockerForeignLayer = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
	MediaTypeOCILayer           = "application/vnd.oci.image.layer.v1.tar"
	MediaTypeOCILayerGzip       = "application/vnd.oci.image.layer.v1.tar+gzip"
	MediaTypeOCILayerZstd       = "application/vnd.oci.image.layer.v1.tar+zstd"
)

// acceptManifests is the Accept header of a manifest request: all four
// kinds latch reads.
var acceptManifests = strings.Join([]string{MediaTypeDockerManifestList, MediaTypeOCIIndex, MediaTypeDockerManifest, MediaTypeOCIManifest}, ", ")

// maxManifest bounds a manifest's size (distribution refuses larger ones).
const maxManifest = 4 << 20

// Compression of a layer blob.
type Compression string

const (
	Uncompressed Compression = "none"
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
)

// Blob is one content-addressed part of an image.
type Blob struct {
	Digest    string // sha256:<64 hex>
	Size      int64
	MediaType string
	// Compression of a layer; empty for a config.
	Compression Compression
}

// Hex is the digest without "sha256:", the blob's file name in a
// download directory.
func (b Blob) Hex() string { return strings.TrimPrefix(b.Digest, "sha256:") }

// Image is one platform's image: the manifest it was read from, its config
// and its layers, bottom first.
type Image struct {
	// Ref is the pinned reference the caller asked for.
	Ref Reference
	// ManifestDigest is the digest of the image manifest itself: Ref's
	// digest, or that of the list entry chosen for the platform.
	ManifestDigest string
	// ManifestMediaType is the image manifest's media type.
	ManifestMediaType string
	// Platform is the list entry's platform; zero when Ref named an
	// image manifest directly (the config's platform is checked when it
	// is fetched).
	Platform Platform
	Config   Blob
	Layers   []Blob
}

// Size is the bytes of the config and the layers (a layer used twice
// counted once): the total a progress display shows for the image.
func (img Image) Size() int64 {
	seen := map[string]bool{img.Config.Digest: true}
	n := img.Config.Size
	for _, l := range img.Layers {
		if !seen[l.Digest] {
			seen[l.Digest] = true
			n += l.Size
		}
	}
	return n
}

type descriptor struct {
	MediaType string    `json:"mediaType"`
	Digest    string    `json:"digest"`
	Size      int64     `json:"size"`
	Platform  *Platform `json:"platform,omitempty"`
}

type manifestDoc struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        *descriptor  `json:"config"`
	Layers        []descriptor `json:"layers"`
	Manifests     []descriptor `json:"manifests"`
}

// fetchManifest gets the manifest that ref (by digest or by tag) names and
// returns its exact bytes, its media type and its digest. A manifest asked
// by digest is checked against it before anything reads it.
func (c *Client) fetchManifest(ctx context.Context, ref Reference, want string) ([]byte, string, string, error) {
	op := "fetch manifest"
	if ref.Domain == "" || ref.Repository == "" {
		return nil, "", "", fmt.Errorf("%s %q: the reference names no registry or repository", op, ref.String())
	}
	mref := ref.manifestRef()
	if want != "" {
		mref = want
	}
	resp, err := c.do(ctx, op, ref, http.MethodGet, ref.Repository+"/manifests/"+mref, http.Header{"Accept": {acceptManifests}})
	if err != nil {
		return nil, "", "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", "", registryError(op, refAt(ref, mref), resp)
	}
	if resp.ContentLength > maxManifest {
		return nil, "", "", fmt.Errorf("%s %s: manifest is %d bytes, over the %d latch reads", op, refAt(ref, mref), resp.ContentLength, maxManifest)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
	if err != nil {
		return nil, "", "", fmt.Errorf("%s %s: reading the answer: %w", op, refAt(ref, mref), err)
	}
	if len(body) > maxManifest {
		return nil, "", "", fmt.Errorf("%s %s: manifest is over the %d bytes latch reads", op, refAt(ref, mref), maxManifest)
	}
	sum := sha256.Sum256(body)
	got := "sha256:" + hex.EncodeToString(sum[:])
	if ValidDigest(mref) && got != mref {
		return nil, "", "", fmt.Errorf("%s %s: %w: the registry sent a manifest whose sha256 is %s", op, refAt(ref, mref), ErrDigestMismatch, got)
	}
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	return body, ct, got, nil
}

func refAt(ref Reference, mref string) string {
	r := ref
	if ValidDigest(mref) {
		r.Digest = mref
	}
	return r.String()
}

// parseManifest decodes a manifest and settles its media type: the
// document's own mediaType, else the Content-Type, else its shape (OCI
// makes mediaType optional).
func parseManifest(body []byte, contentType string) (manifestDoc, string, error) {
	var m manifestDoc
	if err := json.Unmarshal(body, &m); err != nil {
		return m, "", fmt.Errorf("manifest is not JSON: %w", err)
	}
	mt := m.MediaType
	if mt == "" {
		switch contentType {
		case MediaTypeDockerManifest, MediaTypeDockerManifestList, MediaTypeOCIManifest, MediaTypeOCIIndex:
			mt = contentType
		default:
			switch {
			case m.Manifests != nil && m.Config == nil:
				mt = MediaTypeOCIIndex
			case m.Config != nil && m.Manifests == nil:
				mt = MediaTypeOCIManifest
			}
		}
	}
	switch mt {
	case MediaTypeDockerManifest, MediaTypeDockerManifestList, MediaTypeOCIManifest, MediaTypeOCIIndex:
	case "":
		return m, "", fmt.Errorf("%w: manifest names no media type and the registry sent Content-Type %q", ErrUnsupportedMediaType, contentType)
	default:
		return m, "", fmt.Errorf("%w: manifest is %q; latch reads Docker schema2 manifests and lists and OCI manifests and indexes", ErrUnsupportedMediaType, mt)
	}
	if m.SchemaVersion != 2 {
		return m, "", fmt.Errorf("%w: manifest has schemaVersion %d, latch reads 2", ErrUnsupportedMediaType, m.SchemaVersion)
	}
	return m, mt, nil
}

func isList(mt string) bool { return mt == MediaTypeDockerManifestList || mt == MediaTypeOCIIndex }

// Image reads the image a pinned reference names. A manifest list or
// index resolves to the client's platform; the manifest bytes are checked
// against their digests before use.
func (c *Client) Image(ctx context.Context, ref Reference) (Image, error) {
	op := "read image"
	if ref.Digest == "" {
		return Image{}, fmt.Errorf("%s %s: %w: pin it as name@sha256:<64 hex>", op, ref, ErrNotPinned)
	}
	body, ct, digest, err := c.fetchManifest(ctx, ref, "")
	if err != nil {
		return Image{}, err
	}
	m, mt, err := parseManifest(body, ct)
	if err != nil {
		return Image{}, fmt.Errorf("%s %s: %w", op, ref, err)
	}
	img := Image{Ref: ref, ManifestDigest: digest, ManifestMediaType: mt}
	if isList(mt) {
		d, err := c.choose(m.Manifests)
		if err != nil {
			return Image{}, fmt.Errorf("%s %s: %w", op, ref, err)
		}
		body, ct, digest, err = c.fetchManifest(ctx, ref, d.Digest)
		if err != nil {
			return Image{}, err
		}
		if int64(len(body)) != d.Size {
			return Image{}, fmt.Errorf("%s %s: %w: the list gives the %s manifest %d bytes, the registry sent %d", op, ref, ErrSizeMismatch, d.Platform, d.Size, len(body))
		}
		m, mt, err = parseManifest(body, ct)
		if err != nil {
			return Image{}, fmt.Errorf("%s %s: the %s entry %s: %w", op, ref, d.Platform, d.Digest, err)
		}
		if isList(mt) {
			return Image{}, fmt.Errorf("%s %s: %w: the %s entry %s is itself a list; latch reads one level", op, ref, ErrUnsupportedMediaType, d.Platform, d.Digest)
		}
		img.ManifestDigest, img.ManifestMediaType, img.Platform = digest, mt, *d.Platform
	}
	if err := fillImage(&img, m); err != nil {
		return Image{}, fmt.Errorf("%s %s: %w", op, ref, err)
	}
	return img, nil
}

// choose picks the list entry this device runs best.
func (c *Client) choose(entries []descriptor) (descriptor, error) {
	best, rank := -1, -1
	var offered []string
	for i, d := range entries {
		if d.Platform == nil {
			offered = append(offered, "(no platform)")
			continue
		}
		offered = append(offered, d.Platform.String())
		r := c.platform.matchRank(*d.Platform)
		if r < 0 {
			continue
		}
		if best < 0 || r < rank {
			best, rank = i, r
		}
	}
	if best < 0 {
		if len(offered) == 0 {
			return descriptor{}, fmt.Errorf("%w: the list is empty, this device is %s", ErrNoPlatform, c.platform)
		}
		return descriptor{}, fmt.Errorf("%w: this device is %s, the list offers %s", ErrNoPlatform, c.platform, strings.Join(offered, ", "))
	}
	d := entries[best]
	if !ValidDigest(d.Digest) {
		return descriptor{}, fmt.Errorf("the %s entry has digest %q, not sha256:<64 hex>", d.Platform, d.Digest)
	}
	if d.Size <= 0 || d.Size > maxManifest {
		return descriptor{}, fmt.Errorf("the %s entry gives size %d", d.Platform, d.Size)
	}
	return d, nil
}

func fillImage(img *Image, m manifestDoc) error {
	if m.Config == nil {
		return fmt.Errorf("manifest has no config")
	}
	switch m.Config.MediaType {
	case MediaTypeDockerConfig, MediaTypeOCIConfig:
	default:
		return fmt.Errorf("%w: config is %q, not a container image config (an artifact that is not an image?)", ErrUnsupportedMediaType, m.Config.MediaType)
	}
	cfg, err := checkDescriptor("config", *m.Config)
	if err != nil {
		return err
	}
	img.Config = cfg
	if len(m.Layers) == 0 {
		return fmt.Errorf("manifest has no layers")
	}
	img.Layers = make([]Blob, 0, len(m.Layers))
	for i, d := range m.Layers {
		b, err := checkDescriptor(fmt.Sprintf("layer %d", i), d)
		if err != nil {
			return err
		}
		switch d.MediaType {
		case MediaTypeDockerLayer, MediaTypeDockerForeignLayer, MediaTypeOCILayerGzip,
			"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip":
			b.Compression = Gzip
		case MediaTypeOCILayer, "application/vnd.oci.image.layer.nondistributable.v1.tar":
			b.Compression = Uncompressed
		case MediaTypeOCILayerZstd, "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd":
			b.Compression = Zstd
		default:
			return fmt.Errorf("%w: layer %d (%s) is %q, not a tar layer", ErrUnsupportedMediaType, i, d.Digest, d.MediaType)
		}
		img.Layers = append(img.Layers, b)
	}
	return nil
}

func checkDescriptor(what string, d descriptor) (Blob, error) {
	if !ValidDigest(d.Digest) {
		return Blob{}, fmt.Errorf("%s has digest %q, not sha256:<64 hex>", what, d.Digest)
	}
	if d.Size <= 0 {
		return Blob{}, fmt.Errorf("%s %s has size %d", what, d.Digest, d.Size)
	}
	return Blob{Digest: d.Digest, Size: d.Size, MediaType: d.MediaType}, nil
}

// Resolve gives the digest of the manifest ref names (a tag, for the
// publishing side to pin it): the sha256 of the exact bytes the registry
// serves, so a list stays a list and each device resolves its platform.
func (c *Client) Resolve(ctx context.Context, ref Reference) (string, error) {
	body, ct, digest, err := c.fetchManifest(ctx, ref, "")
	if err != nil {
		return "", err
	}
	if _, _, err := parseManifest(body, ct); err != nil {
		return "", fmt.Errorf("resolve %s: %w", ref, err)
	}
	return digest, nil
}
