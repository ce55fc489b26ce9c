package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"latch/agent"
	"latch/agent/lock"
	"latch/store"
)

// Error is a non-2xx answer of the API.
type Error struct {
	Status  int
	Message string
	// BlockedBy names the lock entries behind a 423.
	BlockedBy []lock.Entry
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("agent answered %d %s", e.Status, http.StatusText(e.Status))
	}
	return e.Message
}

// Locked reports whether the agent refused because a lock is held (423).
func (e *Error) Locked() bool { return e.Status == http.StatusLocked }

// ErrNotRunning means nothing answers at the socket (or address): the agent
// is not running. The wrapping error names the socket.
var ErrNotRunning = errors.New("the latch agent is not running")

// Client talks to the API over the unix socket or TCP.
type Client struct {
	base   string // "http://latch" over the socket, else the URL
	key    string
	socket string
	hc     *http.Client
}

// NewClient returns a client of the agent listening on the unix socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{base: "http://latch", socket: socket, hc: &http.Client{Transport: tr}}
}

// NewTCPClient returns a client of the agent at baseURL (such as
// "http://127.0.0.1:48484") that sends apiKey as a Bearer token.
func NewTCPClient(baseURL, apiKey string) *Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // the agent is local: never through a proxy
	return &Client{base: strings.TrimRight(baseURL, "/"), key: apiKey, hc: &http.Client{Transport: tr}}
}

// Where names the socket or URL the client talks to.
func (c *Client) Where() string {
	if c.socket != "" {
		return c.socket
	}
	return c.base
}

// do sends a request and decodes a 2xx JSON answer into out (if not nil).
// It returns the status code.
func (c *Client) do(ctx context.Context, method, path string, body []byte, hdr http.Header, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", method, path, err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if notRunning(err) {
			return 0, fmt.Errorf("%w (nothing answers at %s): start it with 'systemctl start latch' or 'latch agent'", ErrNotRunning, c.Where())
		}
		if errors.Is(err, syscall.EACCES) {
			return 0, fmt.Errorf("connect to %s: permission denied: the socket is mode 0660, run as root or as a member of its group", c.Where())
		}
		return 0, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, decodeError(resp.StatusCode, data)
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if s, ok := out.(*string); ok {
			*s = string(data)
			return resp.StatusCode, nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// decodeError reads either error shape: {"status":"failed","message"} or
// balena's {"Data":"","Error":"..."}.
func decodeError(code int, data []byte) error {
	var b struct {
		Message   string       `json:"message"`
		Error     *string      `json:"Error"`
		BlockedBy []lock.Entry `json:"blocked_by"`
	}
	e := &Error{Status: code}
	if json.Unmarshal(data, &b) == nil {
		e.Message, e.BlockedBy = b.Message, b.BlockedBy
		if e.Message == "" && b.Error != nil {
			e.Message = *b.Error
		}
	} else {
		e.Message = strings.TrimSpace(string(data))
	}
	return e
}

func notRunning(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // request types always marshal
	}
	return b
}

// Ping checks that the agent answers.
func (c *Client) Ping(ctx context.Context) error {
	var s string
	_, err := c.do(ctx, "GET", "/ping", nil, nil, &s)
	return err
}

// Healthy reports whether the agent's event loop is making progress.
func (c *Client) Healthy(ctx context.Context) (bool, error) {
	_, err := c.do(ctx, "GET", "/v1/healthy", nil, nil, nil)
	var e *Error
	if errors.As(err, &e) && e.Status == http.StatusInternalServerError {
		return false, nil
	}
	return err == nil, err
}

// Device returns the agent's status.
func (c *Client) Device(ctx context.Context) (agent.Status, error) {
	var st agent.Status
	_, err := c.do(ctx, "GET", "/v1/device", nil, nil, &st)
	return st, err
}

// Update asks for the pending update now; triggered is false when there was
// nothing to do (202).
func (c *Client) Update(ctx context.Context, force, cancel bool) (triggered bool, err error) {
	code, err := c.do(ctx, "POST", "/v1/update", mustJSON(UpdateRequest{Force: force, Cancel: cancel}), nil, nil)
	return code == http.StatusNoContent, err
}

// Reboot asks the agent to reboot the device, honouring locks unless force.
func (c *Client) Reboot(ctx context.Context, force bool) error {
	_, err := c.do(ctx, "POST", "/v1/reboot", mustJSON(PowerRequest{Force: force}), nil, nil)
	return err
}

// Shutdown asks the agent to power the device off, honouring locks unless
// force.
func (c *Client) Shutdown(ctx context.Context, force bool) error {
	_, err := c.do(ctx, "POST", "/v1/shutdown", mustJSON(PowerRequest{Force: force}), nil, nil)
	return err
}

