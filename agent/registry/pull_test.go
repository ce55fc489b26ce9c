package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	linuxAMD64 = Platform{OS: "linux", Architecture: "amd64"}
	linuxARM64 = Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	linuxARMv6 = Platform{OS: "linux", Architecture: "arm", Variant: "v6"}
	linuxARMv7 = Platform{OS: "linux", Architecture: "arm", Variant: "v7"}
	linux386   = Platform{OS: "linux", Architecture: "386"}
)

// TestPullByDigest pulls multi-layer images (Docker schema2 and OCI) from
// the real registry by digest and checks every blob byte for byte; a
// second pull fetches nothing.
func TestPullByDigest(t *testing.T) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	for _, oci := range []bool{false, true} {
		name := "docker"
		if oci {
			name = "oci"
		}
		t.Run(name, func(t *testing.T) {
			repo := "test/" + name
			im := p.pushImage(repo, linuxAMD64, oci,
				map[string][]byte{"bin/a": []byte("first layer")},
				map[string][]byte{"data/big": randomBytes(300<<10, 1)},
				map[string][]byte{"etc/c": []byte("third layer")})
			c := newClient(t, Options{Platform: linuxAMD64, Insecure: []string{addr}})
			ref := mustRef(t, addr+"/"+repo+"@"+im.digest)
			img, err := c.Image(ctxT(t), ref)
			if err != nil {
				t.Fatal(err)
			}
			if img.ManifestDigest != im.digest || img.ManifestMediaType != im.mtype {
				t.Fatalf("got manifest %s %s, want %s %s", img.ManifestDigest, img.ManifestMediaType, im.digest, im.mtype)
			}
			if len(img.Layers) != 3 {
				t.Fatalf("got %d layers, want 3", len(img.Layers))
			}
			if want := int64(len(im.config) + len(im.layers[0]) + len(im.layers[1]) + len(im.layers[2])); img.Size() != want {
				t.Errorf("image size %d, want %d", img.Size(), want)
			}
			dir := t.TempDir()
			var fetched int64
			if err := c.FetchImage(ctxT(t), img, dir, func(pr Progress) { fetched = max(fetched, pr.Fetched) }); err != nil {
				t.Fatal(err)
			}
			want := map[string][]byte{img.Config.Hex(): im.config}
			for i, l := range img.Layers {
				if l.Compression != Gzip {
					t.Errorf("layer %d compression %q, want gzip", i, l.Compression)
				}
				want[l.Hex()] = im.layers[i]
			}
			for h, b := range want {
				got, err := os.ReadFile(filepath.Join(dir, h))
				if err != nil || !bytes.Equal(got, b) {
					t.Fatalf("blob %s: got %d bytes (%v), want the %d pushed", h, len(got), err, len(b))
				}
			}
			if left, _ := filepath.Glob(filepath.Join(dir, "*.partial")); len(left) != 0 {
				t.Errorf("partial files left: %v", left)
			}
			// Again: everything is in dir, nothing is fetched.
			fetched = 0
			if err := c.FetchImage(ctxT(t), img, dir, func(pr Progress) { fetched += pr.Fetched }); err != nil {
				t.Fatal(err)
			}
			if fetched != 0 {
				t.Errorf("second pull fetched %d bytes, want 0", fetched)
			}
		})
	}
}

