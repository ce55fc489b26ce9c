package registry

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestStatusErrors: each refusal of a registry is its sentinel, with the
// operation, the reference and the registry's own words.
func TestStatusErrors(t *testing.T) {
	digest := sha([]byte("x"))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/v2/denied/"):
			w.WriteHeader(403)
			w.Write([]byte(`{"errors":[{"code":"DENIED","message":"no pull for you"}]}`))
		case strings.HasPrefix(r.URL.Path, "/v2/busy/"):
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(429)
			w.Write([]byte(`{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit"}]}`))
		case strings.HasPrefix(r.URL.Path, "/v2/broken/"):
			w.WriteHeader(500)
			w.Write([]byte("disk on fire"))
		case strings.HasPrefix(r.URL.Path, "/v2/teapot/"):
			w.WriteHeader(418)
		case strings.HasPrefix(r.URL.Path, "/v2/noauth/"):
			w.Header().Set("WWW-Authenticate", `Negotiate`)
			w.WriteHeader(401)
		case strings.HasPrefix(r.URL.Path, "/v2/cut/"):
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(200)
			w.Write([]byte(`{"schemaVersion":`))
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	c := newClient(t, Options{Insecure: []string{host}})
	for _, tc := range []struct {
		repo  string
		want  error
		words []string
	}{
		{"denied", ErrDenied, []string{"403", "DENIED no pull for you", "--registry-auth"}},
		{"busy", ErrTooManyRequests, []string{"429", "pull rate limit", "retry after 7"}},
		{"broken", ErrServer, []string{"500", "disk on fire"}},
		{"teapot", ErrUnexpectedStatus, []string{"418"}},
		{"noauth", ErrUnauthorized, []string{"Negotiate"}},
		{"cut", nil, []string{"reading the answer"}},
	} {
		ref := host + "/" + tc.repo + "/app@" + digest
		_, err := c.Image(ctxT(t), mustRef(t, ref))
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: got %v, want %v", tc.repo, err, tc.want)
			continue
		}
		for _, w := range append(tc.words, ref) {
			if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(w)) {
				t.Errorf("%s: error %q does not say %q", tc.repo, err, w)
			}
		}
		var se *StatusError
		if tc.want != nil && tc.want != ErrUnauthorized && !errors.As(err, &se) {
			t.Errorf("%s: %v is not a *StatusError", tc.repo, err)
		}
		_, err = c.FetchBlob(ctxT(t), mustRef(t, host+"/"+tc.repo+"/app"), digest, 10, t.TempDir(), nil)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("blob from %s: got %v, want %v", tc.repo, err, tc.want)
		}
	}
}

