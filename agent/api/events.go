package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"latch/store"
)

// Timing of the event stream: a comment every eventPing keeps idle
// connections (and their proxies) alive and finds dead clients; a write that
// cannot finish within eventWrite drops the client.
var (
	eventPing  = 15 * time.Second
	eventWrite = 10 * time.Second
)

// events is GET /v2/events: the journal's events as Server-Sent Events, one
// JSON object a message ("data: {...}"), each with "id: <seq>", so that a
// client that reconnects with Last-Event-ID gets what it missed (as far as
// the journal keeps it). A client too slow to keep up is dropped; it
// reconnects and resumes.
func (h *handlers) events(w http.ResponseWriter, r *http.Request) {
	var after uint64
	resume := false
	if v := strings.TrimSpace(r.Header.Get("Last-Event-ID")); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("Last-Event-ID %q: want the seq (a number) of the last event received", v))
			return
		}
		after, resume = n, true
	}
	sub, err := h.a.SubscribeEvents(after, resume)
	if err != nil {
		writeAgentError(w, err)
		return
	}
	defer sub.Close()
	rc := http.NewResponseController(w)
	// The stream outlives the server's read and write timeouts: no read
	// deadline (the request is read), a write deadline per message.
	rc.SetReadDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(chunk []byte) bool {
		rc.SetWriteDeadline(time.Now().Add(eventWrite))
		if _, err := w.Write(chunk); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	var last uint64
	emit := func(e store.Event) bool {
		if e.Seq <= last && last != 0 {
			return true // already sent from the backlog
		}
		last = e.Seq
		b, err := json.Marshal(e)
		if err != nil {
			return false
		}
		return send([]byte(fmt.Sprintf("id: %d\ndata: %s\n\n", e.Seq, b)))
	}
	if !send([]byte(": latch events\n\n")) {
		return
	}
	for _, e := range sub.Backlog {
		if !emit(e) {
			return
		}
	}
	ping := time.NewTicker(eventPing)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-h.a.Done():
			return
		case <-h.stopping:
			return
		case e, ok := <-sub.C:
			if !ok {
				return // dropped: too slow
			}
			if !emit(e) {
				return
			}
		case <-ping.C:
			if !send([]byte(": ping\n\n")) {
				return
			}
		}
	}
}
