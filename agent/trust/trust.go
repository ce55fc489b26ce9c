// Package trust decides whether a target state may be accepted under a fleet's
// root of trust (section 10 of the contract): the rules of The Update
// Framework that apply to one document.
//
// A root names the fleet, its ed25519 keys and two roles: root (who may sign
// the next root) and targets (who may sign target states), each with a
// threshold. Every signature is over DSSE's pre-authentication encoding of the
// exact bytes, PAE(type, body), so a root signature never passes for a target
// signature or the other way round. Signatures travel in a bundle (FILE.sig,
// the X-Latch-Signature header, <url>.sig) together with the roots that lead
// from an older trusted root to the current one.
//
// Verify is the one decision, shared by the agent and `latch verify`:
//
//   - roots in the bundle are taken one version at a time (N+1 only), each
//     signed by a threshold of the old root's root role and of its own;
//   - the final trusted root must not have expired;
//   - the target needs a threshold of distinct keys of the targets role;
//   - its version never goes down, the same version never changes bytes;
//   - it has not expired, and it is for this fleet and device;
//   - the clock used for expiry never runs backwards past the newest issued
//     time accepted.
//
// The package keeps no state of its own: the caller persists State (in the
// same journal transaction as the target it goes with) and hands it back.
// Verify never mutates the State it is given.
//
// Fleet commands (section 11) are signed the same way under their own
// payload type, CommandType (application/vnd.latch.command+json), so that no
// target or root signature passes for a command's: SignCommand signs;
// VerifyCommand needs a threshold of distinct valid keys of the targets role
// of the trusted root, an unexpired root, and a command naming its "device"
// and an unexpired "expires" (the clock floor applies); VerifyCommandKey is
// the --trust-key form. The signed bytes are json.Marshal of the command with
// its sig cleared (agent/fleet's Command.SignedBytes).
//
// The parsers are fuzzed (FuzzParseRoot, FuzzParseBundle, FuzzVerify; the
// corpus is in testdata/fuzz). Run them with a short -fuzzminimizetime
// (say 2s): minimizing a signed root under the default minute stalls the run.
//
// # Caveats
//
// Expiry bounds a freeze attack only as well as the clock and the expiry
// period allow: a board whose clock is behind and that has accepted nothing
// recent sees old documents as fresh. The clock floor (State.LastIssued)
// stops the clock from being set back past what was accepted, no further.
package trust

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
)

// Payload types of the two kinds of signed documents.
const (
	RootType   = "application/vnd.latch.root+json"
	TargetType = "application/vnd.latch.target+json"
)

// Bounds on what the parsers and Verify accept: far above any real fleet,
// low enough that a hostile bundle cannot make a device work for long.
const (
	MaxBundleSize = 1 << 20 // bytes of a bundle, a root file, in JSON or base64
	MaxRoots      = 64      // roots in one bundle
	MaxSignatures = 64      // signatures on one document
	MaxKeys       = 256     // keys in one root
)

// Refusals, one sentinel per kind, so that the agent can map them (journal,
// status, API 403). Errors returned by this package wrap one or more of them.
var (
	// ErrMalformed: a root, bundle or target field is not what the contract
	// says (unknown or duplicate field, bad type, bad time, bad key).
	ErrMalformed = errors.New("malformed")
	// ErrThreshold: fewer distinct valid signatures of the role than its
	// threshold.
	ErrThreshold = errors.New("threshold of signatures not met")
	// ErrUnknownKey: a signature names a key that the trusted root does not
	// give the role (unknown, of another role, or revoked by a rotation).
	ErrUnknownKey = errors.New("unknown or revoked key")
	// ErrRootVersion: a root in the bundle does not follow the trusted one
	// (only version N+1 may follow version N).
	ErrRootVersion = errors.New("root version does not follow the trusted root")
	// ErrExpired: the trusted root or the target has expired (a freeze).
	ErrExpired = errors.New("expired")
	// ErrRollback: the target's version is older than one accepted before.
	ErrRollback = errors.New("rollback")
	// ErrSameVersion: the target has the version of the accepted one but
	// other bytes.
	ErrSameVersion = errors.New("same version with other content")
	// ErrAlreadyAccepted is not an attack: the target is the one accepted
	// last (a re-poll). Verify returns it with a valid Result.
	ErrAlreadyAccepted = errors.New("already accepted")
	// ErrWrongFleet: the target or a new root names another fleet.
	ErrWrongFleet = errors.New("wrong fleet")
	// ErrWrongDevice: the target names another device.
	ErrWrongDevice = errors.New("wrong device")
	// ErrNoRoot: the State holds no trusted root.
	ErrNoRoot = errors.New("no trusted root")
	// ErrAlreadySigned: the key has already signed this document.
	ErrAlreadySigned = errors.New("already signed by this key")
)

// PAE is DSSE's pre-authentication encoding: the bytes a signature covers.
//
//	"DSSEv1" SP len(type) SP type SP len(body) SP body
func PAE(typ string, body []byte) []byte {
	b := make([]byte, 0, 32+len(typ)+len(body))
	b = append(b, "DSSEv1 "...)
	b = strconv.AppendInt(b, int64(len(typ)), 10)
	b = append(b, ' ')
	b = append(b, typ...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, ' ')
	return append(b, body...)
}

// KeyID is a key's id: the hex sha256 of its 32 raw bytes.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:])
}

// Digest is the hex sha256 of b, as State.TargetSHA256 holds it.
func Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
