package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A file larger than its size, from a server that never stops sending: the
// download stops at the size, the state dir never holds more, nothing is
// installed, and the agent keeps running on its release.
func TestFileLargerThanItsSize(t *testing.T) {
	var sent atomic.Int64
	chunk := make([]byte, 32<<10)
	for i := range chunk {
		chunk[i] = 'x'
	}
	endless := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for r.Context().Err() == nil {
			n, err := w.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(endless.Close)

	d := newDevice(t)
	d.setTarget(d.targetDoc(nil, kiosk1))
	d.start()
	d.waitFor("first release", func() bool { return d.releaseOf("kiosk") == "2026.11.1" })

	const size = 100 << 10
	dest := filepath.Join(d.root, "opt", "big")
	doc, _ := json.Marshal(map[string]any{"apps": map[string]any{"kiosk": map[string]any{
		"release": "2026.11.2",
		"services": map[string]any{"ui": map[string]any{"start": "true", "stop": "true",
			"files": []any{map[string]any{"source": endless.URL + "/big", "sha256": strings.Repeat("ab", 32),
				"size": size, "path": dest, "mode": "0644"}}}},
	}}})
	d.setTarget(doc)
	var reason string
	d.waitFor("the download refused past its size", func() bool {
		reason = d.status().Reason
		return strings.Contains(reason, "size") || strings.Contains(reason, "larger")
	})
	// Retries keep failing the same way; look a while for the biggest partial.
	biggest := int64(0)
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		filepath.Walk(d.stateDir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() && strings.Contains(p, "download") && fi.Size() > biggest {
				biggest = fi.Size()
			}
			return nil
		})
	}
	if biggest > size {
		t.Errorf("the state dir held a download of %d bytes, above the file's size %d", biggest, size)
	}
	if _, err := os.Stat(dest); err == nil {
		t.Errorf("%s was installed from a source that sent past its size", dest)
	}
	if got := d.releaseOf("kiosk"); got != "2026.11.1" {
		t.Errorf("release %q, want 2026.11.1 still running", got)
	}
	t.Logf("refused with %q; the server sent %d bytes in all (its kernel buffers included)", reason, sent.Load())
	d.stop()
}
