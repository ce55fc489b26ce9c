package registry

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// jwtIssuer mints the ES256 JSON web tokens distribution's token auth
// checks: signed by a key whose self-signed certificate is the registry's
// root bundle, carried in the x5c header.
type jwtIssuer struct {
	key  *ecdsa.PrivateKey
	cert []byte // DER
}

func newJWTIssuer(t *testing.T) (*jwtIssuer, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "latch test token issuer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return &jwtIssuer{key: key, cert: der}, bundle
}

func (j *jwtIssuer) token(t *testing.T, repo string, actions ...string) string {
	b64 := base64.RawURLEncoding.EncodeToString
	hdr, _ := json.Marshal(map[string]any{"typ": "JWT", "alg": "ES256", "x5c": []string{base64.StdEncoding.EncodeToString(j.cert)}})
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{
		"iss": "latch-test-issuer", "sub": testUser, "aud": "latch-test",
		"exp": now.Add(5 * time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
		"jti":    fmt.Sprint(now.UnixNano()),
		"access": []map[string]any{{"type": "repository", "name": repo, "actions": actions}},
	})
	signed := b64(hdr) + "." + b64(claims)
	sum := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, j.key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + b64(sig)
}

// TestRegistryTokenAuth: the real registry's own token auth (JWTs checked
// against its root bundle), with a token server in the test that checks
// basic credentials and issues pull tokens for the scope asked.
func TestRegistryTokenAuth(t *testing.T) {
	iss, bundle := newJWTIssuer(t)
	var mu sync.Mutex
	var asked []string
	var issued int
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, r.URL.RawQuery)
		if r.Header.Get("Authorization") != basicHeader(testUser, testPass) {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"bad user or password"}]}`))
			return
		}
		scope := r.URL.Query().Get("scope")
		repo, ok := strings.CutPrefix(scope, "repository:")
		repo, ok2 := strings.CutSuffix(repo, ":pull")
		if !ok || !ok2 || r.URL.Query().Get("service") != "latch-test" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if repo == "test/stolen" {
			repo = "test/other" // a token for another repository than asked
		}
		issued++
		json.NewEncoder(w).Encode(map[string]any{"access_token": iss.token(t, repo, "pull"), "expires_in": 300})
	}))
	defer ts.Close()
	addr := startRegistry(t, fmt.Sprintf("auth: {token: {realm: %q, service: latch-test, issuer: latch-test-issuer, rootcertbundle: %s}}\n", ts.URL+"/token", bundle))
	p := pusher{t: t, base: "http://" + addr, auth: "Bearer " + iss.token(t, "test/app", "pull", "push")}
	im := p.pushImage("test/app", linuxAMD64, true, map[string][]byte{"a": []byte("a")}, map[string][]byte{"b": randomBytes(30<<10, 12)})
	p.auth = "Bearer " + iss.token(t, "test/stolen", "pull", "push")
	p.pushImage("test/stolen", linuxAMD64, true, map[string][]byte{"a": []byte("a")})
	tsHost := strings.TrimPrefix(ts.URL, "http://")
	creds := loadCreds(t, writeAuthFile(t, addr, testUser, testPass))

	c := newClient(t, Options{Insecure: []string{addr, tsHost}, Credentials: creds})
	img, err := c.Image(ctxT(t), mustRef(t, addr+"/test/app@"+im.digest))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := c.FetchImage(ctxT(t), img, dir, nil); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, dir, img.Layers[1].Digest, im.layers[1])
	if issued != 1 || !strings.Contains(asked[0], "scope=repository%3Atest%2Fapp%3Apull") {
		t.Errorf("tokens issued %d for %v, want one for repository:test/app:pull", issued, asked)
	}

	// Wrong password: the token server's refusal, named.
	bad := loadCreds(t, writeAuthFile(t, addr, testUser, "wrong"))
	_, err = newClient(t, Options{Insecure: []string{addr, tsHost}, Credentials: bad}).Image(ctxT(t), mustRef(t, addr+"/test/app@"+im.digest))
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "fetch token") || !strings.Contains(err.Error(), "bad user or password") {
		t.Errorf("wrong password: got %v", err)
	}

	// A token that does not grant the repository: the registry refuses it.
	_, err = c.Image(ctxT(t), mustRef(t, addr+"/test/stolen@"+im.digest))
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("token for another repository: got %v", err)
	}
}
