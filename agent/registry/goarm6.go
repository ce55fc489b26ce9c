//go:build arm.6 && !arm.7

package registry

// goarm is GOARM of this build (the arm.N build tags are cumulative).
func goarm() string { return "6" }
