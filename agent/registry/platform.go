package registry

import (
	"fmt"
	"runtime"
	"strings"
)

// Platform is what a manifest list entry or an image config runs on.
type Platform struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Variant      string `json:"variant,omitempty"`
}

// String is os/architecture[/variant].
func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// ParsePlatform parses "linux/arm/v7", "linux/amd64" and the like.
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" || (len(parts) == 3 && parts[2] == "") {
		return Platform{}, fmt.Errorf("parse platform %q: want os/architecture[/variant], as linux/arm/v7", s)
	}
	p := Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// DevicePlatform is the platform this binary was built for: linux with
// GOARCH, and for arm the variant from GOARM (v6 or v7; v5 for GOARM=5).
func DevicePlatform() Platform {
	p := Platform{OS: "linux", Architecture: runtime.GOARCH}
	if runtime.GOARCH == "arm" {
		p.Variant = "v" + goarm()
	}
	if runtime.GOARCH == "arm64" {
		p.Variant = "v8"
	}
	return p
}

// variants lists, best first, the variants of arch that p runs: an ARMv7
// board runs v6 and v5 images, an ARMv6 board v5 ones. "" is an entry that
// names no variant.
func (p Platform) variants() []string {
	switch p.Architecture {
	case "arm":
		switch p.Variant {
		case "v8", "":
			// An arm (32-bit) entry with no variant is taken as v7, as
			// containerd does.
			return []string{"v8", "v7", "", "v6", "v5"}
		case "v7":
			return []string{"v7", "", "v6", "v5"}
		case "v6":
			return []string{"v6", "v5"}
		case "v5":
			return []string{"v5"}
		}
	case "arm64":
		if p.Variant == "" || p.Variant == "v8" {
			return []string{"v8", ""}
		}
	case "amd64":
		if p.Variant == "" || p.Variant == "v1" {
			return []string{"", "v1"}
		}
	}
	return []string{p.Variant}
}

// matchRank is the position of q in p's preference (lower is better), or
// -1 when a p device cannot run a q image.
func (p Platform) matchRank(q Platform) int {
	if q.OS != p.OS || q.Architecture != p.Architecture {
		return -1
	}
	for i, v := range p.variants() {
		if q.Variant == v {
			return i
		}
	}
	return -1
}
