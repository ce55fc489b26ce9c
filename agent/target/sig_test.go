package target

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func TestVerify(t *testing.T) {
	pub, priv := newKey(t)
	otherPub, _ := newKey(t)
	data := []byte(validDoc)
	good := Sign(priv, data)
	raw, _ := base64.StdEncoding.DecodeString(good)
	tests := []struct {
		name string
		pub  ed25519.PublicKey
		data []byte
		sig  []byte
		want error
	}{
		{"good base64", pub, data, []byte(good), nil},
		{"good base64 with newline", pub, data, []byte(good + "\n"), nil},
		{"good raw URL base64", pub, data, []byte(base64.RawURLEncoding.EncodeToString(raw)), nil},
		{"good raw bytes", pub, data, raw, nil},
		{"missing", pub, data, nil, ErrNoSignature},
		{"blank", pub, data, []byte(" \n"), ErrNoSignature},
		{"other key", otherPub, data, []byte(good), ErrBadSignature},
		{"changed document", pub, append([]byte(validDoc), ' '), []byte(good), ErrBadSignature},
		{"not base64", pub, data, []byte("!!!"), ErrBadSignature},
		{"short", pub, data, []byte(base64.StdEncoding.EncodeToString(raw[:63])), ErrBadSignature},
	}
	for _, tt := range tests {
		err := Verify(tt.pub, tt.data, tt.sig)
		if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("%s: Verify: got %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestDecodeSignature(t *testing.T) {
	_, priv := newKey(t)
	raw := ed25519.Sign(priv, []byte("x"))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		s := " " + enc.EncodeToString(raw) + "\r\n"
		got, err := DecodeSignature([]byte(s))
		if err != nil || string(got) != string(raw) {
			t.Errorf("DecodeSignature(%q): got %x, %v, want %x", s, got, err, raw)
		}
	}
	if _, err := DecodeSignature([]byte(hex.EncodeToString(raw))); !errors.Is(err, ErrBadSignature) {
		t.Errorf("DecodeSignature(hex): got %v, want ErrBadSignature", err)
	}
}

func TestLoadPublicKey(t *testing.T) {
	pub, priv := newKey(t)
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tests := []struct {
		name    string
		content []byte
		wantErr string // "" = must load pub
	}{
		{"pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), ""},
		{"raw", pub, ""},
		{"base64", []byte(base64.StdEncoding.EncodeToString(pub) + "\n"), ""},
		{"raw base64", []byte(base64.RawStdEncoding.EncodeToString(pub)), ""},
		{"hex", []byte(hex.EncodeToString(pub) + "\n"), ""},
		{"private pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), "not a private key"},
		{"garbage", []byte("hello"), "want an ed25519 public key"},
		{"broken pem", []byte("-----BEGIN PUBLIC KEY-----\nxx"), "malformed PEM"},
		{"short base64", []byte(base64.StdEncoding.EncodeToString(pub[:31])), "want an ed25519 public key"},
	}
	for _, tt := range tests {
		path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
		if err := os.WriteFile(path, tt.content, 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := LoadPublicKey(path)
		if tt.wantErr == "" {
			if err != nil || !got.Equal(pub) {
				t.Errorf("%s: LoadPublicKey: got %x, %v, want %x", tt.name, got, err, pub)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: LoadPublicKey: got error %v, want one naming %s and containing %q", tt.name, err, path, tt.wantErr)
		}
	}
	if _, err := LoadPublicKey(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("LoadPublicKey(missing file): got %v, want an error naming the file", err)
	}
}
