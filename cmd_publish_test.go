package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// releaseDraft writes a draft with one local file and returns its bytes.
func releaseDraft(e *trustEnv, rel, content string) {
	e.t.Helper()
	e.write("ui.bin", content)
	e.write("draft.json", `{"apps":{"kiosk":{"release":"`+rel+`","services":{"ui":{"start":"true","files":[
		{"source":"ui.bin","path":"/opt/kiosk/ui","mode":"0755"}]}}}}}`)
}

type builtTarget struct {
	Version uint64 `json:"version"`
	Fleet   string `json:"fleet"`
	Issued  string `json:"issued"`
	Expires string `json:"expires"`
	Apps    map[string]struct {
		Release  string `json:"release"`
		Services map[string]struct {
			Files []struct {
				Source, SHA256, Path string
				Size                 int64
			} `json:"files"`
		} `json:"services"`
	} `json:"apps"`
}

func (e *trustEnv) built() builtTarget {
	e.t.Helper()
	var bt builtTarget
	if err := json.Unmarshal(e.read("site/target.json"), &bt); err != nil {
		e.t.Fatalf("site/target.json: %v", err)
	}
	return bt
}

func TestReleaseBuild(t *testing.T) {
	e := fleetSetup(t)
	releaseDraft(e, "r1", "ui one\n")
	build := []string{"release", "build", "--out", "site", "--base-url", "https://updates.example/kiosk/", "--root", "root.json", "--key", "ci.key", "draft.json"}
	out := e.ok(build...)
	if !strings.Contains(out, "release version 1 of fleet \"kiosk-prod\"") || !strings.Contains(out, "1 file(s) copied") {
		t.Fatalf("release build said %q", out)
	}
	bt := e.built()
	sum := sha256.Sum256([]byte("ui one\n"))
	hexSum := hex.EncodeToString(sum[:])
	f := bt.Apps["kiosk"].Services["ui"].Files[0]
	if bt.Version != 1 || bt.Fleet != "kiosk-prod" || f.SHA256 != hexSum || f.Size != 7 ||
		f.Source != "https://updates.example/kiosk/files/sha256/"+hexSum || f.Path != "/opt/kiosk/ui" {
		t.Fatalf("built target %+v, file %+v", bt, f)
	}
	if got, err := os.ReadFile(e.path("site/files/sha256/" + hexSum)); err != nil || string(got) != "ui one\n" {
		t.Fatalf("stored file: %q, %v", got, err)
	}
	// A device provisioned with root.json accepts it as it is.
	if out := e.ok("verify", "--root", "root.json", "site/target.json"); !strings.Contains(out, "ok: version 1") {
		t.Fatalf("verify said %q", out)
	}

	// The next build is version 2; the same file is not copied again; a
	// changed one is stored next to the old (devices mid-download keep theirs).
	releaseDraft(e, "r2", "ui one\n")
	if out := e.ok(build...); !strings.Contains(out, "release version 2") || !strings.Contains(out, "0 file(s) copied") || !strings.Contains(out, "1 already there") {
		t.Fatalf("second build said %q", out)
	}
	releaseDraft(e, "r3", "ui two\n")
	e.ok(build...)
	if bt := e.built(); bt.Version != 3 || bt.Apps["kiosk"].Release != "r3" {
		t.Fatalf("third build: %+v", bt)
	}
	if ents, _ := os.ReadDir(e.path("site/files/sha256")); len(ents) != 2 {
		t.Fatalf("site/files/sha256 holds %d files, want 2 (old and new)", len(ents))
	}
	e.ok("verify", "--root", "root.json", "site/target.json")

	// A version at or below the published one would be refused by devices.
	before := e.read("site/target.json")
	e.fails(1, "is not above 3", append([]string{"release", "build", "--version", "3"}, build[2:]...)...)
	if string(e.read("site/target.json")) != string(before) {
		t.Fatal("a refused build changed site/target.json")
	}
	e.ok(append([]string{"release", "build", "--version", "10"}, build[2:]...)...)
	if bt := e.built(); bt.Version != 10 {
		t.Fatalf("--version 10 built version %d", bt.Version)
	}
}

func TestReleaseBuildRefuses(t *testing.T) {
	e := fleetSetup(t)
	e.ok("key", "gen", "stranger")
	releaseDraft(e, "r1", "x")
	base := []string{"release", "build", "--out", "site", "--base-url", "https://u.example", "--root", "root.json"}
	cases := []struct {
		name, draft, want string
		args              []string
	}{
		{"url source without sha256", `{"apps":{"a":{"release":"1","services":{"s":{"files":[{"source":"https://x.example/f","path":"/f"}]}}}}}`, `give its "sha256"`, nil},
		{"url source without size", `{"apps":{"a":{"release":"1","services":{"s":{"files":[{"source":"https://x.example/f","sha256":"` + strings.Repeat("a", 64) + `","path":"/f"}]}}}}}`, `give its "size"`, nil},
		{"missing local file", `{"apps":{"a":{"release":"1","services":{"s":{"files":[{"source":"nope.bin","path":"/f"}]}}}}}`, "nope.bin", nil},
		{"a directory as a file", `{"apps":{"a":{"release":"1","services":{"s":{"files":[{"source":".","path":"/f"}]}}}}}`, "not a regular file", nil},
		{"wrong sha256 in the draft", `{"apps":{"a":{"release":"1","services":{"s":{"files":[{"source":"ui.bin","sha256":"` + strings.Repeat("b", 64) + `","path":"/f"}]}}}}}`, "but the draft says", nil},
		{"other fleet in the draft", `{"fleet":"other","apps":{}}`, `"fleet" is other`, nil},
		{"no apps", `{"config":{}}`, `"apps"`, nil},
		{"not JSON", `{"apps":`, "not a JSON object", nil},
		{"a key that is not a targets key", `{"apps":{}}`, "is not a targets key", []string{"--key", "stranger.key"}},
		{"bad base url", `{"apps":{}}`, "--base-url", []string{"--base-url", "ftp://x"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			e.write("bad.json", c.draft)
			args := append(append(append([]string{}, base...), c.args...), "bad.json")
			out, errs, code := e.run(args...)
			if code == 0 || !strings.Contains(errs, c.want) {
				t.Fatalf("exit %d, stderr %q, stdout %q; want a failure naming %q", code, errs, out, c.want)
			}
			if _, err := os.Stat(filepath.Join(e.dir, "site", "target.json")); err == nil {
				t.Fatal("a refused build wrote site/target.json")
			}
		})
	}
}
