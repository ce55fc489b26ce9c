//go:build !arm.6

package registry

// goarm is GOARM of this build (the arm.N build tags are cumulative); it
// is only asked on arm.
func goarm() string { return "5" }
