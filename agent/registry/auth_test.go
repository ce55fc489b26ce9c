package registry

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

const (
	testUser = "alice"
	testPass = "s3cret:with colon"
)

func basicHeader(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func unauthorized(w http.ResponseWriter, challenge string) {
	w.Header().Set("WWW-Authenticate", challenge)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
}

// writeAuthFile writes a docker config.json with creds for domain.
func writeAuthFile(t *testing.T, domain, user, pass string) string {
	t.Helper()
	doc := map[string]any{"auths": map[string]any{domain: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))}}}
	b, _ := json.Marshal(doc)
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func loadCreds(t *testing.T, path string) map[string]Credentials {
	t.Helper()
	c, err := LoadDockerConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestBasicAuth: a registry that asks for basic credentials gets the ones
// of its own domain from a docker config.json, and only those.
func TestBasicAuth(t *testing.T) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	im := p.pushImage("test/app", linuxAMD64, false, map[string][]byte{"a": randomBytes(10<<10, 9)})
	px := newProxy(t, addr)
	var challenges atomic.Int32
	px.gate = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") != basicHeader(testUser, testPass) {
			challenges.Add(1)
			unauthorized(w, `Basic realm="latch test"`)
			return true
		}
		return false
	}
	ref := mustRef(t, px.addr()+"/test/app@"+im.digest)

	for _, tc := range []struct {
		name  string
		creds map[string]Credentials
		says  string
	}{
		{"no credentials", nil, "has none"},
		{"wrong password", loadCreds(t, writeAuthFile(t, px.addr(), testUser, "wrong")), "refused"},
		{"credentials of another registry", loadCreds(t, writeAuthFile(t, "other.example:5000", testUser, testPass)), "has none"},
	} {
		c := newClient(t, Options{Insecure: []string{px.addr()}, Credentials: tc.creds})
		_, err := c.Image(ctxT(t), ref)
		if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "--registry-auth") || !strings.Contains(err.Error(), px.addr()) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: got %v, want ErrUnauthorized naming the registry and --registry-auth, saying %q", tc.name, err, tc.says)
		}
	}
	for _, s := range px.seen() {
		if s.Auth != "" && s.Auth != basicHeader(testUser, "wrong") {
			t.Errorf("the registry was sent %q", s.Auth)
		}
	}

	// The right credentials, keyed by an https URL as docker login writes.
	c := newClient(t, Options{Insecure: []string{px.addr()}, Credentials: loadCreds(t, writeAuthFile(t, "https://"+px.addr()+"/v1/", testUser, testPass))})
	challenges.Store(0)
	img, err := c.Image(ctxT(t), ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.FetchImage(ctxT(t), img, t.TempDir(), nil); err != nil {
		t.Fatal(err)
	}
	if n := challenges.Load(); n != 1 {
		t.Errorf("the registry challenged %d times, want once (the credentials are reused)", n)
	}
}

// tokenServer issues bearer tokens to alice for pull scopes, recording
// what it was asked.
type tokenServer struct {
	srv      *httptest.Server
	mu       sync.Mutex // guards the fields below
	issued   int
	valid    string
	asked    []string // the query of each request
	status   int      // when not 0, answer this instead
	useField string   // "token" or "access_token"
}

func newTokenServer(t *testing.T) *tokenServer {
	ts := &tokenServer{useField: "token"}
	ts.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		ts.asked = append(ts.asked, r.URL.RawQuery)
		if ts.status != 0 {
			w.WriteHeader(ts.status)
			w.Write([]byte(`{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`))
			return
		}
		if r.Header.Get("Authorization") != basicHeader(testUser, testPass) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.URL.Query().Get("scope") != "repository:test/app:pull" || r.URL.Query().Get("service") != "latch-test" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		ts.issued++
		ts.valid = fmt.Sprintf("tok-%d", ts.issued)
		json.NewEncoder(w).Encode(map[string]string{ts.useField: ts.valid})
	}))
	t.Cleanup(ts.srv.Close)
	return ts
}

func (ts *tokenServer) addr() string { return strings.TrimPrefix(ts.srv.URL, "http://") }

