package docker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// APIVersion is the Engine API version every call is pinned to.
const APIVersion = "1.41"

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 64 << 10

// DefaultHost is the engine latch uses without --docker-host: $DOCKER_HOST,
// else balena-engine's socket when it exists, else dockerd's.
func DefaultHost() string {
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		return h
	}
	if _, err := os.Stat("/var/run/balena-engine.sock"); err == nil {
		return "unix:///var/run/balena-engine.sock"
	}
	return "unix:///var/run/docker.sock"
}

// Client speaks the Docker Engine API, pinned to APIVersion, to one engine.
// It is safe for concurrent use.
type Client struct {
	host string // as given, for messages
	base string // "http://engine/v1.41"
	hc   *http.Client
}

// NewClient returns a client for host: "unix:///path/to/engine.sock" or
// "tcp://HOST:PORT" (plain HTTP, no TLS). It does not connect.
func NewClient(host string) (*Client, error) {
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("docker host %q: %w: give unix:///path/to/socket or tcp://host:port", host, ErrInvalid)
	}
	var tr *http.Transport
	switch u.Scheme {
	case "unix":
		path := u.Path
		if path == "" || !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("docker host %q: %w: a unix socket needs an absolute path (unix:///run/engine.sock)", host, ErrInvalid)
		}
		tr = &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
		}
		return &Client{host: host, base: "http://engine/v" + APIVersion, hc: &http.Client{Transport: tr}}, nil
	case "tcp", "http":
		if u.Host == "" {
			return nil, fmt.Errorf("docker host %q: %w: tcp needs host:port", host, ErrInvalid)
		}
		tr = &http.Transport{}
		return &Client{host: host, base: "http://" + u.Host + "/v" + APIVersion, hc: &http.Client{Transport: tr}}, nil
	default:
		return nil, fmt.Errorf("docker host %q: %w: scheme %q is not supported (use unix:// or tcp://)", host, ErrInvalid, u.Scheme)
	}
}

// Host returns the engine address the client was made with.
func (c *Client) Host() string { return c.host }

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// APIError is an answer of the engine with a status of 400 or more, or an
// error inside the progress stream of a 200 answer (LoadImage).
type APIError struct {
	Call       string // "create container latch_kiosk_ui_r1"
	StatusCode int
	Message    string // the engine's "message"
}

func (e *APIError) Error() string {
	if e.StatusCode < 400 { // an error inside a progress stream
		return fmt.Sprintf("%s: engine reported: %s", e.Call, e.Message)
	}
	return fmt.Sprintf("%s: engine answered %d: %s", e.Call, e.StatusCode, e.Message)
}

// Is makes errors.Is(err, ErrNotFound) and errors.Is(err, ErrConflict) work.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound
	case ErrConflict:
		return e.StatusCode == http.StatusConflict
	}
	return false
}

// do sends one request; body, if not nil, is JSON-encoded unless it is an
// io.Reader. It returns the response for a status below 400 (the caller
// closes it) and an *APIError otherwise.
func (c *Client) do(ctx context.Context, call, method, path string, q url.Values, body any) (*http.Response, error) {
	var rd io.Reader
	ctype := ""
	switch b := body.(type) {
	case nil:
	case io.Reader:
		rd, ctype = b, "application/x-tar"
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			return nil, fmt.Errorf("%s: encode request: %w", call, err)
		}
		rd, ctype = bytes.NewReader(buf), "application/json"
	}
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", call, err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: engine at %s: %w", call, c.host, err)
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		msg := strings.TrimSpace(string(raw))
		var m struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(raw, &m) == nil && m.Message != "" {
			msg = m.Message
		}
		if msg == "" {
			msg = http.StatusText(resp.StatusCode)
		}
		return nil, &APIError{Call: call, StatusCode: resp.StatusCode, Message: msg}
	}
	return resp, nil
}

