package target

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sigServer serves /t (with an ETag, no signature header) and /t.sig, each
// from what the test sets.
type sigServer struct {
	mu      sync.Mutex
	doc     string
	sig     string // "" → 404
	sigCode int    // non-zero: /t.sig answers this status
	// onSig runs while /t.sig is answered (the publisher changing the
	// document between the document's request and its signature's).
	onSig    func(s *sigServer)
	sigCalls int
	etag     bool
}

func (s *sigServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r.URL.Path {
	case "/t":
		if s.etag {
			tag := strconv.Quote(Digest([]byte(s.doc))[:16])
			w.Header().Set("ETag", tag)
			if r.Header.Get("If-None-Match") == tag {
				w.WriteHeader(http.StatusNotModified)
				return
			}
		}
		w.Write([]byte(s.doc))
	case "/t.sig":
		s.sigCalls++
		if s.onSig != nil {
			s.onSig(s)
		}
		if s.sigCode != 0 {
			http.Error(w, "broken", s.sigCode)
			return
		}
		if s.sig == "" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(s.sig))
	default:
		http.NotFound(w, r)
	}
}

func (s *sigServer) set(f func(s *sigServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

func pollSig(t *testing.T, s *sigServer) (<-chan Doc, <-chan error, string) {
	t.Helper()
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := make(chan Doc)
	errs := make(chan error, 1000)
	go PollURL(ctx, srv.Client(), srv.URL+"/t", time.Millisecond, ch, func(err error) {
		select {
		case errs <- err:
		default:
		}
	})
	return ch, errs, srv.URL + "/t"
}

func TestPollURLFetchesSigFile(t *testing.T) {
	for _, etag := range []bool{false, true} {
		t.Run("etag="+strconv.FormatBool(etag), func(t *testing.T) {
			s := &sigServer{doc: "doc1", sig: `{"signatures":[]}`, etag: etag}
			ch, _, _ := pollSig(t, s)
			d := recv(t, ch)
			if string(d.Data) != "doc1" || string(d.Sig) != `{"signatures":[]}` {
				t.Fatalf("got doc %q sig %q, want doc1 with the .sig's content", d.Data, d.Sig)
			}
			// No .sig: the document comes unsigned.
			s.set(func(s *sigServer) { s.doc, s.sig = "doc2", "" })
			d = recv(t, ch)
			if string(d.Data) != "doc2" || d.Sig != nil {
				t.Fatalf("got doc %q sig %q, want doc2 with no signature", d.Data, d.Sig)
			}
			// A .sig that appears later for the same document is delivered too.
			s.set(func(s *sigServer) { s.sig = "c2lnMg==" })
			d = recv(t, ch)
			if string(d.Data) != "doc2" || string(d.Sig) != "c2lnMg==" {
				t.Fatalf("got doc %q sig %q, want doc2 with its bare signature", d.Data, d.Sig)
			}
		})
	}
}

func TestPollURLSigErrorIsRetried(t *testing.T) {
	s := &sigServer{doc: "doc1", sig: "SIG1", sigCode: http.StatusInternalServerError, etag: true}
	ch, errs, url := pollSig(t, s)
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), url+".sig") || !strings.Contains(err.Error(), "500") {
			t.Errorf("error %q does not name %s.sig and its status", err, url)
		}
	case d := <-ch:
		t.Fatalf("got doc %q sig %q while its .sig answers 500, want an error", d.Data, d.Sig)
	case <-time.After(10 * time.Second):
		t.Fatal("no error within 10s")
	}
	// Once the .sig answers, the document (whose ETag was not remembered)
	// comes with it.
	s.set(func(s *sigServer) { s.sigCode = 0 })
	d := recv(t, ch)
	if string(d.Data) != "doc1" || string(d.Sig) != "SIG1" {
		t.Fatalf("got doc %q sig %q, want doc1 with SIG1", d.Data, d.Sig)
	}
}

// A publisher replaces the document and its .sig between the agent's request
// of the document and that of its signature: the new .sig must never be
// paired with the old document.
func TestPollURLSigNeverPairedWithAnotherDocument(t *testing.T) {
	for _, etag := range []bool{false, true} {
		t.Run("etag="+strconv.FormatBool(etag), func(t *testing.T) {
			n := 1
			s := &sigServer{doc: "doc1", sig: "sig-of-doc1", etag: etag}
			s.onSig = func(s *sigServer) {
				if n < 5 { // a new release lands as each .sig is read
					n++
					s.doc, s.sig = "doc"+strconv.Itoa(n), "sig-of-doc"+strconv.Itoa(n)
				}
			}
			ch, _, _ := pollSig(t, s)
			for {
				d := recv(t, ch)
				if string(d.Sig) != "sig-of-"+string(d.Data) {
					t.Fatalf("document %q delivered with signature %q", d.Data, d.Sig)
				}
				if string(d.Data) == "doc5" {
					break
				}
			}
		})
	}
}
