package agent

import (
	"fmt"
	"sync"

	"latch/store"
)

// eventBuffer is how many events a subscriber may lag behind before it is
// dropped: a slow reader never holds back the loop that logs them.
const eventBuffer = 256

// eventHub hands every committed journal event to the subscribers.
type eventHub struct {
	mu   sync.Mutex // guards subs
	subs map[*EventSub]struct{}
}

// EventSub is one subscription to the agent's journal events (GET
// /v2/events). C delivers the events logged after Subscribe, in order; it is
// closed when the subscriber fell too far behind (dropped: subscribe again,
// resuming after the last Seq seen) or after Close.
type EventSub struct {
	// Backlog is the events after the Seq asked for that the journal still
	// keeps, oldest first: events logged before Subscribe returned. C may
	// repeat some of them: skip a Seq already seen.
	Backlog []store.Event
	C       <-chan store.Event

	ch  chan store.Event
	hub *eventHub
}

// publish runs after every commit that logged events (the journal's
// OnEvents hook): it never blocks.
func (h *eventHub) publish(evs []store.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		for _, e := range evs {
			select {
			case s.ch <- e:
				continue
			default:
			}
			close(s.ch) // too slow: dropped
			delete(h.subs, s)
			break
		}
	}
}

// SubscribeEvents returns a subscription to the journal's events as they
// are logged. With resume, its Backlog holds the kept events after seq
// (at most 1000), so that a client that lost its stream misses nothing that
// the journal still has.
func (a *Agent) SubscribeEvents(seq uint64, resume bool) (*EventSub, error) {
	h := &a.hub
	s := &EventSub{ch: make(chan store.Event, eventBuffer), hub: h}
	s.C = s.ch
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[*EventSub]struct{}{}
	}
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	if resume {
		err := a.j.View(func(tx *store.Tx) error {
			var err error
			s.Backlog, err = tx.EventsAfter(seq, 1000)
			return err
		})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("read the journal's events after %d: %w", seq, err)
		}
	}
	return s, nil
}

// Close ends the subscription (idempotent).
func (s *EventSub) Close() {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.ch)
	}
}

// Done is closed when the agent stops.
func (a *Agent) Done() <-chan struct{} { return a.done }
