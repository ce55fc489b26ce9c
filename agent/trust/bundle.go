package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// Signature is one signature of a document: the signer's key id (a hint:
// the key checked is the one the trusted root holds under that id) and the
// ed25519 signature over PAE(type, body).
type Signature struct {
	KeyID string
	Sig   []byte // 64 bytes
}

// MarshalJSON encodes {"keyid": hex, "sig": base64}.
func (s Signature) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		KeyID string `json:"keyid"`
		Sig   string `json:"sig"`
	}{s.KeyID, base64.StdEncoding.EncodeToString(s.Sig)})
}

func nonNil(s []Signature) []Signature {
	if s == nil {
		return []Signature{}
	}
	return s
}

func parseSignatures(raw json.RawMessage, where string) ([]Signature, error) {
	list, err := jsonList(raw, where)
	if err != nil {
		return nil, err
	}
	if len(list) > MaxSignatures {
		return nil, malformed("%s: %d signatures, more than %d", where, len(list), MaxSignatures)
	}
	var sigs []Signature
	for i, v := range list {
		w := fmt.Sprintf("%s[%d]", where, i)
		m, err := object(v, w, []string{"keyid", "sig"}, nil)
		if err != nil {
			return nil, err
		}
		id, err := jsonString(m["keyid"], w+".keyid")
		if err != nil {
			return nil, err
		}
		if !isKeyID(id) {
			return nil, malformed("%s.keyid: %q is not a key id (64 lower-case hex digits, the sha256 of the key)", w, id)
		}
		s, err := jsonString(m["sig"], w+".sig")
		if err != nil {
			return nil, err
		}
		sig, ok := decodeB64(s)
		if !ok || len(sig) != ed25519.SignatureSize {
			return nil, malformed("%s.sig: want the standard base64 of a %d-byte ed25519 signature", w, ed25519.SignatureSize)
		}
		sigs = append(sigs, Signature{KeyID: id, Sig: sig})
	}
	return sigs, nil
}

// Bundle is what FILE.sig, the X-Latch-Signature header and <url>.sig
// carry: the target's signatures and the roots that lead to the one that
// trusts them, oldest first.
type Bundle struct {
	Signatures []Signature
	Roots      []SignedRoot
}

// ParseBundle parses a bundle, as JSON or as the standard base64 of that
// JSON (the header form). Nothing is checked but its form.
func ParseBundle(b []byte) (Bundle, error) {
	text := bytes.TrimSpace(b)
	if len(text) > MaxBundleSize {
		return Bundle{}, malformed("signature bundle: %d bytes, more than the %d a bundle may have", len(text), MaxBundleSize)
	}
	if len(text) == 0 {
		return Bundle{}, malformed("signature bundle: empty: sign the target with 'latch sign'")
	}
	if text[0] != '{' {
		dec, ok := decodeB64(string(text))
		if !ok {
			return Bundle{}, malformed("signature bundle: neither JSON nor the standard base64 of JSON")
		}
		if len(dec) == ed25519.SignatureSize {
			return Bundle{}, malformed("signature bundle: a bare signature (the --trust-key form), not a bundle: sign with 'latch sign' for --trust-root")
		}
		if t := bytes.TrimSpace(dec); len(t) == 0 || t[0] != '{' {
			return Bundle{}, malformed("signature bundle: the base64 does not hold a JSON object")
		}
		text = bytes.TrimSpace(dec)
	}
	if err := checkJSON(text, "signature bundle"); err != nil {
		return Bundle{}, err
	}
	m, err := object(text, "signature bundle", []string{"signatures"}, []string{"roots"})
	if err != nil {
		return Bundle{}, err
	}
	var bd Bundle
	if bd.Signatures, err = parseSignatures(m["signatures"], "signature bundle: signatures"); err != nil {
		return Bundle{}, err
	}
	if raw, ok := m["roots"]; ok {
		list, err := jsonList(raw, "signature bundle: roots")
		if err != nil {
			return Bundle{}, err
		}
		if len(list) > MaxRoots {
			return Bundle{}, malformed("signature bundle: roots: %d roots, more than %d: ship the last ones only", len(list), MaxRoots)
		}
		for i, v := range list {
			r, err := parseEnvelope(v, fmt.Sprintf("signature bundle: roots[%d]", i))
			if err != nil {
				return Bundle{}, err
			}
			bd.Roots = append(bd.Roots, r)
		}
	}
	return bd, nil
}

// MarshalJSON encodes {"signatures": [...], "roots": [...]}; roots is left
// out when there are none.
func (b Bundle) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Signatures []Signature  `json:"signatures"`
		Roots      []SignedRoot `json:"roots,omitempty"`
	}{nonNil(b.Signatures), b.Roots})
}
