package registry

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pulled pushes an image to a real registry and fetches it into a dir.
func pulled(t *testing.T, layerFiles ...map[string][]byte) (Image, testImage, string) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	im := p.pushImage("test/app", linuxAMD64, false, layerFiles...)
	c := newClient(t, Options{Platform: linuxAMD64, Insecure: []string{addr}})
	img, err := c.Image(ctxT(t), mustRef(t, addr+"/test/app@"+im.digest))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := c.FetchImage(ctxT(t), img, dir, nil); err != nil {
		t.Fatal(err)
	}
	return img, im, dir
}

// TestWriteDockerArchiveLayout reads the archive back: manifest.json last,
// the config and each layer byte for byte, a repeated layer stored once.
func TestWriteDockerArchiveLayout(t *testing.T) {
	img, im, dir := pulled(t, map[string][]byte{"a": []byte("a")}, map[string][]byte{"b": randomBytes(64<<10, 5)})
	size := img.Size()
	img.Layers = append(img.Layers, img.Layers[0]) // a layer used twice
	if img.Size() != size {
		t.Errorf("a layer used twice changes the image size from %d to %d", size, img.Size())
	}
	var buf bytes.Buffer
	if err := WriteDockerArchive(&buf, img, dir, "latch/test:v1"); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	files := map[string][]byte{}
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if _, dup := files[h.Name]; dup {
			t.Errorf("%s is in the archive twice", h.Name)
		}
		files[h.Name], _ = io.ReadAll(tr)
	}
	if names[len(names)-1] != "manifest.json" {
		t.Errorf("archive order %v: manifest.json is not last", names)
	}
	var m []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &m); err != nil || len(m) != 1 {
		t.Fatalf("manifest.json %s: %v", files["manifest.json"], err)
	}
	if !bytes.Equal(files[m[0].Config], im.config) || len(m[0].RepoTags) != 1 || m[0].RepoTags[0] != "latch/test:v1" {
		t.Errorf("manifest.json %+v: config or tags wrong", m[0])
	}
	want := [][]byte{im.layers[0], im.layers[1], im.layers[0]}
	if len(m[0].Layers) != 3 {
		t.Fatalf("manifest.json lists %d layers, want 3", len(m[0].Layers))
	}
	for i, l := range m[0].Layers {
		if !bytes.Equal(files[l], want[i]) {
			t.Errorf("layer %d (%s): %d bytes, want the %d pushed", i, l, len(files[l]), len(want[i]))
		}
	}

	// Bad input changes nothing and says what is wrong.
	for _, tc := range []struct {
		tag, wrong string
	}{
		{"latch/test", "name:tag"},
		{"latch/test:v1@" + img.ManifestDigest, "no digest"},
		{"Bad Tag", "white space"},
	} {
		var out bytes.Buffer
		if err := WriteDockerArchive(&out, img, dir, tc.tag); err == nil || !strings.Contains(err.Error(), tc.wrong) || out.Len() != 0 {
			t.Errorf("tag %q: got %v (%d bytes written), want an error saying %q", tc.tag, err, out.Len(), tc.wrong)
		}
	}
	var out bytes.Buffer
	if err := WriteDockerArchive(&out, img, t.TempDir(), ""); err == nil || !strings.Contains(err.Error(), "not downloaded") || out.Len() != 0 {
		t.Errorf("empty dir: got %v (%d bytes written)", err, out.Len())
	}
}

// dockerd is an engine the test started under its own temp dir.
type dockerd struct {
	sock   string
	client *http.Client
}

