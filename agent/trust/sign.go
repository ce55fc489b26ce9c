package trust

import (
	"crypto/ed25519"
	"fmt"
)

// SignRoot returns sr with a signature by priv over PAE(RootType, sr.Body)
// appended. The key need not be in sr's root role: a rotation is signed by
// the keys of the previous root too. A key that has signed already is
// ErrAlreadySigned.
func SignRoot(sr SignedRoot, priv ed25519.PrivateKey) (SignedRoot, error) {
	sigs, err := sign(sr.Signatures, priv, RootType, sr.Body, fmt.Sprintf("root version %d", sr.Root.Version))
	if err != nil {
		return SignedRoot{}, err
	}
	sr.Signatures = sigs
	return sr, nil
}

// SignTarget returns b with a signature by priv over PAE(TargetType, body)
// appended. A key that has signed already is ErrAlreadySigned.
func SignTarget(b Bundle, body []byte, priv ed25519.PrivateKey) (Bundle, error) {
	sigs, err := sign(b.Signatures, priv, TargetType, body, "target")
	if err != nil {
		return Bundle{}, err
	}
	b.Signatures = sigs
	return b, nil
}

func sign(sigs []Signature, priv ed25519.PrivateKey, typ string, body []byte, what string) ([]Signature, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%s: private key is %d bytes, want %d", what, len(priv), ed25519.PrivateKeySize)
	}
	id := KeyID(priv.Public().(ed25519.PublicKey))
	for _, s := range sigs {
		if s.KeyID == id {
			return nil, refuse(ErrAlreadySigned, "%s: key %s has signed it already", what, id)
		}
	}
	if len(sigs) >= MaxSignatures {
		return nil, malformed("%s: it has %d signatures already, the most a document may have", what, len(sigs))
	}
	out := append(append([]Signature(nil), sigs...), Signature{KeyID: id, Sig: ed25519.Sign(priv, PAE(typ, body))})
	return out, nil
}
