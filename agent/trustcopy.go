package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"latch/agent/trust"
)

// TrustCopyName is the second copy of the trust state, in the state dir.
// The journal holds the trust state in the same transaction as the target
// it goes with; this copy, rewritten after each of those transactions,
// is what keeps the highest version and the clock floor when the journal
// is reset (a corrupt journal is moved aside and started afresh) or put
// back from an older copy: at start the agent takes, field by field, the
// newer of the two, so the trust state never goes back. To move a device to
// another fleet, remove this file with the journal's trust state (stop the
// agent, move journal.db and trust.json aside).
const TrustCopyName = "trust.json"

// maxTrustCopy bounds the copy read back (a root envelope and a few fields).
const maxTrustCopy = 1 << 20

func (a *Agent) trustCopyPath() string { return filepath.Join(a.cfg.StateDir, TrustCopyName) }

// saveTrustCopy rewrites the copy with s, after s was committed to the
// journal. A failure is logged: the journal still has s.
func (a *Agent) saveTrustCopy(s trust.State) {
	b, err := json.Marshal(s)
	if err == nil {
		err = writeFileAtomic(a.trustCopyPath(), b, 0o600)
	}
	if err != nil {
		a.logf("trust: write the copy of the trust state %s: %v (the journal has it)", a.trustCopyPath(), err)
	}
}

// loadTrustCopy reads the copy: ok false when there is none. A copy that
// does not parse, or whose root is not signed by its own root role, is an
// error naming the file (and is not used).
func (a *Agent) loadTrustCopy() (s trust.State, ok bool, err error) {
	path := a.trustCopyPath()
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return trust.State{}, false, nil
	}
	if err != nil {
		return trust.State{}, false, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTrustCopy+1))
	if err != nil {
		return trust.State{}, false, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxTrustCopy {
		return trust.State{}, false, fmt.Errorf("%s: larger than %d bytes", path, maxTrustCopy)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return trust.State{}, false, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := trust.NewState(s.Root); err != nil {
		return trust.State{}, false, fmt.Errorf("%s: its root: %w", path, err)
	}
	return s, true, nil
}

// newerTrust merges two trust states field by field, each counter the
// higher of the two: the root of the higher root version, the target
// fields of the higher target version, the later clock floor.
func newerTrust(j, c trust.State) trust.State {
	out := j
	if c.RootVersion > j.RootVersion || len(j.Root) == 0 {
		out.Root, out.RootVersion = c.Root, c.RootVersion
	}
	if c.TargetVersion > j.TargetVersion {
		out.TargetVersion, out.TargetSHA256, out.TargetExpires, out.TargetAccepted = c.TargetVersion, c.TargetSHA256, c.TargetExpires, c.TargetAccepted
	}
	if c.LastIssued.After(j.LastIssued) {
		out.LastIssued = c.LastIssued
	}
	return out
}
