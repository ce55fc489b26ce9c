package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests attack section 10 (--trust-root) end to end: the publisher's
// side is the real binary (latch key gen, latch root init/sign/rotate,
// latch release build, latch sign), the release folder is served by a
// static file server, and the agent reads it from its target file, from
// its target URL (with <url>.sig) and from API pushes (X-Latch-Signature).
// Each attack must be refused, journalled, shown as the last refusal in
// latch status, and change nothing.

// publisher is a fleet's keys, roots and release folder, next to a device.
type publisher struct {
	t    *testing.T
	d    *device
	dir  string // keys, roots, drafts
	site string // the release folder, served at base
	base string
}

func newPublisher(t *testing.T, d *device) *publisher {
	t.Helper()
	p := &publisher{t: t, d: d, dir: t.TempDir()}
	p.site = filepath.Join(p.dir, "site")
	p.base = d.srv.URL + "/site"
	static := http.StripPrefix("/site", http.FileServer(http.Dir(p.site)))
	d.mu.Lock()
	prev := d.hook
	d.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if prev != nil && prev(w, r) {
			return true
		}
		if strings.HasPrefix(r.URL.Path, "/site/") {
			static.ServeHTTP(w, r)
			return true
		}
		return false
	}
	d.mu.Unlock()
	for _, k := range []string{"root1", "root2", "ci", "ci2"} {
		p.run("key", "gen", k)
	}
	p.run("root", "init", "--root-key", "root1.pub", "--root-threshold", "1", "--targets-key", "ci.pub",
		"--targets-threshold", "1", "--fleet", "kiosks", "--expires", "30d", "-o", "root.json")
	p.run("root", "sign", "--key", "root1.key", "root.json")
	d.args = append(d.args, "--trust-root", filepath.Join(p.dir, "root.json"))
	return p
}

