package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// needDpkgDeb fails the test when dpkg-deb is missing: without it the .deb does not build, and a
// package that does not build is a failure, not a test that could not run.
func needDpkgDeb(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Fatalf("dpkg-deb missing, so the .deb cannot be built: %v (it is in Debian's dpkg package: apt-get install -y dpkg)", err)
	}
}

// buildDeb runs build/deb.sh for arch into a temporary dist folder and returns the .deb. It fails
// when the latch binary or the .deb does not build.
func buildDeb(t *testing.T, arch string) string {
	t.Helper()
	needDpkgDeb(t)
	dist := t.TempDir()
	cmd := exec.Command("sh", filepath.Join("..", "build", "deb.sh"), arch)
	cmd.Env = append(os.Environ(), "DIST="+dist)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "build latch for") {
			t.Fatalf("build/deb.sh %s: the latch binary does not build: %v\n%s", arch, err, out)
		}
		t.Fatalf("build/deb.sh %s: the .deb does not build: %v\n%s", arch, err, out)
	}
	t.Logf("build/deb.sh %s:\n%s", arch, out)
	debs, _ := filepath.Glob(filepath.Join(dist, "latch_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("got .debs %q in %s, want one latch_*.deb", debs, dist)
	}
	return debs[0]
}

func TestDeb(t *testing.T) {
	deb := buildDeb(t, "amd64")
	contents, err := exec.Command("dpkg-deb", "--contents", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`-rwxr-xr-x root/root .* \./usr/bin/latch\n`,
		`-rw-r--r-- root/root .* \./lib/systemd/system/latch\.service\n`,
	} {
		if !regexp.MustCompile(want).Match(contents) {
			t.Errorf("dpkg-deb --contents: no line matching %q in\n%s", want, contents)
		}
	}
	info, err := exec.Command("dpkg-deb", "--info", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Package: latch", "Architecture: amd64", "Installed-Size: ", "postinst", "prerm", "postrm"} {
		if !strings.Contains(string(info), want) {
			t.Errorf("dpkg-deb --info: got\n%s\nwant it to contain %q", info, want)
		}
	}
	shipped, err := os.ReadFile(filepath.Join("..", "build", "systemd", "latch.service"))
	if err != nil {
		t.Fatal(err)
	}
	x := exec.Command("sh", "-c", "dpkg-deb --fsys-tarfile \"$1\" | tar -xOf - ./lib/systemd/system/latch.service", "sh", deb)
	got, err := x.Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(shipped) {
		t.Error("latch.service in the .deb differs from build/systemd/latch.service")
	}
}

// A binary in the dist folder that is older than the sources is built again
// rather than packaged as it is.
func TestDebRebuildsStaleBinary(t *testing.T) {
	needDpkgDeb(t)
	dist := t.TempDir()
	stale := filepath.Join(dist, "latch-linux-amd64")
	if err := os.WriteFile(stale, []byte("#!/bin/sh\necho stale\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-24 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join("..", "main.go"), time.Now(), time.Now()); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", filepath.Join("..", "build", "deb.sh"), "amd64")
	cmd.Env = append(os.Environ(), "DIST="+dist)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build/deb.sh amd64: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "older than the sources") {
		t.Errorf("deb.sh did not say it rebuilt the stale binary:\n%s", out)
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "latch_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("got .debs %q, want one", debs)
	}
	x := exec.Command("sh", "-c", "dpkg-deb --fsys-tarfile \"$1\" | tar -xOf - ./usr/bin/latch | head -c 4 | od -An -c", "sh", debs[0])
	got, err := x.Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(got), "E   L   F") {
		t.Errorf("packaged /usr/bin/latch starts with %q, want an ELF binary (the stale script was packaged)", got)
	}
}