func startDockerd(t *testing.T) *dockerd {
	t.Helper()
	if os.Getenv("LATCH_EMULATED") == "1" {
		t.Skip("under qemu-user (LATCH_EMULATED=1): loading a docker archive into a real dockerd runs in the native suite only")
	}
	bin, err := exec.LookPath("dockerd")
	if err != nil {
		t.Skip("dockerd not installed: loading a docker archive into a real engine was not tested")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: loading a docker archive into a real dockerd was not tested")
	}
	// Unix socket paths are short: not under t.TempDir()'s long name.
	root, err := os.MkdirTemp("", "lreg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	sock := filepath.Join(root, "docker.sock")
	logf, err := os.Create(filepath.Join(root, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-H", "unix://"+sock, "--data-root", filepath.Join(root, "data"), "--exec-root", filepath.Join(root, "exec"),
		"--pidfile", filepath.Join(root, "dockerd.pid"), "--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Skipf("dockerd did not start (%v): loading a docker archive was not tested", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		logf.Close()
	})
	d := &dockerd{sock: sock, client: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", sock)
		},
	}}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := d.client.Get("http://docker/_ping")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return d
			}
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logf.Name())
			t.Skipf("dockerd exited at start: loading a docker archive was not tested; its log: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			t.Skipf("dockerd did not answer in 30s: loading a docker archive was not tested; its log: %s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// load streams an archive into POST /images/load and returns the
// engine's answer.
func (d *dockerd) load(t *testing.T, write func(io.Writer) error) (string, error) {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(write(pw)) }()
	req, _ := http.NewRequest("POST", "http://docker/v1.41/images/load?quiet=1", pr)
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err := d.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || bytes.Contains(b, []byte(`"error"`)) {
		return string(b), fmt.Errorf("load: %s %s", resp.Status, b)
	}
	return string(b), nil
}

