package registry

import (
	"strings"
	"testing"
)

// FuzzParseReference: any string either parses to a reference whose
// String parses back to it, or is refused; nothing panics.
func FuzzParseReference(f *testing.F) {
	hex64 := strings.Repeat("0f", 32)
	for _, s := range []string{
		"busybox", "busybox:1.36", "kiosk/ui@sha256:" + hex64, "registry.example:5000/a/b:v1@sha256:" + hex64,
		"[::1]:5000/app", "localhost/app", "a:b:c", "@sha256:", "x//y", "UP/x", "a@b@c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReference(s)
		if err != nil {
			if r != (Reference{}) {
				t.Fatalf("%q: error %v with a reference %+v", s, err, r)
			}
			return
		}
		if r.Domain == "" || r.Repository == "" || (r.Digest != "" && !ValidDigest(r.Digest)) {
			t.Fatalf("%q: parsed to %+v", s, r)
		}
		again, err := ParseReference(r.String())
		if err != nil || again != r {
			t.Fatalf("%q: %q parses to %+v %v, want %+v", s, r.String(), again, err, r)
		}
		if _, err := ParsePinned(s); (err == nil) != (r.Digest != "") {
			t.Fatalf("%q: ParsePinned %v with digest %q", s, err, r.Digest)
		}
	})
}

// FuzzParseChallenges: any WWW-Authenticate header parses without a panic
// or a hang.
func FuzzParseChallenges(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="https://auth.example/token",service="r.example",scope="repository:a:pull"`,
		`Basic realm="x"`, `Basic abc==`, `=`, `Bearer realm="unterminated`, `a=b, Basic, Bearer x=\"y\"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, ch := range parseChallenges([]string{s}) {
			if ch.scheme == "" || strings.ContainsAny(ch.scheme, " \t,=") {
				t.Fatalf("%q: scheme %q", s, ch.scheme)
			}
		}
	})
}

// FuzzManifest: any manifest body is read into an image or refused;
// an image it gives has valid digests and sizes.
func FuzzManifest(f *testing.F) {
	d := "sha256:" + strings.Repeat("ab", 32)
	f.Add(`{"schemaVersion":2,"mediaType":"`+MediaTypeDockerManifest+`","config":{"mediaType":"`+MediaTypeDockerConfig+`","digest":"`+d+`","size":3},"layers":[{"mediaType":"`+MediaTypeDockerLayer+`","digest":"`+d+`","size":9}]}`, "")
	f.Add(`{"schemaVersion":2,"config":{"mediaType":"`+MediaTypeOCIConfig+`","digest":"`+d+`","size":3},"layers":[{"mediaType":"`+MediaTypeOCILayer+`","digest":"`+d+`","size":9}]}`, MediaTypeOCIManifest)
	f.Add(`{"schemaVersion":2,"manifests":[{"digest":"`+d+`","size":5,"platform":{"os":"linux","architecture":"arm","variant":"v7"}}]}`, "application/json")
	f.Fuzz(func(t *testing.T, body, contentType string) {
		m, mt, err := parseManifest([]byte(body), contentType)
		if err != nil {
			return
		}
		if isList(mt) {
			c := &Client{platform: linuxARMv7}
			if e, err := c.choose(m.Manifests); err == nil && (!ValidDigest(e.Digest) || e.Size <= 0 || e.Platform == nil) {
				t.Fatalf("chose %+v", e)
			}
			return
		}
		var img Image
		if err := fillImage(&img, m); err != nil {
			return
		}
		for _, b := range append([]Blob{img.Config}, img.Layers...) {
			if !ValidDigest(b.Digest) || b.Size <= 0 {
				t.Fatalf("blob %+v", b)
			}
		}
	})
}

// FuzzParseDockerConfig: any config.json gives credentials with a user
// name for a domain, or an error.
func FuzzParseDockerConfig(f *testing.F) {
	f.Add(`{"auths":{"https://index.docker.io/v1/":{"auth":"YTpi"},"r.example":{"username":"u","password":"p"}}}`)
	f.Add(`{"auths":{"x":{"auth":"!"}}}`)
	f.Fuzz(func(t *testing.T, s string) {
		creds, err := ParseDockerConfig([]byte(s))
		if err != nil {
			return
		}
		for k, c := range creds {
			if k == "" || c.Username == "" {
				t.Fatalf("%q: %q → %+v", s, k, c)
			}
		}
	})
}