// bearerGate makes px demand a bearer token that ts issued last.
func bearerGate(px *proxy, ts *tokenServer) {
	px.gate = func(w http.ResponseWriter, r *http.Request) bool {
		ts.mu.Lock()
		valid := ts.valid
		ts.mu.Unlock()
		if valid == "" || r.Header.Get("Authorization") != "Bearer "+valid {
			unauthorized(w, fmt.Sprintf(`Bearer realm="%s/token",service="latch-test",scope="repository:test/app:pull"`, ts.srv.URL))
			return true
		}
		return false
	}
}

// TestBearerToken: the token flow in front of the real registry: basic
// credentials go to the realm only, the token is reused until a 401.
func TestBearerToken(t *testing.T) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	im := p.pushImage("test/app", linuxAMD64, true, map[string][]byte{"a": []byte("a")}, map[string][]byte{"b": randomBytes(50<<10, 2)})
	px := newProxy(t, addr)
	ts := newTokenServer(t)
	bearerGate(px, ts)
	creds := loadCreds(t, writeAuthFile(t, px.addr(), testUser, testPass))
	c := newClient(t, Options{Insecure: []string{px.addr(), ts.addr()}, Credentials: creds})
	ref := mustRef(t, px.addr()+"/test/app@"+im.digest)
	img, err := c.Image(ctxT(t), ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.FetchImage(ctxT(t), img, t.TempDir(), nil); err != nil {
		t.Fatal(err)
	}
	if ts.issued != 1 {
		t.Errorf("%d tokens fetched for one pull, want 1", ts.issued)
	}
	for _, s := range px.seen() {
		if strings.HasPrefix(s.Auth, "Basic") {
			t.Errorf("the registry got basic credentials: %q on %s", s.Auth, s.Path)
		}
	}

	// The token expires (the registry forgets it): latch fetches another.
	ts.mu.Lock()
	ts.valid, ts.useField = "", "access_token"
	ts.mu.Unlock()
	if err := c.FetchImage(ctxT(t), img, t.TempDir(), nil); err != nil {
		t.Fatal(err)
	}
	if ts.issued != 2 {
		t.Errorf("%d tokens fetched after one expired, want 2", ts.issued)
	}

	// The realm refuses: the error says so and names the reference.
	ts.mu.Lock()
	ts.valid, ts.status = "", http.StatusForbidden
	ts.mu.Unlock()
	_, err = newClient(t, Options{Insecure: []string{px.addr(), ts.addr()}, Credentials: creds}).Image(ctxT(t), ref)
	if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "fetch token") || !strings.Contains(err.Error(), "DENIED") {
		t.Errorf("realm answering 403: got %v", err)
	}

	// A realm over plain HTTP that is not listed as insecure gets nothing.
	ts.mu.Lock()
	ts.status, ts.asked = 0, nil
	ts.mu.Unlock()
	_, err = newClient(t, Options{Insecure: []string{px.addr()}, Credentials: creds}).Image(ctxT(t), ref)
	if !errors.Is(err, ErrInsecure) {
		t.Errorf("plain-HTTP realm: got %v, want ErrInsecure", err)
	}
	if len(ts.asked) != 0 {
		t.Errorf("the plain-HTTP realm was asked %v", ts.asked)
	}
}

// TestRedirectDropsAuthorization: a blob redirected to another host (a
// CDN) is fetched without the registry's credentials, and a redirect to
// plain HTTP on a host not listed as insecure is refused.
func TestRedirectDropsAuthorization(t *testing.T) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	data := randomBytes(200<<10, 4)
	digest := p.blob("test/app", data)
	var cdnAuth []string
	var mu sync.Mutex
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		cdnAuth = append(cdnAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		http.Redirect(w, r, "http://"+addr+"/v2/test/app/blobs/"+digest, http.StatusTemporaryRedirect)
	}))
	defer cdn.Close()
	px := newProxy(t, addr)
	px.gate = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") != basicHeader(testUser, testPass) {
			unauthorized(w, `Basic realm="x"`)
			return true
		}
		if strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, cdn.URL+"/signed/"+digest+"?sig=abc", http.StatusTemporaryRedirect)
			return true
		}
		return false
	}
	creds := loadCreds(t, writeAuthFile(t, px.addr(), testUser, testPass))
	ref := mustRef(t, px.addr()+"/test/app")

	_, err := newClient(t, Options{Insecure: []string{px.addr()}, Credentials: creds}).FetchBlob(ctxT(t), ref, digest, int64(len(data)), t.TempDir(), nil)
	if !errors.Is(err, ErrInsecure) || strings.Contains(err.Error(), "sig=abc") {
		t.Errorf("redirect to a plain-HTTP CDN not listed: got %v, want ErrInsecure without the signed query", err)
	}
	if len(cdnAuth) != 0 {
		t.Errorf("the unlisted CDN was asked")
	}

	dir := t.TempDir()
	c := newClient(t, Options{Insecure: []string{px.addr(), strings.TrimPrefix(cdn.URL, "http://"), addr}, Credentials: creds})
	if _, err := c.FetchBlob(ctxT(t), ref, digest, int64(len(data)), dir, nil); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, dir, digest, data)
	for _, a := range cdnAuth {
		if a != "" {
			t.Errorf("the CDN got Authorization %q", a)
		}
	}
	if len(cdnAuth) == 0 {
		t.Error("the blob did not go through the CDN")
	}
}

