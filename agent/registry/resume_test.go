package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// blobSetup pushes one random blob of n bytes to a real registry behind a
// proxy and gives a client that talks to the proxy.
func blobSetup(t *testing.T, n int) (px *proxy, ref Reference, digest string, data []byte) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	data = randomBytes(n, int64(n))
	digest = p.blob("test/app", data)
	px = newProxy(t, addr)
	return px, mustRef(t, px.addr()+"/test/app"), digest, data
}

func checkBlob(t *testing.T, dir, digest string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(dir, strings.TrimPrefix(digest, "sha256:")))
	if err != nil {
		t.Fatalf("blob not in place: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("blob has %d bytes, not the %d pushed", len(got), len(want))
	}
	if _, err := os.Stat(filepath.Join(dir, strings.TrimPrefix(digest, "sha256:")+".partial")); err == nil {
		t.Error("the .partial file is left next to the blob")
	}
}

// TestResumeAfterCut: the connection is cut mid-blob; a new client (as
// after a restart or power cut) resumes with Range and fetches only what
// was missing.
func TestResumeAfterCut(t *testing.T) {
	const size, cut = 3 << 20, 1<<20 + 12345
	px, ref, digest, data := blobSetup(t, size)
	dir := t.TempDir()
	px.mu.Lock()
	px.cutAfter = cut
	px.mu.Unlock()
	_, err := newClient(t, Options{Insecure: []string{px.addr()}}).FetchBlob(ctxT(t), ref, digest, size, dir, nil)
	if err == nil || !strings.Contains(err.Error(), digest) {
		t.Fatalf("cut download: got %v, want an error naming the blob", err)
	}
	partial := filepath.Join(dir, strings.TrimPrefix(digest, "sha256:")+".partial")
	st, err := os.Stat(partial)
	if err != nil || st.Size() != cut {
		t.Fatalf("partial after the cut: %v, size %d, want %d", err, st.Size(), cut)
	}

	var last Progress
	before := px.sentBlobBytes()
	_, err = newClient(t, Options{Insecure: []string{px.addr()}}).FetchBlob(ctxT(t), ref, digest, size, dir, func(p Progress) { last = p })
	if err != nil {
		t.Fatal(err)
	}
	checkBlob(t, dir, digest, data)
	reqs := px.seen()
	if got := reqs[len(reqs)-1].Range; got != fmt.Sprintf("bytes=%d-", cut) {
		t.Errorf("resume asked Range %q, want bytes=%d-", got, cut)
	}
	sent := px.sentBlobBytes() - before
	t.Logf("after a cut at %d of %d bytes, the resume fetched %d bytes (%d again)", cut, size, sent, last.Refetched)
	if sent != size-cut || last.Fetched != size-cut || last.Refetched != 0 || last.Done != size || last.Total != size {
		t.Errorf("resume: server sent %d, progress %+v; want %d fetched, 0 again, done %d", sent, last, size-cut, size)
	}
}

// TestServerIgnoresRange: a server that answers 200 to a Range request
// makes the download start over, and the bytes fetched again are counted.
func TestServerIgnoresRange(t *testing.T) {
	const size, have = 1 << 20, 400 << 10
	px, ref, digest, data := blobSetup(t, size)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, strings.TrimPrefix(digest, "sha256:")+".partial"), data[:have], 0o600)
	px.mu.Lock()
	px.stripRange = true
	px.mu.Unlock()
	var last Progress
	if _, err := newClient(t, Options{Insecure: []string{px.addr()}}).FetchBlob(ctxT(t), ref, digest, size, dir, func(p Progress) { last = p }); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, dir, digest, data)
	if last.Fetched != size || last.Refetched != have {
		t.Errorf("progress %+v, want %d fetched of which %d again", last, size, have)
	}
	gets := 0
	for _, s := range px.seen() {
		if strings.Contains(s.Path, "/blobs/") {
			gets++
		}
	}
	if gets != 1 {
		t.Errorf("%d blob requests, want 1 (the 200 answer is the blob)", gets)
	}
}