// call sends a request and decodes a JSON answer into out (nil: discard).
func (c *Client) call(ctx context.Context, call, method, path string, q url.Values, body, out any) error {
	resp, err := c.do(ctx, call, method, path, q, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s: decode answer: %w", call, err)
	}
	return nil
}

// Ping checks that the engine answers.
func (c *Client) Ping(ctx context.Context) error {
	resp, err := c.do(ctx, "ping", http.MethodGet, "/_ping", nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

// Version is the part of GET /version that latch uses.
type Version struct {
	Version       string `json:"Version"`
	APIVersion    string `json:"ApiVersion"`
	MinAPIVersion string `json:"MinAPIVersion"`
	Os            string `json:"Os"`
	Arch          string `json:"Arch"`
}

// Version asks the engine for its version.
func (c *Client) Version(ctx context.Context) (Version, error) {
	var v Version
	err := c.call(ctx, "engine version", http.MethodGet, "/version", nil, nil, &v)
	return v, err
}

// LoadImage streams a docker-archive tarball (docker save's format) into
// the engine and returns what the engine says it loaded ("name:tag" or
// "sha256:<id>"). An error in the engine's progress stream is an error.
// Loading never touches a container.
func (c *Client) LoadImage(ctx context.Context, tarball io.Reader) ([]string, error) {
	const call = "load image"
	q := url.Values{"quiet": {"1"}}
	resp, err := c.do(ctx, call, http.MethodPost, "/images/load", q, tarball)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var loaded []string
	dec := json.NewDecoder(bufio.NewReader(resp.Body))
	for {
		var m struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return loaded, fmt.Errorf("%s: read engine stream: %w", call, err)
		}
		if m.Error != "" || m.ErrorDetail != nil {
			msg := m.Error
			if msg == "" {
				msg = m.ErrorDetail.Message
			}
			return loaded, &APIError{Call: call, StatusCode: resp.StatusCode, Message: msg}
		}
		for _, line := range strings.Split(m.Stream, "\n") {
			line = strings.TrimSpace(line)
			if ref, ok := strings.CutPrefix(line, "Loaded image ID: "); ok {
				loaded = append(loaded, ref)
			} else if ref, ok := strings.CutPrefix(line, "Loaded image: "); ok {
				loaded = append(loaded, ref)
			}
		}
	}
	return loaded, nil
}

// Healthcheck is an image's or a container's HEALTHCHECK.
type Healthcheck struct {
	Test        []string      `json:"Test,omitempty"`
	Interval    time.Duration `json:"Interval,omitempty"`
	Timeout     time.Duration `json:"Timeout,omitempty"`
	StartPeriod time.Duration `json:"StartPeriod,omitempty"`
	Retries     int           `json:"Retries,omitempty"`
}

// Enabled reports whether h is a health check that runs (not absent and
// not NONE).
func (h *Healthcheck) Enabled() bool {
	return h != nil && len(h.Test) > 0 && h.Test[0] != "NONE"
}

// Image is the part of an image's inspect answer that latch uses.
type Image struct {
	ID          string   `json:"Id"`
	RepoTags    []string `json:"RepoTags"`
	RepoDigests []string `json:"RepoDigests"`
	Config      struct {
		Labels      map[string]string `json:"Labels"`
		Healthcheck *Healthcheck      `json:"Healthcheck"`
		Cmd         []string          `json:"Cmd"`
		Entrypoint  []string          `json:"Entrypoint"`
		StopSignal  string            `json:"StopSignal"`
	} `json:"Config"`
	// RootFS.Layers are the image's layers by diff id, bottom first.
	RootFS struct {
		Type   string   `json:"Type"`
		Layers []string `json:"Layers"`
	} `json:"RootFS"`
}

// ImageLayers returns the layers (diff ids, bottom first) of every image
// the engine has, tagged or not: the engine has the chain of each prefix
// of each list, so a new image whose bottom layers make one of those
// chains needs only the layers above it. An image removed while the list
// is read is left out.
func (c *Client) ImageLayers(ctx context.Context) ([][]string, error) {
	var list []struct {
		ID string `json:"Id"`
	}
	if err := c.call(ctx, "list images", http.MethodGet, "/images/json", nil, nil, &list); err != nil {
		return nil, err
	}
	var out [][]string
	for _, im := range list {
		img, err := c.InspectImage(ctx, im.ID)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(img.RootFS.Layers) > 0 {
			out = append(out, img.RootFS.Layers)
		}
	}
	return out, nil
}

// InspectImage returns the engine's view of the image ref (an ID, a
// name:tag or a name@digest). A missing image is an error matching
// ErrNotFound.
func (c *Client) InspectImage(ctx context.Context, ref string) (Image, error) {
	var img Image
	err := c.call(ctx, "inspect image "+ref, http.MethodGet, "/images/"+url.PathEscape(ref)+"/json", nil, nil, &img)
	return img, err
}

// ContainerSummary is one entry of a container list.
type ContainerSummary struct {
	ID     string            `json:"Id"`
	Names  []string          `json:"Names"` // with the engine's leading "/"
	Image  string            `json:"Image"`
	Labels map[string]string `json:"Labels"`
	State  string            `json:"State"` // created, running, exited, ...
	Status string            `json:"Status"`
}

// Name returns the container's name without the leading "/".
func (s ContainerSummary) Name() string {
	if len(s.Names) == 0 {
		return ""
	}
	return strings.TrimPrefix(s.Names[0], "/")
}

// ListContainers lists every container (running or not) that carries all
// the labels given ("key=value" or "key").
func (c *Client) ListContainers(ctx context.Context, labels ...string) ([]ContainerSummary, error) {
	f := map[string][]string{}
	if len(labels) > 0 {
		f["label"] = labels
	}
	fj, _ := json.Marshal(f)
	q := url.Values{"all": {"1"}, "filters": {string(fj)}}
	var out []ContainerSummary
	err := c.call(ctx, "list containers "+strings.Join(labels, ","), http.MethodGet, "/containers/json", q, nil, &out)
	return out, err
}

// Mount is one entry of HostConfig.Mounts.
type Mount struct {
	Type     string `json:"Type"` // bind, volume, tmpfs
	Source   string `json:"Source,omitempty"`
	Target   string `json:"Target"`
	ReadOnly bool   `json:"ReadOnly,omitempty"`
}

// PortBinding is a host side of a published port.
type PortBinding struct {
	HostIP   string `json:"HostIp"`
	HostPort string `json:"HostPort"`
}

// DeviceMapping is a host device given to a container.
type DeviceMapping struct {
	PathOnHost        string `json:"PathOnHost"`
	PathInContainer   string `json:"PathInContainer"`
	CgroupPermissions string `json:"CgroupPermissions"`
}

// RestartPolicy is the engine's restart policy of a container.
type RestartPolicy struct {
	Name              string `json:"Name"` // "", no, always, unless-stopped, on-failure
	MaximumRetryCount int    `json:"MaximumRetryCount,omitempty"`
}

// HostConfig is the part of a container's host configuration latch sets.
type HostConfig struct {
	Binds         []string                 `json:"Binds,omitempty"`
	Mounts        []Mount                  `json:"Mounts,omitempty"`
	PortBindings  map[string][]PortBinding `json:"PortBindings,omitempty"`
	NetworkMode   string                   `json:"NetworkMode,omitempty"`
	Privileged    bool                     `json:"Privileged,omitempty"`
	Devices       []DeviceMapping          `json:"Devices,omitempty"`
	CapAdd        []string                 `json:"CapAdd,omitempty"`
	RestartPolicy RestartPolicy            `json:"RestartPolicy"`
}

// CreateConfig is the body of a container create.
type CreateConfig struct {
	Image        string              `json:"Image"`
	Cmd          []string            `json:"Cmd,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
	User         string              `json:"User,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	Labels       map[string]string   `json:"Labels,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	StopSignal   string              `json:"StopSignal,omitempty"`
	StopTimeout  *int                `json:"StopTimeout,omitempty"` // seconds
	HostConfig   HostConfig          `json:"HostConfig"`
}

// CreateContainer creates a container named name and returns its ID. A
// name in use is an error matching ErrConflict.
func (c *Client) CreateContainer(ctx context.Context, name string, cfg CreateConfig) (string, error) {
	var out struct {
		ID       string   `json:"Id"`
		Warnings []string `json:"Warnings"`
	}
	err := c.call(ctx, "create container "+name, http.MethodPost, "/containers/create", url.Values{"name": {name}}, cfg, &out)
	return out.ID, err
}

// StartContainer starts a container; starting a running one is no error.
func (c *Client) StartContainer(ctx context.Context, id string) error {
	return c.call(ctx, "start container "+id, http.MethodPost, "/containers/"+url.PathEscape(id)+"/start", nil, nil, nil)
}

// StopContainer asks the engine to stop a container: its stop signal, then
// SIGKILL after grace (rounded up to a whole second). Stopping a stopped
// container is no error.
func (c *Client) StopContainer(ctx context.Context, id string, grace time.Duration) error {
	secs := int((grace + time.Second - 1) / time.Second)
	q := url.Values{"t": {strconv.Itoa(secs)}}
	return c.call(ctx, "stop container "+id, http.MethodPost, "/containers/"+url.PathEscape(id)+"/stop", q, nil, nil)
}

// KillContainer sends signal ("SIGINT", "SIGKILL", ...) to a container.
func (c *Client) KillContainer(ctx context.Context, id, signal string) error {
	q := url.Values{"signal": {signal}}
	return c.call(ctx, "kill container "+id+" with "+signal, http.MethodPost, "/containers/"+url.PathEscape(id)+"/kill", q, nil, nil)
}

// WaitContainer blocks until the container is no longer running (condition
// "not-running", or "next-exit", "removed") and returns its exit code.
func (c *Client) WaitContainer(ctx context.Context, id, condition string) (int, error) {
	var out struct {
		StatusCode int `json:"StatusCode"`
		Error      *struct {
			Message string `json:"Message"`
		} `json:"Error"`
	}
	call := "wait for container " + id
	q := url.Values{}
	if condition != "" {
		q.Set("condition", condition)
	}
	if err := c.call(ctx, call, http.MethodPost, "/containers/"+url.PathEscape(id)+"/wait", q, nil, &out); err != nil {
		return 0, err
	}
	if out.Error != nil && out.Error.Message != "" {
		return out.StatusCode, fmt.Errorf("%s: %s", call, out.Error.Message)
	}
	return out.StatusCode, nil
}

// ContainerState is a container's State in its inspect answer.
type ContainerState struct {
	Status     string `json:"Status"` // created, running, paused, restarting, removing, exited, dead
	Running    bool   `json:"Running"`
	Paused     bool   `json:"Paused"`
	Restarting bool   `json:"Restarting"`
	OOMKilled  bool   `json:"OOMKilled"`
	Pid        int    `json:"Pid"`
	ExitCode   int    `json:"ExitCode"`
	Error      string `json:"Error"`
	StartedAt  string `json:"StartedAt"`
	FinishedAt string `json:"FinishedAt"`
	Health     *struct {
		Status        string `json:"Status"` // starting, healthy, unhealthy
		FailingStreak int    `json:"FailingStreak"`
		Log           []struct {
			ExitCode int    `json:"ExitCode"`
			Output   string `json:"Output"`
		} `json:"Log"`
	} `json:"Health"`
}

// Started returns State.StartedAt (zero when never started).
func (s ContainerState) Started() time.Time {
	t, err := time.Parse(time.RFC3339Nano, s.StartedAt)
	if err != nil || t.Year() < 2000 {
		return time.Time{}
	}
	return t
}

// Container is the part of a container's inspect answer that latch uses.
type Container struct {
	ID           string         `json:"Id"`
	Name         string         `json:"Name"` // with the engine's leading "/"
	Image        string         `json:"Image"`
	RestartCount int            `json:"RestartCount"`
	State        ContainerState `json:"State"`
	Config       struct {
		Labels      map[string]string `json:"Labels"`
		Env         []string          `json:"Env"`
		StopSignal  string            `json:"StopSignal"`
		StopTimeout *int              `json:"StopTimeout"`
		Healthcheck *Healthcheck      `json:"Healthcheck"`
	} `json:"Config"`
	HostConfig struct {
		RestartPolicy RestartPolicy `json:"RestartPolicy"`
	} `json:"HostConfig"`
}

// InspectContainer returns the engine's view of a container (by ID or
// name). A missing container is an error matching ErrNotFound.
func (c *Client) InspectContainer(ctx context.Context, idOrName string) (Container, error) {
	var ct Container
	err := c.call(ctx, "inspect container "+idOrName, http.MethodGet, "/containers/"+url.PathEscape(idOrName)+"/json", nil, nil, &ct)
	return ct, err
}

// RenameContainer gives a container a new name.
func (c *Client) RenameContainer(ctx context.Context, id, name string) error {
	return c.call(ctx, "rename container "+id+" to "+name, http.MethodPost, "/containers/"+url.PathEscape(id)+"/rename", url.Values{"name": {name}}, nil, nil)
}

// UpdateRestartPolicy changes a container's restart policy.
func (c *Client) UpdateRestartPolicy(ctx context.Context, id string, p RestartPolicy) error {
	body := struct {
		RestartPolicy RestartPolicy `json:"RestartPolicy"`
	}{p}
	return c.call(ctx, "set restart policy of container "+id+" to "+p.Name, http.MethodPost, "/containers/"+url.PathEscape(id)+"/update", nil, body, nil)
}

// RemoveContainer removes a container; force also removes a running one.
// Its volumes are never removed (named volumes outlive releases).
func (c *Client) RemoveContainer(ctx context.Context, id string, force bool) error {
	q := url.Values{"v": {"0"}, "force": {strconv.FormatBool(force)}}
	return c.call(ctx, "remove container "+id, http.MethodDelete, "/containers/"+url.PathEscape(id), q, nil, nil)
}

// Logs returns the last tail lines of a container's output (stdout and
// stderr interleaved), for error messages. It reads at most 64 KiB.
func (c *Client) Logs(ctx context.Context, id string, tail int) (string, error) {
	q := url.Values{"stdout": {"1"}, "stderr": {"1"}, "tail": {strconv.Itoa(tail)}}
	resp, err := c.do(ctx, "logs of container "+id, http.MethodGet, "/containers/"+url.PathEscape(id)+"/logs", q, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("logs of container %s: %w", id, err)
	}
	if resp.Header.Get("Content-Type") == "application/vnd.docker.raw-stream" {
		return string(raw), nil
	}
	return demux(raw), nil
}

// demux joins the payloads of the engine's multiplexed stream (8-byte
// headers: stream, 0, 0, 0, big-endian length). A stream that does not parse
// is returned as it is.
func demux(raw []byte) string {
	var out []byte
	rest := raw
	for len(rest) >= 8 {
		if rest[0] > 2 || rest[1] != 0 || rest[2] != 0 || rest[3] != 0 {
			return string(raw)
		}
		n := int(binary.BigEndian.Uint32(rest[4:8]))
		rest = rest[8:]
		if n > len(rest) {
			n = len(rest)
		}
		out = append(out, rest[:n]...)
		rest = rest[n:]
	}
	if len(rest) != 0 {
		return string(raw)
	}
	return string(out)
}

// isNotFound reports whether err is the engine's 404.
func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