// TestUnsupportedManifests: schema1, artifacts and unknown layer types are
// refused by name; the digest still has to match first.
func TestUnsupportedManifests(t *testing.T) {
	cfg := map[string]any{"mediaType": MediaTypeDockerConfig, "digest": sha([]byte("c")), "size": 1}
	lay := map[string]any{"mediaType": MediaTypeDockerLayer, "digest": sha([]byte("l")), "size": 1}
	docs := map[string]map[string]any{
		"schema1":  {"schemaVersion": 1, "mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
		"helm":     {"schemaVersion": 2, "mediaType": MediaTypeOCIManifest, "config": map[string]any{"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": sha([]byte("c")), "size": 1}, "layers": []any{lay}},
		"layer":    {"schemaVersion": 2, "mediaType": MediaTypeDockerManifest, "config": cfg, "layers": []any{map[string]any{"mediaType": "application/x-squashfs", "digest": sha([]byte("l")), "size": 1}}},
		"nolayers": {"schemaVersion": 2, "mediaType": MediaTypeDockerManifest, "config": cfg, "layers": []any{}},
		"badsize":  {"schemaVersion": 2, "mediaType": MediaTypeDockerManifest, "config": cfg, "layers": []any{map[string]any{"mediaType": MediaTypeDockerLayer, "digest": sha([]byte("l")), "size": -5}}},
	}
	bodies := map[string][]byte{}
	for k, d := range docs {
		bodies[k], _ = json.Marshal(d)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := strings.Split(r.URL.Path, "/")[2]
		w.Header().Set("Content-Type", "application/json")
		w.Write(bodies[name])
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	c := newClient(t, Options{Insecure: []string{host}})
	for name, want := range map[string]string{
		"schema1":  "manifest.v1+prettyjws",
		"helm":     "helm.config",
		"layer":    "x-squashfs",
		"nolayers": "no layers",
		"badsize":  "size -5",
	} {
		_, err := c.Image(ctxT(t), mustRef(t, host+"/"+name+"/app@"+sha(bodies[name])))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error naming %q", name, err, want)
		}
		if name != "nolayers" && name != "badsize" && !errors.Is(err, ErrUnsupportedMediaType) {
			t.Errorf("%s: got %v, want ErrUnsupportedMediaType", name, err)
		}
	}
}

func TestParseReference(t *testing.T) {
	hex64 := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in                  string
		domain, repo, tag   string
		digest, host, wrong string
	}{
		{in: "busybox:1.36", domain: "docker.io", repo: "library/busybox", tag: "1.36", host: "registry-1.docker.io"},
		{in: "kiosk/ui@sha256:" + hex64, domain: "docker.io", repo: "kiosk/ui", digest: "sha256:" + hex64, host: "registry-1.docker.io"},
		{in: "index.docker.io/busybox@sha256:" + hex64, domain: "docker.io", repo: "library/busybox", digest: "sha256:" + hex64},
		{in: "registry.example/kiosk/ui:v1@sha256:" + hex64, domain: "registry.example", repo: "kiosk/ui", tag: "v1", digest: "sha256:" + hex64, host: "registry.example"},
		{in: "127.0.0.1:5000/test/app:v1", domain: "127.0.0.1:5000", repo: "test/app", tag: "v1", host: "127.0.0.1:5000"},
		{in: "localhost/app", domain: "localhost", repo: "app"},
		{in: "localhost:5000/a/b/c", domain: "localhost:5000", repo: "a/b/c"},
		{in: "Upper/app:v1", domain: "Upper", repo: "app", tag: "v1"},
		{in: "[::1]:5000/app:v1", domain: "[::1]:5000", repo: "app", tag: "v1"},
		{in: "a__b/c-d.e:_x", domain: "docker.io", repo: "a__b/c-d.e", tag: "_x"},
		{in: "", wrong: "empty"},
		{in: "app@sha256:" + hex64[:63], wrong: "64"},
		{in: "app@sha512:" + hex64, wrong: "only sha256"},
		{in: "app@sha256:" + strings.ToUpper(hex64), wrong: "lower-case"},
		{in: "app:-bad", wrong: "tag"},
		{in: "app:" + strings.Repeat("t", 129), wrong: "tag"},
		{in: "UPPER", wrong: "repository component"},
		{in: "reg.example/", wrong: "repository component"},
		{in: "reg.example//x", wrong: "repository component"},
		{in: "a/../b", wrong: "repository component"},
		{in: " app", wrong: "white space"},
		{in: "app\n", wrong: "white space"},
		{in: "reg_x.example/app", wrong: "registry"},
		{in: "reg.example:port/app", wrong: "registry"},
		{in: ":tag", wrong: "no repository"},
		{in: "x/" + strings.Repeat("a", 260), wrong: "at most 255"},
	} {
		r, err := ParseReference(tc.in)
		if tc.wrong != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wrong) {
				t.Errorf("%q: got %+v %v, want an error saying %q", tc.in, r, err, tc.wrong)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if r.Domain != tc.domain || r.Repository != tc.repo || r.Tag != tc.tag || r.Digest != tc.digest {
			t.Errorf("%q: got %+v, want %s %s %s %s", tc.in, r, tc.domain, tc.repo, tc.tag, tc.digest)
		}
		if tc.host != "" && r.Host() != tc.host {
			t.Errorf("%q: host %s, want %s", tc.in, r.Host(), tc.host)
		}
		if again, err := ParseReference(r.String()); err != nil || again != r {
			t.Errorf("%q: String %q parses to %+v %v", tc.in, r.String(), again, err)
		}
	}
	if _, err := ParsePinned("registry.example/kiosk/ui:v1"); !errors.Is(err, ErrNotPinned) || !strings.Contains(err.Error(), "@sha256:") {
		t.Errorf("ParsePinned of a tag: got %v, want ErrNotPinned saying how to pin", err)
	}
	if r, err := ParsePinned("ui@sha256:" + hex64); err != nil || r.Digest == "" {
		t.Errorf("ParsePinned of a digest: %+v %v", r, err)
	}
}

