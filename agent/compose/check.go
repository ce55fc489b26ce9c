package compose

import (
	"path"
	"strconv"
	"strings"
	"time"
)

// The rules below are the container driver's for a target state's container
// service (agent/docker's ParseSpec), applied here so that a compose file
// is refused when it is published, not when a device reads it. The fuzz
// test checks that both agree.

// labelPrefix starts the labels latch sets on its containers.
const labelPrefix = "io.latch."

// reservedEnv are the variables latch sets in every container.
var reservedEnv = map[string]bool{
	"BALENA_APP_LOCK_PATH": true, "RESIN_APP_LOCK_PATH": true,
	"LATCH_APP": true, "LATCH_SERVICE": true, "LATCH_RELEASE": true,
}

var signals = map[string]bool{
	"HUP": true, "INT": true, "QUIT": true, "KILL": true, "USR1": true, "USR2": true,
	"TERM": true, "PWR": true, "WINCH": true, "ABRT": true, "ALRM": true, "CONT": true, "STOP": true,
}

func (s *Service) check(name string, declared map[string]bool) error {
	bad := func(field, format string, args ...any) error { return fieldErr(name, field, format, args...) }
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
		switch {
		case !isEnvName(k):
			return bad("environment", "%q is not a variable name (letters, digits, _; not starting with a digit)", k)
		case strings.IndexByte(v, 0) >= 0:
			return bad("environment", "value of %s holds a NUL byte", k)
		case reservedEnv[k]:
			return bad("environment", "%s is set by latch in every container and cannot be given", k)
		}
	}
	for _, v := range s.Volumes {
		if err := checkVolume(v, declared, bad); err != nil {
			return err
		}
	}
	for _, p := range s.Ports {
		if err := checkPort(p, bad); err != nil {
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
		if err := checkDevice(d, bad); err != nil {
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
		if strings.HasPrefix(k, labelPrefix) {
			return bad("labels", "%q: labels starting with %s are latch's own and cannot be set", k, labelPrefix)
		}
	}
	if !validRestart(s.Restart) {
		return bad("restart", "%q: give no, always, unless-stopped, on-failure or on-failure:N", s.Restart)
	}
	for _, d := range s.DependsOn {
		if !isName(d) {
			return bad("depends_on", "%q is not a service name", d)
		}
		if d == name {
			return bad("depends_on", "the service depends on itself")
		}
	}
	if s.StopSignal != "" {
		n := strings.TrimPrefix(strings.ToUpper(s.StopSignal), "SIG")
		if !signals[n] {
			return bad("stop_signal", "%q is not a signal latch knows (SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, ...)", s.StopSignal)
		}
		s.StopSignal = "SIG" + n
	}
	if s.StopGracePeriod != "" {
		if d, err := time.ParseDuration(s.StopGracePeriod); err != nil || d < 0 {
			return bad("stop_grace_period", "%q is not a duration like 10s or 1m30s", s.StopGracePeriod)
		}
	}
	return nil
}

type badFunc func(field, format string, args ...any) error

// checkVolume reads "SOURCE:TARGET[:ro|rw]": a declared named volume or an
// absolute host path, mounted at an absolute path.
func checkVolume(v string, declared map[string]bool, bad badFunc) error {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return bad("volumes", "%q: give NAME:/path or /host/path:/path, optionally with :ro or :rw (anonymous volumes are not kept across releases)", v)
	}
	source, target := parts[0], parts[1]
	if len(parts) == 3 && parts[2] != "ro" && parts[2] != "rw" {
		return bad("volumes", "%q: mode %q is not ro or rw", v, parts[2])
	}
	switch {
	case path.IsAbs(source):
	case isName(source):
		if !declared[source] {
			return bad("volumes", "%q: named volume %s is not declared: add it under the top-level volumes:", v, source)
		}
	default:
		return bad("volumes", "%q: source %q is neither an absolute host path nor a volume name (a relative path means nothing on a device)", v, source)
	}
	if !path.IsAbs(target) {
		return bad("volumes", "%q: target %q must be an absolute path in the container", v, target)
	}
	if t := path.Clean(target); t == "/" || under(t, "/tmp/balena") || under(t, "/tmp/resin") {
		return bad("volumes", "%q: target %s is reserved (the root, or latch's lock mounts)", v, t)
	}
	return nil
}

func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// checkPort reads "[[IP:]HOST:]CONTAINER[/tcp|udp|sctp]".
func checkPort(p string, bad badFunc) error {
	rest, proto, hasProto := strings.Cut(p, "/")
	if hasProto && proto != "tcp" && proto != "udp" && proto != "sctp" {
		return bad("ports", "%q: protocol %q is not tcp, udp or sctp", p, proto)
	}
	var hostIP, hostPort, container string
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]:")
		if end < 0 {
			return bad("ports", "%q: unclosed [ in the host address", p)
		}
		hostIP, rest = rest[1:end], rest[end+2:]
	}
	parts := strings.Split(rest, ":")
	switch {
	case len(parts) == 1:
		container = parts[0]
	case len(parts) == 2:
		hostPort, container = parts[0], parts[1]
	case len(parts) == 3 && hostIP == "":
		hostIP, hostPort, container = parts[0], parts[1], parts[2]
	default:
		return bad("ports", "%q: give [IP:]HOST:CONTAINER[/proto] or CONTAINER[/proto] (ranges are not supported)", p)
	}
	if !validPort(container) {
		return bad("ports", "%q: container port %q is not a number from 1 to 65535", p, container)
	}
	if hostPort != "" && !validPort(hostPort) {
		return bad("ports", "%q: host port %q is not a number from 1 to 65535", p, hostPort)
	}
	if hostIP != "" && !validIP(hostIP) {
		return bad("ports", "%q: host address %q is not an IP address", p, hostIP)
	}
	return nil
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

// checkDevice reads "HOST[:CONTAINER[:PERMS]]", PERMS a subset of rwm.
func checkDevice(d string, bad badFunc) error {
	parts := strings.Split(d, ":")
	if len(parts) > 3 {
		return bad("devices", "%q: give /dev/HOST[:/dev/CONTAINER[:rwm]]", d)
	}
	host, inside := parts[0], parts[0]
	if len(parts) > 1 && parts[1] != "" {
		inside = parts[1]
	}
	if len(parts) > 2 && (parts[2] == "" || strings.Trim(parts[2], "rwm") != "") {
		return bad("devices", "%q: permissions %q are not a combination of r, w and m", d, parts[2])
	}
	if !path.IsAbs(host) {
		return bad("devices", "%q: host device %q must be an absolute path", d, host)
	}
	if !path.IsAbs(inside) {
		return bad("devices", "%q: container device %q must be an absolute path", d, inside)
	}
	return nil
}

func validRestart(r string) bool {
	switch r {
	case "", "no", "always", "unless-stopped", "on-failure":
		return true
	}
	if n, ok := strings.CutPrefix(r, "on-failure:"); ok {
		k, err := strconv.Atoi(n)
		return err == nil && k >= 0
	}
	return false
}
