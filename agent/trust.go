package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"latch/agent/target"
	"latch/agent/trust"
	"latch/store"
)

// ErrRefused wraps every refusal of a target state under the root of trust
// (--trust-root): too few valid signatures, an unknown or revoked key, a
// rollback, the same version with other bytes, an expired root or target,
// another fleet or device, a file without a size. Nothing changed; the API
// answers 403.
var ErrRefused = errors.New("target state refused")

// maxRefusedKept bounds the documents remembered as refused (each is refused
// once: the same bytes again get the same answer without a new journal entry).
const maxRefusedKept = 64

// trustCtl is an agent's root of trust: set by UseTrustRoot before Run, then
// used by the loop alone, but for the last refusal (read by the API).
type trustCtl struct {
	deviceID string
	state    trust.State      // as journalled
	seen     map[string]error // digest of document and signature → its refusal
	mu       sync.Mutex       // guards refused
	refused  *store.Refusal   // the last refusal, for the status
}

// trusts holds the root of trust of each agent that has one.
var trusts sync.Map // *Agent → *trustCtl

func (a *Agent) trust() *trustCtl {
	if v, ok := trusts.Load(a); ok {
		return v.(*trustCtl)
	}
	return nil
}

// UseTrustRoot makes the agent accept only target states that satisfy
// section 10 of the contract under root, the provisioned root envelope
// (--trust-root's content), for the device deviceID ("" when it has none).
// It merges root into the trust state of the journal (trust.Provision: the
// journal's root wins when as new or newer; counters are kept) and journals
// the result. Call it after New and before Run; it cannot be combined with
// Config.TrustKey.
func (a *Agent) UseTrustRoot(root []byte, deviceID string) error {
	if a.cfg.TrustKey != nil {
		return fmt.Errorf("%w: --trust-root and --trust-key: give one (--trust-root checks versions, expiry and thresholds; --trust-key a bare signature)", ErrInvalid)
	}
	if strings.ContainsAny(deviceID, "\x00\n\r") {
		return fmt.Errorf("%w: --device-id %q: must not contain a NUL byte or a line break", ErrInvalid, deviceID)
	}
	tc := &trustCtl{deviceID: deviceID, seen: map[string]error{}}
	var old trust.State
	err := a.j.View(func(tx *store.Tx) error {
		t, err := tx.Trust()
		if err == nil {
			old = fromStore(t)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if r, err := tx.Refused(); err == nil {
			tc.refused = r
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read the trust state: %w", err)
	}
	journalled := old
	switch c, ok, err := a.loadTrustCopy(); {
	case err != nil:
		a.logf("trust: the copy of the trust state is not used: %v", err)
	case ok:
		if merged := newerTrust(old, c); !sameTrust(merged, old) {
			a.logf("trust: the journal's trust state (root version %d, target version %d) is older than its copy %s (root version %d, target version %d): the newer is kept",
				old.RootVersion, old.TargetVersion, a.trustCopyPath(), c.RootVersion, c.TargetVersion)
			old = merged
		}
	}
	next, err := trust.Provision(old, root)
	if errors.Is(err, trust.ErrWrongFleet) {
		return fmt.Errorf("%w: --trust-root: %w (the trust state is in the journal and in its copy %s: stop the agent and move both aside)", ErrInvalid, err, a.trustCopyPath())
	}
	if err != nil {
		return fmt.Errorf("%w: --trust-root: %w", ErrInvalid, err)
	}
	if !sameTrust(journalled, next) {
		err := a.commit(func(tx *store.Tx) error {
			if err := tx.PutTrust(toStore(next)); err != nil {
				return err
			}
			_, err := tx.Log(store.Event{Kind: "trust", Message: fmt.Sprintf("root of trust version %d provisioned (journal had version %d), highest target version %d", next.RootVersion, journalled.RootVersion, next.TargetVersion)})
			return err
		})
		if err != nil {
			return fmt.Errorf("journal the trust state: %w", err)
		}
	}
	a.saveTrustCopy(next)
	tc.state = next
	trusts.Store(a, tc)
	return nil
}

// TrustsRoot reports whether the agent verifies target states under a root
// of trust (UseTrustRoot).
func (a *Agent) TrustsRoot() bool { return a.trust() != nil }

// Refused returns the last target state refused under the root of trust
// (journalled, so it outlives a restart), or nil.
func (a *Agent) Refused() *store.Refusal {
	tc := a.trust()
	if tc == nil {
		return nil
	}
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.refused == nil {
		return nil
	}
	r := *tc.refused
	return &r
}

// verifyTrust decides on doc under the root of trust. It returns the State
// to journal with the target (nil: nothing new to journal, a re-delivery of
// the accepted target), or a refusal wrapping ErrRefused, journalled.
func (a *Agent) verifyTrust(tc *trustCtl, doc target.Doc, by string) (*trust.State, error) {
	key := docKey(doc)
	if err, ok := tc.seen[key]; ok {
		return nil, err // refused once already: not journalled again
	}
	var res trust.Result
	var err error
	if len(bytes.TrimSpace(doc.Sig)) == 0 {
		err = fmt.Errorf("not signed: publish its signatures next to it (FILE.sig, <url>.sig or the X-Latch-Signature header; latch sign makes them): %w", trust.ErrThreshold)
	} else {
		var b trust.Bundle
		if b, err = trust.ParseBundle(doc.Sig); err == nil {
			res, err = trust.Verify(tc.state, doc.Data, b, time.Now(), tc.deviceID)
		} else {
			err = fmt.Errorf("%w: under --trust-root the signatures come as a bundle {\"signatures\":[...]} (latch sign writes one); a bare signature is --trust-key's form", err)
		}
	}
	if errors.Is(err, trust.ErrAlreadyAccepted) {
		if !sameTrust(tc.state, res.State) { // the bundle rotated the root in
			if jerr := a.journal(func(tx *store.Tx) error {
				if err := tx.PutTrust(toStore(res.State)); err != nil {
					return err
				}
				_, err := tx.Log(store.Event{Kind: "trust", By: by, Message: fmt.Sprintf("root of trust version %d from %s", res.State.RootVersion, doc.Source)})
				return err
			}); jerr != nil {
				return nil, fmt.Errorf("journal the trust state: %w", jerr)
			}
			a.saveTrustCopy(res.State)
			tc.state = res.State
		}
		return nil, nil
	}
	if err != nil {
		return nil, a.refuse(tc, doc, by, err)
	}
	return &res.State, nil
}

// refuse journals a refusal (an event and the last refusal, one
// transaction) and remembers it for the same bytes.
func (a *Agent) refuse(tc *trustCtl, doc target.Doc, by string, why error) error {
	err := fmt.Errorf("%w: target from %s: %w", ErrRefused, doc.Source, why)
	r := &store.Refusal{At: time.Now(), Source: doc.Source, By: by, Reason: why.Error(), SHA256: target.Digest(doc.Data)}
	jerr := a.journal(func(tx *store.Tx) error {
		if err := tx.SetRefused(r); err != nil {
			return err
		}
		_, err := tx.Log(store.Event{Kind: "refused", By: by, Message: err.Error()})
		return err
	})
	if jerr != nil {
		return fmt.Errorf("%w (journal the refusal: %v)", err, jerr)
	}
	tc.mu.Lock()
	tc.refused = r
	tc.mu.Unlock()
	if len(tc.seen) >= maxRefusedKept {
		clear(tc.seen)
	}
	tc.seen[docKey(doc)] = err
	return err
}

// putTrust journals s (nil: nothing) in tx and, once committed, the loop
// uses it: call it inside the transaction of the target it goes with.
func putTrust(tx *store.Tx, s *trust.State) error {
	if s == nil {
		return nil
	}
	return tx.PutTrust(toStore(*s))
}

// trusted makes s the state in use, after its transaction committed.
func (a *Agent) trusted(s *trust.State) {
	if tc := a.trust(); tc != nil && s != nil {
		a.saveTrustCopy(*s)
		tc.state = *s
		clear(tc.seen) // what was refused may be judged otherwise now (a rotation)
	}
}

func docKey(doc target.Doc) string {
	h := sha256.New()
	h.Write(doc.Data)
	h.Write([]byte{0})
	h.Write(doc.Sig)
	return hex.EncodeToString(h.Sum(nil))
}

func toStore(s trust.State) *store.Trust {
	return &store.Trust{Root: s.Root, RootVersion: s.RootVersion, TargetVersion: s.TargetVersion, TargetSHA256: s.TargetSHA256,
		TargetExpires: s.TargetExpires, TargetAccepted: s.TargetAccepted, LastIssued: s.LastIssued}
}

func fromStore(t *store.Trust) trust.State {
	return trust.State{Root: t.Root, RootVersion: t.RootVersion, TargetVersion: t.TargetVersion, TargetSHA256: t.TargetSHA256,
		TargetExpires: t.TargetExpires, TargetAccepted: t.TargetAccepted, LastIssued: t.LastIssued}
}

func sameTrust(a, b trust.State) bool {
	return bytes.Equal(a.Root, b.Root) && a.RootVersion == b.RootVersion && a.TargetVersion == b.TargetVersion &&
		a.TargetSHA256 == b.TargetSHA256 && a.TargetExpires.Equal(b.TargetExpires) &&
		a.TargetAccepted.Equal(b.TargetAccepted) && a.LastIssued.Equal(b.LastIssued)
}

// journalTrust journals ts alone, for a target accepted that asks for no
// update (it runs already, or is the one pending).
func (a *Agent) journalTrust(ts *trust.State, doc target.Doc, by string) error {
	if ts == nil {
		return nil
	}
	err := a.journal(func(tx *store.Tx) error {
		if err := putTrust(tx, ts); err != nil {
			return err
		}
		_, err := tx.Log(store.Event{Kind: "update", By: by, Message: fmt.Sprintf("target version %d from %s accepted: it asks for nothing new", ts.TargetVersion, doc.Source)})
		return err
	})
	if err != nil {
		return fmt.Errorf("journal the trust state: %w", err)
	}
	a.trusted(ts)
	return nil
}
