package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// endless is a server that never stops sending, and watches how large the
// .part it is filling grows while it does.
type endless struct {
	part   string
	mu     sync.Mutex
	maxLen int64
	sent   int64
	length string // Content-Length to announce, "" for none
}

func (e *endless) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if e.length != "" {
		w.Header().Set("Content-Length", e.length)
	}
	chunk := make([]byte, 32<<10)
	for i := range chunk {
		chunk[i] = 'x'
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := w.Write(chunk); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		e.mu.Lock()
		e.sent += int64(len(chunk))
		if fi, err := os.Stat(e.part); err == nil && fi.Size() > e.maxLen {
			e.maxLen = fi.Size()
		}
		e.mu.Unlock()
	}
}

func TestFetchSizedStopsAnEndlessSource(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "blob")
	const size = 100 << 10
	e := &endless{part: dest + ".part"}
	srv := httptest.NewServer(e)
	defer srv.Close()
	sum := sha256.Sum256([]byte("anything"))
	err := FetchSized(context.Background(), srv.Client(), srv.URL+"/blob", hex.EncodeToString(sum[:]), dest, size, nil)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("FetchSized from an endless source: got %v, want ErrTooLarge", err)
	}
	for _, want := range []string{srv.URL + "/blob", dest, strconv.Itoa(size) + " bytes"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	e.mu.Lock()
	maxLen, sent := e.maxLen, e.sent
	e.mu.Unlock()
	if maxLen > size {
		t.Errorf("the .part grew to %d bytes, more than the file's size %d", maxLen, size)
	}
	if sent > 64<<20 {
		t.Errorf("the server sent %d bytes before the download stopped", sent)
	}
	for _, p := range []string{dest, dest + ".part"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind after a refused download (stat: %v)", p, err)
		}
	}
}

func TestFetchSizedRefusesContentLengthAboveSize(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "blob")
	e := &endless{part: dest + ".part", length: "1048576"}
	srv := httptest.NewServer(e)
	defer srv.Close()
	sum := sha256.Sum256([]byte("x"))
	err := FetchSized(context.Background(), srv.Client(), srv.URL+"/blob", hex.EncodeToString(sum[:]), dest, 1000, nil)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "Content-Length 1048576") {
		t.Fatalf("FetchSized with Content-Length above the size: got %v, want ErrTooLarge naming the Content-Length", err)
	}
	e.mu.Lock()
	maxLen := e.maxLen
	e.mu.Unlock()
	if maxLen > 0 {
		t.Errorf("%d bytes were written before the Content-Length was refused", maxLen)
	}
	if _, err := os.Stat(dest + ".part"); !os.IsNotExist(err) {
		t.Errorf(".part left behind (stat: %v)", err)
	}
}

func TestFetchSizedExactAndFileSources(t *testing.T) {
	dir := t.TempDir()
	body := []byte(strings.Repeat("latch", 1000))
	sum := sha256.Sum256(body)
	want := hex.EncodeToString(sum[:])
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "f", time.Time{}, strings.NewReader(string(body)))
	}))
	defer srv.Close()
	// Exactly its size: accepted.
	if err := FetchSized(context.Background(), srv.Client(), srv.URL, want, filepath.Join(dir, "ok"), int64(len(body)), nil); err != nil {
		t.Fatalf("FetchSized of a file of exactly its size: %v", err)
	}
	// One byte short of what the server sends: refused.
	err := FetchSized(context.Background(), srv.Client(), srv.URL, want, filepath.Join(dir, "short"), int64(len(body)-1), nil)
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("FetchSized with a size one byte short: got %v, want ErrTooLarge", err)
	}
	// A local file larger than its size.
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, body, 0o644); err != nil {
		t.Fatal(err)
	}
	err = FetchSized(context.Background(), nil, "file://"+src, want, filepath.Join(dir, "local"), 10, nil)
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("FetchSized of a local file larger than its size: got %v, want ErrTooLarge", err)
	}
	// A .part left longer than the size (by a download without one) starts over.
	dest := filepath.Join(dir, "resumed")
	if err := os.WriteFile(dest+".part", []byte(strings.Repeat("z", len(body)+10)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := FetchSized(context.Background(), srv.Client(), srv.URL, want, dest, int64(len(body)), nil); err != nil {
		t.Fatalf("FetchSized over a too long .part: %v", err)
	}
}
