package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// freeAddr picks a free 127.0.0.1 port.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// startRegistry runs the real docker-registry (distribution) under the
// test's temp dir on a free port and returns its host:port. extra is YAML
// appended to its config (an auth section). It is stopped by its pid.
func startRegistry(t *testing.T, extra string) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Skip("docker-registry not installed: the tests against a real registry did not run")
	}
	dir := t.TempDir()
	for try := 0; try < 5; try++ {
		addr := freeAddr(t)
		cfg := fmt.Sprintf("version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}, maintenance: {uploadpurging: {enabled: false}}}\nhttp: {addr: %s}\n%s", filepath.Join(dir, "data"), addr, extra)
		cfgPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("registry-%d.log", try)))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "serve", cfgPath)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop := func() {
			cmd.Process.Kill()
			<-exited
			logf.Close()
		}
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				deadline = time.Time{}
				continue
			default:
			}
			resp, err := http.Get("http://" + addr + "/v2/")
			if err == nil {
				resp.Body.Close()
				t.Cleanup(stop)
				return addr
			}
			time.Sleep(20 * time.Millisecond)
		}
		stop()
		log, _ := os.ReadFile(logf.Name())
		t.Logf("registry on %s did not start: %s", addr, log)
	}
	t.Fatal("docker-registry did not start on any port")
	return ""
}

// pusher pushes to a registry with its own HTTP API.
type pusher struct {
	t    *testing.T
	base string // http://host:port
	auth string // Authorization header, if the registry needs one
}

func (p pusher) do(method, u, ctype string, body []byte) *http.Response {
	p.t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		p.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if p.auth != "" {
		req.Header.Set("Authorization", p.auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	return resp
}

// blob uploads data monolithically (POST, then PUT with the digest).
func (p pusher) blob(repo string, data []byte) string {
	p.t.Helper()
	resp := p.do("POST", p.base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		p.t.Fatalf("start upload to %s: %s", repo, resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		p.t.Fatal(err)
	}
	base, _ := url.Parse(p.base)
	loc = base.ResolveReference(loc)
	q := loc.Query()
	d := sha(data)
	q.Set("digest", d)
	loc.RawQuery = q.Encode()
	resp = p.do("PUT", loc.String(), "application/octet-stream", data)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		p.t.Fatalf("upload blob to %s: %s %s", repo, resp.Status, body)
	}
	return d
}

func (p pusher) manifest(repo, ref, mediaType string, body []byte) string {
	p.t.Helper()
	resp := p.do("PUT", p.base+"/v2/"+repo+"/manifests/"+ref, mediaType, body)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		p.t.Fatalf("put manifest %s:%s: %s %s", repo, ref, resp.Status, b)
	}
	return sha(body)
}

// layer makes a gzip tar layer holding files; it returns the blob and the
// diff id (sha256 of the tar).
func layer(t *testing.T, files map[string][]byte) (blob []byte, diffID string) {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), ModTime: time.Unix(1, 0)}); err != nil {
			t.Fatal(err)
		}
		tw.Write(files[n])
	}
	tw.Close()
	var gb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gb, gzip.BestSpeed)
	zw.Write(tb.Bytes())
	zw.Close()
	return gb.Bytes(), sha(tb.Bytes())
}

func randomBytes(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// testImage is an image pushed to a registry.
type testImage struct {
	repo     string
	platform Platform
	config   []byte
	layers   [][]byte
	manifest []byte
	mtype    string
	digest   string // of the manifest
}

// pushImage pushes an image for platform with the given layers (each a
// map of files), as a Docker schema2 manifest, or OCI when oci is set.
func (p pusher) pushImage(repo string, plat Platform, oci bool, layerFiles ...map[string][]byte) testImage {
	p.t.Helper()
	img := testImage{repo: repo, platform: plat}
	var diffIDs []string
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	var layers []desc
	lt, ct, mt := MediaTypeDockerLayer, MediaTypeDockerConfig, MediaTypeDockerManifest
	if oci {
		lt, ct, mt = MediaTypeOCILayerGzip, MediaTypeOCIConfig, MediaTypeOCIManifest
	}
	for _, files := range layerFiles {
		b, diff := layer(p.t, files)
		diffIDs = append(diffIDs, diff)
		img.layers = append(img.layers, b)
		layers = append(layers, desc{lt, p.blob(repo, b), int64(len(b))})
	}
	cfg := map[string]any{
		"architecture": plat.Architecture, "os": plat.OS,
		"config": map[string]any{"Cmd": []string{"/bin/true"}, "Labels": map[string]string{"io.latch.test": repo}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	}
	if plat.Variant != "" {
		cfg["variant"] = plat.Variant
	}
	img.config, _ = json.Marshal(cfg)
	m := map[string]any{
		"schemaVersion": 2, "mediaType": mt,
		"config": desc{ct, p.blob(repo, img.config), int64(len(img.config))},
		"layers": layers,
	}
	img.manifest, _ = json.Marshal(m)
	img.mtype = mt
	img.digest = p.manifest(repo, sha(img.manifest), mt, img.manifest)
	return img
}

// pushList pushes a manifest list (or OCI index) of images under tag.
func (p pusher) pushList(repo, tag string, oci bool, imgs ...testImage) (digest string, body []byte) {
	p.t.Helper()
	type entry struct {
		MediaType string   `json:"mediaType"`
		Digest    string   `json:"digest"`
		Size      int      `json:"size"`
		Platform  Platform `json:"platform"`
	}
	var entries []entry
	for _, im := range imgs {
		entries = append(entries, entry{im.mtype, im.digest, len(im.manifest), im.platform})
	}
	mt := MediaTypeDockerManifestList
	if oci {
		mt = MediaTypeOCIIndex
	}
	body, _ = json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mt, "manifests": entries})
	return p.manifest(repo, tag, mt, body), body
}

