package store

import (
	"errors"
	"fmt"
	"testing"
)

// A journal remembers the newest MaxCommands command ids and their results, across a
// reopen; an older id is forgotten; a known id is updated in place, not appended again.
func TestCommandsBounded(t *testing.T) {
	j := openTest(t, nil)
	if err := j.View(func(tx *Tx) error { _, err := tx.Command("c0"); return err }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Command of a journal without commands: %v, want ErrNotFound", err)
	}
	const extra = 7
	for i := 0; i < MaxCommands+extra; i++ {
		err := j.Update(func(tx *Tx) error {
			return tx.PutCommand(&Command{ID: fmt.Sprintf("c%d", i), Action: "hold", State: CommandRunning, Taken: t0})
		})
		if err != nil {
			t.Fatalf("PutCommand c%d: %v", i, err)
		}
	}
	// the newest is finished: updated in place
	last := fmt.Sprintf("c%d", MaxCommands+extra-1)
	if err := j.Update(func(tx *Tx) error {
		return tx.PutCommand(&Command{ID: last, Action: "hold", State: CommandDone, Status: "ok", Message: "held", Taken: t0})
	}); err != nil {
		t.Fatal(err)
	}
	j = reopen(t, j, nil)
	err := j.View(func(tx *Tx) error {
		if n := tx.CommandCount(); n != MaxCommands {
			return fmt.Errorf("CommandCount = %d, want %d", n, MaxCommands)
		}
		for i := 0; i < extra; i++ {
			if _, err := tx.Command(fmt.Sprintf("c%d", i)); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("c%d (among the oldest) is still remembered: %v", i, err)
			}
		}
		if _, err := tx.Command(fmt.Sprintf("c%d", extra)); err != nil {
			return fmt.Errorf("c%d, the oldest kept: %v", extra, err)
		}
		c, err := tx.Command(last)
		if err != nil {
			return err
		}
		if c.State != CommandDone || c.Status != "ok" || c.Message != "held" || c.Seq != MaxCommands+extra {
			return fmt.Errorf("%s = %+v, want done, ok, held, seq %d", last, c, MaxCommands+extra)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCommandInvalid(t *testing.T) {
	j := openTest(t, nil)
	for _, c := range []*Command{nil, {ID: "", State: CommandDone}, {ID: "x", State: "maybe"}} {
		err := j.Update(func(tx *Tx) error { return tx.PutCommand(c) })
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("PutCommand(%+v) = %v, want ErrInvalid", c, err)
		}
	}
	if err := j.View(func(tx *Tx) error { return tx.PutCommand(&Command{ID: "x", State: CommandDone}) }); err == nil {
		t.Error("PutCommand in a View succeeded")
	}
}