// RestartService restarts one service under its lock.
func (c *Client) RestartService(ctx context.Context, app, service string, force bool) error {
	_, err := c.do(ctx, "POST", "/v2/applications/"+url.PathEscape(app)+"/restart-service", mustJSON(RestartRequest{ServiceName: service, Force: force}), nil, nil)
	return err
}

// Locks lists every lock entry.
func (c *Client) Locks(ctx context.Context) ([]lock.Entry, error) {
	var es []lock.Entry
	_, err := c.do(ctx, "GET", "/v2/locks", nil, nil, &es)
	return es, err
}

// Hold asks the agent for a hold and returns it as journalled.
func (c *Client) Hold(ctx context.Context, r HoldRequest) (store.Hold, error) {
	var h store.Hold
	_, err := c.do(ctx, "POST", "/v2/locks", mustJSON(r), nil, &h)
	return h, err
}

// Release ends the hold on app/service, or the --all hold.
func (c *Client) Release(ctx context.Context, app, service string, all bool) error {
	path := "/v2/locks/all"
	if !all {
		path = "/v2/locks/" + url.PathEscape(app) + "/" + url.PathEscape(service)
	}
	_, err := c.do(ctx, "DELETE", path, nil, nil, nil)
	return err
}

// Override returns the persistent lock override.
func (c *Client) Override(ctx context.Context) (store.Override, error) {
	var o store.Override
	_, err := c.do(ctx, "GET", "/v2/device/override", nil, nil, &o)
	return o, err
}

// SetOverride turns the persistent lock override on or off.
func (c *Client) SetOverride(ctx context.Context, on bool) (store.Override, error) {
	var o store.Override
	_, err := c.do(ctx, "PUT", "/v2/device/override", mustJSON(OverrideRequest{Enabled: &on}), nil, &o)
	return o, err
}

// Journal returns the event log, newest first; limit <= 0 means all.
func (c *Client) Journal(ctx context.Context, limit int) ([]store.Event, error) {
	path := "/v2/journal"
	if limit > 0 {
		path += "?limit=" + strconv.Itoa(limit)
	}
	var evs []store.Event
	_, err := c.do(ctx, "GET", path, nil, nil, &evs)
	return evs, err
}

// PushTarget posts a target-state document with its detached signature
// (base64; nil when unsigned).
func (c *Client) PushTarget(ctx context.Context, doc, sig []byte) error {
	hdr := http.Header{"Content-Type": {"application/json"}}
	if len(sig) > 0 {
		hdr.Set("X-Latch-Signature", strings.TrimSpace(string(sig)))
	}
	if doc == nil {
		doc = []byte{}
	}
	_, err := c.do(ctx, "POST", "/v2/local/target-state", doc, hdr, nil)
	return err
}

// Metrics returns the Prometheus text exposition.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	var s string
	_, err := c.do(ctx, "GET", "/metrics", nil, nil, &s)
	return s, err
}

// ErrStreamEnded: the agent ended the event stream (it stops, or the
// client fell behind and was dropped); follow again, resuming after the
// last Seq seen.
var ErrStreamEnded = errors.New("the agent ended the event stream")

// Events follows GET /v2/events, calling fn with each event in order until
// ctx ends (nil), fn returns an error (that error), or the stream ends
// (ErrStreamEnded). With resume it first gets the events after seq that
// the journal still keeps (Last-Event-ID). ready, when not nil, is called
// once the agent has answered: events logged from then on are delivered.
func (c *Client) Events(ctx context.Context, seq uint64, resume bool, ready func(), fn func(store.Event) error) error {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/v2/events", nil)
	if err != nil {
		return fmt.Errorf("GET /v2/events: %w", err)
	}
	req.Header.Set("Accept", "text/event-stream")
	if resume {
		req.Header.Set("Last-Event-ID", strconv.FormatUint(seq, 10))
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		if notRunning(err) {
			return fmt.Errorf("%w (nothing answers at %s): start it with 'systemctl start latch' or 'latch agent'", ErrNotRunning, c.Where())
		}
		return fmt.Errorf("GET /v2/events: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return decodeError(resp.StatusCode, data)
	}
	if ready != nil {
		ready()
	}
	rd := bufio.NewReaderSize(resp.Body, 64<<10)
	var data []byte
	for {
		line, err := rd.ReadSlice('\n')
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				return fmt.Errorf("GET /v2/events: a line over %d bytes", rd.Size())
			}
			return ErrStreamEnded
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			if len(data) == 0 {
				continue
			}
			var e store.Event
			if err := json.Unmarshal(data, &e); err != nil {
				return fmt.Errorf("GET /v2/events: decode %q: %w", data, err)
			}
			data = data[:0]
			if err := fn(e); err != nil {
				return err
			}
		case bytes.HasPrefix(line, []byte("data:")):
			if len(data) > 0 {
				data = append(data, '\n')
			}
			data = append(data, bytes.TrimPrefix(bytes.TrimPrefix(line, []byte("data:")), []byte(" "))...)
		}
	}
}
