package trust

import (
	"go/build"
	"strings"
	"testing"
)

// trust is a leaf: it imports the standard library and nothing else, so the
// agent, latch verify and anything else can use it without a cycle or a
// new dependency.
func TestImportsOnlyStandardLibrary(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkg.Imports) == 0 {
		t.Fatalf("no imports found in %s: the check reads nothing", pkg.Dir)
	}
	for _, imp := range pkg.Imports {
		first, _, _ := strings.Cut(imp, "/")
		if strings.Contains(first, ".") || first == "latch" || imp == "C" {
			t.Errorf("agent/trust imports %s: it may import the standard library only", imp)
		}
	}
}
