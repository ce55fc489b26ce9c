package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is set by build/build.sh with -ldflags "-X main.version=...";
// otherwise it comes from the module's build information.
var version = ""

func init() {
	register("version", "print latch's version", func(ctx context.Context, args []string) error {
		fmt.Printf("latch %s %s/%s\n", versionString(), runtime.GOOS, runtime.GOARCH)
		return nil
	})
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
