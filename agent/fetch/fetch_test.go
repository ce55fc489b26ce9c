package fetch

import (
	"bytes"
	"context"
	"crypto/rand"
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

func randomContent(t testing.TB, n int) ([]byte, string) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// server serves content with Range support (http.ServeContent) and records
// every request. abortAfter > 0 makes the next request die after that many
// body bytes, the connection closed mid-body; ignoreRange answers every
// request with the whole file and 200.
type server struct {
	*httptest.Server
	content []byte

	mu          sync.Mutex
	ranges      []string // Range header of each request
	sent        int64    // body bytes written, all requests
	abortAfter  int64
	ignoreRange bool
	stall       bool // with abortAfter: block after those bytes until the client goes away
}

func newServer(t testing.TB, content []byte) *server {
	s := &server{content: content}
	s.Server = httptest.NewServer(http.HandlerFunc(s.handle))
	t.Cleanup(s.Close)
	return s
}

func (s *server) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ranges...)
}

func (s *server) handle(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	abort, ignore, stall := s.abortAfter, s.ignoreRange, s.stall
	s.abortAfter, s.stall = 0, false
	s.mu.Unlock()
	cw := &countingWriter{ResponseWriter: w, s: s, limit: abort, stall: stall, ctx: r.Context()}
	if ignore {
		w.Header().Set("Content-Length", strconv.Itoa(len(s.content)))
		w.WriteHeader(200)
		cw.Write(s.content)
		return
	}
	http.ServeContent(cw, r, "f", time.Time{}, bytes.NewReader(s.content))
}

type countingWriter struct {
	http.ResponseWriter
	s     *server
	limit int64
	stall bool
	n     int64
	ctx   context.Context
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.limit > 0 && c.n+int64(len(p)) > c.limit {
		p = p[:c.limit-c.n]
		n, _ := c.ResponseWriter.Write(p)
		c.add(n)
		c.ResponseWriter.(http.Flusher).Flush()
		if c.stall {
			<-c.ctx.Done()
		}
		panic(http.ErrAbortHandler) // the server closes the connection mid-body
	}
	n, err := c.ResponseWriter.Write(p)
	c.add(n)
	return n, err
}

func (c *countingWriter) add(n int) {
	c.n += int64(n)
	c.s.mu.Lock()
	c.s.sent += int64(n)
	c.s.mu.Unlock()
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func assertMissing(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: got %v, want it absent", path, err)
	}
}

func TestFetchHTTP(t *testing.T) {
	content, sum := randomContent(t, 1<<20+123)
	srv := newServer(t, content)
	dest := filepath.Join(t.TempDir(), "f")
	var calls []int64
	var totals []int64
	err := Fetch(context.Background(), srv.Client(), srv.URL+"/f", strings.ToUpper(sum), dest, func(done, total int64) {
		calls = append(calls, done)
		totals = append(totals, total)
	})
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if !bytes.Equal(mustRead(t, dest), content) {
		t.Errorf("dest content differs from the served file")
	}
	assertMissing(t, dest+".part")
	if len(calls) < 2 || calls[len(calls)-1] != int64(len(content)) {
		t.Errorf("progress: got %d calls ending at %v, want several ending at %d", len(calls), calls[len(calls)-1:], len(content))
	}
	for i := 1; i < len(calls); i++ {
		if calls[i] < calls[i-1] || totals[i] != int64(len(content)) {
			t.Fatalf("progress call %d: done %d after %d, total %d; want non-decreasing, total %d", i, calls[i], calls[i-1], totals[i], len(content))
		}
	}
	if len(calls) > len(content)/progressStep+3 {
		t.Errorf("progress called %d times for %d bytes, want at most about one per %d bytes", len(calls), len(content), progressStep)
	}
}