// TestHTTPSOnly: a registry not listed as insecure is spoken to over
// HTTPS only; a plain-HTTP one never sees a request, nor credentials.
func TestHTTPSOnly(t *testing.T) {
	addr := startRegistry(t, "")
	p := pusher{t: t, base: "http://" + addr}
	im := p.pushImage("test/app", linuxAMD64, false, map[string][]byte{"a": []byte("a")})
	px := newProxy(t, addr)
	creds := loadCreds(t, writeAuthFile(t, px.addr(), testUser, testPass))
	_, err := newClient(t, Options{Credentials: creds}).Image(ctxT(t), mustRef(t, px.addr()+"/test/app@"+im.digest))
	if err == nil {
		t.Fatal("a plain-HTTP registry not listed as insecure answered")
	}
	if n := len(px.seen()); n != 0 {
		t.Errorf("the plain-HTTP registry got %d requests", n)
	}

	// The same registry behind TLS works with no insecure listing, basic
	// credentials included.
	var sawAuth atomic.Bool
	tlsProxy := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != basicHeader(testUser, testPass) {
			unauthorized(w, `Basic realm="x"`)
			return
		}
		sawAuth.Store(true)
		px.srv.Config.Handler.ServeHTTP(w, r)
	}))
	defer tlsProxy.Close()
	host := strings.TrimPrefix(tlsProxy.URL, "https://")
	tr := tlsProxy.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.MinVersion = tls.VersionTLS12
	c := newClient(t, Options{Transport: tr, Credentials: loadCreds(t, writeAuthFile(t, host, testUser, testPass))})
	img, err := c.Image(ctxT(t), mustRef(t, host+"/test/app@"+im.digest))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.FetchImage(ctxT(t), img, t.TempDir(), nil); err != nil {
		t.Fatal(err)
	}
	if !sawAuth.Load() {
		t.Error("the TLS registry never got the credentials")
	}
}

// TestHtpasswdRegistry: the real registry with its own htpasswd (bcrypt)
// auth: basic credentials from a config.json pull; none or wrong ones are
// refused with errors that say which.
func TestHtpasswdRegistry(t *testing.T) {
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	line := testUser + ":" + bcryptHash(testPass, []byte("latch-test-salt!"), 4) + "\n"
	if err := os.WriteFile(htpasswd, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := startRegistry(t, fmt.Sprintf("auth: {htpasswd: {realm: latch-test, path: %s}}\n", htpasswd))
	p := pusher{t: t, base: "http://" + addr, auth: basicHeader(testUser, testPass)}
	im := p.pushImage("test/app", linuxAMD64, false, map[string][]byte{"a": randomBytes(20<<10, 11)})
	ref := mustRef(t, addr+"/test/app@"+im.digest)

	_, err := newClient(t, Options{Insecure: []string{addr}}).Image(ctxT(t), ref)
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "has none") {
		t.Errorf("no credentials: got %v", err)
	}
	_, err = newClient(t, Options{Insecure: []string{addr}, Credentials: loadCreds(t, writeAuthFile(t, addr, testUser, "wrong"))}).Image(ctxT(t), ref)
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("wrong password: got %v", err)
	}
	c := newClient(t, Options{Insecure: []string{addr}, Credentials: loadCreds(t, writeAuthFile(t, addr, testUser, testPass))})
	img, err := c.Image(ctxT(t), ref)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := c.FetchImage(ctxT(t), img, dir, nil); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, dir, img.Layers[0].Digest, im.layers[0])
}
