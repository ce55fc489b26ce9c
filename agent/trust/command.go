package trust

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"time"
)

// CommandType is the payload type of a signed fleet command (section 11): its signatures
// are over PAE(CommandType, body), so a target signature never passes for a command
// signature, nor the other way round.
const CommandType = "application/vnd.latch.command+json"

// SignCommand returns b with a signature by priv over PAE(CommandType, body) appended.
// body is the command as the fleet channel signs it: json.Marshal of the command with its
// "sig" cleared, naming the device and an expiry. A key that has signed already is
// ErrAlreadySigned.
func SignCommand(b Bundle, body []byte, priv ed25519.PrivateKey) (Bundle, error) {
	sigs, err := sign(b.Signatures, priv, CommandType, body, "command")
	if err != nil {
		return Bundle{}, err
	}
	b.Signatures = sigs
	return b, nil
}

// VerifyCommand decides whether the signed command body may run under the trusted root of
// state at time now: it needs a threshold of distinct valid signatures of the targets role
// over PAE(CommandType, body), an unexpired trusted root, and a body naming a "device" and
// an "expires" time that has not passed. The clock used never runs backwards past
// state.LastIssued (the clock floor). Roots in the bundle are not taken: a command is
// checked against the root the device trusts. The caller checks that "device" is its own.
func VerifyCommand(state State, body []byte, b Bundle, now time.Time) error {
	trusted, err := state.TrustedRoot()
	if err != nil {
		return err
	}
	ref := now
	if state.LastIssued.After(ref) {
		ref = state.LastIssued
	}
	if !trusted.Root.Expires.After(ref) {
		return refuse(ErrExpired, "command: root version %d of fleet %q expired on %s (the clock reads %s): no command is taken until a newer root is accepted",
			trusted.Root.Version, trusted.Root.Fleet, stamp(trusted.Root.Expires), stamp(ref))
	}
	if _, err := checkThreshold(trusted.Root, trusted.Root.Roles.Targets, CommandType, body, b.Signatures, nil,
		fmt.Sprintf("command, by the targets keys of root version %d", trusted.Root.Version)); err != nil {
		return err
	}
	return checkCommandBody(body, ref)
}

// VerifyCommandKey is VerifyCommand for a device that trusts one key (--trust-key): one of
// the bundle's signatures must be pub's, valid over PAE(CommandType, body).
func VerifyCommandKey(pub ed25519.PublicKey, body []byte, b Bundle, now time.Time) error {
	if len(pub) != ed25519.PublicKeySize {
		return malformed("command: the trusted key is %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	id := KeyID(pub)
	msg := PAE(CommandType, body)
	ok := false
	for _, s := range b.Signatures {
		if s.KeyID == id && ed25519.Verify(pub, msg, s.Sig) {
			ok = true
			break
		}
	}
	if !ok {
		return refuse(ErrThreshold, "command: no valid signature by the trusted key %s over it (%d signature(s); another key, another document, or another kind of document)",
			short8(id), len(b.Signatures))
	}
	return checkCommandBody(body, now)
}

// checkCommandBody reads the fields a signed command must have: "device" and an "expires"
// after ref.
func checkCommandBody(body []byte, ref time.Time) error {
	if err := checkJSON(body, "command"); err != nil {
		return err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil || m == nil {
		return malformed("command: want a JSON object")
	}
	raw, ok := m["device"]
	if !ok {
		return malformed("command: a signed command names its \"device\" (latch fleet cmd --sign-key sets it)")
	}
	dev, err := jsonString(raw, "command: field \"device\"")
	if err != nil {
		return err
	}
	if err := checkName(dev, "command: field \"device\""); err != nil {
		return err
	}
	raw, ok = m["expires"]
	if !ok {
		return malformed("command: a signed command has an \"expires\" time (latch fleet cmd --sign-key sets it, --expires says how far ahead)")
	}
	exp, err := jsonTime(raw, "command: field \"expires\"")
	if err != nil {
		return err
	}
	if !exp.After(ref) {
		return refuse(ErrExpired, "command expired on %s (the clock reads %s): sign it again", stamp(exp), stamp(ref))
	}
	return nil
}