// TestManifestListPlatforms resolves a Docker manifest list and an OCI
// index with entries for all five device platforms.
func TestManifestListPlatforms(t *testing.T) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	plats := []Platform{linuxAMD64, linuxARM64, linuxARMv6, linuxARMv7, linux386}
	var imgs []testImage
	for i, pl := range plats {
		imgs = append(imgs, p.pushImage("test/multi", pl, false, map[string][]byte{"arch": []byte(pl.String()), "n": {byte(i)}}))
	}
	for _, oci := range []bool{false, true} {
		listDigest, _ := p.pushList("test/multi", "v1", oci, imgs...)
		for i, pl := range plats {
			c := newClient(t, Options{Platform: pl, Insecure: []string{addr}})
			img, err := c.Image(ctxT(t), mustRef(t, addr+"/test/multi@"+listDigest))
			if err != nil {
				t.Fatalf("%s: %v", pl, err)
			}
			if img.ManifestDigest != imgs[i].digest || img.Platform != pl {
				t.Errorf("oci=%v %s: got manifest %s for %s, want %s", oci, pl, img.ManifestDigest, img.Platform, imgs[i].digest)
			}
			if err := c.FetchImage(ctxT(t), img, t.TempDir(), nil); err != nil {
				t.Errorf("%s: fetch: %v", pl, err)
			}
		}
	}

	// An arm64 entry with no variant serves an arm64 (v8) device; an
	// ARMv7 device takes a v6 image when the list has no v7; an ARMv6
	// device never takes v7.
	noVariant := imgs[1]
	noVariant.platform = Platform{OS: "linux", Architecture: "arm64"}
	d, _ := p.pushList("test/multi", "arm64", false, imgs[0], noVariant)
	c := newClient(t, Options{Platform: linuxARM64, Insecure: []string{addr}})
	if img, err := c.Image(ctxT(t), mustRef(t, addr+"/test/multi@"+d)); err != nil || img.ManifestDigest != imgs[1].digest {
		t.Errorf("arm64 from an entry with no variant: got %v %v", img.ManifestDigest, err)
	}
	d, _ = p.pushList("test/multi", "v6only", false, imgs[0], imgs[2])
	c = newClient(t, Options{Platform: linuxARMv7, Insecure: []string{addr}})
	if img, err := c.Image(ctxT(t), mustRef(t, addr+"/test/multi@"+d)); err != nil || img.ManifestDigest != imgs[2].digest {
		t.Errorf("armv7 device, list with v6: got %v %v", img.ManifestDigest, err)
	}
	d, _ = p.pushList("test/multi", "v7only", false, imgs[0], imgs[3], imgs[4])
	c = newClient(t, Options{Platform: linuxARMv6, Insecure: []string{addr}})
	_, err := c.Image(ctxT(t), mustRef(t, addr+"/test/multi@"+d))
	if !errors.Is(err, ErrNoPlatform) {
		t.Fatalf("armv6 device, list without v6: got %v, want ErrNoPlatform", err)
	}
	for _, w := range []string{"linux/arm/v6", "linux/amd64, linux/arm/v7, linux/386"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %q", err, w)
		}
	}

	// A config for another platform than the device's is refused even
	// when the manifest is pinned directly.
	c = newClient(t, Options{Platform: linuxARMv7, Insecure: []string{addr}})
	img, err := c.Image(ctxT(t), mustRef(t, addr+"/test/multi@"+imgs[1].digest))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.FetchImage(ctxT(t), img, t.TempDir(), nil); !errors.Is(err, ErrWrongPlatform) {
		t.Errorf("arm64 image on an armv7 device: got %v, want ErrWrongPlatform", err)
	}
}

// TestResolve pins tags: a list tag gives the list's digest, an image tag
// the image manifest's.
func TestResolve(t *testing.T) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	im := p.pushImage("test/app", linuxAMD64, false, map[string][]byte{"a": []byte("a")})
	p.manifest("test/app", "v1", im.mtype, im.manifest)
	listDigest, _ := p.pushList("test/app", "multi", true, im)
	c := newClient(t, Options{Insecure: []string{addr}})
	for tag, want := range map[string]string{"v1": im.digest, "multi": listDigest} {
		got, err := c.Resolve(ctxT(t), mustRef(t, addr+"/test/app:"+tag))
		if err != nil || got != want {
			t.Errorf("resolve %s: got %s %v, want %s", tag, got, err, want)
		}
	}
	_, err := c.Resolve(ctxT(t), mustRef(t, addr+"/test/app:nope"))
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "MANIFEST_UNKNOWN") {
		t.Errorf("resolve a missing tag: got %v, want ErrNotFound naming MANIFEST_UNKNOWN", err)
	}
	if _, err := c.Image(ctxT(t), mustRef(t, addr+"/test/app:v1")); !errors.Is(err, ErrNotPinned) {
		t.Errorf("Image of a tag: got %v, want ErrNotPinned", err)
	}
}

