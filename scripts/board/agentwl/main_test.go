package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"latch/agent/lock"
	"latch/agent/target"
)

func TestContent(t *testing.T) {
	t.Setenv("AGENTWL_BIG", "100000")
	tests := []struct {
		svc  string
		k    int
		size int
	}{
		{"ui", 1, smallSize},
		{"ui", 2, smallSize},
		{"backend", 1, 100000},
		{"backend", 7, 100000},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		b := content(tt.svc, tt.k)
		if len(b) != tt.size {
			t.Errorf("len(content(%s, %d)) = %d, want %d", tt.svc, tt.k, len(b), tt.size)
		}
		if string(b) != string(content(tt.svc, tt.k)) {
			t.Errorf("content(%s, %d) is not deterministic", tt.svc, tt.k)
		}
		sum := sha256.Sum256(b)
		if seen[string(sum[:])] {
			t.Errorf("content(%s, %d) equals another release's", tt.svc, tt.k)
		}
		seen[string(sum[:])] = true
		svc, k, ok := parseHeader(strings.SplitN(string(b), "\n", 2)[0])
		if !ok || svc != tt.svc || k != tt.k {
			t.Errorf("header of content(%s, %d) parses as (%q, %d, %v)", tt.svc, tt.k, svc, k, ok)
		}
	}
}

