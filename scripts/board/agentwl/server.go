package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

const defaultRate = 2 << 20 // bytes per second

// server is the in-guest release server: it serves release k's files at
// /rK/SERVICE with http.ServeContent (so Range requests resume), at most
// rate bytes per second, and logs every request, fsynced, to the request
// log: "req PATH start=N" when it arrives, "sent PATH start=N bytes=M size=S"
// when the answer is written.
type server struct {
	rs   *releases
	log  string
	rate int
}

func newServer(l layout, rs *releases) *server {
	rate := defaultRate
	if n, err := strconv.Atoi(os.Getenv("AGENTWL_RATE")); err == nil && n > 0 {
		rate = n
	}
	return &server{rs: rs, log: l.requestLog(), rate: rate}
}

// listen serves on addr until ctx ends.
func (s *server) listen(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("release server: listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: s}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go srv.Serve(ln)
	return nil
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	k, ok := 0, len(parts) == 2
	if ok {
		k, ok = parseRel(parts[0])
	}
	if !ok || (parts[1] != "backend" && parts[1] != "ui") {
		http.NotFound(w, r)
		return
	}
	b, _ := s.rs.get(parts[1], k)
	start := rangeStart(r.Header.Get("Range"))
	if err := appendSync(s.log, fmt.Sprintf("req %s start=%d\n", r.URL.Path, start)); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	cw := &throttled{w: w, rate: s.rate, ctx: r.Context()}
	http.ServeContent(cw, r, parts[1], time.Time{}, bytes.NewReader(b))
	appendSync(s.log, fmt.Sprintf("sent %s start=%d bytes=%d size=%d\n", r.URL.Path, start, cw.n, len(b)))
}

// rangeStart is the first byte a Range header asks for (0 without one).
func rangeStart(h string) int64 {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0
	}
	first, _, _ := strings.Cut(spec, "-")
	n, err := strconv.ParseInt(first, 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// throttled writes at most rate bytes per second and counts them.
type throttled struct {
	w    http.ResponseWriter
	rate int
	ctx  context.Context
	n    int64
}

func (t *throttled) Header() http.Header  { return t.w.Header() }
func (t *throttled) WriteHeader(code int) { t.w.WriteHeader(code) }
func (t *throttled) Write(p []byte) (int, error) {
	const chunk = 32 << 10
	written := 0
	for len(p) > 0 {
		c := min(len(p), chunk)
		n, err := t.w.Write(p[:c])
		written += n
		t.n += int64(n)
		if err != nil {
			return written, err
		}
		if f, ok := t.w.(http.Flusher); ok {
			f.Flush()
		}
		p = p[c:]
		// Pacing the answer is the point here: nothing to await but the clock.
		select {
		case <-time.After(time.Duration(c) * time.Second / time.Duration(t.rate)):
		case <-t.ctx.Done():
			return written, t.ctx.Err()
		}
	}
	return written, nil
}

// request is one "req" line of the request log.
type request struct {
	Path  string
	Start int64
}

// sent is one "sent" line of the request log.
type sent struct {
	Path        string
	Start, N, S int64
}

// parseRequestLog reads the request log. A torn last line (a cut while it
// was written, before its fsync) is skipped; any other malformed line is an
// error.
func parseRequestLog(b []byte) (reqs []request, sents []sent, err error) {
	lines := strings.Split(string(b), "\n")
	for i, line := range lines {
		if line == "" {
			continue
		}
		last := i == len(lines)-1 // no newline after it: torn
		var p string
		var start, n, size int64
		switch {
		case strings.HasPrefix(line, "req "):
			if _, e := fmt.Sscanf(line, "req %s start=%d", &p, &start); e != nil || last {
				if last {
					continue
				}
				return nil, nil, fmt.Errorf("request log line %d %q: %w", i+1, line, errOr(e))
			}
			reqs = append(reqs, request{Path: p, Start: start})
		case strings.HasPrefix(line, "sent "):
			if _, e := fmt.Sscanf(line, "sent %s start=%d bytes=%d size=%d", &p, &start, &n, &size); e != nil || last {
				if last {
					continue
				}
				return nil, nil, fmt.Errorf("request log line %d %q: %w", i+1, line, errOr(e))
			}
			sents = append(sents, sent{Path: p, Start: start, N: n, S: size})
		default:
			if last {
				continue
			}
			return nil, nil, fmt.Errorf("request log line %d %q: not a req or sent line", i+1, line)
		}
	}
	return reqs, sents, nil
}

func errOr(e error) error {
	if e == nil {
		return errors.New("malformed")
	}
	return e
}