// proxy stands in front of a real registry and does to its answers what
// a test asks: cut a blob after N bytes, ignore Range, corrupt a byte,
// demand credentials. Every request it sees is recorded.
type proxy struct {
	t      *testing.T
	target string // http://host:port of the registry
	srv    *httptest.Server

	mu sync.Mutex // guards the fields below
	// cutAfter > 0 cuts the next blob answer after that many body bytes.
	cutAfter int64
	// stallAfter > 0 stops the next blob answer after that many body
	// bytes, keeping the connection open until the client goes.
	stallAfter int64
	stripRange bool
	// corruptAt >= 0 flips the byte at that offset of each blob answer's body.
	corruptAt int64
	// gate, when set, answers a request itself when it returns true.
	gate     func(w http.ResponseWriter, r *http.Request) bool
	requests []seen
	// blobBytes counts the blob body bytes sent.
	blobBytes int64
}

type seen struct {
	Method, Path, Range, Auth string
}

func newProxy(t *testing.T, registryAddr string) *proxy {
	p := &proxy{t: t, target: "http://" + registryAddr, corruptAt: -1}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *proxy) addr() string { return strings.TrimPrefix(p.srv.URL, "http://") }

func (p *proxy) seen() []seen {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]seen(nil), p.requests...)
}

func (p *proxy) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.requests = append(p.requests, seen{r.Method, r.URL.Path, r.Header.Get("Range"), r.Header.Get("Authorization")})
	gate, strip, corruptAt := p.gate, p.stripRange, p.corruptAt
	isBlob := strings.Contains(r.URL.Path, "/blobs/sha256:")
	cut, stall := int64(0), int64(0)
	if isBlob {
		cut, p.cutAfter = p.cutAfter, 0
		stall, p.stallAfter = p.stallAfter, 0
	}
	p.mu.Unlock()
	if gate != nil && gate(w, r) {
		return
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, p.target+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	for k, vs := range r.Header {
		if k == "Authorization" || (k == "Range" && strip) {
			continue
		}
		out.Header[k] = vs
	}
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	var sent int64
	buf := make([]byte, 32<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if isBlob && corruptAt >= sent && corruptAt < sent+int64(n) {
				chunk[corruptAt-sent] ^= 0xff
			}
			if stall > 0 && sent+int64(n) >= stall {
				chunk = chunk[:stall-sent]
				w.Write(chunk)
				p.count(isBlob, int64(len(chunk)))
				w.(http.Flusher).Flush()
				<-r.Context().Done()
				return
			}
			if cut > 0 && sent+int64(n) >= cut {
				chunk = chunk[:cut-sent]
				w.Write(chunk)
				p.count(isBlob, int64(len(chunk)))
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler) // the connection is cut
			}
			w.Write(chunk)
			sent += int64(n)
			p.count(isBlob, int64(n))
		}
		if rerr != nil {
			return
		}
	}
}

func (p *proxy) count(isBlob bool, n int64) {
	if !isBlob {
		return
	}
	p.mu.Lock()
	p.blobBytes += n
	p.mu.Unlock()
}

func (p *proxy) sentBlobBytes() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blobBytes
}

// newClient makes a client for linux/amd64 (the test images' platform)
// unless opts names another, so the tests pass on any GOARCH.
func newClient(t *testing.T, opts Options) *Client {
	t.Helper()
	if opts.Platform == (Platform{}) {
		opts.Platform = linuxAMD64
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustRef(t *testing.T, s string) Reference {
	t.Helper()
	r, err := ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