func TestParseDrive(t *testing.T) {
	tests := []struct {
		in      string
		want    drive
		wantErr bool
	}{
		{in: "from=0 to=1\n", want: drive{0, 1}},
		{in: "from=3 to=5\n", want: drive{3, 5}},
		{in: "from=3 to=3\n", wantErr: true},
		{in: "from=-1 to=0\n", wantErr: true},
		{in: "from=3", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseDrive([]byte(tt.in))
		if (err != nil) != tt.wantErr {
			t.Errorf("parseDrive(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("parseDrive(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if err == nil {
			back, err := parseDrive([]byte(got.String()))
			if err != nil || back != got {
				t.Errorf("parseDrive(%q.String()) = %+v, %v", tt.in, back, err)
			}
		}
	}
}

func TestParseExpect(t *testing.T) {
	tests := []struct {
		in      []string
		want    expect
		wantErr bool
	}{
		{in: nil, want: expect{}},
		{in: []string{"seq=12", "release=3"}, want: expect{Seq: 12, Release: 3}},
		{in: []string{"seq=x"}, wantErr: true},
		{in: []string{"size=1"}, wantErr: true},
		{in: []string{"release"}, wantErr: true},
		{in: []string{"release=99999999999"}, wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseExpect(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseExpect(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
		} else if err == nil && got != tt.want {
			t.Errorf("parseExpect(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestParseRequestLog(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		reqs, snt int
		wantErr   bool
	}{
		{name: "whole", in: "req /r1/ui start=0\nsent /r1/ui start=0 bytes=8192 size=8192\n", reqs: 1, snt: 1},
		{name: "torn last line", in: "req /r1/ui start=0\nsent /r1/ui sta", reqs: 1},
		{name: "torn last req", in: "req /r1/ui start=0\nreq /r1/backend start=10", reqs: 1},
		{name: "garbage inside", in: "req /r1/ui start=0\nxx\nreq /r2/ui start=0\n", wantErr: true},
		{name: "empty", in: ""},
	}
	for _, tt := range tests {
		reqs, snt, err := parseRequestLog([]byte(tt.in))
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: error = %v, want error %v", tt.name, err, tt.wantErr)
			continue
		}
		if len(reqs) != tt.reqs || len(snt) != tt.snt {
			t.Errorf("%s: got %d req, %d sent lines, want %d, %d", tt.name, len(reqs), len(snt), tt.reqs, tt.snt)
		}
	}
}

func TestContainsRelease(t *testing.T) {
	tests := []struct {
		msg  string
		k    int
		want bool
	}{
		{"update 91ed91b6ae73 applied in 0.4s: demo=r2", 2, true},
		{"update 91ed91b6ae73 applied in 0.4s: demo=r2, other=1", 2, true},
		{"update 91ed91b6ae73 applied in 0.4s: demo=r21", 2, false},
		{"update 91ed91b6ae73 applied in 0.4s: demo=r2", 21, false},
	}
	for _, tt := range tests {
		if got := containsRelease(tt.msg, tt.k); got != tt.want {
			t.Errorf("containsRelease(%q, %d) = %v, want %v", tt.msg, tt.k, got, tt.want)
		}
	}
}

// The release server resumes with Range and logs what it served; the log
// parses back.
func TestServerRange(t *testing.T) {
	l := layout{root: t.TempDir()}
	os.MkdirAll(l.wlDir(), 0o755)
	t.Setenv("AGENTWL_BIG", "200000")
	t.Setenv("AGENTWL_RATE", "100000000")
	rs := newReleases()
	srv := httptest.NewServer(newServer(l, rs))
	defer srv.Close()
	want, _ := rs.get("backend", 3)

	get := func(rng string) []byte {
		req, _ := http.NewRequest("GET", srv.URL+"/r3/backend", nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return b
	}
	if got := get(""); string(got) != string(want) {
		t.Fatalf("full GET: got %d bytes, want %d", len(got), len(want))
	}
	if got := get("bytes=150000-"); string(got) != string(want[150000:]) {
		t.Fatalf("ranged GET: got %d bytes, want %d", len(got), len(want)-150000)
	}
	if resp, _ := http.Get(srv.URL + "/r0/backend"); resp.StatusCode != 404 {
		t.Errorf("GET /r0/backend: got %d, want 404", resp.StatusCode)
	}
	raw, err := os.ReadFile(l.requestLog())
	if err != nil {
		t.Fatal(err)
	}
	reqs, sents, err := parseRequestLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	wantReqs := []request{{"/r3/backend", 0}, {"/r3/backend", 150000}}
	if fmt.Sprint(reqs) != fmt.Sprint(wantReqs) {
		t.Errorf("requests: got %v, want %v", reqs, wantReqs)
	}
	wantSent := []sent{{"/r3/backend", 0, 200000, 200000}, {"/r3/backend", 150000, 50000, 200000}}
	if fmt.Sprint(sents) != fmt.Sprint(wantSent) {
		t.Errorf("sent: got %v, want %v", sents, wantSent)
	}
}

// A step logs the installed file's header, and flags a VIOLATION when the
// service's lock is missing or not the agent's.
func TestStep(t *testing.T) {
	l := layout{root: t.TempDir()}
	os.MkdirAll(filepath.Dir(l.commandsLog()), 0o755)
	file := filepath.Join(l.root, "ui")
	os.WriteFile(file, content("ui", 4), 0o644)
	agentLock := filepath.Join(l.root, "agent.lock")
	rec, _ := json.Marshal(lock.NewRecord(lock.RoleAgent))
	os.WriteFile(agentLock, rec, 0o644)
	userLock := filepath.Join(l.root, "user.lock")
	os.WriteFile(userLock, nil, 0o644)
	tests := []struct {
		lock      string
		violation bool
	}{
		{agentLock, false},
		{userLock, true},
		{filepath.Join(l.root, "none.lock"), true},
	}
	for _, tt := range tests {
		os.Remove(l.commandsLog())
		if err := step(l, "stop", "demo/ui", file, tt.lock); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(l.commandsLog())
		if v := len(countViolations(got)) > 0; v != tt.violation {
			t.Errorf("lock %s: violation %v, want %v (log %q)", filepath.Base(tt.lock), v, tt.violation, got)
		}
		if !strings.HasSuffix(string(got), "stop demo/ui demo/ui r4\n") {
			t.Errorf("lock %s: log %q, want it to end with the step and the file's header", filepath.Base(tt.lock), got)
		}
	}
	if err := step(l, "restart", "demo/ui", file, agentLock); err == nil {
		t.Errorf("step restart: got no error, want one")
	}
}

// The target document is one latch accepts, naming the files' sha256.
func TestTargetDoc(t *testing.T) {
	t.Setenv("AGENTWL_BIG", "1000")
	l := layout{root: "/x"}
	rs := newReleases()
	doc, err := targetDoc(l, rs, "/bin/agentwl", 5)
	if err != nil {
		t.Fatal(err)
	}
	st, err := target.Parse(doc)
	if err != nil {
		t.Fatalf("latch rejects the target: %v\n%s", err, doc)
	}
	app := st.Apps[appName]
	if app.Release != "r5" {
		t.Errorf("release = %q, want r5", app.Release)
	}
	for _, s := range services {
		b, _ := rs.get(s, 5)
		sum := sha256.Sum256(b)
		f := app.Services[s].Files[0]
		if f.SHA256 != hex.EncodeToString(sum[:]) || f.Path != "/x/data/app/"+s {
			t.Errorf("%s: file %+v, want sha256 of r5 at /x/data/app/%s", s, f, s)
		}
	}
}

// Installed as sh, the program runs `sh -c 'CMD ARG...'` by exec.
func TestShim(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sh := filepath.Join(dir, "sh")
	if err := os.Symlink(self, sh); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	cmd := exec.Command(sh, "-c", "/bin/cp "+self+" "+out)
	cmd.Env = append(os.Environ(), "AGENTWL_TEST_SHIM=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sh -c cp: %v %s", err, b)
	}
	if _, err := os.Stat(out); err != nil {
		t.Errorf("sh -c cp did not run: %v", err)
	}
}

func TestMain(m *testing.M) {
	if os.Getenv("AGENTWL_TEST_SHIM") == "1" && filepath.Base(os.Args[0]) == "sh" {
		os.Exit(shim(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func FuzzParseRequestLog(f *testing.F) {
	f.Add([]byte("req /r1/ui start=0\nsent /r1/ui start=0 bytes=8192 size=8192\n"))
	f.Add([]byte("req /r1/ui start=0\nsent /r1/ui sta"))
	f.Fuzz(func(t *testing.T, b []byte) {
		reqs, _, err := parseRequestLog(b)
		if err != nil {
			return
		}
		for _, r := range reqs {
			if strings.ContainsAny(r.Path, " \n") {
				t.Errorf("path %q has a space or newline", r.Path)
			}
		}
	})
}

func FuzzParseDrive(f *testing.F) {
	f.Add([]byte("from=0 to=1\n"))
	f.Add([]byte("from=9 to=12\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseDrive(b)
		if err != nil {
			return
		}
		if d.From < 0 || d.To <= d.From {
			t.Errorf("parseDrive(%q) = %+v, an impossible drive", b, d)
		}
	})
}

func FuzzParseExpect(f *testing.F) {
	f.Add("seq=12 release=3")
	f.Add("release=0")
	f.Fuzz(func(t *testing.T, s string) {
		e, err := parseExpect(strings.Fields(s))
		if err == nil && e.Release < 0 {
			t.Errorf("parseExpect(%q) = %+v", s, e)
		}
	})
}