// TestCorruptPartial: a partial whose bytes are wrong (a torn write) is
// found out by the digest after the resume, and fetched whole once more.
func TestCorruptPartial(t *testing.T) {
	const size, have = 1 << 20, 300 << 10
	px, ref, digest, data := blobSetup(t, size)
	c := newClient(t, Options{Insecure: []string{px.addr()}})
	for _, tc := range []struct {
		name    string
		partial []byte
	}{
		{"wrong bytes", append(append([]byte{}, data[:have-1]...), data[have-1]^1)},
		{"zeros", make([]byte, have)},
		{"longer than the blob", append(append([]byte{}, data...), 'x')},
		{"whole but wrong", append(append([]byte{}, data[:size-1]...), data[size-1]^1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, strings.TrimPrefix(digest, "sha256:")+".partial"), tc.partial, 0o600)
			var last Progress
			if _, err := c.FetchBlob(ctxT(t), ref, digest, size, dir, func(p Progress) { last = p }); err != nil {
				t.Fatal(err)
			}
			checkBlob(t, dir, digest, data)
			if last.Done != size {
				t.Errorf("progress %+v, want done %d", last, size)
			}
		})
	}
}

// TestBadDigest: a registry (or a man in the middle) sending wrong bytes
// is caught for blobs and manifests; nothing is left in place.
func TestBadDigest(t *testing.T) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	im := p.pushImage("test/app", linuxAMD64, false, map[string][]byte{"data": randomBytes(100<<10, 3)})
	px := newProxy(t, addr)
	c := newClient(t, Options{Insecure: []string{px.addr()}})
	ref := mustRef(t, px.addr()+"/test/app@"+im.digest)
	img, err := c.Image(ctxT(t), ref)
	if err != nil {
		t.Fatal(err)
	}
	px.mu.Lock()
	px.corruptAt = 5000
	px.mu.Unlock()
	dir := t.TempDir()
	l := img.Layers[0]
	_, err = c.FetchBlob(ctxT(t), ref, l.Digest, l.Size, dir, nil)
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), l.Digest) {
		t.Fatalf("corrupted blob: got %v, want ErrDigestMismatch naming %s", err, l.Digest)
	}
	if _, err := os.Stat(filepath.Join(dir, l.Hex())); err == nil {
		t.Fatal("a corrupt blob was put in place")
	}
	if st, err := os.Stat(filepath.Join(dir, l.Hex()+".partial")); err == nil && st.Size() != 0 {
		t.Errorf("a corrupt download is kept for a resume (%d bytes)", st.Size())
	}

	// A manifest that does not hash to the digest asked.
	px.mu.Lock()
	px.corruptAt = -1
	px.gate = func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			w.Header().Set("Content-Type", MediaTypeDockerManifest)
			w.Write(bytes.Replace(im.manifest, []byte(`"size"`), []byte(`"size" `), 1))
			return true
		}
		return false
	}
	px.mu.Unlock()
	if _, err := c.Image(ctxT(t), ref); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("tampered manifest: got %v, want ErrDigestMismatch", err)
	}
}

