package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"latch/agent/trust"
)

// trustEnv is a publisher's folder: the tests run the real binary in it.
type trustEnv struct {
	t   *testing.T
	dir string
}

func newTrustEnv(t *testing.T) *trustEnv {
	return &trustEnv{t: t, dir: t.TempDir()}
}

func (e *trustEnv) path(name string) string { return filepath.Join(e.dir, name) }

// run runs latch with args in the folder.
func (e *trustEnv) run(args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	cmd := exec.Command(testLatchBin, args...)
	cmd.Dir = e.dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("run latch %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// ok runs latch and fails the test unless it exits 0.
func (e *trustEnv) ok(args ...string) string {
	e.t.Helper()
	out, errs, code := e.run(args...)
	if code != 0 {
		e.t.Fatalf("latch %s: exit %d: %s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// fails runs latch and checks its exit status and that stderr says want.
func (e *trustEnv) fails(code int, want string, args ...string) {
	e.t.Helper()
	out, errs, got := e.run(args...)
	if got != code || !strings.Contains(errs, want) {
		e.t.Fatalf("latch %s: got exit %d, stderr %q, stdout %q; want exit %d and a message with %q", strings.Join(args, " "), got, errs, out, code, want)
	}
}

func (e *trustEnv) write(name, content string) {
	e.t.Helper()
	if err := os.WriteFile(e.path(name), []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func (e *trustEnv) read(name string) []byte {
	e.t.Helper()
	b, err := os.ReadFile(e.path(name))
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// privKey reads a key written by latch key gen, for signing by hand what
// the CLI refuses to sign (expired documents).
func (e *trustEnv) privKey(name string) ed25519.PrivateKey {
	e.t.Helper()
	block, _ := pem.Decode(e.read(name + ".key"))
	if block == nil {
		e.t.Fatalf("%s.key is not PEM", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		e.t.Fatal(err)
	}
	return k.(ed25519.PrivateKey)
}

// target writes a target state with the section 10 fields.
func (e *trustEnv) target(name string, version int, issued, expires time.Time, fleet, device string) {
	e.t.Helper()
	dev := ""
	if device != "" {
		dev = fmt.Sprintf(`,"device":%q`, device)
	}
	e.write(name, fmt.Sprintf(`{"version":%d,"issued":%q,"expires":%q,"fleet":%q%s,"apps":{"kiosk":{"release":"r%d","services":{}}}}`+"\n",
		version, issued.UTC().Format(time.RFC3339), expires.UTC().Format(time.RFC3339), fleet, dev, version))
}

// fleetSetup makes keys alice, bob (root, 2 of 2) and ci (targets) and a
// signed root.json for fleet kiosk-prod.
func fleetSetup(t *testing.T) *trustEnv {
	e := newTrustEnv(t)
	for _, k := range []string{"alice", "bob", "ci"} {
		e.ok("key", "gen", k)
	}
	e.ok("root", "init", "--root-key", "alice.pub", "--root-key", "bob.pub", "--root-threshold", "2",
		"--targets-key", "ci.pub", "--targets-threshold", "1", "--fleet", "kiosk-prod", "--expires", "2y", "-o", "root.json")
	e.ok("root", "sign", "--key", "alice.key", "root.json")
	e.ok("root", "sign", "--key", "bob.key", "root.json")
	return e
}

func TestTrustPublishAndVerify(t *testing.T) {
	e := newTrustEnv(t)
	out := e.ok("key", "gen", "alice")
	for name, mode := range map[string]os.FileMode{"alice.key": 0o600, "alice.pub": 0o644} {
		fi, err := os.Stat(e.path(name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s: got %v, %v, want mode %04o", name, fi, err, mode)
		}
	}
	pubBlock, _ := pem.Decode(e.read("alice.pub"))
	if pubBlock == nil || pubBlock.Type != "PUBLIC KEY" {
		t.Fatalf("alice.pub is not a PEM public key: %q", e.read("alice.pub"))
	}
	pk, err := x509.ParsePKIXPublicKey(pubBlock.Bytes)
	if err != nil || !strings.Contains(out, trust.KeyID(pk.(ed25519.PublicKey))) {
		t.Fatalf("key gen printed %q, want the key id of alice.pub (%v)", out, err)
	}
	if !pk.(ed25519.PublicKey).Equal(e.privKey("alice").Public()) {
		t.Fatalf("alice.pub is not the public half of alice.key")
	}
	// Never overwritten.
	before := e.read("alice.key")
	e.fails(1, "never overwrites", "key", "gen", "alice")
	os.Remove(e.path("alice.pub"))
	e.fails(1, "never overwrites", "key", "gen", "alice")
	if !bytes.Equal(before, e.read("alice.key")) {
		t.Fatalf("key gen changed an existing key")
	}
	if _, err := os.Stat(e.path("alice.pub")); err == nil {
		t.Fatalf("a refused key gen wrote alice.pub")
	}

	e = fleetSetup(t)
	now := time.Now()
	e.target("target.json", 1, now.Add(-time.Minute), now.Add(7*24*time.Hour), "kiosk-prod", "")
	e.fails(1, "no target.json.sig", "verify", "--root", "root.json", "target.json")
	e.ok("sign", "--key", "ci.key", "target.json")
	out = e.ok("verify", "--root", "root.json", "target.json")
	if !strings.HasPrefix(out, "ok: version 1 for fleet kiosk-prod, signed by 1 of 1 ") || strings.Count(out, "\n") != 1 {
		t.Fatalf("verify printed %q, want one line 'ok: version 1 for fleet kiosk-prod, signed by 1 of 1 ...'", out)
	}
	// The bundle is what the agent reads, as JSON and as a header.
	bd, err := trust.ParseBundle(e.read("target.json.sig"))
	if err != nil || len(bd.Signatures) != 1 {
		t.Fatalf("target.json.sig: got %+v, %v", bd, err)
	}
	// The header form, base64 of the bundle, is read too.
	e.write("header.json", string(e.read("target.json")))
	e.write("header.json.sig", base64.StdEncoding.EncodeToString(e.read("target.json.sig")))
	e.ok("verify", "--root", "root.json", "header.json")
	// Signing twice with one key is refused and changes nothing.
	sigBefore := e.read("target.json.sig")
	e.fails(1, "signed it already", "sign", "--key", "ci.key", "target.json")
	if !bytes.Equal(sigBefore, e.read("target.json.sig")) {
		t.Fatalf("a refused sign changed target.json.sig")
	}
	// A byte changed after signing.
	body := e.read("target.json")
	e.write("target.json", strings.Replace(string(body), `"r1"`, `"r9"`, 1))
	e.fails(1, "does not verify", "verify", "--root", "root.json", "target.json")
	e.fails(1, "the file changed", "sign", "--key", "ci.key", "--root", "root.json", "target.json")
}

func TestTrustRootNeedsItsThreshold(t *testing.T) {
	e := newTrustEnv(t)
	for _, k := range []string{"alice", "bob", "ci"} {
		e.ok("key", "gen", k)
	}
	e.ok("root", "init", "--root-key", "alice.pub", "--root-key", "bob.pub", "--root-threshold", "2",
		"--targets-key", "ci.pub", "--fleet", "kiosk-prod", "--expires", "365d", "-o", "root.json")
	now := time.Now()
	e.target("target.json", 1, now.Add(-time.Minute), now.Add(time.Hour), "kiosk-prod", "")
	e.ok("sign", "--key", "ci.key", "target.json")
	e.fails(1, "latch root sign", "verify", "--root", "root.json", "target.json")
	e.ok("root", "sign", "--key", "alice.key", "root.json")
	e.fails(1, "1 valid signature(s) of distinct keys, the threshold is 2", "verify", "--root", "root.json", "target.json")
	before := e.read("root.json")
	e.fails(1, "signed it already", "root", "sign", "--key", "alice.key", "root.json")
	if !bytes.Equal(before, e.read("root.json")) {
		t.Fatalf("a refused root sign changed root.json")
	}
	os.Chmod(e.path("root.json"), 0o640)
	e.ok("root", "sign", "root.json", "--key", "bob.key") // operand before the flag
	if fi, _ := os.Stat(e.path("root.json")); fi.Mode().Perm() != 0o640 {
		t.Errorf("root sign changed the mode of root.json to %04o", fi.Mode().Perm())
	}
	e.ok("verify", "--root", "root.json", "target.json")
	// Nothing is left of the temporary files.
	if m, _ := filepath.Glob(e.path(".*tmp*")); len(m) != 0 {
		t.Errorf("temporary files left behind: %v", m)
	}
}

func TestTrustWrongKeyAndThreshold(t *testing.T) {
	e := fleetSetup(t)
	now := time.Now()
	e.target("target.json", 1, now.Add(-time.Minute), now.Add(time.Hour), "kiosk-prod", "")
	// A root key signing a target: not a targets key.
	e.ok("sign", "--key", "alice.key", "target.json")
	e.fails(1, "not a key of this role", "verify", "--root", "root.json", "target.json")
	// With --root, sign refuses it up front.
	os.Remove(e.path("target.json.sig"))
	e.fails(1, "not a targets key of root version 1", "sign", "--key", "alice.key", "--root", "root.json", "target.json")
	if _, err := os.Stat(e.path("target.json.sig")); err == nil {
		t.Fatalf("a refused sign wrote target.json.sig")
	}
	// A stranger's key.
	e.ok("key", "gen", "mallory")
	e.ok("sign", "--key", "mallory.key", "target.json")
	e.fails(1, "is unknown", "verify", "--root", "root.json", "target.json")
	// A public key where the private one goes.
	e.fails(1, `want "PRIVATE KEY"`, "sign", "--key", "ci.pub", "target.json")

	// Threshold 2 of ci, ci2: one is not enough, one key twice is not two.
	e2 := newTrustEnv(t)
	for _, k := range []string{"alice", "ci", "ci2"} {
		e2.ok("key", "gen", k)
	}
	e2.ok("root", "init", "--root-key", "alice.pub", "--targets-key", "ci.pub", "--targets-key", "ci2.pub",
		"--targets-threshold", "2", "--fleet", "kiosk-prod", "--expires", "2y", "-o", "root.json")
	e2.ok("root", "sign", "--key", "alice.key", "root.json")
	e2.target("target.json", 1, now.Add(-time.Minute), now.Add(time.Hour), "kiosk-prod", "")
	e2.ok("sign", "--key", "ci.key", "target.json")
	e2.fails(1, "the threshold is 2 of 2", "verify", "--root", "root.json", "target.json")
	var bd map[string][]map[string]string
	json.Unmarshal(e2.read("target.json.sig"), &bd)
	twice, _ := json.Marshal(map[string]any{"signatures": []map[string]string{bd["signatures"][0], bd["signatures"][0]}})
	e2.write("target.json.sig", string(twice))
	e2.fails(1, "1 valid signature(s) of distinct keys", "verify", "--root", "root.json", "target.json")
	os.Remove(e2.path("target.json.sig"))
	e2.ok("sign", "--key", "ci.key", "target.json")
	e2.ok("sign", "--key", "ci2.key", "--root", "root.json", "target.json")
	if out := e2.ok("verify", "--root", "root.json", "target.json"); !strings.Contains(out, "signed by 2 of 2") {
		t.Errorf("verify printed %q, want 'signed by 2 of 2'", out)
	}
	// A bare base64 signature (the --trust-key form) is not a bundle.
	e2.write("target.json.sig", base64.StdEncoding.EncodeToString(ed25519.Sign(e2.privKey("ci"), e2.read("target.json"))))
	e2.fails(1, "bare signature", "verify", "--root", "root.json", "target.json")
}

func TestTrustExpired(t *testing.T) {
	e := fleetSetup(t)
	now := time.Now()
	e.target("target.json", 1, now.Add(-48*time.Hour), now.Add(-time.Hour), "kiosk-prod", "")
	e.fails(1, "expired", "sign", "--key", "ci.key", "target.json")
	if _, err := os.Stat(e.path("target.json.sig")); err == nil {
		t.Fatalf("signing an expired target wrote target.json.sig")
	}
	// Signed by hand while it was fresh, checked once it is not.
	body := e.read("target.json")
	bd, err := trust.SignTarget(trust.Bundle{}, body, e.privKey("ci"))
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(bd)
	e.write("target.json.sig", string(js))
	e.fails(1, "target version 1 expired on", "verify", "--root", "root.json", "target.json")

	// An expired root, signed by its keys.
	sr, err := trust.ParseRoot(e.read("root.json"))
	if err != nil {
		t.Fatal(err)
	}
	old := sr.Root
	old.Expires = now.Add(-time.Minute).UTC().Truncate(time.Second)
	expired, err := trust.NewSignedRoot(old)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"alice", "bob"} {
		if expired, err = trust.SignRoot(expired, e.privKey(k)); err != nil {
			t.Fatal(err)
		}
	}
	rj, _ := json.Marshal(expired)
	e.write("expired-root.json", string(rj))
	e.target("fresh.json", 2, now.Add(-time.Minute), now.Add(time.Hour), "kiosk-prod", "")
	e.ok("sign", "--key", "ci.key", "fresh.json")
	e.fails(1, "root version 1 of fleet \"kiosk-prod\" expired on", "verify", "--root", "expired-root.json", "fresh.json")
	e.ok("verify", "--root", "root.json", "fresh.json")
}

func TestTrustRotation(t *testing.T) {
	e := fleetSetup(t)
	e.ok("key", "gen", "ci2")
	now := time.Now()
	// Rotate the targets key; root keys and thresholds are kept.
	out := e.ok("root", "rotate", "--from", "root.json", "--targets-key", "ci2.pub", "-o", "root2.json")
	if !strings.Contains(out, "root version 2") || !strings.Contains(out, "root keys 2 of 2") {
		t.Fatalf("root rotate printed %q, want version 2 with the root keys kept", out)
	}
	e.fails(1, "exists", "root", "rotate", "--from", "root.json", "--targets-key", "ci2.pub", "-o", "root2.json")
	e.ok("root", "sign", "--key", "alice.key", "root2.json")
	e.ok("root", "sign", "--key", "bob.key", "root2.json")

	e.target("target.json", 2, now.Add(-time.Minute), now.Add(time.Hour), "kiosk-prod", "")
	e.ok("sign", "--key", "ci2.key", "--root", "root.json", "--root", "root2.json", "target.json")
	if out := e.ok("verify", "--root", "root.json", "target.json"); !strings.Contains(out, "of root version 2") {
		t.Fatalf("verify printed %q, want it to follow the rotation to root version 2", out)
	}
	// Without root 2 in the bundle, a device on root 1 does not know ci2.
	e.target("bare.json", 2, now.Add(-time.Minute), now.Add(time.Hour), "kiosk-prod", "")
	e.ok("sign", "--key", "ci2.key", "bare.json")
	e.fails(1, "is unknown", "verify", "--root", "root.json", "bare.json")
	e.ok("verify", "--root", "root2.json", "bare.json")
	// The old targets key is refused once root 2 comes with the document.
	e.target("old.json", 3, now.Add(-time.Minute), now.Add(time.Hour), "kiosk-prod", "")
	e.fails(1, "not a targets key of root version 2", "sign", "--key", "ci.key", "--root", "root2.json", "old.json")
	e.ok("sign", "--key", "ci.key", "old.json")
	sig, _ := trust.ParseBundle(e.read("old.json.sig"))
	r2, _ := trust.ParseRoot(e.read("root2.json"))
	sig.Roots = []trust.SignedRoot{r2}
	js, _ := json.Marshal(sig)
	e.write("old.json.sig", string(js))
	e.fails(1, "revoked by root version 2", "verify", "--root", "root.json", "old.json")

	// A rotation to new root keys signed only by the new keys.
	e.ok("key", "gen", "dave")
	e.ok("root", "rotate", "--from", "root.json", "--root-key", "dave.pub", "-o", "hijack.json")
	out = e.ok("root", "sign", "--key", "dave.key", "hijack.json")
	if !strings.Contains(out, "1 of the 1 needed") {
		t.Errorf("root sign printed %q", out)
	}
	e.target("hj.json", 5, now.Add(-time.Minute), now.Add(time.Hour), "kiosk-prod", "")
	e.ok("sign", "--key", "ci.key", "--root", "hijack.json", "hj.json")
	e.fails(1, "by the root keys of version 1", "verify", "--root", "root.json", "hj.json")

	// A rotation never changes the fleet; a root that skips a version is refused.
	e.fails(1, "never changes the fleet", "root", "rotate", "--from", "root.json", "--fleet", "other", "-o", "x.json")
	e.ok("root", "rotate", "--from", "root2.json", "-o", "root3.json")
	e.ok("root", "sign", "--key", "alice.key", "root3.json")
	e.ok("root", "sign", "--key", "bob.key", "root3.json")
	e.fails(1, "oldest first", "sign", "--key", "ci2.key", "--root", "root.json", "--root", "root3.json", "bare.json")
	sig, _ = trust.ParseBundle(e.read("bare.json.sig"))
	r3, _ := trust.ParseRoot(e.read("root3.json"))
	sig.Roots = []trust.SignedRoot{r3}
	js, _ = json.Marshal(sig)
	e.write("bare.json.sig", string(js))
	e.fails(1, "root version 3 does not follow the trusted version 1", "verify", "--root", "root.json", "bare.json")
}

func TestTrustDevice(t *testing.T) {
	e := fleetSetup(t)
	now := time.Now()
	e.target("target.json", 1, now.Add(-time.Minute), now.Add(time.Hour), "kiosk-prod", "board-a")
	e.ok("sign", "--key", "ci.key", "target.json")
	e.fails(1, `target is for device "board-a", this is device "board-b"`, "verify", "--root", "root.json", "--device", "board-b", "target.json")
	e.fails(1, "--device-id", "verify", "--root", "root.json", "target.json")
	e.ok("verify", "--root", "root.json", "--device", "board-a", "target.json")
	e.target("other.json", 1, now.Add(-time.Minute), now.Add(time.Hour), "kiosk-staging", "")
	e.ok("sign", "--key", "ci.key", "other.json")
	e.fails(1, `target is for fleet "kiosk-staging", this device trusts fleet "kiosk-prod"`, "verify", "--root", "root.json", "other.json")
	// A target without the section 10 fields is not signed.
	e.write("plain.json", `{"apps":{}}`)
	e.fails(1, `field "version" is missing`, "sign", "--key", "ci.key", "plain.json")
}

func TestTrustBadFlags(t *testing.T) {
	e := newTrustEnv(t)
	e.ok("key", "gen", "a")
	for _, tc := range []struct {
		want string
		args []string
	}{
		{"want 1 to 1", []string{"root", "init", "--root-key", "a.pub", "--root-threshold", "2", "--targets-key", "a.pub", "--fleet", "f", "-o", "r.json"}},
		{"want 1 to 1", []string{"root", "init", "--root-key", "a.pub", "--targets-key", "a.pub", "--targets-threshold", "0", "--fleet", "f", "-o", "r.json"}},
		{"give each key once", []string{"root", "init", "--root-key", "a.pub", "--root-key", "a.pub", "--targets-key", "a.pub", "--fleet", "f", "-o", "r.json"}},
		{"give --fleet", []string{"root", "init", "--root-key", "a.pub", "--targets-key", "a.pub", "-o", "r.json"}},
		{"give -o", []string{"root", "init", "--root-key", "a.pub", "--targets-key", "a.pub", "--fleet", "f"}},
		{"--root-key", []string{"root", "init", "--targets-key", "a.pub", "--fleet", "f", "-o", "r.json"}},
		{"above zero", []string{"root", "init", "--root-key", "a.pub", "--targets-key", "a.pub", "--fleet", "f", "--expires", "-1h", "-o", "r.json"}},
		{"90d, 2y or 36h", []string{"root", "init", "--root-key", "a.pub", "--targets-key", "a.pub", "--fleet", "f", "--expires", "soon", "-o", "r.json"}},
		{"space or control", []string{"root", "init", "--root-key", "a.pub", "--targets-key", "a.pub", "--fleet", "my fleet", "-o", "r.json"}},
		{"unknown action", []string{"root", "grow"}},
		{"unknown action", []string{"key", "make", "x"}},
		{"give one NAME", []string{"key", "gen"}},
		{"give --root", []string{"verify", "t.json"}},
		{"give --key", []string{"sign", "t.json"}},
	} {
		_, errs, code := e.run(tc.args...)
		if code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("latch %s: got exit %d, %q; want a refusal saying %q", strings.Join(tc.args, " "), code, errs, tc.want)
		}
		if _, err := os.Stat(e.path("r.json")); err == nil {
			t.Fatalf("latch %s wrote r.json", strings.Join(tc.args, " "))
		}
	}
	e.write("bogus.json", `{"signed":"e30=","signatures":[]}`)
	e.fails(1, "root.signed", "root", "sign", "--key", "a.key", "bogus.json")
	e.fails(1, "no such file", "verify", "--root", "missing.json", "t.json")
}

func TestTrustHelp(t *testing.T) {
	e := newTrustEnv(t)
	for _, args := range [][]string{
		{"key", "-h"}, {"key", "gen", "-h"}, {"root", "-h"}, {"root", "init", "-h"}, {"root", "sign", "-h"},
		{"root", "rotate", "-h"}, {"sign", "-h"}, {"verify", "--help"},
	} {
		out, errs, code := e.run(args...)
		if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, "Example:") || !strings.Contains(out, "latch "+args[0]) {
			t.Errorf("latch %s: got exit %d, stdout %q, stderr %q; want usage with an example on stdout", strings.Join(args, " "), code, out, errs)
		}
	}
}

// Keys are the files openssl reads and writes: a key of either tool signs
// for the other.
func TestTrustKeysInteroperate(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("no openssl: the key files were not checked against it")
	}
	e := newTrustEnv(t)
	ossl := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command(openssl, args...)
		cmd.Dir = e.dir
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("openssl %v: %v", args, err)
		}
		return out
	}
	e.ok("key", "gen", "alice")
	if pub := ossl("pkey", "-in", "alice.key", "-pubout"); !bytes.Equal(pub, e.read("alice.pub")) {
		t.Fatalf("openssl derives %q from alice.key, latch wrote %q", pub, e.read("alice.pub"))
	}
	ossl("genpkey", "-algorithm", "ed25519", "-out", "bob.key")
	ossl("pkey", "-in", "bob.key", "-pubout", "-out", "bob.pub")
	e.ok("root", "init", "--root-key", "alice.pub", "--root-key", "bob.pub", "--root-threshold", "2",
		"--targets-key", "bob.pub", "--fleet", "kiosk-prod", "-o", "root.json")
	e.ok("root", "sign", "--key", "alice.key", "root.json")
	e.ok("root", "sign", "--key", "bob.key", "root.json")
	now := time.Now()
	e.target("target.json", 1, now.Add(-time.Minute), now.Add(time.Hour), "kiosk-prod", "")
	e.ok("sign", "--key", "bob.key", "target.json")
	e.ok("verify", "--root", "root.json", "target.json")
	ossl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ec.key")
	e.fails(1, "not an ed25519 private key", "sign", "--key", "ec.key", "target.json")
}
