package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"
)

// bucketCommands holds the fleet commands the agent ran (spec section 11): sub-bucket
// "ids" maps a command id to its Command record, sub-bucket "order" maps a big-endian
// sequence to the id, oldest first, so that the oldest are dropped beyond MaxCommands. The
// bucket is made by the first command, so journals older than it open as they are.
const (
	bucketCommands = "commands"
	keyCmdIDs      = "ids"
	keyCmdOrder    = "order"
)

// MaxCommands is how many command ids the journal remembers: the newest 1000. A command id
// older than that (a thousand commands later) is taken as new if the broker delivers it again.
const MaxCommands = 1000

// Command states.
const (
	CommandRunning = "running" // journalled before it ran; a crash leaves it so
	CommandDone    = "done"    // it ran: Status and Message are its result
)

// Command is one fleet command the agent took: its id, what it asked, and its result.
type Command struct {
	ID      string    `json:"id"`
	Action  string    `json:"action"`
	State   string    `json:"state"`   // CommandRunning or CommandDone
	Status  string    `json:"status"`  // the result's status ("ok", "failed", "refused")
	Message string    `json:"message"` // the result's message
	Seq     uint64    `json:"seq"`
	Taken   time.Time `json:"taken"`
	Done    time.Time `json:"done,omitzero"`
}

func (c *Command) validate() error {
	if c.ID == "" || len(c.ID) > 256 {
		return fmt.Errorf("command: id %q: want 1 to 256 bytes", c.ID)
	}
	if c.State != CommandRunning && c.State != CommandDone {
		return fmt.Errorf("command %s: state %q: want %q or %q", c.ID, c.State, CommandRunning, CommandDone)
	}
	return nil
}

// Command returns the record of command id, or ErrNotFound when the journal does not
// remember it.
func (tx *Tx) Command(id string) (*Command, error) {
	b := tx.tx.Bucket([]byte(bucketCommands))
	var v []byte
	if b != nil {
		if ids := b.Bucket([]byte(keyCmdIDs)); ids != nil {
			v = ids.Get([]byte(id))
		}
	}
	if v == nil {
		return nil, fmt.Errorf("command %q: %w", id, ErrNotFound)
	}
	c := new(Command)
	if err := json.Unmarshal(v, c); err != nil {
		return nil, corrupt(bucketCommands, id, err)
	}
	if err := c.validate(); err != nil {
		return nil, corrupt(bucketCommands, id, err)
	}
	return c, nil
}

// PutCommand writes the record of a command: a new id is appended (Seq is set) and the
// oldest ids beyond MaxCommands are dropped; a known id is updated in place.
func (tx *Tx) PutCommand(c *Command) error {
	if c == nil {
		return fmt.Errorf("command: nil: %w", ErrInvalid)
	}
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	b, err := tx.tx.CreateBucketIfNotExists([]byte(bucketCommands))
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketCommands, err)
	}
	ids, err := b.CreateBucketIfNotExists([]byte(keyCmdIDs))
	if err != nil {
		return fmt.Errorf("create bucket %s/%s: %w", bucketCommands, keyCmdIDs, err)
	}
	order, err := b.CreateBucketIfNotExists([]byte(keyCmdOrder))
	if err != nil {
		return fmt.Errorf("create bucket %s/%s: %w", bucketCommands, keyCmdOrder, err)
	}
	if old := ids.Get([]byte(c.ID)); old != nil {
		var prev Command
		if json.Unmarshal(old, &prev) == nil {
			c.Seq = prev.Seq
		}
	} else {
		seq, err := order.NextSequence()
		if err != nil {
			return fmt.Errorf("command sequence: %w", err)
		}
		c.Seq = seq
		if err := order.Put(seqKey(seq), []byte(c.ID)); err != nil {
			return fmt.Errorf("write command %s: %w", c.ID, err)
		}
		// drop the oldest beyond MaxCommands (the keys run contiguously from the oldest kept)
		cur := order.Cursor()
		for k, v := cur.First(); len(k) == 8 && seq-binary.BigEndian.Uint64(k)+1 > MaxCommands; k, v = cur.First() {
			if err := ids.Delete(v); err != nil {
				return fmt.Errorf("drop command %s: %w", v, err)
			}
			if err := order.Delete(k); err != nil {
				return fmt.Errorf("drop command %s: %w", v, err)
			}
		}
	}
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode command %s: %w", c.ID, err)
	}
	if err := ids.Put([]byte(c.ID), data); err != nil {
		return fmt.Errorf("write command %s: %w", c.ID, err)
	}
	return nil
}

// CommandCount is how many command ids the journal remembers.
func (tx *Tx) CommandCount() int {
	b := tx.tx.Bucket([]byte(bucketCommands))
	if b == nil {
		return 0
	}
	ids := b.Bucket([]byte(keyCmdIDs))
	if ids == nil {
		return 0
	}
	return ids.Stats().KeyN
}

// checkCommands reads every command record, for Open's check of the journal.
func (tx *Tx) checkCommands() error {
	b := tx.tx.Bucket([]byte(bucketCommands))
	if b == nil {
		return nil
	}
	ids := b.Bucket([]byte(keyCmdIDs))
	if ids == nil {
		return nil
	}
	return ids.ForEach(func(k, _ []byte) error {
		_, err := tx.Command(string(k))
		return err
	})
}