func TestFetchResumesInterrupted(t *testing.T) {
	content, sum := randomContent(t, 4<<20)
	srv := newServer(t, content)
	srv.abortAfter = int64(len(content) / 2)
	dest := filepath.Join(t.TempDir(), "f")

	err := Fetch(context.Background(), srv.Client(), srv.URL+"/f", sum, dest, nil)
	if err == nil {
		t.Fatalf("Fetch over a connection closed half-way: got nil error, want one")
	}
	st, err := os.Stat(dest + ".part")
	if err != nil {
		t.Fatalf("after the interruption: %v, want the .part kept", err)
	}
	partSize := st.Size()
	if partSize == 0 || partSize > int64(len(content)/2) {
		t.Fatalf(".part size %d, want between 1 and %d", partSize, len(content)/2)
	}
	assertMissing(t, dest)

	if err := Fetch(context.Background(), srv.Client(), srv.URL+"/f", sum, dest, nil); err != nil {
		t.Fatalf("resumed Fetch: %v", err)
	}
	if !bytes.Equal(mustRead(t, dest), content) {
		t.Errorf("dest content differs from the served file")
	}
	reqs := srv.requests()
	if want := []string{"", "bytes=" + strconv.Itoa(int(partSize)) + "-"}; len(reqs) != 2 || reqs[0] != want[0] || reqs[1] != want[1] {
		t.Errorf("Range headers: got %q, want %q", reqs, want)
	}
	if srv.sent >= int64(2*len(content)) || srv.sent < int64(len(content)) {
		t.Errorf("server sent %d bytes for a %d-byte file, want at least the file and under twice it", srv.sent, len(content))
	}
	// Nothing is downloaded twice once complete.
	if err := Fetch(context.Background(), srv.Client(), srv.URL+"/f", sum, dest, nil); err != nil {
		t.Fatalf("Fetch of a complete file: %v", err)
	}
	if n := len(srv.requests()); n != 2 {
		t.Errorf("Fetch with dest already complete made %d requests in all, want 2 (none new)", n)
	}
}

func TestFetchChecksumMismatch(t *testing.T) {
	content, _ := randomContent(t, 300<<10)
	_, other := randomContent(t, 10)
	srv := newServer(t, content)
	dest := filepath.Join(t.TempDir(), "f")
	err := Fetch(context.Background(), srv.Client(), srv.URL+"/f", other, dest, nil)
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("Fetch with a wrong sha256: got %v, want ErrChecksum", err)
	}
	if !strings.Contains(err.Error(), other) {
		t.Errorf("error %q does not name the expected digest %s", err, other)
	}
	assertMissing(t, dest)
	assertMissing(t, dest+".part")
}

func TestFetchServerIgnoresRange(t *testing.T) {
	content, sum := randomContent(t, 500<<10)
	srv := newServer(t, content)
	srv.ignoreRange = true
	dest := filepath.Join(t.TempDir(), "f")
	// A .part of garbage, as if from an earlier attempt at another file.
	os.WriteFile(dest+".part", bytes.Repeat([]byte("x"), 1000), 0o600)
	if err := Fetch(context.Background(), srv.Client(), srv.URL+"/f", sum, dest, nil); err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if !bytes.Equal(mustRead(t, dest), content) {
		t.Errorf("dest content differs from the served file")
	}
	if reqs := srv.requests(); len(reqs) != 1 || reqs[0] != "bytes=1000-" {
		t.Errorf("requests: got %q, want one asking bytes=1000-", reqs)
	}
}

