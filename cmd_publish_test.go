package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"latch/agent/docker"
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

// ---- compose: a real registry ----

func publishSHA(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func publishFreeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// publishRegistry runs the real docker-registry (distribution) under the
// test's temp dir on a free port and returns its host:port; it is stopped
// by its pid.
func publishRegistry(t *testing.T, extra string) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Skip("docker-registry not installed: release build --compose against a real registry was not tested")
	}
	dir := t.TempDir()
	for try := 0; try < 5; try++ {
		addr := publishFreeAddr(t)
		cfg := fmt.Sprintf("version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}, maintenance: {uploadpurging: {enabled: false}}}\nhttp: {addr: %s}\n%s", filepath.Join(dir, "data"), addr, extra)
		cfgPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("registry-%d.log", try)))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "serve", cfgPath)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop := func() {
			cmd.Process.Kill()
			<-exited
			logf.Close()
		}
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
			select {
			case <-exited:
				deadline = time.Time{}
				continue
			default:
			}
			if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
				resp.Body.Close()
				t.Cleanup(stop)
				return addr
			}
			time.Sleep(20 * time.Millisecond)
		}
		stop()
		log, _ := os.ReadFile(logf.Name())
		t.Logf("registry on %s did not start: %s", addr, log)
	}
	t.Fatal("docker-registry did not start on any port")
	return ""
}

// publishPush pushes a one-layer image with the registry API and returns
// its manifest digest. auth is the Authorization header, if the registry
// needs one.
func publishPush(t *testing.T, addr, auth, repo, tag, content string) string {
	t.Helper()
	base := "http://" + addr
	do := func(method, u, ctype string, body []byte) (*http.Response, []byte) {
		req, err := http.NewRequest(method, u, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, b
	}
	blob := func(data []byte) string {
		resp, _ := do("POST", base+"/v2/"+repo+"/blobs/uploads/", "", nil)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("start upload to %s: %s", repo, resp.Status)
		}
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := url.Parse(base)
		loc = b.ResolveReference(loc)
		q := loc.Query()
		d := publishSHA(data)
		q.Set("digest", d)
		loc.RawQuery = q.Encode()
		if resp, body := do("PUT", loc.String(), "application/octet-stream", data); resp.StatusCode != http.StatusCreated {
			t.Fatalf("upload blob to %s: %s %s", repo, resp.Status, body)
		}
		return d
	}
	layer := []byte("layer of " + content)
	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["` + publishSHA(layer) + `"]}}`)
	man := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",`+
		`"config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":%d,"digest":%q},`+
		`"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","size":%d,"digest":%q}]}`,
		len(cfg), blob(cfg), len(layer), blob(layer))
	if resp, body := do("PUT", base+"/v2/"+repo+"/manifests/"+tag, "application/vnd.docker.distribution.manifest.v2+json", []byte(man)); resp.StatusCode != http.StatusCreated {
		t.Fatalf("put manifest %s:%s: %s %s", repo, tag, resp.Status, body)
	}
	return publishSHA([]byte(man))
}

