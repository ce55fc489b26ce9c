package main

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

type listedPkg struct {
	ImportPath string
	Imports    []string
	CgoFiles   []string
	Standard   bool
}

// goList runs `go list -deps -json` for the patterns with cgo off, as the
// release builds do.
func goList(t *testing.T, patterns ...string) []listedPkg {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go toolchain here (emulated run?): the dependency rules were not checked")
	}
	cmd := exec.Command("go", append([]string{"list", "-deps", "-json"}, patterns...)...)
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pkgs []listedPkg
	dec := json.NewDecoder(out)
	for {
		var p listedPkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	return pkgs
}

// The binary stays pure Go and free of packages it must never carry.
func TestBinaryDeps(t *testing.T) {
	forbidden := []string{
		"github.com/coreos/go-systemd/v22/sdjournal", // cgo
		"github.com/prometheus/client_golang",        // metrics are written by hand
		"google.golang.org/grpc",
		"net/http/pprof",
	}
	pkgs := goList(t, "latch")
	if len(pkgs) < 10 {
		t.Fatalf("go list returned %d packages, want the binary's whole closure", len(pkgs))
	}
	for _, p := range pkgs {
		if len(p.CgoFiles) > 0 || p.ImportPath == "C" || p.ImportPath == "runtime/cgo" {
			t.Errorf("%s needs cgo: the binary must build with CGO_ENABLED=0", p.ImportPath)
		}
		for _, f := range forbidden {
			if p.ImportPath == f || strings.HasPrefix(p.ImportPath, f+"/") {
				t.Errorf("the binary depends on %s", p.ImportPath)
			}
		}
	}
}

// The architecture's one-way rules: leaves know nothing of the project, the
// agent does not know its API, and only store and systemd reach into bbolt
// and go-systemd.
func TestImportRules(t *testing.T) {
	leaves := map[string]bool{
		"latch/store": true, "latch/systemd": true, "latch/agent/lock": true,
		"latch/agent/target": true, "latch/agent/fetch": true, "latch/agent/execdriver": true,
		"latch/agent/trust": true, "latch/agent/registry": true, "latch/agent/docker": true, "latch/agent/fleet": true,
		"latch/agent/compose": true, "latch/agent/internal/names": true,
	}
	// shared are the leaf-level packages that leaves may import: rules
	// two leaves must agree on (they are leaves themselves).
	shared := map[string]bool{"latch/agent/internal/names": true}
	only := map[string]string{ // import prefix -> the one package allowed to use it
		"go.etcd.io/bbolt":                  "latch/store",
		"github.com/coreos/go-systemd/v22/": "latch/systemd",
		"github.com/godbus/dbus":            "latch/systemd",
		"github.com/eclipse/paho.golang":    "latch/agent/fleet",
	}
	for _, p := range goList(t, "latch/...") {
		if !strings.HasPrefix(p.ImportPath, "latch") {
			continue
		}
		for _, imp := range p.Imports {
			if leaves[p.ImportPath] && strings.HasPrefix(imp, "latch/") && !strings.HasPrefix(imp, p.ImportPath+"/internal") && !shared[imp] {
				t.Errorf("%s imports %s: leaves import nothing from the project", p.ImportPath, imp)
			}
			if p.ImportPath == "latch/agent" && imp == "latch/agent/api" {
				t.Errorf("latch/agent imports its API: the API knows the agent, not the reverse")
			}
			for prefix, owner := range only {
				if strings.HasPrefix(imp, prefix) && p.ImportPath != owner && !strings.HasPrefix(p.ImportPath, owner+"/") {
					t.Errorf("%s imports %s: only %s may", p.ImportPath, imp, owner)
				}
			}
		}
	}
}
