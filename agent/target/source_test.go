package target

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// recv waits for the next Doc, failing the test if none comes in 10 s (a
// bound for a hung test, not a timing assertion).
func recv(t *testing.T, ch <-chan Doc) Doc {
	t.Helper()
	select {
	case d := <-ch:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no document within 10s")
		return Doc{}
	}
}

// watch runs WatchFile on path until the test ends, when it must return nil.
func watch(t *testing.T, path string) <-chan Doc {
	ch := make(chan Doc)
	runWatch(t, func(ctx context.Context) error { return WatchFile(ctx, path, ch) })
	return ch
}

// runWatch runs fn in a goroutine until the test ends; at cancel fn must
// return nil, and return at all (within 10 s, a bound for a hung test).
func runWatch(t *testing.T, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("the watch returned %v at cancel, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("the watch did not return within 10s of its context ending")
		}
	})
}

func TestWatchFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "target.json")
	ch := watch(t, path)

	// The file appears by atomic rename (how editors and deploy tools write).
	tmp := filepath.Join(dir, ".target.json.tmp")
	if err := os.WriteFile(tmp, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if d := recv(t, ch); string(d.Data) != "one" || d.Sig != nil || d.Source != "file:"+path {
		t.Errorf("after rename: got %q sig %q source %q, want \"one\", no sig, file:%s", d.Data, d.Sig, d.Source, path)
	}

	// An unrelated file in the directory wakes nothing that reaches out;
	// then an in-place write with a signature next to it.
	if err := os.WriteFile(filepath.Join(dir, "other"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".sig", []byte("SIG"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("tw"))
	f.Write([]byte("o"))
	f.Close()
	// The sig may arrive before the in-place write, and a slow machine may
	// read between the writes: skip such intermediate states, wait for the final one.
	for {
		d := recv(t, ch)
		if strings.HasPrefix("two", string(d.Data)) && string(d.Data) != "two" || string(d.Data) == "one" {
			continue
		}
		if string(d.Data) != "two" || string(d.Sig) != "SIG" {
			t.Fatalf("after in-place write: got %q sig %q, want \"two\" sig \"SIG\"", d.Data, d.Sig)
		}
		break
	}
}

func TestWatchFileExistingAtStart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "t.json")
	os.WriteFile(path, []byte("start"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan Doc, 1)
	go WatchFile(ctx, path, ch)
	if d := recv(t, ch); string(d.Data) != "start" {
		t.Errorf("got %q, want \"start\"", d.Data)
	}
}

// A target file that is a symbolic link (as provisioning tools keep one, in
// /etc pointing into a data partition): a change of the file it points to is
// seen, and so is the link being pointed elsewhere; FILE.sig may be a link too.
func TestWatchFileSymlink(t *testing.T) {
	etc, data1, data2 := t.TempDir(), t.TempDir(), t.TempDir()
	path := filepath.Join(etc, "target.json")
	write := func(p, content string) {
		t.Helper()
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, p); err != nil {
			t.Fatal(err)
		}
	}
	relink := func(link, to string) {
		t.Helper()
		tmp := link + ".new"
		if err := os.Symlink(to, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, link); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(data1, "current.json"), "one")
	relink(path, filepath.Join(data1, "current.json"))
	ch := watch(t, path)
	if d := recv(t, ch); string(d.Data) != "one" {
		t.Fatalf("at start: got %q, want \"one\"", d.Data)
	}
	// The file the link points to is replaced, in another directory.
	write(filepath.Join(data1, "current.json"), "two")
	if d := recv(t, ch); string(d.Data) != "two" {
		t.Fatalf("after the linked file changed: got %q, want \"two\"", d.Data)
	}
	// The link is pointed elsewhere (relative, through a second link), with a
	// signature that is a link as well.
	write(filepath.Join(data2, "r3.json"), "three")
	write(filepath.Join(data2, "r3.json.sig"), "SIG3")
	if err := os.Symlink("r3.json", filepath.Join(data2, "current.json")); err != nil {
		t.Fatal(err)
	}
	relink(path+".sig", filepath.Join(data2, "r3.json.sig"))
	relink(path, filepath.Join(data2, "current.json"))
	if d := recv(t, ch); string(d.Data) != "three" {
		t.Fatalf("after the link was retargeted: got %q, want \"three\"", d.Data)
	} else if string(d.Sig) != "SIG3" {
		// The signature may land in a second document if its event came first.
		if d = recv(t, ch); string(d.Data) != "three" || string(d.Sig) != "SIG3" {
			t.Fatalf("after the link was retargeted: got %q sig %q, want \"three\" with SIG3", d.Data, d.Sig)
		}
	}
	// The new chain's last file changes.
	write(filepath.Join(data2, "r3.json"), "four")
	if d := recv(t, ch); string(d.Data) != "four" {
		t.Fatalf("after the new linked file changed: got %q, want \"four\"", d.Data)
	}
}

