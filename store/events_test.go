package store

import (
	"errors"
	"testing"
	"time"
)

// OnEvents sees the events of committed transactions only, in order, and
// EventsAfter resumes after a given seq, skipping what was trimmed.
func TestOnEventsAndEventsAfter(t *testing.T) {
	j := openTest(t, &Options{MaxEvents: 5})
	var seen []Event
	j.OnEvents(func(evs []Event) { seen = append(seen, evs...) })
	if err := j.Update(func(tx *Tx) error {
		if _, err := tx.Log(Event{Kind: "a", Message: "one"}); err != nil {
			return err
		}
		_, err := tx.Log(Event{Kind: "b", Message: "two"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := j.Update(func(tx *Tx) error {
		if _, err := tx.Log(Event{Kind: "c", Message: "rolled back"}); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want %v", err, boom)
	}
	if len(seen) != 2 || seen[0].Message != "one" || seen[1].Message != "two" || seen[0].Seq+1 != seen[1].Seq {
		t.Fatalf("OnEvents saw %+v, want one then two, with consecutive seqs", seen)
	}
	for i := 0; i < 6; i++ {
		if err := j.Update(func(tx *Tx) error { _, err := tx.Log(Event{Kind: "d", Message: "more"}); return err }); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != 8 {
		t.Errorf("OnEvents saw %d events, want 8", len(seen))
	}
	var after []Event
	if err := j.View(func(tx *Tx) error {
		var err error
		after, err = tx.EventsAfter(seen[1].Seq, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// Five are kept: the last five of the eight committed (the rolled-back
	// one took no seq that is visible).
	if len(after) != 5 || after[0].Seq != seen[3].Seq || after[4].Seq != seen[7].Seq {
		t.Errorf("EventsAfter(%d) = %+v, want the 5 kept events, oldest first", seen[1].Seq, after)
	}
	if err := j.View(func(tx *Tx) error {
		var err error
		after, err = tx.EventsAfter(seen[6].Seq, 10)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(after) != 1 || after[0].Seq != seen[7].Seq {
		t.Errorf("EventsAfter(%d) = %+v, want the last event alone", seen[6].Seq, after)
	}
	j.OnEvents(nil)
	j.Update(func(tx *Tx) error { _, err := tx.Log(Event{Kind: "e", Message: "unseen"}); return err })
	if len(seen) != 8 {
		t.Errorf("OnEvents(nil) did not stop the calls: %d events seen", len(seen))
	}
}

// The pending update keeps when each app was first blocked and which apps
// were given up, across a reopen; a bad app name there is refused.
func TestPendingBlockedAndAppFailed(t *testing.T) {
	j := openTest(t, nil)
	u := sampleUpdate()
	at := time.Date(2026, 12, 1, 2, 3, 4, 0, time.UTC)
	u.Blocked = map[string]time.Time{"kiosk": at}
	u.AppFailed = map[string]string{"other": "waited past its max-defer deadline"}
	if err := j.Update(func(tx *Tx) error { return tx.PutPending(u) }); err != nil {
		t.Fatal(err)
	}
	j = reopen(t, j, nil)
	var got *Update
	if err := j.View(func(tx *Tx) error {
		var err error
		got, err = tx.Pending()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !got.Blocked["kiosk"].Equal(at) || got.AppFailed["other"] != u.AppFailed["other"] {
		t.Errorf("got blocked %v, app_failed %v; want %v, %v", got.Blocked, got.AppFailed, u.Blocked, u.AppFailed)
	}
	bad := sampleUpdate()
	bad.Blocked = map[string]time.Time{"../x": at}
	if err := j.Update(func(tx *Tx) error { return tx.PutPending(bad) }); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutPending with blocked app ../x: %v, want ErrInvalid", err)
	}
}