// run runs latch in the publisher's folder; it must succeed.
func (p *publisher) run(args ...string) string {
	p.t.Helper()
	out, err := p.try(args...)
	if err != nil {
		p.t.Fatalf("latch %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (p *publisher) try(args ...string) (string, error) {
	cmd := exec.Command(latchBin, args...)
	cmd.Dir = p.dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// draft writes a draft target for release r of the app kiosk (one exec
// service, its file a local path) and returns its name.
func (p *publisher) draft(r string) string {
	p.t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(p.d.targetDoc(nil, app{name: "kiosk", release: r, services: []svc{{name: "ui"}}}), &doc); err != nil {
		p.t.Fatal(err)
	}
	for _, a := range doc["apps"].(map[string]any) {
		for name, s := range a.(map[string]any)["services"].(map[string]any) {
			for i, f := range s.(map[string]any)["files"].([]any) {
				fm := f.(map[string]any)
				p.d.mu.Lock()
				content := p.d.blobs[strings.TrimPrefix(fm["source"].(string), p.d.srv.URL)]
				p.d.mu.Unlock()
				local := fmt.Sprintf("src-%s-%s-%d", r, name, i)
				if err := os.WriteFile(filepath.Join(p.dir, local), content, 0o644); err != nil {
					p.t.Fatal(err)
				}
				fm["source"] = local
				delete(fm, "sha256")
			}
		}
	}
	b, _ := json.MarshalIndent(doc, "", "  ")
	name := "draft-" + r + ".json"
	if err := os.WriteFile(filepath.Join(p.dir, name), b, 0o644); err != nil {
		p.t.Fatal(err)
	}
	return name
}

// release builds release r into the site (signed by ci unless args say
// otherwise) and returns the target and its bundle, as published.
func (p *publisher) release(r string, args ...string) (doc, sig []byte) {
	p.t.Helper()
	draft := p.draft(r)
	if len(args) == 0 {
		args = []string{"--root", "root.json", "--key", "ci.key"}
	}
	full := append([]string{"release", "build", "--out", "build", "--base-url", p.base}, args...)
	p.run(append(full, draft)...)
	doc, err := os.ReadFile(filepath.Join(p.dir, "build", "target.json"))
	if err != nil {
		p.t.Fatal(err)
	}
	sig, err = os.ReadFile(filepath.Join(p.dir, "build", "target.json.sig"))
	if err != nil {
		p.t.Fatal(err)
	}
	return doc, sig
}

// upload copies the release files built so far to the static host (the
// site), files first, as a publisher would.
func (p *publisher) upload() {
	p.t.Helper()
	if out, err := exec.Command("cp", "-a", filepath.Join(p.dir, "build", "files"), p.site+"/").CombinedOutput(); err != nil {
		p.t.Fatalf("copy the release files to the site: %v\n%s", err, out)
	}
}

// resign rewrites the published target with edit and signs it again with
// latch sign (roots as given), returning the new pair, not published.
func (p *publisher) resign(doc []byte, edit func(m map[string]any), key string, roots ...string) ([]byte, []byte) {
	p.t.Helper()
	var m map[string]any
	if err := json.Unmarshal(doc, &m); err != nil {
		p.t.Fatal(err)
	}
	edit(m)
	b, _ := json.MarshalIndent(m, "", "  ")
	path := filepath.Join(p.dir, "edited.json")
	os.Remove(path + ".sig")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		p.t.Fatal(err)
	}
	args := []string{"sign", "--key", key}
	for _, r := range roots {
		args = append(args, "--root", r)
	}
	p.run(append(args, "edited.json")...)
	sig, err := os.ReadFile(path + ".sig")
	if err != nil {
		p.t.Fatal(err)
	}
	return b, sig
}

// privateKey reads a key made by latch key gen, for an attacker's crafted
// signature.
func (p *publisher) privateKey(name string) ed25519.PrivateKey {
	p.t.Helper()
	b, err := os.ReadFile(filepath.Join(p.dir, name+".key"))
	if err != nil {
		p.t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		p.t.Fatalf("%s.key: no PEM block", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		p.t.Fatal(err)
	}
	return k.(ed25519.PrivateKey)
}

// deliver hands doc and its bundle to the agent through source: "file"
// (the target file and FILE.sig), "url" (the site, polled with <url>.sig)
// or "api" (a push; its answer is returned, 0 for the others).
func (p *publisher) deliver(source string, doc, sig []byte) (int, string) {
	p.t.Helper()
	write := func(path string, b []byte) {
		if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
			p.t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			p.t.Fatal(err)
		}
	}
	if err := os.MkdirAll(p.site, 0o755); err != nil {
		p.t.Fatal(err)
	}
	p.upload()
	switch source {
	case "file":
		write(p.d.target+".sig", sig)
		write(p.d.target, doc)
	case "url":
		write(filepath.Join(p.site, "target.json.sig"), sig)
		write(filepath.Join(p.site, "target.json"), doc)
	case "api":
		req, _ := http.NewRequest("POST", "http://latch/v2/local/target-state", strings.NewReader(string(doc)))
		if sig != nil {
			req.Header.Set("X-Latch-Signature", base64.StdEncoding.EncodeToString(sig))
		}
		resp, err := p.d.client().Do(req)
		if err != nil {
			p.t.Fatalf("push: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	default:
		p.t.Fatalf("unknown source %q", source)
	}
	return 0, ""
}

// startOn starts the agent reading source ("file" and "api" use the target
// file, "url" the site).
func (p *publisher) startOn(source string) {
	p.t.Helper()
	if source == "url" {
		p.d.targetURL = p.base + "/target.json"
	}
	p.d.start()
}

type refusal struct {
	At     time.Time `json:"at"`
	Source string    `json:"source"`
	Reason string    `json:"reason"`
	SHA256 string    `json:"sha256"`
}

func (p *publisher) refused() *refusal {
	var s struct {
		Refused *refusal `json:"refused"`
	}
	if code := p.d.api("GET", "/v1/device", nil, &s); code != 200 {
		p.t.Fatalf("GET /v1/device: %d", code)
	}
	return s.Refused
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// snapshot is what a refusal must leave as it was.
type snapshot struct {
	release, installed string
	commands           int
}

func (p *publisher) snap() snapshot {
	return snapshot{release: p.d.releaseOf("kiosk"), installed: readFile(p.t, p.d.installed("kiosk", "ui")), commands: len(p.d.commands())}
}

// expectRefused offers doc through source and checks that it is refused
// for a reason containing want, journalled, shown in latch status, and
// that nothing changed.
func (p *publisher) expectRefused(source string, doc, sig []byte, want string) {
	p.t.Helper()
	before := p.snap()
	code, body := p.deliver(source, doc, sig)
	if source == "api" && (code != 403 || !strings.Contains(body, want)) {
		p.t.Errorf("push: %d %s, want 403 naming %q", code, body, want)
	}
	id := digest(doc)
	p.d.waitFor("the refusal of "+id[:12]+" ("+want+")", func() bool {
		r := p.refused()
		return r != nil && r.SHA256 == id && strings.Contains(r.Reason, want)
	})
	if r := p.refused(); r.Source == "" || r.At.IsZero() {
		p.t.Errorf("refusal %+v does not say where from and when", r)
	}
	status, err := exec.Command(latchBin, "status", "--json", "--root", p.d.root).CombinedOutput()
	if err != nil || !strings.Contains(string(status), `"refused"`) || !strings.Contains(string(status), want) {
		p.t.Errorf("latch status (%v) does not show the refusal %q:\n%s", err, want, status)
	}
	journal, err := exec.Command(latchBin, "journal", "--root", p.d.root, "--limit", "20").CombinedOutput()
	if err != nil || !strings.Contains(string(journal), "refused") || !strings.Contains(string(journal), want) {
		p.t.Errorf("latch journal (%v) does not show the refusal %q:\n%s", err, want, journal)
	}
	// Refused once: no retry loop journals it again (the agent retries a
	// failed acceptance every --retry-delay, 100ms here, unless it is
	// about the document).
	n := p.refusals()
	time.Sleep(time.Second) // what a wrongly accepted target would start has had time to
	if again := p.refusals(); again != n {
		p.t.Errorf("the refusal was journalled %d more times in a second, want once", again-n)
	}
	if after := p.snap(); after != before {
		p.t.Errorf("a refused target changed the device: before %+v, after %+v", before, after)
	}
	if s := p.d.status(); s.UpdatePending || s.UpdateFailed {
		p.t.Errorf("a refused target left an update: %+v", s)
	}
}

// accept offers doc through source and waits for release r to run.
func (p *publisher) accept(source string, doc, sig []byte, r string) {
	p.t.Helper()
	if code, body := p.deliver(source, doc, sig); source == "api" && code != 202 {
		p.t.Fatalf("push of release %s: %d %s, want 202", r, code, body)
	}
	p.d.waitFor("kiosk "+r+" running", func() bool { return p.d.releaseOf("kiosk") == r })
	if got := readFile(p.t, p.d.installed("kiosk", "ui")); got != "kiosk/ui "+r {
		p.t.Fatalf("installed file %q, want release %s's", got, r)
	}
}

var sources = []string{"file", "url", "api"}

// trustDevice is a device with a fleet, running release 1 (target version
// 1) delivered through source.
func trustDevice(t *testing.T, source string, agentArgs ...string) (*publisher, []byte, []byte) {
	d := newDevice(t)
	d.args = append(d.args, agentArgs...)
	p := newPublisher(t, d)
	doc, sig := p.release("1")
	if source == "url" {
		p.deliver("url", doc, sig)
	} else {
		p.deliver("file", doc, sig)
	}
	p.startOn(source)
	d.waitFor("kiosk 1 running", func() bool { return d.releaseOf("kiosk") == "1" })
	return p, doc, sig
}

// An older version is a rollback: refused through every source, also after
// a restart and after the download folder is deleted (the highest version
// lives in the journal).
func TestTrustReplayOlderVersion(t *testing.T) {
	for _, source := range sources {
		t.Run(source, func(t *testing.T) {
			p, v1, sig1 := trustDevice(t, source)
			v2, sig2 := p.release("2")
			p.accept(source, v2, sig2, "2")
			p.expectRefused(source, v1, sig1, "rollback")

			p.d.stop()
			dl := filepath.Join(p.d.stateDir, "downloads")
			if _, err := os.Stat(dl); err != nil {
				t.Fatalf("no download folder to delete: %v", err)
			}
			if err := os.RemoveAll(dl); err != nil {
				t.Fatal(err)
			}
			// The first document the restarted agent sees is the old one
			// (the URL's site holds it already).
			if source != "url" {
				p.deliver("file", v1, sig1)
			}
			p.d.start()
			if got := p.d.releaseOf("kiosk"); got != "2" {
				t.Fatalf("release %q after the restart, want 2", got)
			}
			p.expectRefused(source, v1, sig1, "rollback")
			p.d.stop()
		})
	}
}

// The same version with other bytes, signed by the right key, is refused.
func TestTrustSameVersionOtherBytes(t *testing.T) {
	trustNativeOnly(t)
	for _, source := range sources {
		t.Run(source, func(t *testing.T) {
			p, v1, _ := trustDevice(t, source)
			doc, sig := p.resign(v1, func(m map[string]any) {
				m["apps"].(map[string]any)["kiosk"].(map[string]any)["release"] = "1-evil"
			}, "ci.key", "root.json")
			p.expectRefused(source, doc, sig, "has other content")
		})
	}
}

// A target past its expiry is refused (a freeze attack).
func TestTrustExpiredTarget(t *testing.T) {
	trustNativeOnly(t)
	for _, source := range sources {
		t.Run(source, func(t *testing.T) {
			p, _, _ := trustDevice(t, source)
			doc, sig := p.release("2", "--root", "root.json", "--key", "ci.key", "--expires", "2s")
			time.Sleep(2500 * time.Millisecond) // the target expires before it is offered
			p.expectRefused(source, doc, sig, "expired")
		})
	}
}

// A root that has expired is refused, with every target it vouches for.
func TestTrustExpiredRoot(t *testing.T) {
	trustNativeOnly(t)
	for _, source := range sources {
		t.Run(source, func(t *testing.T) {
			p, _, _ := trustDevice(t, source)
			p.run("root", "rotate", "--from", "root.json", "--expires", "2s", "-o", "root2.json")
			p.run("root", "sign", "--key", "root1.key", "root2.json")
			doc, sig := p.release("2", "--root", "root.json", "--root", "root2.json", "--key", "ci.key")
			time.Sleep(2500 * time.Millisecond) // root version 2 expires
			p.expectRefused(source, doc, sig, "expired")
		})
	}
}

// The clock floor: once a target issued an hour ahead of the device's clock
// is accepted, a target that expires before that hour is refused even
// though the clock says it is valid, and that survives a restart.
func TestTrustClockFloor(t *testing.T) {
	trustNativeOnly(t)
	for _, source := range sources {
		t.Run(source, func(t *testing.T) {
			p, v1, _ := trustDevice(t, source)
			future, fsig := p.resign(v1, func(m map[string]any) {
				m["version"] = 2
				m["issued"] = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
				m["expires"] = time.Now().Add(30 * 24 * time.Hour).UTC().Format(time.RFC3339)
			}, "ci.key", "root.json")
			if code, body := p.deliver(source, future, fsig); source == "api" && code != 202 {
				t.Fatalf("push of the target issued in the future: %d %s", code, body)
			}
			p.d.waitFor("version 2 accepted", func() bool {
				out, _ := exec.Command(latchBin, "journal", "--root", p.d.root, "--limit", "5").CombinedOutput()
				return strings.Contains(string(out), "target version 2")
			})
			stale, ssig := p.resign(future, func(m map[string]any) {
				m["version"] = 3
				m["issued"] = time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
				m["expires"] = time.Now().Add(30 * time.Minute).UTC().Format(time.RFC3339)
			}, "ci.key", "root.json")
			p.expectRefused(source, stale, ssig, "expired")

			p.d.stop()
			p.d.start()
			p.d.waitFor("the agent back", func() bool { return p.d.releaseOf("kiosk") == "1" })
			// A distinct document (a new signature order would do; a new
			// version is simpler) meets the same floor after the restart.
			stale2, ssig2 := p.resign(stale, func(m map[string]any) { m["version"] = 4 }, "ci.key", "root.json")
			p.expectRefused(source, stale2, ssig2, "expired")
			p.d.stop()
		})
	}
}

// Signatures by a key the root does not know, by a targets key revoked by a
// rotation, and one key's signature twice against a threshold of two.
func TestTrustKeys(t *testing.T) {
	trustNativeOnly(t)
	for _, source := range sources {
		t.Run(source, func(t *testing.T) {
			p, _, _ := trustDevice(t, source)
			// ci2 is no key of the root (latch release refuses to sign with
			// it; latch sign without --root does not know).
			doc, _ := p.release("2")
			doc, sig := p.resign(doc, func(m map[string]any) {}, "ci2.key")
			p.expectRefused(source, doc, sig, "is unknown")

			// A rotation to ci2, signed by the root key: accepted; then ci,
			// revoked, is refused.
			p.run("root", "rotate", "--from", "root.json", "--targets-key", "ci2.pub", "-o", "root2.json")
			p.run("root", "sign", "--key", "root1.key", "root2.json")
			doc, sig = p.release("3", "--root", "root.json", "--root", "root2.json", "--key", "ci2.key")
			p.accept(source, doc, sig, "3")
			doc, _ = p.release("4", "--root", "root.json", "--root", "root2.json", "--key", "ci2.key")
			doc, sig = p.resign(doc, func(m map[string]any) {}, "ci.key")
			p.expectRefused(source, doc, p.withRoots(sig, "root.json", "root2.json"), "targets keys of root version 2: 0 valid signature")

			// Threshold two (ci and ci2): ci2's signature twice is one signer.
			p.run("root", "rotate", "--from", "root2.json", "--targets-key", "ci.pub", "--targets-key", "ci2.pub", "--targets-threshold", "2", "-o", "root3.json")
			p.run("root", "sign", "--key", "root1.key", "root3.json")
			doc, sig = p.release("5", "--root", "root.json", "--root", "root2.json", "--root", "root3.json", "--key", "ci2.key")
			var b map[string]any
			if err := json.Unmarshal(sig, &b); err != nil {
				t.Fatal(err)
			}
			sigs := b["signatures"].([]any)
			b["signatures"] = append(sigs, sigs[0])
			twice, _ := json.Marshal(b)
			p.expectRefused(source, doc, twice, "threshold")
		})
	}
}

// A root that skips a version is refused, and so is a root's signature
// offered as a target's.
func TestTrustRootAttacks(t *testing.T) {
	trustNativeOnly(t)
	for _, source := range sources {
		t.Run(source, func(t *testing.T) {
			p, _, _ := trustDevice(t, source)
			p.run("root", "rotate", "--from", "root.json", "-o", "root2.json")
			p.run("root", "sign", "--key", "root1.key", "root2.json")
			p.run("root", "rotate", "--from", "root2.json", "-o", "root3.json")
			p.run("root", "sign", "--key", "root1.key", "root3.json")
			doc, sig := p.release("2")
			p.expectRefused(source, doc, p.withRoots(sig, "root.json", "root3.json"), "does not follow")

			// ci signs the target's bytes as a root (the other payload type).
			doc, _ = p.release("3")
			k := p.privateKey("ci")
			pub := k.Public().(ed25519.PublicKey)
			id := sha256.Sum256(pub)
			pae := fmt.Sprintf("DSSEv1 %d %s %d %s", len("application/vnd.latch.root+json"), "application/vnd.latch.root+json", len(doc), doc)
			crafted, _ := json.Marshal(map[string]any{"signatures": []any{map[string]string{
				"keyid": hex.EncodeToString(id[:]), "sig": base64.StdEncoding.EncodeToString(ed25519.Sign(k, []byte(pae))),
			}}})
			p.expectRefused(source, doc, crafted, "threshold")
		})
	}
}

// A target for another fleet, or another device, is refused.
func TestTrustFleetAndDevice(t *testing.T) {
	trustNativeOnly(t)
	for _, source := range sources {
		t.Run(source, func(t *testing.T) {
			p, _, _ := trustDevice(t, source, "--device-id", "pi-7")
			doc, _ := p.release("2")
			doc, sig := p.resign(doc, func(m map[string]any) { m["fleet"] = "lobby" }, "ci.key")
			p.expectRefused(source, doc, sig, "fleet")
			doc, sig = p.release("3", "--root", "root.json", "--key", "ci.key", "--device", "pi-8")
			p.expectRefused(source, doc, sig, "device")
			doc, sig = p.release("4", "--root", "root.json", "--key", "ci.key", "--device", "pi-7")
			p.accept(source, doc, sig, "4")
		})
	}
}

// Unsigned, and a bare signature, are refused under a root of trust; a
// file without a size is refused too.
func TestTrustUnsignedAndUnsized(t *testing.T) {
	trustNativeOnly(t)
	p, v1, _ := trustDevice(t, "api")
	doc, _ := p.release("2")
	p.expectRefused("api", doc, nil, "not signed")
	bare := ed25519.Sign(p.privateKey("ci"), doc)
	p.expectRefused("api", doc, bare, "a bare signature is --trust-key's form")
	unsized, usig := p.resign(v1, func(m map[string]any) {
		m["version"] = 3
		for _, a := range m["apps"].(map[string]any) {
			for _, s := range a.(map[string]any)["services"].(map[string]any) {
				for _, f := range s.(map[string]any)["files"].([]any) {
					delete(f.(map[string]any), "size")
				}
			}
		}
	}, "ci.key", "root.json")
	p.expectRefused("api", unsized, usig, "every file needs its size")
}

// --trust-root and --trust-key together is a usage error.
func TestTrustRootAndKeyTogether(t *testing.T) {
	d := newDevice(t)
	p := newPublisher(t, d)
	cmd := exec.Command(latchBin, "agent", "--root", d.root, "--driver", "exec", "--target-file", d.target,
		"--trust-root", filepath.Join(p.dir, "root.json"), "--trust-key", filepath.Join(p.dir, "ci.pub"))
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "--trust-root or --trust-key, not both") {
		t.Errorf("agent with both: %v\n%s\nwant exit 2 naming both flags", err, out)
	}
}

// withRoots replaces the roots of a bundle with the root files given, as an
// attacker (or a careless publisher) would ship them.
func (p *publisher) withRoots(sig []byte, files ...string) []byte {
	p.t.Helper()
	var b map[string]any
	if err := json.Unmarshal(sig, &b); err != nil {
		p.t.Fatal(err)
	}
	var roots []any
	for _, f := range files {
		var r any
		if err := json.Unmarshal([]byte(readFile(p.t, filepath.Join(p.dir, f))), &r); err != nil {
			p.t.Fatal(err)
		}
		roots = append(roots, r)
	}
	b["roots"] = roots
	out, _ := json.Marshal(b)
	return out
}

// The commands of README's "Publishing a release", run as written: a
// publisher's folder, a static host (a real HTTP server over HOST_DIR) and
// the agent they end with, which must apply the release.
func TestReadmePublishing(t *testing.T) {
	trustNativeOnly(t)
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "<!-- publishing-commands:")
	if !ok {
		t.Fatal("README.md has no <!-- publishing-commands: --> block")
	}
	_, rest, _ = strings.Cut(rest, "```sh\n")
	block, _, ok := strings.Cut(rest, "\n```")
	if !ok || !strings.Contains(block, "latch agent --trust-root") {
		t.Fatalf("README.md's publishing block is not a ```sh block ending in latch agent --trust-root:\n%s", block)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	hostDir := filepath.Join(dir, "host")
	device := filepath.Join(dir, "device")
	work := filepath.Join(dir, "publisher")
	for _, d := range []string{bin, hostDir, device, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(latchBin, filepath.Join(bin, "latch")); err != nil {
		t.Fatal(err)
	}
	srv := httptestServer(t, hostDir)
	script := filepath.Join(dir, "publishing.sh")
	if err := os.WriteFile(script, []byte("set -eu\n"+block+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "BASE_URL="+srv, "HOST_DIR="+hostDir,
		"LATCH_ROOT="+device, "NOTIFY_SOCKET=")
	out := &lockedWriter{w: &bytesBuffer{}}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		<-done
	}()
	installed := filepath.Join(device, "opt", "hello", "hello.txt")
	deadline := time.Now().Add(60 * time.Second)
	for {
		if b, err := os.ReadFile(installed); err == nil && string(b) == "hello 1.0\n" {
			break
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("the README's commands ended (%v) before the release was applied:\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the README's release was not applied within 60s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		st, err := exec.Command(latchBin, "status", "--json", "--root", device).CombinedOutput()
		if err == nil && strings.Contains(string(st), `"release": "hello=1.0"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("latch status does not show hello=1.0 running (%v):\n%s", err, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// httptestServer serves dir as a static host and returns its URL.
func httptestServer(t *testing.T, dir string) string {
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	t.Cleanup(srv.Close)
	return srv.URL
}

type bytesBuffer = bytes.Buffer

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// refusals counts the refusals in the journal.
func (p *publisher) refusals() int {
	p.t.Helper()
	out, err := exec.Command(latchBin, "journal", "--root", p.d.root, "--limit", "1000").CombinedOutput()
	if err != nil {
		p.t.Fatalf("latch journal: %v\n%s", err, out)
	}
	return strings.Count(string(out), "target state refused: ")
}

// A corrupt journal is moved aside and started afresh: the trust state
// comes back from its copy (trust.json in the state dir), so an older
// version is still a rollback and the release that ran is applied again
// from the target the device holds. With the copy gone too, the agent says
// what it lost.
func TestTrustJournalReset(t *testing.T) {
	trustNativeOnly(t)
	p, v1, sig1 := trustDevice(t, "file")
	v2, sig2 := p.release("2")
	p.accept("file", v2, sig2, "2")
	p.d.stop()
	copyPath := filepath.Join(p.d.stateDir, "trust.json")
	if _, err := os.Stat(copyPath); err != nil {
		t.Fatalf("no copy of the trust state after version 2 was accepted: %v", err)
	}
	corrupt := func() {
		t.Helper()
		if err := os.WriteFile(filepath.Join(p.d.stateDir, "journal.db"), []byte("not a journal"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	corrupt()
	p.deliver("file", v1, sig1) // the first document the reset agent sees is the old one
	p.d.start()
	time.Sleep(time.Second) // what a wrongly accepted version 1 would start has had time to
	if out := p.d.output(); !strings.Contains(out, "read back from its copy") {
		t.Errorf("agent output after a journal reset does not say the trust state came from its copy:\n%s", out)
	}
	p.expectRefused("file", v1, sig1, "rollback")
	p.accept("file", v2, sig2, "2") // the release it knows is applied again
	p.d.stop()

	corrupt()
	if err := os.Remove(copyPath); err != nil {
		t.Fatal(err)
	}
	p.d.start()
	if out := p.d.output(); !strings.Contains(out, "the trust state went with the corrupt journal and its copy") {
		t.Errorf("agent output after a journal reset without the copy does not warn about the trust state:\n%s", out)
	}
	p.d.stop()

	// An operator moves the device to another fleet but deletes only the
	// journal: the copy still names the old fleet, and the agent says
	// which files to move aside instead of starting under either root.
	p.run("root", "init", "--root-key", "root2.pub", "--root-threshold", "1", "--targets-key", "ci2.pub",
		"--targets-threshold", "1", "--fleet", "elsewhere", "--expires", "30d", "-o", "other.json")
	p.run("root", "sign", "--key", "root2.key", "other.json")
	if err := os.Remove(filepath.Join(p.d.stateDir, "journal.db")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, latchBin, "agent", "--root", p.d.root, "--driver", "exec",
		"--trust-root", filepath.Join(p.dir, "other.json")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), copyPath) || !strings.Contains(string(out), "move both aside") {
		t.Errorf("agent under another fleet's root with the old copy: %v\n%s\nwant a refusal naming %s", err, out, copyPath)
	}
}

// trustNativeOnly skips an attack of the trust suite in the cross runs
// (LATCH_CROSS: arm64, armv7, armv6 under qemu-user, and 386), where each
// costs tens of seconds of emulated latch invocations. The rules are
// agent/trust's, whose own tests run on every architecture; the attacks run
// in full in the native suite, and TestTrustReplayOlderVersion runs on every
// architecture to show the wiring there. In the native suite the attacks
// run in parallel with the other long tests (t.Parallel).
func trustNativeOnly(t *testing.T) {
	t.Helper()
	if os.Getenv("LATCH_CROSS") != "" {
		t.Skip("LATCH_CROSS: this trust attack runs in the native suite only (agent/trust's rules are tested on every architecture; TestTrustReplayOlderVersion shows the agent's wiring here)")
	}
	t.Parallel() // each attack has its own device; most of its time is spent waiting for expiries and refusals
}
