package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkFetch64MiB downloads a 64 MiB file over loopback. Allocated bytes
// per op stay in the kilobytes whatever the size: the download streams.
// Compare with BenchmarkCopy64MiB, a bare io.Copy of the same response.
func BenchmarkFetch64MiB(b *testing.B) {
	content, sum := benchContent(b)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "f", time.Time{}, bytes.NewReader(content))
	}))
	defer srv.Close()
	dest := filepath.Join(b.TempDir(), "f")
	b.SetBytes(int64(len(content)))
	b.ReportAllocs()
	for b.Loop() {
		os.Remove(dest)
		if err := Fetch(context.Background(), srv.Client(), srv.URL+"/f", sum, dest, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCopy64MiB is the baseline: GET and io.Copy into a file, no hash, no fsync.
func BenchmarkCopy64MiB(b *testing.B) {
	content, _ := benchContent(b)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "f", time.Time{}, bytes.NewReader(content))
	}))
	defer srv.Close()
	dest := filepath.Join(b.TempDir(), "f")
	b.SetBytes(int64(len(content)))
	b.ReportAllocs()
	for b.Loop() {
		resp, err := srv.Client().Get(srv.URL + "/f")
		if err != nil {
			b.Fatal(err)
		}
		f, _ := os.Create(dest)
		io.Copy(f, resp.Body)
		f.Close()
		resp.Body.Close()
	}
}

func benchContent(b *testing.B) ([]byte, string) {
	content := make([]byte, 64<<20)
	for i := range content {
		content[i] = byte(i * 7)
	}
	s := sha256.Sum256(content)
	return content, hex.EncodeToString(s[:])
}

// TestFetchFromEnv is the Fetch half of scripts/bench-fetch.sh: it downloads
// $LATCH_BENCH_URL (sha256 $LATCH_BENCH_SHA256) to $LATCH_BENCH_DEST and
// prints the throughput. Skipped unless the script sets those variables.
func TestFetchFromEnv(t *testing.T) {
	url, sum, dest := os.Getenv("LATCH_BENCH_URL"), os.Getenv("LATCH_BENCH_SHA256"), os.Getenv("LATCH_BENCH_DEST")
	if url == "" || sum == "" || dest == "" {
		t.Skip("LATCH_BENCH_URL, LATCH_BENCH_SHA256, LATCH_BENCH_DEST not set: run scripts/bench-fetch.sh")
	}
	var size int64
	start := time.Now()
	err := Fetch(context.Background(), http.DefaultClient, url, sum, dest, func(done, total int64) { size = done })
	if err != nil {
		t.Fatal(err)
	}
	secs := time.Since(start).Seconds()
	t.Logf("fetched %d bytes in %.3fs: %.1f MB/s", size, secs, float64(size)/secs/1e6)
}