// TestNotFound: a missing manifest, repository and blob are ErrNotFound
// with the registry's words, and leave nothing in the directory.
func TestNotFound(t *testing.T) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	im := p.pushImage("test/app", linuxAMD64, false, map[string][]byte{"a": []byte("a")})
	c := newClient(t, Options{Insecure: []string{addr}})
	missing := sha([]byte("nothing"))
	_, err := c.Image(ctxT(t), mustRef(t, addr+"/test/app@"+missing))
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "MANIFEST_UNKNOWN") || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing manifest: got %v", err)
	}
	_, err = c.Image(ctxT(t), mustRef(t, addr+"/test/other@"+im.digest))
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing repository: got %v", err)
	}
	dir := t.TempDir()
	_, err = c.FetchBlob(ctxT(t), mustRef(t, addr+"/test/app"), missing, 10, dir, nil)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "BLOB_UNKNOWN") {
		t.Errorf("missing blob: got %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, strings.TrimPrefix(missing, "sha256:"))); err == nil {
		t.Error("a missing blob left a file")
	}
}

// TestConcurrentFetchOfOneBlob: two fetches of one blob into one dir at
// once both succeed with the right bytes.
func TestConcurrentFetchOfOneBlob(t *testing.T) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	data := randomBytes(2<<20, 7)
	d := p.blob("test/app", data)
	c := newClient(t, Options{Insecure: []string{addr}})
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.FetchBlob(ctxT(t), mustRef(t, addr+"/test/app"), d, int64(len(data)), dir, nil)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("fetch %d: %v", i, err)
		}
	}
	got, _ := os.ReadFile(filepath.Join(dir, strings.TrimPrefix(d, "sha256:")))
	if !bytes.Equal(got, data) {
		t.Errorf("got %d bytes, want the %d pushed", len(got), len(data))
	}
}

// TestListAttacks: a list that lies about an entry's size, nests a list,
// or names no platform this device runs is refused by name.
func TestListAttacks(t *testing.T) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	im := p.pushImage("test/app", linuxAMD64, false, map[string][]byte{"a": []byte("a")})
	c := newClient(t, Options{Insecure: []string{addr}})
	sizes := map[string]int{}
	list := func(entries ...map[string]any) string {
		if entries == nil {
			entries = []map[string]any{}
		}
		body, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeOCIIndex, "manifests": entries})
		d := p.manifest("test/app", sha(body), MediaTypeOCIIndex, body)
		sizes[d] = len(body)
		return d
	}
	amd64 := map[string]any{"os": "linux", "architecture": "amd64"}
	inner := list(map[string]any{"mediaType": im.mtype, "digest": im.digest, "size": len(im.manifest), "platform": amd64})
	for name, tc := range map[string]struct {
		digest string
		want   error
		says   string
	}{
		"size too small": {list(map[string]any{"mediaType": im.mtype, "digest": im.digest, "size": len(im.manifest) - 1, "platform": amd64}), ErrSizeMismatch, "bytes"},
		"size too large": {list(map[string]any{"mediaType": im.mtype, "digest": im.digest, "size": 1 << 30, "platform": amd64}), nil, "size 1073741824"},
		"nested list":    {list(map[string]any{"mediaType": MediaTypeOCIIndex, "digest": inner, "size": sizes[inner], "platform": amd64}), ErrUnsupportedMediaType, "itself a list"},
		"no platform": {list(map[string]any{"mediaType": im.mtype, "digest": im.digest, "size": len(im.manifest)},
			map[string]any{"mediaType": im.mtype, "digest": im.digest, "size": len(im.manifest), "platform": map[string]any{"os": "windows", "architecture": "amd64"}}), ErrNoPlatform, "(no platform), windows/amd64"},
		"empty list": {list(), ErrNoPlatform, "empty"},
	} {
		_, err := c.Image(ctxT(t), mustRef(t, addr+"/test/app@"+tc.digest))
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: got %v, want %v saying %q", name, err, tc.want, tc.says)
		}
	}
}
