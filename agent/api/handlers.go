package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"

	"latch/agent"
	"latch/agent/lock"
	"latch/agent/target"
)

// ErrorBody is the body of every error answer but those of reboot and
// shutdown. BlockedBy names the lock entries behind a 423.
type ErrorBody struct {
	Status    string       `json:"status"` // always "failed"
	Message   string       `json:"message"`
	BlockedBy []lock.Entry `json:"blocked_by,omitempty"`
}

// PowerBody is the balena-shaped answer of POST /v1/reboot and /v1/shutdown:
// {"Data":"OK","Error":null} or {"Data":"","Error":"..."}.
type PowerBody struct {
	Data      string       `json:"Data"`
	Error     *string      `json:"Error"`
	BlockedBy []lock.Entry `json:"blocked_by,omitempty"`
}

// route is one path of the API and the handler of each of its methods.
type route struct {
	path    string
	methods map[string]http.HandlerFunc
}

// Handler returns the API's handler for a; tcp selects the TCP rules (the
// API key). Served other than by Serve, it knows nothing of its peers: over
// the unix rules it then refuses target states unless a verifies them.
func (s *Server) Handler(a *agent.Agent, tcp bool) http.Handler {
	h := &handlers{a: a, logf: s.cfg.Logf, stopping: s.stopping}
	routes := []route{
		{"/ping", map[string]http.HandlerFunc{"GET": h.ping}},
		{"/v1/healthy", map[string]http.HandlerFunc{"GET": h.healthy}},
		{"/v1/device", map[string]http.HandlerFunc{"GET": h.device}},
		{"/v1/update", map[string]http.HandlerFunc{"POST": h.update}},
		{"/v1/reboot", map[string]http.HandlerFunc{"POST": h.power("reboot")}},
		{"/v1/shutdown", map[string]http.HandlerFunc{"POST": h.power("shutdown")}},
		{"/v2/applications/{app}/restart-service", map[string]http.HandlerFunc{"POST": h.restart}},
		{"/v2/locks", map[string]http.HandlerFunc{"GET": h.locks, "POST": h.hold}},
		{"/v2/locks/all", map[string]http.HandlerFunc{"DELETE": h.releaseAll}},
		{"/v2/locks/{app}/{service}", map[string]http.HandlerFunc{"DELETE": h.release}},
		{"/v2/device/override", map[string]http.HandlerFunc{"GET": h.override, "PUT": h.setOverride}},
		{"/v2/journal", map[string]http.HandlerFunc{"GET": h.journal}},
		{"/v2/events", map[string]http.HandlerFunc{"GET": h.events}},
		{"/v2/local/target-state", map[string]http.HandlerFunc{"POST": h.target}},
		{"/metrics", map[string]http.HandlerFunc{"GET": h.metrics}},
	}
	mux := http.NewServeMux()
	for _, rt := range routes {
		var allow []string
		for m, fn := range rt.methods {
			mux.HandleFunc(m+" "+rt.path, fn)
			allow = append(allow, m)
			if m == "GET" {
				allow = append(allow, "HEAD")
			}
		}
		slices.Sort(allow)
		// Every other method of a known path: 405 with Allow.
		mux.HandleFunc(rt.path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", ")))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s", r.URL.Path))
	})
	var key [32]byte
	if tcp {
		key = sha256.Sum256([]byte(s.cfg.APIKey))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Any Origin header, even an empty one, is a browser's (or someone
		// posing as one): only its presence counts.
		if _, ok := r.Header["Origin"]; ok {
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusForbidden, "requests that carry an Origin header (from a web page) are refused: call the API from a program, without Origin")
			return
		}
		if tcp && !keyOK(r, key) {
			// Closing the connection keeps a client without the key from
			// holding one of the capped TCP slots, GET /ping included.
			w.Header().Set("Connection", "close")
			if !(r.URL.Path == "/ping" && (r.Method == "GET" || r.Method == "HEAD")) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="latch"`)
				writeError(w, http.StatusUnauthorized, "missing or wrong API key: send Authorization: Bearer KEY or ?apikey=KEY")
				return
			}
		}
		if r.ContentLength > MaxBody {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body of %d bytes is over the limit of %d", r.ContentLength, MaxBody))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
		mux.ServeHTTP(w, r)
	})
}

// keyOK compares the request's key with the configured one in constant time
// (both hashed, so that not even the length leaks).
func keyOK(r *http.Request, want [32]byte) bool {
	got := ""
	if auth := r.Header.Get("Authorization"); auth != "" {
		scheme, tok, ok := strings.Cut(auth, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return false
		}
		got = strings.TrimSpace(tok)
	} else if q := r.URL.Query(); q.Has("apikey") {
		got = q.Get("apikey")
	} else {
		return false
	}
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
}

type handlers struct {
	a        *agent.Agent
	logf     func(format string, args ...any)
	stopping <-chan struct{} // closed when the server shuts down
}

func (h *handlers) ping(w http.ResponseWriter, r *http.Request) { writeText(w, http.StatusOK, "OK") }

func (h *handlers) healthy(w http.ResponseWriter, r *http.Request) {
	if !h.a.Alive() {
		writeError(w, http.StatusInternalServerError, "the agent's event loop is not making progress")
		return
	}
	writeText(w, http.StatusOK, "OK")
}

func (h *handlers) device(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.a.DeviceStatus()) // the last refusal and the fleet channel too
}

func (h *handlers) update(w http.ResponseWriter, r *http.Request) {
	var req UpdateRequest
	if err := decodeBody(r.Body, &req, true); err != nil {
		writeError(w, bodyError(err), err.Error())
		return
	}
	triggered, err := h.a.Update(r.Context(), req.Force, req.Cancel, by(r))
	if err != nil {
		writeAgentError(w, err)
		return
	}
	if triggered {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "success", "message": "no update pending: nothing to do"})
}

func (h *handlers) power(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req PowerRequest
		if err := decodeBody(r.Body, &req, true); err != nil {
			writeError(w, bodyError(err), err.Error())
			return
		}
		var err error
		if kind == "shutdown" {
			err = h.a.Shutdown(r.Context(), req.Force, by(r))
		} else {
			err = h.a.Reboot(r.Context(), req.Force, by(r))
		}
		if err != nil {
			msg := err.Error()
			body := PowerBody{Error: &msg}
			var le *agent.LockedError
			if errors.As(err, &le) {
				body.BlockedBy = le.Entries
			}
			writeJSON(w, agentStatus(err), body)
			return
		}
		writeJSON(w, http.StatusAccepted, PowerBody{Data: "OK"})
	}
}

func (h *handlers) restart(w http.ResponseWriter, r *http.Request) {
	var req RestartRequest
	if err := decodeBody(r.Body, &req, false); err != nil {
		writeError(w, bodyError(err), err.Error())
		return
	}
	if req.ServiceName == "" {
		writeError(w, http.StatusBadRequest, "serviceName is required")
		return
	}
	if err := h.a.RestartService(r.Context(), r.PathValue("app"), req.ServiceName, req.Force, by(r)); err != nil {
		writeAgentError(w, err)
		return
	}
	writeText(w, http.StatusOK, "OK")
}

func (h *handlers) locks(w http.ResponseWriter, r *http.Request) {
	es, err := h.a.Locks(r.Context())
	if err != nil {
		writeAgentError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, es)
}

func (h *handlers) hold(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, bodyError(err), err.Error())
		return
	}
	req, d, err := parseHold(data)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	hold, err := h.a.Hold(r.Context(), agent.HoldRequest{App: req.App, Service: req.Service, All: req.All, Reason: req.Reason, For: d, By: by(r)})
	if err != nil {
		writeAgentError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, hold)
}

func (h *handlers) release(w http.ResponseWriter, r *http.Request) {
	h.releaseHold(w, r, r.PathValue("app"), r.PathValue("service"), false)
}

func (h *handlers) releaseAll(w http.ResponseWriter, r *http.Request) {
	h.releaseHold(w, r, "", "", true)
}

func (h *handlers) releaseHold(w http.ResponseWriter, r *http.Request, app, service string, all bool) {
	if err := h.a.Release(r.Context(), app, service, all, by(r)); err != nil {
		writeAgentError(w, err)
		return
	}
	name := app + "/" + service
	if all {
		name = "all services"
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "success", "message": "hold on " + name + " released"})
}

func (h *handlers) override(w http.ResponseWriter, r *http.Request) {
	o, err := h.a.Override(r.Context())
	if err != nil {
		writeAgentError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

func (h *handlers) setOverride(w http.ResponseWriter, r *http.Request) {
	var req OverrideRequest
	if err := decodeBody(r.Body, &req, false); err != nil {
		writeError(w, bodyError(err), err.Error())
		return
	}
	if req.Enabled == nil {
		writeError(w, http.StatusBadRequest, `"enabled" (true or false) is required`)
		return
	}
	if err := h.a.SetOverride(r.Context(), *req.Enabled, by(r)); err != nil {
		writeAgentError(w, err)
		return
	}
	h.override(w, r)
}

func (h *handlers) journal(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	n, err := parseLimit(q.Get("limit"), q.Has("limit"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	evs, err := h.a.Events(r.Context(), n)
	if err != nil {
		writeAgentError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, evs)
}

// mayPushTarget says why the peer of r may not push a target state, or "".
//
// A target state names the commands that start and stop its services and
// the files installed for them, and the agent runs and writes them with its
// own privileges (root on a device). Unless the agent verifies targets
// against --trust-key, pushing one is therefore root's power: membership of
// the socket's group (--api-group) is meant for status, holds and updates,
// not for running commands as root. The agent's own uid may push as well,
// since it gains nothing by it.
//
// Over TCP the API key is the authentication, and its holder is an operator
// of the device, trusted as root is: a push without a trust key stays
// allowed there.
func (h *handlers) mayPushTarget(r *http.Request) string {
	p := peerOf(r)
	if p.tcp || h.a.VerifiesTargets() || h.a.TrustsRoot() || p.uid == 0 || (p.uid >= 0 && p.uid == os.Geteuid()) {
		return ""
	}
	who := "a peer whose uid is unknown"
	if p.uid >= 0 {
		who = fmt.Sprintf("uid %d", p.uid)
	}
	return fmt.Sprintf("push target state: refused for %s: the agent does not verify target states, "+
		"and a target's commands and files run with the agent's privileges, so only root may push one over the API socket; "+
		"push it as root, or start the agent with --trust-root (or --trust-key) and push signed target states (X-Latch-Signature)", who)
}

func (h *handlers) target(w http.ResponseWriter, r *http.Request) {
	if why := h.mayPushTarget(r); why != "" {
		h.logf("api: %s (%s)", why, by(r))
		writeError(w, http.StatusForbidden, why)
		return
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, bodyError(err), err.Error())
		return
	}
	var sig []byte
	if s := r.Header.Get("X-Latch-Signature"); s != "" {
		sig = []byte(s)
	}
	if err := h.a.PushTarget(r.Context(), target.Doc{Data: data, Sig: sig, Source: by(r)}, by(r)); err != nil {
		writeAgentError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "success", "message": "target state accepted", "sha256": target.Digest(data)})
}

func (h *handlers) metrics(w http.ResponseWriter, r *http.Request) {
	es, err := h.a.Locks(r.Context())
	if err != nil {
		writeAgentError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	writeMetrics(w, h.a.Status(), es, h.a.Alive(), nowFunc())
}

// agentStatus maps an error of the agent's request methods to its status.
func agentStatus(err error) int {
	var le *agent.LockedError
	switch {
	case errors.As(err, &le):
		return http.StatusLocked
	case errors.Is(err, agent.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, agent.ErrBusy):
		return http.StatusConflict
	case errors.Is(err, agent.ErrInvalid), errors.Is(err, target.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, target.ErrBadSignature), errors.Is(err, target.ErrNoSignature), errors.Is(err, agent.ErrRefused):
		return http.StatusForbidden
	case errors.Is(err, agent.ErrStopped), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func writeAgentError(w http.ResponseWriter, err error) {
	body := ErrorBody{Status: "failed", Message: err.Error()}
	var le *agent.LockedError
	if errors.As(err, &le) {
		body.BlockedBy = le.Entries
	}
	writeJSON(w, agentStatus(err), body)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorBody{Status: "failed", Message: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"status":"failed","message":"encode answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

func writeText(w http.ResponseWriter, code int, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	io.WriteString(w, s)
}
