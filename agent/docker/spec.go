package docker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Spec is a container service of a target state (spec section 9), parsed
// and checked by ParseSpec.
type Spec struct {
	Image           string            `json:"image"` // name@sha256:<64 hex>
	Command         []string          `json:"command,omitempty"`
	Entrypoint      []string          `json:"entrypoint,omitempty"` // nil or empty: the image's
	WorkingDir      string            `json:"working_dir,omitempty"`
	User            string            `json:"user,omitempty"`
	Environment     map[string]string `json:"environment,omitempty"`
	Volumes         []string          `json:"volumes,omitempty"`
	Ports           []string          `json:"ports,omitempty"`
	NetworkMode     string            `json:"network_mode,omitempty"`
	Privileged      bool              `json:"privileged,omitempty"`
	Devices         []string          `json:"devices,omitempty"`
	CapAdd          []string          `json:"cap_add,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	Restart         string            `json:"restart,omitempty"` // default "always", as on balena
	DependsOn       []string          `json:"depends_on,omitempty"`
	StopSignal      string            `json:"stop_signal,omitempty"`       // normalised: "SIGTERM"
	StopGracePeriod time.Duration     `json:"-"`                           // parsed stop_grace_period
	StopGrace       string            `json:"stop_grace_period,omitempty"` // as written
}

// DefaultStopGrace is the grace between the stop signal and SIGKILL when a
// spec names none (the engine's and compose's default).
const DefaultStopGrace = 10 * time.Second

// LabelPrefix starts every label latch sets; a spec may not set one.
const LabelPrefix = "io.latch."

// signals are the stop signals a spec may name (without "SIG").
var signals = map[string]bool{
	"HUP": true, "INT": true, "QUIT": true, "KILL": true, "USR1": true, "USR2": true,
	"TERM": true, "PWR": true, "WINCH": true, "ABRT": true, "ALRM": true, "CONT": true, "STOP": true,
}

// ParseSpec parses and checks the JSON object of one container service.
// An unknown field, a missing or unpinned image, and every malformed value
// is an error that names the field and says what is expected.
func ParseSpec(raw json.RawMessage) (Spec, error) {
	var s Spec
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return Spec{}, fmt.Errorf("container service: %w: %v", ErrInvalid, err)
	}
	if dec.More() {
		return Spec{}, fmt.Errorf("container service: %w: data after the JSON object", ErrInvalid)
	}
	if err := s.check(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

func bad(field, format string, args ...any) error {
	return fmt.Errorf("container service: %s: %w: %s", field, ErrInvalid, fmt.Sprintf(format, args...))
}

// check validates s and normalises StopSignal and StopGracePeriod.
func (s *Spec) check() error {
	switch {
	case s.Image == "":
		return bad("image", "missing: give name@sha256:<64 hex>")
	case !strings.Contains(s.Image, "@"):
		return bad("image", "%q is not pinned by digest: give name@sha256:<64 hex>, a tag alone is refused", s.Image)
	case !isDigestRef(s.Image):
		return bad("image", "%q is not name@sha256:<64 lowercase hex>", s.Image)
	}
	for i, a := range s.Command {
		if strings.IndexByte(a, 0) >= 0 {
			return bad("command", "argument %d holds a NUL byte", i)
		}
	}
	for i, a := range s.Entrypoint {
		if strings.IndexByte(a, 0) >= 0 {
			return bad("entrypoint", "argument %d holds a NUL byte", i)
		}
	}
	if s.WorkingDir != "" && !path.IsAbs(s.WorkingDir) {
		return bad("working_dir", "%q must be an absolute path", s.WorkingDir)
	}
	if strings.ContainsAny(s.User, " \t\n\x00") {
		return bad("user", "%q: give user, uid, user:group or uid:gid", s.User)
	}
	for k, v := range s.Environment {
		if !isEnvName(k) {
			return bad("environment", "%q is not a variable name (letters, digits, _; not starting with a digit)", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return bad("environment", "value of %s holds a NUL byte", k)
		}
		if reservedEnv[k] {
			return bad("environment", "%s is set by latch and cannot be given", k)
		}
	}
	for _, v := range s.Volumes {
		if _, _, _, err := parseVolume(v); err != nil {
			return err
		}
	}
	for _, p := range s.Ports {
		if _, err := parsePort(p); err != nil {
			return err
		}
	}
	switch m := s.NetworkMode; {
	case m == "", m == "bridge", m == "host", m == "none", m == "default":
	case strings.HasPrefix(m, "container:") && isName(strings.TrimPrefix(m, "container:")):
	case isName(m):
	default:
		return bad("network_mode", "%q: give bridge, host, none, container:NAME or a network name", m)
	}
	for _, d := range s.Devices {
		if _, err := parseDevice(d); err != nil {
			return err
		}
	}
	for _, c := range s.CapAdd {
		if !isCapName(c) {
			return bad("cap_add", "%q is not a capability name (NET_ADMIN, SYS_TIME, ...)", c)
		}
	}
	for k := range s.Labels {
		if k == "" {
			return bad("labels", "empty label name")
		}
		if strings.HasPrefix(k, LabelPrefix) {
			return bad("labels", "%q: labels starting with %s are latch's own and cannot be set", k, LabelPrefix)
		}
	}
	if _, err := parseRestart(s.Restart); err != nil {
		return err
	}
	for _, d := range s.DependsOn {
		if !isName(d) {
			return bad("depends_on", "%q is not a service name", d)
		}
	}
	if s.StopSignal != "" {
		n := strings.TrimPrefix(strings.ToUpper(s.StopSignal), "SIG")
		if !signals[n] {
			return bad("stop_signal", "%q is not a signal latch knows (SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, ...)", s.StopSignal)
		}
		s.StopSignal = "SIG" + n
	}
	if s.StopGrace != "" {
		d, err := time.ParseDuration(s.StopGrace)
		if err != nil || d < 0 {
			return bad("stop_grace_period", "%q is not a duration like 10s or 1m30s", s.StopGrace)
		}
		s.StopGracePeriod = d
	}
	return nil
}

// reservedEnv are the variables latch sets in every container.
var reservedEnv = map[string]bool{
	"BALENA_APP_LOCK_PATH": true, "RESIN_APP_LOCK_PATH": true,
	"LATCH_APP": true, "LATCH_SERVICE": true, "LATCH_RELEASE": true,
}

// parseVolume splits "SOURCE:TARGET[:ro|rw]": SOURCE is a named volume or
// an absolute host path, TARGET an absolute path in the container.
func parseVolume(v string) (source, target string, readOnly bool, err error) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return "", "", false, bad("volumes", "%q: give NAME:/path, /host/path:/path, optionally with :ro or :rw", v)
	}
	source, target = parts[0], parts[1]
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			readOnly = true
		case "rw":
		default:
			return "", "", false, bad("volumes", "%q: mode %q is not ro or rw", v, parts[2])
		}
	}
	if !path.IsAbs(source) && !isName(source) {
		return "", "", false, bad("volumes", "%q: source %q is neither an absolute host path nor a volume name", v, source)
	}
	if !path.IsAbs(target) {
		return "", "", false, bad("volumes", "%q: target %q must be an absolute path in the container", v, target)
	}
	if t := path.Clean(target); t == "/" || under(t, "/tmp/balena") || under(t, "/tmp/resin") {
		return "", "", false, bad("volumes", "%q: target %s is reserved (the root, or latch's lock mounts)", v, t)
	}
	return source, target, readOnly, nil
}

// under reports whether p is dir or a path inside it.
func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// port is one published port.
type port struct {
	hostIP, hostPort, container, proto string
}

// parsePort reads "[[IP:]HOST:]CONTAINER[/tcp|udp|sctp]".
func parsePort(p string) (port, error) {
	rest, proto, hasProto := strings.Cut(p, "/")
	if !hasProto {
		proto = "tcp"
	}
	if proto != "tcp" && proto != "udp" && proto != "sctp" {
		return port{}, bad("ports", "%q: protocol %q is not tcp, udp or sctp", p, proto)
	}
	var r port
	r.proto = proto
	// An IPv6 host address is written in brackets: [::1]:8080:80.
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]:")
		if end < 0 {
			return port{}, bad("ports", "%q: unclosed [ in the host address", p)
		}
		r.hostIP, rest = rest[1:end], rest[end+2:]
	}
	parts := strings.Split(rest, ":")
	switch {
	case len(parts) == 1:
		r.container = parts[0]
	case len(parts) == 2:
		r.hostPort, r.container = parts[0], parts[1]
	case len(parts) == 3 && r.hostIP == "":
		r.hostIP, r.hostPort, r.container = parts[0], parts[1], parts[2]
	default:
		return port{}, bad("ports", "%q: give [IP:]HOST:CONTAINER[/proto] or CONTAINER[/proto]", p)
	}
	if !validPort(r.container) {
		return port{}, bad("ports", "%q: container port %q is not a number from 1 to 65535", p, r.container)
	}
	if r.hostPort != "" && !validPort(r.hostPort) {
		return port{}, bad("ports", "%q: host port %q is not a number from 1 to 65535", p, r.hostPort)
	}
	if r.hostIP != "" && !validIP(r.hostIP) {
		return port{}, bad("ports", "%q: host address %q is not an IP address", p, r.hostIP)
	}
	return r, nil
}

func validPort(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 1 && n <= 65535 && strconv.Itoa(n) == s
}

func validIP(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '.' || c == ':') {
			return false
		}
	}
	return s != ""
}

// parseDevice reads "HOST[:CONTAINER[:PERMS]]", PERMS a subset of rwm.
func parseDevice(d string) (DeviceMapping, error) {
	parts := strings.Split(d, ":")
	if len(parts) > 3 {
		return DeviceMapping{}, bad("devices", "%q: give /dev/HOST[:/dev/CONTAINER[:rwm]]", d)
	}
	m := DeviceMapping{PathOnHost: parts[0], PathInContainer: parts[0], CgroupPermissions: "rwm"}
	if len(parts) > 1 && parts[1] != "" {
		m.PathInContainer = parts[1]
	}
	if len(parts) > 2 {
		m.CgroupPermissions = parts[2]
		if m.CgroupPermissions == "" || strings.Trim(m.CgroupPermissions, "rwm") != "" {
			return DeviceMapping{}, bad("devices", "%q: permissions %q are not a combination of r, w and m", d, parts[2])
		}
	}
	if !path.IsAbs(m.PathOnHost) {
		return DeviceMapping{}, bad("devices", "%q: host device %q must be an absolute path", d, m.PathOnHost)
	}
	if !path.IsAbs(m.PathInContainer) {
		return DeviceMapping{}, bad("devices", "%q: container device %q must be an absolute path", d, m.PathInContainer)
	}
	return m, nil
}

// parseRestart reads a compose restart policy.
func parseRestart(r string) (RestartPolicy, error) {
	switch r {
	case "":
		return RestartPolicy{Name: "always"}, nil // balena's default: a device's services come back
	case "no":
		return RestartPolicy{Name: "no"}, nil
	case "always", "unless-stopped", "on-failure":
		return RestartPolicy{Name: r}, nil
	}
	if n, ok := strings.CutPrefix(r, "on-failure:"); ok {
		if k, err := strconv.Atoi(n); err == nil && k >= 0 {
			return RestartPolicy{Name: "on-failure", MaximumRetryCount: k}, nil
		}
	}
	return RestartPolicy{}, bad("restart", "%q: give no, always, unless-stopped, on-failure or on-failure:N", r)
}

// Order returns the services of specs in an order that starts every
// service after the services it depends on (ties by name). A dependency
// on a service that is not in specs, and a cycle, are errors naming them.
func Order(specs map[string]Spec) ([]string, error) {
	names := make([]string, 0, len(specs))
	for n := range specs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for _, d := range specs[n].DependsOn {
			if _, ok := specs[d]; !ok {
				return nil, fmt.Errorf("order services: %w: %s depends on %s, which is not a service of the app", ErrInvalid, n, d)
			}
		}
	}
	const (
		unseen = iota
		visiting
		done
	)
	state := make(map[string]int, len(specs))
	var out, stack []string
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case done:
			return nil
		case visiting:
			i := len(stack) - 1
			for stack[i] != n {
				i--
			}
			cycle := append(append([]string{}, stack[i:]...), n)
			return fmt.Errorf("order services: %w: depends_on cycle %s", ErrCycle, strings.Join(cycle, " -> "))
		}
		state[n] = visiting
		stack = append(stack, n)
		deps := append([]string(nil), specs[n].DependsOn...)
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = done
		out = append(out, n)
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}