func (d *dockerd) inspect(t *testing.T, name string) (int, map[string]any) {
	resp, err := d.client.Get("http://docker/v1.41/images/" + url.PathEscape(name) + "/json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v
}

// TestWriteDockerArchiveLoads: an image fetched blob by blob from the real
// registry loads into a real dockerd with its id, layers and tag; a blob
// corrupted on disk after the fetch loads nothing.
func TestWriteDockerArchiveLoads(t *testing.T) {
	img, im, dir := pulled(t, map[string][]byte{"bin/hello": []byte("#!/bin/sh\necho hi\n")}, map[string][]byte{"data/blob": randomBytes(200<<10, 6)})
	d := startDockerd(t)
	out, err := d.load(t, func(w io.Writer) error { return WriteDockerArchive(w, img, dir, "latch-test/app:v1") })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("engine: %s", strings.TrimSpace(out))
	code, v := d.inspect(t, "latch-test/app:v1")
	if code != 200 {
		t.Fatalf("inspect after load: %d %v", code, v)
	}
	if v["Id"] != img.Config.Digest {
		t.Errorf("loaded image id %v, want the config digest %s", v["Id"], img.Config.Digest)
	}
	var cfg struct {
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	json.Unmarshal(im.config, &cfg)
	layers, _ := v["RootFS"].(map[string]any)["Layers"].([]any)
	if fmt.Sprint(layers) != fmt.Sprint(cfg.RootFS.DiffIDs) {
		t.Errorf("loaded layers %v, want %v", layers, cfg.RootFS.DiffIDs)
	}

	// One byte of a layer rots on disk after the fetch: the archive is cut
	// short before manifest.json and the engine loads nothing.
	p := filepath.Join(dir, img.Layers[1].Hex())
	b, _ := os.ReadFile(p)
	b[len(b)/2] ^= 0x01
	os.WriteFile(p, b, 0o600)
	var werr error
	_, err = d.load(t, func(w io.Writer) error {
		werr = WriteDockerArchive(w, img, dir, "latch-test/app:rotten")
		return werr
	})
	if !errors.Is(werr, ErrDigestMismatch) || !strings.Contains(werr.Error(), img.Layers[1].Digest) {
		t.Errorf("rotten layer: WriteDockerArchive said %v, want ErrDigestMismatch naming the layer", werr)
	}
	if err == nil {
		t.Error("the engine accepted an archive with a rotten layer")
	}
	if code, _ := d.inspect(t, "latch-test/app:rotten"); code != 404 {
		t.Errorf("inspect of the rotten load: %d, want 404", code)
	}
}

// TestOmitLayersTheEngineHas: a second image that shares its bottom
// layers with one the engine has is fetched and loaded with only its new
// layer; omitting a layer the engine lacks loads nothing.
func TestOmitLayersTheEngineHas(t *testing.T) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	l1 := map[string][]byte{"bin/base": []byte("base")}
	l2 := map[string][]byte{"lib/big": randomBytes(100<<10, 21)}
	a := p.pushImage("test/a", linuxAMD64, false, l1, l2)
	b := p.pushImage("test/b", linuxAMD64, false, l1, l2, map[string][]byte{"app/new": []byte("new")})
	d := startDockerd(t)
	c := newClient(t, Options{Platform: linuxAMD64, Insecure: []string{addr}})

	imgA, err := c.Image(ctxT(t), mustRef(t, addr+"/test/a@"+a.digest))
	if err != nil {
		t.Fatal(err)
	}
	dirA := t.TempDir()
	if err := c.FetchImage(ctxT(t), imgA, dirA, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d.load(t, func(w io.Writer) error { return WriteDockerArchive(w, imgA, dirA, "latch-test/a:v1") }); err != nil {
		t.Fatal(err)
	}
	_, v := d.inspect(t, "latch-test/a:v1")
	var engineLayers []string
	for _, l := range v["RootFS"].(map[string]any)["Layers"].([]any) {
		engineLayers = append(engineLayers, l.(string))
	}
	has := map[string]bool{}
	for _, id := range ChainIDs(engineLayers) {
		has[id] = true
	}

	imgB, err := c.Image(ctxT(t), mustRef(t, addr+"/test/b@"+b.digest))
	if err != nil {
		t.Fatal(err)
	}
	dirB := t.TempDir()
	cfg, err := c.FetchConfig(ctxT(t), imgB, dirB, nil)
	if err != nil {
		t.Fatal(err)
	}
	chains := ChainIDs(cfg.DiffIDs)
	omit := func(i int) bool { return has[chains[i]] }
	var fetched int64
	for i, l := range imgB.Layers {
		if omit(i) {
			continue
		}
		if _, err := c.FetchBlob(ctxT(t), imgB.Ref, l.Digest, l.Size, dirB, func(p Progress) { fetched = max(fetched, p.Fetched) }); err != nil {
			t.Fatal(err)
		}
	}
	if want := imgB.Layers[2].Size; fetched != want || !omit(0) || !omit(1) || omit(2) {
		t.Fatalf("fetched %d bytes, want only the new layer's %d", fetched, want)
	}
	var out bytes.Buffer
	if err := WriteDockerArchive(&out, imgB, dirB, "latch-test/b:v1"); err == nil || !strings.Contains(err.Error(), "not downloaded") {
		t.Errorf("archive of b with layers missing, nothing omitted: got %v", err)
	}
	if _, err := d.load(t, func(w io.Writer) error { return WriteDockerArchiveOmitting(w, imgB, dirB, "latch-test/b:v1", omit) }); err != nil {
		t.Fatal(err)
	}
	if code, v := d.inspect(t, "latch-test/b:v1"); code != 200 || v["Id"] != imgB.Config.Digest {
		t.Fatalf("inspect b: %d %v", code, v["Id"])
	}

	// An image whose top layer the engine lacks, with that layer omitted:
	// the engine refuses the archive.
	cImg := p.pushImage("test/c", linuxAMD64, false, l1, l2, map[string][]byte{"app/other": []byte("other")})
	imgC, err := c.Image(ctxT(t), mustRef(t, addr+"/test/c@"+cImg.digest))
	if err != nil {
		t.Fatal(err)
	}
	dirC := t.TempDir()
	if _, err := c.FetchConfig(ctxT(t), imgC, dirC, nil); err != nil {
		t.Fatal(err)
	}
	tag := "latch-test/c:lacking"
	_, err = d.load(t, func(w io.Writer) error {
		return WriteDockerArchiveOmitting(w, imgC, dirC, tag, func(i int) bool { return true })
	})
	if err == nil {
		t.Error("the engine loaded an archive that omits a layer it lacks")
	}
	if code, _ := d.inspect(t, tag); code != 404 {
		t.Errorf("inspect %s: %d, want 404", tag, code)
	}
}

func TestChainIDs(t *testing.T) {
	// The chain ids of docker's own docs example are sha256 of "a b".
	a, b := sha([]byte("a")), sha([]byte("b"))
	got := ChainIDs([]string{a, b, a})
	second := sha([]byte(a + " " + b))
	if got[0] != a || got[1] != second || got[2] != sha([]byte(second+" "+a)) {
		t.Errorf("ChainIDs: %v", got)
	}
}