// TestEndlessServer: a server that never stops sending is cut off right
// past the size the manifest gives, for blobs, and at a bound for
// manifests and tokens.
func TestEndlessServer(t *testing.T) {
	var sent atomic.Int64
	endless := func(w http.ResponseWriter, r *http.Request) {
		buf := bytes.Repeat([]byte("x"), 32<<10)
		for {
			n, err := w.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/token"):
			endless(w, r)
		case strings.Contains(r.URL.Path, "/locked/"):
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+r.Host+`/token",service="x"`)
			w.WriteHeader(401)
		case strings.Contains(r.URL.Path, "/announced/"):
			w.Header().Set("Content-Length", "999999999")
			w.WriteHeader(200)
			endless(w, r)
		default:
			endless(w, r)
		}
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	c := newClient(t, Options{Insecure: []string{host}})
	const size = 1 << 20
	// A bound on the test, not a timing it asserts: a client that keeps
	// reading fails here instead of hanging.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	digest := sha([]byte("whatever"))
	dir := t.TempDir()
	_, err := c.FetchBlob(ctx, mustRef(t, host+"/test/app"), digest, size, dir, nil)
	if !errors.Is(err, ErrSizeMismatch) {
		t.Fatalf("endless blob: got %v, want ErrSizeMismatch", err)
	}
	st, _ := os.Stat(filepath.Join(dir, strings.TrimPrefix(digest, "sha256:")+".partial"))
	if st != nil && st.Size() > size {
		t.Errorf("the partial grew to %d bytes, past the size %d", st.Size(), size)
	}
	_, err = c.FetchBlob(ctx, mustRef(t, host+"/announced/app"), digest, size, dir, nil)
	if !errors.Is(err, ErrSizeMismatch) {
		t.Errorf("blob announced too long: got %v, want ErrSizeMismatch", err)
	}
	if _, err := c.Image(ctx, mustRef(t, host+"/test/app@"+digest)); err == nil || !strings.Contains(err.Error(), "over the 4194304 bytes") {
		t.Errorf("endless manifest: got %v, want an error naming the bound", err)
	}
	if _, err := c.Image(ctx, mustRef(t, host+"/locked/app@"+digest)); err == nil || !strings.Contains(err.Error(), "over 1048576 bytes") {
		t.Errorf("endless token: got %v, want an error naming the bound", err)
	}
	t.Logf("the endless server got %d bytes out in all (buffers included)", sent.Load())
	// Blob (1 MiB) + manifest (4 MiB) + token (1 MiB) bounds, plus the
	// socket buffers of four connections.
	if s := sent.Load(); s > 6<<20+4*(8<<20) {
		t.Errorf("the endless server got %d bytes out", s)
	}
}

// TestFetchBlobBadInput: each bad argument is named and nothing is
// written; a fetch waiting behind another of the same blob gives up when
// its context ends.
func TestFetchBlobBadInput(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-block
		w.WriteHeader(500)
	}))
	defer srv.Close()
	defer close(block)
	host := strings.TrimPrefix(srv.URL, "http://")
	c := newClient(t, Options{Insecure: []string{host}})
	ref := mustRef(t, host+"/test/app")
	d := sha([]byte("x"))
	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		ref    Reference
		digest string
		size   int64
		wrong  string
	}{
		{"no repository", Reference{}, d, 1, "no registry or repository"},
		{"bad digest", ref, "sha256:xyz", 1, "not sha256:<64 hex>"},
		{"tag for digest", ref, "latest", 1, "not sha256:<64 hex>"},
		{"zero size", ref, d, 0, "size 0"},
		{"negative size", ref, d, -1, "size -1"},
	} {
		if _, err := c.FetchBlob(ctxT(t), tc.ref, tc.digest, tc.size, dir, nil); err == nil || !strings.Contains(err.Error(), tc.wrong) {
			t.Errorf("%s: got %v, want an error saying %q", tc.name, err, tc.wrong)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("bad input left %d files", len(ents))
	}
	if _, err := c.FetchBlob(ctxT(t), ref, d, 1, filepath.Join(dir, "missing"), nil); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing dir: got %v", err)
	}

	started := make(chan struct{})
	go func() {
		close(started)
		c.FetchBlob(context.Background(), ref, d, 1, dir, nil) // blocks in the server
	}()
	<-started
	// Wait until the first fetch holds the blob's slot.
	for {
		c.mu.Lock()
		sem := c.fetching[filepath.Join(dir, strings.TrimPrefix(d, "sha256:"))]
		c.mu.Unlock()
		if len(sem) == 1 {
			break
		}
		runtime.Gosched()
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.FetchBlob(ctx, ref, d, 1, dir, nil); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "another fetch") {
		t.Errorf("fetch waiting behind another, cancelled: got %v", err)
	}
}