func TestFetchRangeNotSatisfiable(t *testing.T) {
	content, sum := randomContent(t, 200<<10)
	srv := newServer(t, content)
	tests := []struct {
		name string
		part []byte
		want []string
	}{
		// The whole file is already in the .part: the hash check accepts it.
		{"complete part", content, []string{"bytes=" + strconv.Itoa(len(content)) + "-"}},
		// A .part longer than the file: restart from zero.
		{"part too long", append(bytes.Clone(content), 'x'), []string{"bytes=" + strconv.Itoa(len(content)+1) + "-", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv.mu.Lock()
			srv.ranges = nil
			srv.mu.Unlock()
			dest := filepath.Join(t.TempDir(), "f")
			os.WriteFile(dest+".part", tt.part, 0o600)
			if err := Fetch(context.Background(), srv.Client(), srv.URL+"/f", sum, dest, nil); err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			if !bytes.Equal(mustRead(t, dest), content) {
				t.Errorf("dest content differs from the served file")
			}
			if got := srv.requests(); strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("requests: got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFetchFileURL(t *testing.T) {
	content, sum := randomContent(t, 700<<10)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.WriteFile(src, content, 0o644)
	tests := []struct {
		name string
		part []byte // nil: no .part
	}{
		{"fresh", nil},
		{"resume", content[:1234]},
		{"part too long", append(bytes.Clone(content), 1, 2, 3)},
		{"part wrong prefix", bytes.Repeat([]byte{0}, 999)}, // resumed, then the hash fails
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "f")
			if tt.part != nil {
				os.WriteFile(dest+".part", tt.part, 0o600)
			}
			var first int64 = -1
			err := Fetch(context.Background(), nil, "file://"+src, sum, dest, func(done, total int64) {
				if first < 0 {
					first = done
				}
			})
			if tt.name == "part wrong prefix" {
				if !errors.Is(err, ErrChecksum) {
					t.Fatalf("Fetch: got %v, want ErrChecksum", err)
				}
				assertMissing(t, dest+".part")
				// The next attempt starts clean and succeeds.
				err = Fetch(context.Background(), nil, "file://"+src, sum, dest, nil)
			}
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			if !bytes.Equal(mustRead(t, dest), content) {
				t.Errorf("dest content differs from the source")
			}
			if tt.name == "resume" && first != 1234 {
				t.Errorf("first progress call: done %d, want 1234 (resumed)", first)
			}
		})
	}
}

func TestFetchDestAlreadyComplete(t *testing.T) {
	content, sum := randomContent(t, 1000)
	srv := newServer(t, content)
	dest := filepath.Join(t.TempDir(), "f")
	os.WriteFile(dest, content, 0o644)
	if err := Fetch(context.Background(), srv.Client(), srv.URL+"/f", sum, dest, nil); err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if n := len(srv.requests()); n != 0 {
		t.Errorf("requests: got %d, want 0", n)
	}
	assertMissing(t, dest+".part")
}

func TestFetchCancelKeepsPart(t *testing.T) {
	content, sum := randomContent(t, 1<<20)
	srv := newServer(t, content)
	srv.abortAfter = 256 << 10
	srv.stall = true
	dest := filepath.Join(t.TempDir(), "f")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := Fetch(ctx, srv.Client(), srv.URL+"/f", sum, dest, func(done, total int64) {
		if done >= progressStep {
			cancel() // the server stalls after 256 KiB: only ctx can end this
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Fetch: got %v, want context.Canceled", err)
	}
	st, err := os.Stat(dest + ".part")
	if err != nil || st.Size() < progressStep || st.Size() > 256<<10 {
		t.Fatalf(".part after cancel: %v, want %d to %d bytes kept", err, progressStep, 256<<10)
	}
	if err := Fetch(context.Background(), srv.Client(), srv.URL+"/f", sum, dest, nil); err != nil {
		t.Fatalf("Fetch after cancel: %v", err)
	}
	if got, want := srv.requests(), "bytes="+strconv.FormatInt(st.Size(), 10)+"-"; len(got) != 2 || got[1] != want {
		t.Errorf("requests: got %q, want the second to be %s", got, want)
	}
}

func TestFetchErrors(t *testing.T) {
	srv := newServer(t, nil)
	dest := filepath.Join(t.TempDir(), "f")
	_, sum := randomContent(t, 1)
	for _, tt := range []struct{ src, sum, want string }{
		{"ftp://h/x", sum, "want an http, https or file URL"},
		{srv.URL + "/x", "abc", "want 64 hex digits"},
		{"file:///nonexistent/x", sum, "no such file"},
	} {
		err := Fetch(context.Background(), nil, tt.src, tt.sum, dest, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Fetch(%s, %s): got %v, want an error containing %q", tt.src, tt.sum, err, tt.want)
		}
	}
	// A 404 keeps nothing but an empty .part, and says what the server said.
	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	if err := Fetch(context.Background(), nil, notFound.URL+"/x", sum, dest, nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Fetch of a 404: got %v, want an error naming 404", err)
	}
	assertMissing(t, dest)
}

func TestFileSHA256(t *testing.T) {
	content, sum := randomContent(t, 100_000)
	path := filepath.Join(t.TempDir(), "f")
	os.WriteFile(path, content, 0o644)
	if got, err := FileSHA256(path); err != nil || got != sum {
		t.Errorf("FileSHA256: got %s, %v, want %s", got, err, sum)
	}
}
