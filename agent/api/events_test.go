package api

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"latch/store"
)

// follow streams the agent's events into a channel until the test ends.
func follow(t *testing.T, c *Client, seq uint64, resume bool) <-chan store.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan store.Event, 1024)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- c.Events(ctx, seq, resume, func() { close(ready) }, func(e store.Event) error { out <- e; return nil })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, ErrStreamEnded) {
			t.Errorf("Events: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Events ended before the agent answered: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("GET /v2/events: no answer within 10s")
	}
	return out
}

// next waits for the next event of one of the kinds (others are skipped).
func next(t *testing.T, evs <-chan store.Event, kinds ...string) store.Event {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case e := <-evs:
			for _, k := range kinds {
				if e.Kind == k {
					return e
				}
			}
		case <-deadline:
			t.Fatalf("no event of kind %v within 20s", kinds)
		}
	}
}

// GET /v2/events streams the journal's events as they are logged, over
// both transports, in order, each with its seq; Last-Event-ID resumes after
// a seq with what the journal keeps.
func TestEventStream(t *testing.T) {
	e := newEnv(t, envOpts{})
	unix := NewClient(e.socket)
	tcp := NewTCPClient(e.tcpURL, testKey)
	streams := []<-chan store.Event{follow(t, unix, 0, false), follow(t, tcp, 0, false)}
	if err := e.a.SetOverride(t.Context(), true, "test"); err != nil {
		t.Fatal(err)
	}
	var first []store.Event
	for _, s := range streams {
		ev := next(t, s, "override")
		if !strings.Contains(ev.Message, "lock override on") || ev.Seq == 0 {
			t.Errorf("first event %+v, want the override turned on, with its seq", ev)
		}
		first = append(first, ev)
	}
	if first[0].Seq != first[1].Seq {
		t.Errorf("the two transports saw seqs %d and %d for one event", first[0].Seq, first[1].Seq)
	}
	if err := e.a.SetOverride(t.Context(), false, "test"); err != nil {
		t.Fatal(err)
	}
	for _, s := range streams {
		if ev := next(t, s, "override"); ev.Seq <= first[0].Seq || !strings.Contains(ev.Message, "off") {
			t.Errorf("second event %+v, want the override off after seq %d", ev, first[0].Seq)
		}
	}
	// Resuming after the first event delivers the second from the journal.
	resumed := follow(t, unix, first[0].Seq, true)
	if ev := next(t, resumed, "override"); ev.Seq != first[0].Seq+1 && !strings.Contains(ev.Message, "off") {
		t.Errorf("resumed after %d: first event %+v, want the override off", first[0].Seq, ev)
	}
	// A bad Last-Event-ID is refused, naming the header.
	a := e.transports()[0].call(t, "GET", "/v2/events", nil, map[string]string{"Last-Event-ID": "x1"})
	if a.code != 400 || !strings.Contains(string(a.body), "Last-Event-ID") {
		t.Errorf("GET /v2/events with Last-Event-ID x1: %d %s, want 400 naming the header", a.code, a.body)
	}
}

// A subscriber that does not read is dropped once it is eventBuffer events
// behind; the agent's loop, which logs the events, never waits for it.
func TestEventStreamDropsSlowSubscriber(t *testing.T) {
	e := newEnv(t, envOpts{})
	sub, err := e.a.SubscribeEvents(0, false)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	const calls = 2 * eventBufferForTest
	for i := 0; i < calls; i++ { // an event each: twice the buffer
		if err := e.a.SetOverride(t.Context(), i%2 == 0, "test"); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for {
		select {
		case _, ok := <-sub.C:
			if ok {
				n++
				continue
			}
			if n == 0 || n >= calls {
				t.Errorf("a subscriber that never read got %d events before it was dropped, want some but not all %d", n, calls)
			}
			return
		case <-time.After(5 * time.Second):
			t.Fatalf("the subscriber that never read was not dropped (%d events read, its channel still open)", n)
		}
	}
}

// eventBufferForTest is the agent's buffer per subscriber (agent.eventBuffer).
const eventBufferForTest = 256