func TestPollURL(t *testing.T) {
	type step struct {
		status int
		etag   string
		sig    string
		body   string
	}
	script := []step{
		{200, `"v1"`, "SIG1", "doc1"},
		{304, "", "", ""},
		{500, "", "", "boom"},
		{200, `"v2"`, "", "doc2"},
		{200, `"v2"`, "", "doc2"}, // same content, no 304: sends nothing either
		{200, `"v3"`, "SIG3", "doc3"},
	}
	var (
		mu      sync.Mutex
		seen    []string // If-None-Match of each request of the document
		recheck bool     // a .sig was asked for: the next request re-checks the document
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if r.URL.Path == "/t.sig" { // no signature file: a 404
			recheck = true
			mu.Unlock()
			http.NotFound(w, r)
			return
		}
		n := len(seen)
		if recheck { // answered as the request before it
			recheck, n = false, n-1
		} else {
			seen = append(seen, r.Header.Get("If-None-Match"))
		}
		mu.Unlock()
		if n >= len(script) {
			w.WriteHeader(304)
			return
		}
		s := script[n]
		if s.etag != "" {
			w.Header().Set("ETag", s.etag)
		}
		if s.sig != "" {
			w.Header().Set("X-Latch-Signature", s.sig)
		}
		w.WriteHeader(s.status)
		w.Write([]byte(s.body))
	}))
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan Doc)
	errs := make(chan error, 100)
	done := make(chan error, 1)
	go func() {
		done <- PollURL(ctx, srv.Client(), srv.URL+"/t", time.Millisecond, ch, func(err error) { errs <- err })
	}()
	for _, want := range []struct{ data, sig string }{{"doc1", "SIG1"}, {"doc2", ""}, {"doc3", "SIG3"}} {
		d := recv(t, ch)
		if string(d.Data) != want.data || string(d.Sig) != want.sig || d.Source != srv.URL+"/t" {
			t.Errorf("got doc %q sig %q source %q, want %q sig %q source %s", d.Data, d.Sig, d.Source, want.data, want.sig, srv.URL+"/t")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("PollURL at cancel: got %v, want nil", err)
	}
	if len(errs) != 1 {
		t.Errorf("onErr called %d times, want 1 (the 500)", len(errs))
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"", `"v1"`, `"v1"`, `"v1"`, `"v2"`, `"v2"`}
	for i, w := range want {
		if i >= len(seen) || seen[i] != w {
			t.Fatalf("If-None-Match of the requests: got %q, want it to start with %q", seen, want)
		}
	}
}

func TestPollURLFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "t.json")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan Doc)
	errs := make(chan error, 1)
	go PollURL(ctx, nil, "file://"+path, time.Millisecond, ch, func(err error) {
		select {
		case errs <- err:
		default:
		}
	})
	// Missing at first: an error through onErr, never fatal.
	select {
	case err := <-errs:
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("missing file: onErr got %v, want ErrNotExist", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no error reported for a missing file")
	}
	// Writers publish a target atomically (a rename): with a 1 ms poll, a
	// file written in place would be read half-written, which is not what
	// this test is about.
	writeAtomic := func(p, content string) {
		t.Helper()
		if err := os.WriteFile(p+".tmp", []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			t.Fatal(err)
		}
	}
	writeAtomic(path+".sig", "S")
	writeAtomic(path, "file doc")
	d := recv(t, ch)
	if string(d.Data) != "file doc" || string(d.Sig) != "S" || d.Source != "file://"+path {
		t.Errorf("got %q sig %q source %q, want \"file doc\" sig \"S\" source file://%s", d.Data, d.Sig, d.Source, path)
	}
	writeAtomic(path, "second")
	if d := recv(t, ch); string(d.Data) != "second" {
		t.Errorf("after change: got %q, want \"second\"", d.Data)
	}
}

func TestPollURLRejects(t *testing.T) {
	for _, u := range []string{"ftp://h/x", "file://host/x", "file:rel", "::"} {
		if err := PollURL(context.Background(), nil, u, time.Second, nil, nil); err == nil {
			t.Errorf("PollURL(%q): got nil, want an error", u)
		}
	}
	if err := PollURL(context.Background(), nil, "http://h/", 0, nil, nil); err == nil {
		t.Errorf("PollURL with interval 0: got nil, want an error")
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		interval time.Duration
		failures int
		want     time.Duration
	}{
		{time.Second, 0, time.Second},
		{time.Second, 1, 2 * time.Second},
		{time.Second, 3, 8 * time.Second},
		{time.Second, 5, 32 * time.Second},
		{time.Second, 50, 32 * time.Second},
		{5 * time.Minute, 1, 10 * time.Minute},
		{5 * time.Minute, 10, time.Hour},
		{2 * time.Hour, 3, 2 * time.Hour},
	}
	for _, tt := range tests {
		if got := backoff(tt.interval, tt.failures); got != tt.want {
			t.Errorf("backoff(%v, %d): got %v, want %v", tt.interval, tt.failures, got, tt.want)
		}
	}
	for i := 0; i < 1000; i++ {
		if j := jitter(time.Second); j < 900*time.Millisecond || j > 1100*time.Millisecond {
			t.Fatalf("jitter(1s): got %v, want within ±10%%", j)
		}
	}
}