func TestParseDockerConfig(t *testing.T) {
	good := `{"auths":{
		"https://index.docker.io/v1/":{"auth":"` + b64("hub:pw") + `"},
		"registry.example:5000":{"username":"u","password":"p:w"},
		"HTTPS://Other.Example/v2/":{"auth":"` + strings.TrimRight(b64("o:p"), "=") + `"},
		"helper.example":{"identitytoken":"xyz"}
	},"credsStore":"desktop"}`
	got, err := ParseDockerConfig([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Credentials{"docker.io": {"hub", "pw"}, "registry.example:5000": {"u", "p:w"}, "other.example": {"o", "p"}}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %+v, want %+v", k, got[k], v)
		}
	}
	for _, tc := range []struct{ in, wrong string }{
		{`{"auths":`, "parse docker config.json"},
		{`{"auths":{"r.example":{"auth":"!!!"}}}`, "not base64"},
		{`{"auths":{"r.example":{"auth":"` + b64("nocolon") + `"}}}`, "user:password"},
		{`{"auths":{"https://":{"auth":"` + b64("a:b") + `"}}}`, "names no registry"},
	} {
		if _, err := ParseDockerConfig([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.wrong) {
			t.Errorf("%s: got %v, want %q", tc.in, err, tc.wrong)
		}
	}
	if _, err := LoadDockerConfig("/nonexistent/config.json"); err == nil || !strings.Contains(err.Error(), "/nonexistent/config.json") {
		t.Errorf("missing file: got %v", err)
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestParseChallenges(t *testing.T) {
	got := parseChallenges([]string{
		`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"`,
		`Basic realm="quoted \"x\", with comma", Bearer realm=https://t.example/tok,service=s`,
	})
	if len(got) != 3 {
		t.Fatalf("got %+v, want 3 challenges", got)
	}
	if got[0].scheme != "bearer" || got[0].params["realm"] != "https://auth.example/token" || got[0].params["service"] != "registry.example" || got[0].params["scope"] != "repository:a/b:pull" {
		t.Errorf("first: %+v", got[0])
	}
	if got[1].scheme != "basic" || got[1].params["realm"] != `quoted "x", with comma` {
		t.Errorf("second: %+v", got[1])
	}
	if got[2].scheme != "bearer" || got[2].params["realm"] != "https://t.example/tok" || got[2].params["service"] != "s" {
		t.Errorf("third: %+v", got[2])
	}
}

func TestPlatform(t *testing.T) {
	if p := DevicePlatform(); p.OS != "linux" {
		t.Errorf("device platform %s", p)
	}
	for _, tc := range []struct {
		device, image string
		ok            bool
	}{
		{"linux/arm/v7", "linux/arm/v7", true},
		{"linux/arm/v7", "linux/arm/v6", true},
		{"linux/arm/v7", "linux/arm", true},
		{"linux/arm/v6", "linux/arm/v7", false},
		{"linux/arm/v6", "linux/arm", false},
		{"linux/arm/v6", "linux/arm/v5", true},
		{"linux/arm64/v8", "linux/arm64", true},
		{"linux/arm64", "linux/arm64/v8", true},
		{"linux/arm64/v8", "linux/arm/v7", false},
		{"linux/amd64", "linux/amd64/v3", false},
		{"linux/amd64", "linux/386", false},
		{"linux/386", "linux/386", true},
		{"linux/amd64", "windows/amd64", false},
	} {
		d, err := ParsePlatform(tc.device)
		if err != nil {
			t.Fatal(err)
		}
		i, _ := ParsePlatform(tc.image)
		if got := d.matchRank(i) >= 0; got != tc.ok {
			t.Errorf("%s device runs %s image: got %v, want %v", tc.device, tc.image, got, tc.ok)
		}
	}
	for _, bad := range []string{"", "linux", "linux/", "/amd64", "linux/arm/", "a/b/c/d"} {
		if _, err := ParsePlatform(bad); err == nil {
			t.Errorf("ParsePlatform(%q) took it", bad)
		}
	}
}

// TestAcceptHeader: a manifest request accepts all four manifest kinds,
// or a registry would convert or refuse them.
func TestAcceptHeader(t *testing.T) {
	var accept string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		accept = r.Header.Get("Accept")
		w.WriteHeader(404)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	newClient(t, Options{Insecure: []string{host}}).Resolve(ctxT(t), mustRef(t, host+"/a/b:v1"))
	for _, mt := range []string{MediaTypeDockerManifest, MediaTypeDockerManifestList, MediaTypeOCIManifest, MediaTypeOCIIndex} {
		if !strings.Contains(accept, mt) {
			t.Errorf("Accept %q lacks %s", accept, mt)
		}
	}
}
