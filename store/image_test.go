package store

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func samplePull(i int) ImagePull {
	return ImagePull{Digest: fmt.Sprintf("sha256:%064x", i), Ref: fmt.Sprintf("reg:5000/kiosk/ui@sha256:%064x", i), UpdateID: "u1",
		Layers: 3, LayersDone: 1, Done: 4 << 20, Total: 9 << 20, Updated: time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)}
}

// Image pulls survive a reopen, are replaced by digest, and go one by one
// or all at once but those of the update kept.
func TestImagePullsRoundTrip(t *testing.T) {
	j := openTest(t, nil)
	var got []ImagePull
	if err := j.View(func(tx *Tx) (err error) { got, err = tx.ImagePulls(); return err }); err != nil || len(got) != 0 {
		t.Fatalf("ImagePulls of a new journal: %v, %v; want none", got, err)
	}
	a, b, c := samplePull(1), samplePull(2), samplePull(3)
	c.UpdateID = "u0"
	if err := j.Update(func(tx *Tx) error {
		for _, p := range []ImagePull{b, a, c} {
			if err := tx.PutImagePull(p); err != nil {
				return err
			}
		}
		a.Done, a.LayersDone = 6<<20, 2
		return tx.PutImagePull(a)
	}); err != nil {
		t.Fatalf("PutImagePull: %v", err)
	}
	j = reopen(t, j, nil)
	if err := j.View(func(tx *Tx) (err error) { got, err = tx.ImagePulls(); return err }); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]ImagePull{a, b, c}, got); d != "" {
		t.Fatalf("ImagePulls after a reopen (-want +got):\n%s", d)
	}
	if err := j.Update(func(tx *Tx) error {
		if err := tx.DeleteImagePull(b.Digest); err != nil {
			return err
		}
		return tx.DeleteImagePulls("u1")
	}); err != nil {
		t.Fatal(err)
	}
	if err := j.View(func(tx *Tx) (err error) { got, err = tx.ImagePulls(); return err }); err != nil || len(got) != 1 || got[0].Digest != a.Digest {
		t.Fatalf("after deleting b and every record but update u1's: %v, %v; want a alone", got, err)
	}
	if err := j.Update(func(tx *Tx) error { return tx.DeleteImagePulls("") }); err != nil {
		t.Fatal(err)
	}
	if err := j.View(func(tx *Tx) (err error) { got, err = tx.ImagePulls(); return err }); err != nil || len(got) != 0 {
		t.Fatalf("after deleting all: %v, %v; want none", got, err)
	}
}

// Bad records are refused with ErrInvalid and change nothing; the bucket
// is bounded.
func TestImagePullsInvalid(t *testing.T) {
	j := openTest(t, nil)
	for name, mod := range map[string]func(p *ImagePull){
		"no digest":          func(p *ImagePull) { p.Digest = "" },
		"short digest":       func(p *ImagePull) { p.Digest = "sha256:abc" },
		"upper-case digest":  func(p *ImagePull) { p.Digest = strings.ToUpper(p.Digest) },
		"a path as digest":   func(p *ImagePull) { p.Digest = "sha256:../../" + strings.Repeat("0", 58) },
		"no reference":       func(p *ImagePull) { p.Ref = "" },
		"no update":          func(p *ImagePull) { p.UpdateID = "" },
		"more done than all": func(p *ImagePull) { p.Done = p.Total + 1 },
		"negative bytes":     func(p *ImagePull) { p.Done, p.Total = -1, -1 },
		"layers past all":    func(p *ImagePull) { p.LayersDone = p.Layers + 1 },
	} {
		p := samplePull(1)
		mod(&p)
		err := j.Update(func(tx *Tx) error { return tx.PutImagePull(p) })
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: PutImagePull(%+v) = %v, want ErrInvalid", name, p, err)
		}
	}
	err := j.Update(func(tx *Tx) error {
		for i := 0; i < MaxImagePulls; i++ {
			if err := tx.PutImagePull(samplePull(i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = j.Update(func(tx *Tx) error { return tx.PutImagePull(samplePull(MaxImagePulls)) })
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "at most") {
		t.Errorf("record %d: %v, want ErrInvalid naming the bound", MaxImagePulls+1, err)
	}
	if err := j.Update(func(tx *Tx) error { return tx.PutImagePull(samplePull(0)) }); err != nil {
		t.Errorf("replacing a record at the bound: %v", err)
	}
}

// A garbled record reads as ErrCorrupt, naming it.
func TestImagePullsCorrupt(t *testing.T) {
	j := openTest(t, nil)
	p := samplePull(1)
	if err := j.Update(func(tx *Tx) error { return tx.PutImagePull(p) }); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"not JSON": "{", "another key": fmt.Sprintf(`{"digest":"sha256:%064x","ref":"r","update_id":"u"}`, 9)} {
		if err := j.Update(func(tx *Tx) error {
			return tx.tx.Bucket([]byte(bucketImages)).Put([]byte(p.Digest), []byte(v))
		}); err != nil {
			t.Fatal(err)
		}
		err := j.View(func(tx *Tx) error { _, err := tx.ImagePulls(); return err })
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), bucketImages) {
			t.Errorf("%s: ImagePulls = %v, want ErrCorrupt naming the bucket", name, err)
		}
	}
}
