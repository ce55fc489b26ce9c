package registry

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

// TestDevicePlatformNative: the platform of this test binary.
func TestDevicePlatformNative(t *testing.T) {
	p := DevicePlatform()
	want := Platform{OS: "linux", Architecture: runtime.GOARCH}
	switch runtime.GOARCH {
	case "arm64":
		want.Variant = "v8"
	case "arm":
		want.Variant = p.Variant
		if p.Variant != "v5" && p.Variant != "v6" && p.Variant != "v7" {
			t.Errorf("arm variant %q", p.Variant)
		}
	}
	if p != want {
		t.Errorf("DevicePlatform() = %s, want %s", p, want)
	}
}

// TestGOARMBuildTags: the file that gives GOARM is chosen by the arm.N
// build tags, checked with the go command for each GOARM (no ARM machine
// needed).
func TestGOARMBuildTags(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
		if _, err := os.Stat(gobin); err != nil {
			t.Skip("no go command: the GOARM build tags were not checked")
		}
	}
	for _, tc := range []struct{ goarch, goarm, want string }{
		{"arm", "5", "goarm5.go"},
		{"arm", "6", "goarm6.go"},
		{"arm", "7", "goarm7.go"},
		{"arm64", "", "goarm5.go"},
	} {
		cmd := exec.Command(gobin, "list", "-f", "{{.GoFiles}}", ".")
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+tc.goarch, "GOARM="+tc.goarm, "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v: %s", err, out)
		}
		var got []string
		for _, f := range strings.Fields(strings.Trim(strings.TrimSpace(string(out)), "[]")) {
			if strings.HasPrefix(f, "goarm") {
				got = append(got, f)
			}
		}
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("GOARCH=%s GOARM=%s builds %v, want [%s]", tc.goarch, tc.goarm, got, tc.want)
		}
	}
}

// TestDependencies: the package is a leaf of the standard library only (no
// other latch package, no module from outside).
func TestDependencies(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
		if _, err := os.Stat(gobin); err != nil {
			t.Skip("no go command: the dependencies were not checked")
		}
	}
	for _, goarch := range []string{runtime.GOARCH, "arm"} {
		cmd := exec.Command(gobin, "list", "-f", `{{join .Deps "\n"}}`, ".")
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+goarch, "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v: %s", err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			first, _, _ := strings.Cut(dep, "/")
			if strings.Contains(first, ".") || first == "latch" || dep == "C" {
				t.Errorf("GOARCH=%s: agent/registry depends on %s", goarch, dep)
			}
		}
	}
}
