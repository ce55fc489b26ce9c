package target

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"os"
)

// maxKeyFile bounds what LoadPublicKey reads: any real key file is far smaller.
const maxKeyFile = 64 << 10

// LoadPublicKey reads the ed25519 public key that --trust-key names. The file
// may hold a PEM "PUBLIC KEY" block (PKIX, as `openssl pkey -pubout` writes),
// the 32 raw key bytes, or those bytes in base64 or hex.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load trust key: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("load trust key %s: %w", path, err)
	}
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("load trust key %s: file is larger than %d bytes, not a key", path, maxKeyFile)
	}
	pub, err := parsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("load trust key %s: %w", path, err)
	}
	return pub, nil
}

func parsePublicKey(data []byte) (ed25519.PublicKey, error) {
	if len(data) == ed25519.PublicKeySize {
		return ed25519.PublicKey(bytes.Clone(data)), nil
	}
	text := bytes.TrimSpace(data)
	if bytes.HasPrefix(text, []byte("-----BEGIN")) {
		block, _ := pem.Decode(text)
		if block == nil {
			return nil, fmt.Errorf("malformed PEM")
		}
		if block.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("PEM block is %q, want \"PUBLIC KEY\" (an ed25519 public key, not a private key)", block.Type)
		}
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PEM public key: %w", err)
		}
		pub, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("public key is %T, want ed25519", k)
		}
		return pub, nil
	}
	if len(text) == 2*ed25519.PublicKeySize {
		if b, err := hex.DecodeString(string(text)); err == nil {
			return ed25519.PublicKey(b), nil
		}
	}
	if b, ok := decodeBase64(text); ok && len(b) == ed25519.PublicKeySize {
		return ed25519.PublicKey(b), nil
	}
	return nil, fmt.Errorf("want an ed25519 public key as PEM, 32 raw bytes, or base64 or hex of them")
}

// decodeBase64 tries standard and URL base64, padded or not.
func decodeBase64(text []byte) ([]byte, bool) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		b := make([]byte, enc.DecodedLen(len(text)))
		n, err := enc.Decode(b, text)
		if err == nil {
			return b[:n], true
		}
	}
	return nil, false
}

// DecodeSignature decodes a detached signature as read from FILE.sig or the
// X-Latch-Signature header: base64 (standard or URL, padded or not) of the 64
// signature bytes, surrounding whitespace ignored. Empty input is
// ErrNoSignature; anything else that is not a signature wraps ErrBadSignature.
func DecodeSignature(s []byte) ([]byte, error) {
	text := bytes.TrimSpace(s)
	if len(text) == 0 {
		return nil, ErrNoSignature
	}
	b, ok := decodeBase64(text)
	if !ok {
		return nil, fmt.Errorf("decode signature: not base64: %w", ErrBadSignature)
	}
	if len(b) != ed25519.SignatureSize {
		return nil, fmt.Errorf("decode signature: got %d bytes, want %d: %w", len(b), ed25519.SignatureSize, ErrBadSignature)
	}
	return b, nil
}

// Verify checks sig, an ed25519 signature over the exact bytes of data. sig
// is either the 64 raw signature bytes or the text as read (Doc.Sig, base64).
// It returns ErrNoSignature when sig is empty and an error wrapping
// ErrBadSignature when it does not verify.
func Verify(pub ed25519.PublicKey, data, sig []byte) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("verify target state: public key is %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	raw := sig
	if len(sig) != ed25519.SignatureSize {
		var err error
		if raw, err = DecodeSignature(sig); err != nil {
			return err
		}
	}
	if !ed25519.Verify(pub, data, raw) {
		return fmt.Errorf("verify target state (sha256 %s): %w", Digest(data), ErrBadSignature)
	}
	return nil
}

// Sign signs data with priv and returns the signature in standard base64, the
// form FILE.sig and X-Latch-Signature carry.
func Sign(priv ed25519.PrivateKey, data []byte) string {
	return base64.StdEncoding.EncodeToString(ed25519.Sign(priv, data))
}
