package store

import (
	"encoding/json"
	"fmt"
	"time"
)

// keyQueued (bucket state) is the target document accepted while the agent
// was busy with an action: it is journalled before the source is told it was
// accepted, and taken up once the action is over, also after a crash.
const keyQueued = "queued"

// Queued is a target document accepted during an action.
type Queued struct {
	Doc      []byte    `json:"doc"`    // the raw document, as accepted (verified)
	Source   string    `json:"source"` // where it came from (target-file, api, url)
	By       string    `json:"by"`     // who sent it
	Accepted time.Time `json:"accepted"`
}

func (q *Queued) validate() error {
	if len(q.Doc) == 0 || !json.Valid(q.Doc) {
		return fmt.Errorf("queued target: document is not JSON")
	}
	if q.Accepted.IsZero() {
		return fmt.Errorf("queued target: no time of acceptance")
	}
	return nil
}

// Queued returns the target accepted during an action, or ErrNotFound.
func (tx *Tx) Queued() (*Queued, error) {
	b, err := tx.bucket(bucketState)
	if err != nil {
		return nil, err
	}
	v := b.Get([]byte(keyQueued))
	if v == nil {
		return nil, fmt.Errorf("queued target: %w", ErrNotFound)
	}
	q := new(Queued)
	if err := json.Unmarshal(v, q); err != nil {
		return nil, corrupt(bucketState, keyQueued, err)
	}
	if err := q.validate(); err != nil {
		return nil, corrupt(bucketState, keyQueued, err)
	}
	return q, nil
}

// SetQueued records q as the target to take up after the action in flight,
// replacing an earlier one (the newest target wins).
func (tx *Tx) SetQueued(q *Queued) error {
	if err := q.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return tx.put(bucketState, keyQueued, q)
}

// DeleteQueued forgets the queued target; it is not an error if there is none.
func (tx *Tx) DeleteQueued() error { return tx.del(bucketState, keyQueued) }