// composeTarget reads the built target's apps as raw service objects.
func composeTarget(e *trustEnv) map[string]struct {
	Release  string                     `json:"release"`
	Services map[string]json.RawMessage `json:"services"`
} {
	e.t.Helper()
	var doc struct {
		Apps map[string]struct {
			Release  string                     `json:"release"`
			Services map[string]json.RawMessage `json:"services"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(e.read("site/target.json"), &doc); err != nil {
		e.t.Fatalf("site/target.json: %v", err)
	}
	return doc.Apps
}

func TestReleaseBuildCompose(t *testing.T) {
	reg := publishRegistry(t, "")
	uiDigest := publishPush(t, reg, "", "kiosk/ui", "2.3", "ui one")
	backDigest := publishPush(t, reg, "", "kiosk/backend", "1", "backend")
	e := fleetSetup(t)
	e.write("docker-compose.yml", `version: "2.1"
services:
  ui:
    image: `+reg+`/kiosk/ui:2.3
    command: /bin/ui --kiosk
    environment:
      KIOSK_URL: http://localhost:8080
    volumes: ["kiosk-data:/data"]
    ports: ["8080:80"]
    depends_on: [backend]
    stop_grace_period: 20s
  backend:
    image: `+reg+`/kiosk/backend@`+backDigest+`
    restart: "no"
volumes:
  kiosk-data:
`)
	build := []string{"release", "build", "--out", "site", "--base-url", "https://updates.example/kiosk", "--root", "root.json", "--key", "ci.key",
		"--compose", "docker-compose.yml", "--app", "kiosk", "--insecure-registry", reg}
	out := e.ok(build...)
	if !strings.Contains(out, "app kiosk release ") || !strings.Contains(out, "2 service(s) from docker-compose.yml") || !strings.Contains(out, "release version 1") {
		t.Fatalf("release build said %q", out)
	}
	apps := composeTarget(e)
	kiosk := apps["kiosk"]
	if !regexp.MustCompile(`^[0-9a-f]{12}$`).MatchString(kiosk.Release) {
		t.Fatalf("release %q, want a 12-hex digest of the services", kiosk.Release)
	}
	specs := map[string]docker.Spec{}
	for n, raw := range kiosk.Services {
		s, err := docker.ParseSpec(raw)
		if err != nil {
			t.Fatalf("service %s: a device would refuse it: %v\n%s", n, err, raw)
		}
		specs[n] = s
	}
	if len(specs) != 2 || specs["ui"].Image != reg+"/kiosk/ui@"+uiDigest || specs["backend"].Image != reg+"/kiosk/backend@"+backDigest {
		t.Fatalf("images %q and %q, want the tag pinned to %s and the digest kept", specs["ui"].Image, specs["backend"].Image, uiDigest)
	}
	if ui := specs["ui"]; strings.Join(ui.Command, " ") != "/bin/ui --kiosk" || ui.Environment["KIOSK_URL"] != "http://localhost:8080" ||
		ui.Volumes[0] != "kiosk-data:/data" || ui.Ports[0] != "8080:80" || ui.DependsOn[0] != "backend" || ui.StopGrace != "20s" {
		t.Fatalf("ui lost fields: %+v", ui)
	}
	if specs["backend"].Restart != "no" {
		t.Fatalf("backend restart %q, want no", specs["backend"].Restart)
	}
	if out := e.ok("verify", "--root", "root.json", "site/target.json"); !strings.Contains(out, "ok: version 1") {
		t.Fatalf("verify said %q", out)
	}

	// The same services give the same release; a tag moved to another
	// image gives another one, pinned to the new digest.
	e.ok(build...)
	if again := composeTarget(e)["kiosk"]; again.Release != kiosk.Release {
		t.Fatalf("rebuilt with the same images: release %s, was %s", again.Release, kiosk.Release)
	}
	uiDigest2 := publishPush(t, reg, "", "kiosk/ui", "2.3", "ui two")
	e.ok(build...)
	moved := composeTarget(e)["kiosk"]
	if moved.Release == kiosk.Release || !strings.Contains(string(moved.Services["ui"]), uiDigest2) {
		t.Fatalf("after the tag moved: release %s (was %s), ui %s; want a new release pinned to %s", moved.Release, kiosk.Release, moved.Services["ui"], uiDigest2)
	}

	// With a draft, the compose app joins the draft's apps; --release names it.
	releaseDraft(e, "r1", "ui one\n")
	e.write("draft.json", `{"apps":{"files":{"release":"r1","services":{"ui":{"start":"true","files":[{"source":"ui.bin","path":"/opt/ui","mode":"0755"}]}}}}}`)
	e.ok(append(build, "--release", "2026.12.1", "draft.json")...)
	apps = composeTarget(e)
	if apps["kiosk"].Release != "2026.12.1" || apps["files"].Release != "r1" || len(apps["kiosk"].Services) != 2 {
		t.Fatalf("apps %+v: want kiosk release 2026.12.1 next to the draft's app", apps)
	}
	e.ok("verify", "--root", "root.json", "site/target.json")
}

func TestReleaseBuildComposeRefuses(t *testing.T) {
	reg := publishRegistry(t, "")
	publishPush(t, reg, "", "kiosk/ui", "2.3", "ui")
	e := fleetSetup(t)
	e.write("kiosk.json", `{"apps":{"kiosk":{"release":"1","services":{}}}}`)
	dead := publishFreeAddr(t) // nothing listens there
	compose := func(image, extra string) string {
		return "services:\n  ui:\n    image: " + image + "\n" + extra
	}
	missing := strings.Repeat("0", 64)
	cases := []struct {
		name, compose, want string
		args                []string
	}{
		{"unknown field", compose(reg+"/kiosk/ui:2.3", "    healthcheck:\n      test: [CMD, 'true']\n"), "service ui: healthcheck: field is not supported", nil},
		{"build", compose(reg+"/kiosk/ui:2.3", "    build: .\n"), "service ui: build: latch does not build images", nil},
		{"undeclared volume", compose(reg+"/kiosk/ui:2.3", "    volumes: [data:/data]\n"), "named volume data is not declared", nil},
		{"missing tag", compose(reg+"/kiosk/ui:9.9", ""), "service ui: pin the image to a digest: fetch manifest " + reg + "/kiosk/ui:9.9: registry answered 404", nil},
		{"missing repository", compose(reg+"/kiosk/nope:1", ""), "push the image first", nil},
		{"missing digest", compose(reg+"/kiosk/ui@sha256:"+missing, ""), "kiosk/ui@sha256:" + missing, nil},
		{"unreachable registry", compose(dead+"/kiosk/ui:2.3", ""), "fetch manifest " + dead + "/kiosk/ui:2.3", []string{"--insecure-registry", dead}},
		{"unreachable registry hint", compose(dead+"/kiosk/ui:2.3", ""), "is the registry up and reachable?", []string{"--insecure-registry", dead}},
		{"plain HTTP not named insecure", compose(reg+"/kiosk/ui:2.3", ""), "the registry speaks plain HTTP: name it with --insecure-registry " + reg, []string{"--insecure-registry", "other.example:5000"}},
		{"depends_on cycle", "services:\n  a:\n    image: " + reg + "/kiosk/ui:2.3\n    depends_on: [b]\n  b:\n    image: " + reg + "/kiosk/ui:2.3\n    depends_on: [a]\n", "depends_on cycle a -> b -> a", nil},
		{"compose file too big", compose(reg+"/kiosk/ui:2.3", "#"+strings.Repeat("x", 1<<20)+"\n"), "larger than 1048576 bytes", nil},
		{"no --app", compose(reg+"/kiosk/ui:2.3", ""), "give --app NAME", []string{"--app", ""}},
		{"bad --app", compose(reg+"/kiosk/ui:2.3", ""), `--app "../x"`, []string{"--app", "../x"}},
		{"bad --release", compose(reg+"/kiosk/ui:2.3", ""), `--release "a b"`, []string{"--release", "a b"}},
		{"app in the draft too", compose(reg+"/kiosk/ui:2.3", ""), "kiosk.json has an app of that name already", []string{"kiosk.json"}},
		{"bad --insecure-registry", compose(reg+"/kiosk/ui:2.3", ""), "give HOST:PORT", []string{"--insecure-registry", "http://x"}},
		{"missing compose file", "", "nope.yml", []string{"--compose", "nope.yml"}},
		{"bad --registry-auth", compose(reg+"/kiosk/ui:2.3", ""), "--registry-auth", []string{"--registry-auth", "nope.json"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			e.write("docker-compose.yml", c.compose)
			args := []string{"release", "build", "--out", "site", "--base-url", "https://u.example", "--root", "root.json", "--key", "ci.key",
				"--compose", "docker-compose.yml", "--app", "kiosk"}
			if c.name != "plain HTTP not named insecure" {
				args = append(args, "--insecure-registry", reg)
			}
			args = append(args, c.args...)
			out, errs, code := e.run(args...)
			if code == 0 || !strings.Contains(errs, c.want) {
				t.Fatalf("exit %d, stderr %q, stdout %q; want a failure naming %q", code, errs, out, c.want)
			}
			t.Logf("%s", errs)
			if _, err := os.Stat(filepath.Join(e.dir, "site", "target.json")); err == nil {
				t.Fatal("a refused build wrote site/target.json")
			}
		})
	}
	// Compose flags without --compose are a mistake, not ignored.
	e.t = t
	releaseDraft(e, "r1", "x")
	e.fails(2, "--app goes with --compose", strings.Fields("release build --out site --base-url https://u.example --fleet f --app kiosk draft.json")...)
}

// The help teaches the compose form with an example.
func TestReleaseBuildHelpCompose(t *testing.T) {
	e := newTrustEnv(t)
	out := e.ok("release", "build", "-h")
	for _, want := range []string{"--compose FILE --app NAME", "--insecure-registry HOST:PORT", "--compose docker-compose.yml --app kiosk", "image: registry.example/kiosk/ui:2.3", "push the images first"} {
		if !strings.Contains(out, want) {
			t.Errorf("release build -h lacks %q:\n%s", want, out)
		}
	}
}

// testHtpasswd is user "ci" with password "s3cret-pass" (bcrypt, cost 4).
const testHtpasswd = "ci:$2b$04$dyIk/fhiJvVHRe4Rl1wzsODgdHi3X1IAbzWVYG5CWd67Rs.M4d1tq\n"

// A registry that needs credentials: --registry-auth gives them from a
// docker config.json; without it the error says to give one.
func TestReleaseBuildComposeAuth(t *testing.T) {
	dir := t.TempDir()
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(testHtpasswd), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := publishRegistry(t, fmt.Sprintf("auth: {htpasswd: {realm: latch-test, path: %s}}\n", htpasswd))
	basic := base64.StdEncoding.EncodeToString([]byte("ci:s3cret-pass"))
	digest := publishPush(t, reg, "Basic "+basic, "kiosk/ui", "2.3", "ui")
	e := fleetSetup(t)
	e.write("docker-compose.yml", "services:\n  ui:\n    image: "+reg+"/kiosk/ui:2.3\n")
	build := []string{"release", "build", "--out", "site", "--base-url", "https://u.example", "--root", "root.json", "--key", "ci.key",
		"--compose", "docker-compose.yml", "--app", "kiosk", "--insecure-registry", reg}
	out, errs, code := e.run(build...)
	if code != 1 || !strings.Contains(errs, "--registry-auth") || strings.Contains(errs, "reachable") {
		t.Fatalf("without credentials: exit %d, stderr %q, stdout %q; want a failure that asks for --registry-auth", code, errs, out)
	}
	if _, err := os.Stat(e.path("site/target.json")); err == nil {
		t.Fatal("a refused build wrote site/target.json")
	}
	e.write("wrong.json", `{"auths":{"`+reg+`":{"auth":"`+base64.StdEncoding.EncodeToString([]byte("ci:wrong"))+`"}}}`)
	e.fails(1, "401", append(build, "--registry-auth", "wrong.json")...)
	e.write("config.json", `{"auths":{"`+reg+`":{"auth":"`+basic+`"}}}`)
	e.ok(append(build, "--registry-auth", "config.json")...)
	if got := string(composeTarget(e)["kiosk"].Services["ui"]); !strings.Contains(got, reg+"/kiosk/ui@"+digest) {
		t.Fatalf("ui %s, want it pinned to %s", got, digest)
	}
}
