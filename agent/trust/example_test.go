package trust_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"latch/agent/trust"
)

// The agent's side: a State from the journal (here: from the provisioned
// root), one Verify per delivered document, the new State persisted with
// the target, and the refusals told apart.
func ExampleVerify() {
	seed := sha256.Sum256([]byte("example"))
	k := ed25519.NewKeyFromSeed(seed[:])
	pub := k.Public().(ed25519.PublicKey)
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

	root := trust.Root{Version: 1, Expires: now.AddDate(2, 0, 0), Fleet: "kiosk-prod",
		Keys: map[string]ed25519.PublicKey{trust.KeyID(pub): pub}}
	root.Roles.Root = trust.Role{KeyIDs: []string{trust.KeyID(pub)}, Threshold: 1}
	root.Roles.Targets = trust.Role{KeyIDs: []string{trust.KeyID(pub)}, Threshold: 1}
	sr, _ := trust.NewSignedRoot(root)
	sr, _ = trust.SignRoot(sr, k)
	rootFile, _ := json.Marshal(sr)

	state, err := trust.Provision(trust.State{}, rootFile) // journal empty: the --trust-root file
	if err != nil {
		fmt.Println(err)
		return
	}
	body := []byte(`{"version":7,"issued":"2026-12-01T11:00:00Z","expires":"2026-12-08T00:00:00Z","fleet":"kiosk-prod","apps":{}}`)
	bundle, _ := trust.SignTarget(trust.Bundle{}, body, k)
	sig, _ := json.Marshal(bundle) // what target.json.sig holds

	b, _ := trust.ParseBundle(sig)
	res, err := trust.Verify(state, body, b, now, "")
	fmt.Println(res.Target.Version, err)
	state = res.State // persist in the transaction that records the target

	_, err = trust.Verify(state, body, b, now.Add(time.Minute), "")
	fmt.Println(errors.Is(err, trust.ErrAlreadyAccepted))
	// Output:
	// 7 <nil>
	// true
}
