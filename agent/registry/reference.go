package registry

import (
	"fmt"
	"strings"
)

// Reference names an image in a registry: Domain/Repository, and a Tag or
// a Digest (or both; the digest then wins).
type Reference struct {
	// Domain is the registry as written in the reference ("docker.io" for
	// Docker Hub, "registry.example:5000", "127.0.0.1:5000").
	Domain string
	// Repository is the path inside the registry ("library/busybox").
	Repository string
	// Tag is empty when the reference has none.
	Tag string
	// Digest is "sha256:<64 hex>", empty when the reference has none.
	Digest string
}

const (
	dockerHubDomain   = "docker.io"
	dockerHubEndpoint = "registry-1.docker.io"
	maxNameLength     = 255
)

// ParseReference parses "[domain/]path[:tag][@sha256:<hex>]" with docker's
// rules: a first component with no dot or colon that is not "localhost"
// is a path on Docker Hub, and a one-component Docker Hub name gets the
// "library/" prefix. It accepts tags; the agent uses ParsePinned.
func ParseReference(s string) (Reference, error) {
	if s == "" {
		return Reference{}, fmt.Errorf("parse image reference %q: empty; give name@sha256:<64 hex>", s)
	}
	if strings.TrimSpace(s) != s || strings.ContainsAny(s, " \t\r\n") {
		return Reference{}, fmt.Errorf("parse image reference %q: contains white space", s)
	}
	var ref Reference
	rest := s
	if name, digest, ok := strings.Cut(rest, "@"); ok {
		if !ValidDigest(digest) {
			if strings.HasPrefix(digest, "sha256:") {
				return Reference{}, fmt.Errorf("parse image reference %q: digest %q is not sha256:<64 lower-case hex>", s, digest)
			}
			return Reference{}, fmt.Errorf("parse image reference %q: digest %q is not supported; only sha256:<64 hex> is", s, digest)
		}
		ref.Digest = digest
		rest = name
	}
	// A tag follows the last colon after the last slash (a colon before
	// it is the domain's port).
	if i := strings.LastIndexByte(rest, ':'); i > strings.LastIndexByte(rest, '/') {
		ref.Tag = rest[i+1:]
		rest = rest[:i]
		if !validTag(ref.Tag) {
			return Reference{}, fmt.Errorf("parse image reference %q: tag %q is not valid (letters, digits, _ . -, at most 128, not starting with . or -)", s, ref.Tag)
		}
	}
	if rest == "" {
		return Reference{}, fmt.Errorf("parse image reference %q: no repository name", s)
	}
	domain, path := splitDomain(rest)
	if !validDomain(domain) {
		return Reference{}, fmt.Errorf("parse image reference %q: registry %q is not a host name with an optional port", s, domain)
	}
	if len(path) > maxNameLength {
		return Reference{}, fmt.Errorf("parse image reference %q: repository name is %d characters, at most %d are allowed", s, len(path), maxNameLength)
	}
	for _, c := range strings.Split(path, "/") {
		if !validPathComponent(c) {
			return Reference{}, fmt.Errorf("parse image reference %q: repository component %q is not valid (lower-case letters and digits, separated by . _ __ or -)", s, c)
		}
	}
	ref.Domain, ref.Repository = domain, path
	return ref, nil
}

// ParsePinned parses a reference that must be pinned by digest; a tag
// alone is refused with ErrNotPinned.
func ParsePinned(s string) (Reference, error) {
	ref, err := ParseReference(s)
	if err != nil {
		return Reference{}, err
	}
	if ref.Digest == "" {
		return Reference{}, fmt.Errorf("parse image reference %q: %w: pin it as name@sha256:<64 hex> (latch release pins tags)", s, ErrNotPinned)
	}
	return ref, nil
}

func splitDomain(name string) (domain, path string) {
	i := strings.IndexByte(name, '/')
	first := ""
	if i >= 0 {
		first = name[:i]
	}
	if i < 0 || (!strings.ContainsAny(first, ".:") && first != "localhost" && strings.ToLower(first) == first) {
		domain, path = dockerHubDomain, name
	} else {
		domain, path = first, name[i+1:]
	}
	if domain == "index.docker.io" || domain == dockerHubEndpoint {
		domain = dockerHubDomain
	}
	if domain == dockerHubDomain && !strings.Contains(path, "/") {
		path = "library/" + path
	}
	return domain, path
}

// Host is the host[:port] latch talks to for the reference's registry.
func (r Reference) Host() string {
	if r.Domain == dockerHubDomain {
		return dockerHubEndpoint
	}
	return r.Domain
}

// Name is Domain/Repository.
func (r Reference) Name() string { return r.Domain + "/" + r.Repository }

// String gives the reference in full: domain/repository[:tag][@digest].
func (r Reference) String() string {
	s := r.Name()
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest
	}
	return s
}

// manifestRef is what goes after /manifests/: the digest if there is one.
func (r Reference) manifestRef() string {
	if r.Digest != "" {
		return r.Digest
	}
	if r.Tag != "" {
		return r.Tag
	}
	return "latest"
}
