package store

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// bucketImages holds the download progress of the container images of the
// pending update (image manifest digest -> ImagePull), so that the status
// shows it also after a restart in the middle of a pull. It is made on the
// first write (journals of older versions lack it, which reads as empty).
// A record goes when its image is loaded into the engine or when the
// update ends: the bucket stays as small as the pending update's images.
const bucketImages = "images"

// MaxImagePulls bounds the records kept: more images than that in one
// update are still pulled, only their progress is not journalled.
const MaxImagePulls = 256

// ImagePull is the journalled progress of one image's download.
type ImagePull struct {
	Digest     string    `json:"digest"`    // the image's manifest digest, sha256:<64 hex>: the key
	Ref        string    `json:"ref"`       // the reference the target names
	UpdateID   string    `json:"update_id"` // the pending update that pulls it
	Layers     int       `json:"layers"`    // layers of the image
	LayersDone int       `json:"layers_done"`
	Done       int64     `json:"done"`  // bytes of the image on the device (config and layers)
	Total      int64     `json:"total"` // the image's size
	Updated    time.Time `json:"updated"`
}

func (p *ImagePull) validate() error {
	h, ok := strings.CutPrefix(p.Digest, "sha256:")
	if !ok || len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
		return fmt.Errorf("image pull: digest %q, want sha256:<64 lowercase hex>", p.Digest)
	}
	switch {
	case p.Ref == "":
		return fmt.Errorf("image pull %s: empty reference", p.Digest)
	case p.UpdateID == "":
		return fmt.Errorf("image pull %s: empty update id", p.Digest)
	case p.Layers < 0 || p.LayersDone < 0 || p.LayersDone > p.Layers:
		return fmt.Errorf("image pull %s: %d of %d layers done", p.Digest, p.LayersDone, p.Layers)
	case p.Total < 0 || p.Done < 0 || p.Done > p.Total:
		return fmt.Errorf("image pull %s: %d of %d bytes done", p.Digest, p.Done, p.Total)
	}
	return nil
}

// ImagePulls returns the journalled image downloads, by digest.
func (tx *Tx) ImagePulls() ([]ImagePull, error) {
	b := tx.tx.Bucket([]byte(bucketImages))
	if b == nil {
		return nil, nil
	}
	var out []ImagePull
	err := b.ForEach(func(k, v []byte) error {
		var p ImagePull
		if err := json.Unmarshal(v, &p); err != nil {
			return corrupt(bucketImages, string(k), err)
		}
		if err := p.validate(); err != nil {
			return corrupt(bucketImages, string(k), err)
		}
		if p.Digest != string(k) {
			return corrupt(bucketImages, string(k), fmt.Errorf("record of %s under another key", p.Digest))
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out, nil
}

// PutImagePull writes (replaces) the progress of one image. A new record
// beyond MaxImagePulls is ErrInvalid.
func (tx *Tx) PutImagePull(p ImagePull) error {
	if err := p.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	b, err := tx.tx.CreateBucketIfNotExists([]byte(bucketImages))
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketImages, err)
	}
	if b.Get([]byte(p.Digest)) == nil && b.Stats().KeyN >= MaxImagePulls {
		return fmt.Errorf("image pull %s: %w: %d images journalled already (at most %d)", p.Digest, ErrInvalid, b.Stats().KeyN, MaxImagePulls)
	}
	data, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode %s/%s: %w", bucketImages, p.Digest, err)
	}
	if err := b.Put([]byte(p.Digest), data); err != nil {
		return fmt.Errorf("write %s/%s: %w", bucketImages, p.Digest, err)
	}
	return nil
}

// DeleteImagePull removes the record of one image (none is no error).
func (tx *Tx) DeleteImagePull(digest string) error {
	b := tx.tx.Bucket([]byte(bucketImages))
	if b == nil {
		return nil
	}
	if err := b.Delete([]byte(digest)); err != nil {
		return fmt.Errorf("delete %s/%s: %w", bucketImages, digest, err)
	}
	return nil
}

// DeleteImagePulls removes every image record but those of update keep
// ("" keeps none).
func (tx *Tx) DeleteImagePulls(keep string) error {
	pulls, err := tx.ImagePulls()
	if err != nil {
		return err
	}
	for _, p := range pulls {
		if keep != "" && p.UpdateID == keep {
			continue
		}
		if err := tx.DeleteImagePull(p.Digest); err != nil {
			return err
		}
	}
	return nil
}
