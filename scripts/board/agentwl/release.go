package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// The demo app: two services, each with one file. backend's file is large
// (AGENTWL_BIG bytes) so that its download takes a while under emulation.
const (
	appName    = "demo"
	smallSize  = 8 << 10
	defaultBig = 4 << 20
	serverAddr = "127.0.0.1:8099"
)

var services = []string{"backend", "ui"}

// layout is where everything lives; root is "" on the board.
type layout struct{ root string }

func newLayout() layout { return layout{root: os.Getenv("AGENTWL_ROOT")} }

func (l layout) p(parts ...string) string {
	return filepath.Join(append([]string{l.root, "/"}, parts...)...)
}
func (l layout) stateDir() string { return l.p("data", "latch") }
func (l layout) journal() string  { return l.p("data", "latch", "journal.db") }
func (l layout) appFile(s string) string {
	return l.p("data", "app", s)
}
func (l layout) wlDir() string       { return l.p("data", "wl") }
func (l layout) driveFile() string   { return l.p("data", "wl", "drive") }
func (l layout) requestLog() string  { return l.p("data", "wl", "requests.log") }
func (l layout) commandsLog() string { return l.p("data", "commands.log") }
func (l layout) targetFile() string  { return l.p("data", "target.json") }
func (l layout) lockDir() string     { return l.p("tmp", "latch") }
func (l layout) runDir() string      { return l.p("run", "latch") }
func (l layout) notifySocket() string {
	return l.p("run", "agentwl-notify.sock")
}
func (l layout) userLock(svc string) string {
	return filepath.Join(l.lockDir(), "services", appName, svc, "updates.lock")
}

// bigSize is the large file's size.
func bigSize() int {
	if n, err := strconv.Atoi(os.Getenv("AGENTWL_BIG")); err == nil && n >= 64 {
		return n
	}
	return defaultBig
}

// relName is release k's name.
func relName(k int) string { return "r" + strconv.Itoa(k) }

// parseRel is relName's inverse; 0 and false for anything else.
func parseRel(s string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(s, "r"))
	if err != nil || !strings.HasPrefix(s, "r") || n < 1 || strconv.Itoa(n) != s[1:] {
		return 0, false
	}
	return n, true
}

// content is service svc's file in release k: a header line naming both,
// then bytes that depend only on (svc, k), so that a file is whole exactly
// when its sha256 is the release's.
func content(svc string, k int) []byte {
	size := smallSize
	if svc == "backend" {
		size = bigSize()
	}
	b := make([]byte, size)
	hdr := fmt.Sprintf("%s/%s %s\n", appName, svc, relName(k))
	copy(b, hdr)
	x := uint32(k)*2654435761 + uint32(len(svc))*40503 + 1
	for j := len(hdr); j < size; j++ {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[j] = 'a' + byte(x%26)
	}
	if size > len(hdr) {
		b[size-1] = '\n'
	}
	return b
}

// parseHeader reads a demo file's first line: "demo/SERVICE rK".
func parseHeader(h string) (svc string, k int, ok bool) {
	name, rel, found := strings.Cut(h, " ")
	if !found {
		return "", 0, false
	}
	app, svc, found := strings.Cut(name, "/")
	if !found || app != appName || svc == "" {
		return "", 0, false
	}
	k, ok = parseRel(rel)
	return svc, k, ok
}

// releases caches the contents and sha256s of the releases asked for.
type releases struct {
	mu   sync.Mutex
	byK  map[string][]byte // "svc k" -> content; guarded by mu
	sums map[string]string // "svc k" -> sha256 hex; guarded by mu
}

func newReleases() *releases {
	return &releases{byK: map[string][]byte{}, sums: map[string]string{}}
}

func (r *releases) get(svc string, k int) ([]byte, string) {
	key := svc + " " + strconv.Itoa(k)
	r.mu.Lock()
	defer r.mu.Unlock()
	if b, ok := r.byK[key]; ok {
		return b, r.sums[key]
	}
	if len(r.byK) > 8 { // keep memory bounded: only a few releases are ever in play
		clear(r.byK)
		clear(r.sums)
	}
	b := content(svc, k)
	sum := sha256.Sum256(b)
	r.byK[key], r.sums[key] = b, hex.EncodeToString(sum[:])
	return b, r.sums[key]
}

// targetDoc is the target state asking for release k of the demo app, its
// files served by the in-guest server, its steps run by agentwl.
func targetDoc(l layout, rs *releases, self string, k int) ([]byte, error) {
	svcs := map[string]any{}
	for _, s := range services {
		_, sum := rs.get(s, k)
		file := l.appFile(s)
		svcs[s] = map[string]any{
			"files": []any{map[string]any{
				"source": fmt.Sprintf("http://%s/%s/%s", serverAddr, relName(k), s),
				"sha256": sum, "path": file, "mode": "0644",
			}},
			"stop":   fmt.Sprintf("%s step stop %s/%s %s", self, appName, s, file),
			"start":  fmt.Sprintf("%s step start %s/%s %s", self, appName, s, file),
			"health": fmt.Sprintf("%s health %s", self, file),
		}
	}
	doc := map[string]any{"apps": map[string]any{appName: map[string]any{"release": relName(k), "services": svcs}}}
	b, err := json.MarshalIndent(doc, "", " ")
	if err != nil {
		return nil, fmt.Errorf("target for %s: %w", relName(k), err)
	}
	return b, nil
}

// drive is the update a boot set out to make, recorded (fsynced) before the
// target is published: the next boot accepts the app on From or To only.
type drive struct{ From, To int }

func (d drive) String() string { return fmt.Sprintf("from=%d to=%d\n", d.From, d.To) }

// parseDrive reads a drive record.
func parseDrive(b []byte) (drive, error) {
	var d drive
	if _, err := fmt.Sscanf(string(b), "from=%d to=%d\n", &d.From, &d.To); err != nil {
		return d, fmt.Errorf("parse drive record %q: %w", b, err)
	}
	if d.From < 0 || d.To <= d.From {
		return d, fmt.Errorf("parse drive record %q: want 0 <= from < to", b)
	}
	return d, nil
}

// expect is what the host saw durable before the cut (0: nothing yet).
type expect struct {
	Seq     uint64 // the journal held events up to this seq
	Release int    // the app was on this release, journalled
}

// parseExpect reads the boot's arguments: seq=N and release=K.
func parseExpect(args []string) (expect, error) {
	var e expect
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return e, fmt.Errorf("argument %q: want seq=N or release=K", a)
		}
		n, err := strconv.ParseUint(v, 10, 63)
		if err != nil {
			return e, fmt.Errorf("argument %q: %w", a, err)
		}
		switch k {
		case "seq":
			e.Seq = n
		case "release":
			if n > 1<<30 {
				return e, fmt.Errorf("argument %q: release out of range", a)
			}
			e.Release = int(n)
		default:
			return e, fmt.Errorf("argument %q: want seq=N or release=K", a)
		}
	}
	return e, nil
}
