package fleet

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// Defaults of the optional fields of Config and OperatorConfig.
const (
	DefaultMaxPayload    = 4 << 20
	DefaultKeepAlive     = 30 * time.Second
	DefaultSessionExpiry = 24 * time.Hour
	DefaultMinBackoff    = time.Second
	DefaultMaxBackoff    = 2 * time.Minute
	DefaultStateInterval = time.Second

	// MaxNameLen bounds a device id and a fleet name.
	MaxNameLen = 64
)

// Config is the device side's configuration, from the agent's flags.
type Config struct {
	Broker   *url.URL // --fleet: mqtt://HOST[:PORT] or mqtts://HOST[:PORT]
	DeviceID string   // --device-id
	Fleet    string   // --fleet-name

	CAFile       string // --mqtt-ca: PEM certificates to trust instead of the system's (mqtts only)
	CertFile     string // --mqtt-cert: PEM client certificate (mqtts only, with KeyFile)
	KeyFile      string // --mqtt-key: PEM key of CertFile; not readable by others
	User         string // --mqtt-user (with PasswordFile)
	PasswordFile string // --mqtt-password-file: the password, one line; not readable by others

	// Optional; zero means the Default of the same name.
	MaxPayload    int           // largest message accepted or sent, in bytes
	KeepAlive     time.Duration // MQTT keep-alive
	SessionExpiry time.Duration // how long the broker keeps the session (and queued commands) while away
	MinBackoff    time.Duration // first delay between connection attempts
	MaxBackoff    time.Duration // bound of the delay between connection attempts
	StateInterval time.Duration // at most one state message per interval
}

// OperatorConfig is the operator side's configuration, from the flags of `latch fleet`.
type OperatorConfig struct {
	Broker       *url.URL // --broker
	CAFile       string   // --mqtt-ca
	CertFile     string   // --mqtt-cert
	KeyFile      string   // --mqtt-key
	User         string   // --mqtt-user
	PasswordFile string   // --mqtt-password-file
	ClientID     string   // optional; a random "latch-op-..." id when empty
	MaxPayload   int      // optional; DefaultMaxPayload when zero
}

// transport is what both sides need to reach a broker, checked and loaded.
type transport struct {
	broker   *url.URL // with an explicit port
	tls      *tls.Config
	user     string
	password []byte
}

type connFlags struct {
	broker                                      *url.URL
	brokerFlag                                  string
	caFile, certFile, keyFile, user, passwdFile string
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
}

// Validate checks the configuration and reads the files it names, changing nothing.
func (c Config) Validate() error {
	_, err := c.resolve()
	return err
}

func (c Config) resolve() (*transport, error) {
	if err := checkName("--device-id", c.DeviceID); err != nil {
		return nil, err
	}
	if err := checkName("--fleet-name", c.Fleet); err != nil {
		return nil, err
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"keep-alive", c.KeepAlive}, {"session expiry", c.SessionExpiry}, {"minimum backoff", c.MinBackoff},
		{"maximum backoff", c.MaxBackoff}, {"state interval", c.StateInterval}} {
		if d.v < 0 {
			return nil, invalid("%s %v is negative", d.flag, d.v)
		}
	}
	if c.KeepAlive > 0 && (c.KeepAlive < time.Second || c.KeepAlive > 65535*time.Second) {
		return nil, invalid("keep-alive %v is out of range: give 1s to 18h", c.KeepAlive)
	}
	if c.SessionExpiry > 0 && c.SessionExpiry/time.Second > 1<<32-2 {
		return nil, invalid("session expiry %v is too long", c.SessionExpiry)
	}
	if c.MaxPayload < 0 {
		return nil, invalid("payload limit %d is negative", c.MaxPayload)
	}
	if c.MinBackoff > 0 && c.MaxBackoff > 0 && c.MinBackoff > c.MaxBackoff {
		return nil, invalid("minimum backoff %v is above the maximum %v", c.MinBackoff, c.MaxBackoff)
	}
	return connFlags{c.Broker, "--fleet", c.CAFile, c.CertFile, c.KeyFile, c.User, c.PasswordFile}.resolve()
}

// Validate checks the configuration and reads the files it names, changing nothing.
func (c OperatorConfig) Validate() error {
	_, err := c.resolve()
	return err
}

func (c OperatorConfig) resolve() (*transport, error) {
	if c.ClientID != "" {
		if err := checkName("client id", c.ClientID); err != nil {
			return nil, err
		}
	}
	if c.MaxPayload < 0 {
		return nil, invalid("payload limit %d is negative", c.MaxPayload)
	}
	return connFlags{c.Broker, "--broker", c.CAFile, c.CertFile, c.KeyFile, c.User, c.PasswordFile}.resolve()
}

func (f connFlags) resolve() (*transport, error) {
	u := f.broker
	if u == nil {
		return nil, invalid("%s is missing: give mqtt://HOST:PORT or mqtts://HOST:PORT", f.brokerFlag)
	}
	var defPort string
	switch u.Scheme {
	case "mqtt":
		defPort = "1883"
	case "mqtts":
		defPort = "8883"
	default:
		return nil, invalid("%s %q: scheme %q is not mqtt or mqtts", f.brokerFlag, u.Redacted(), u.Scheme)
	}
	if u.User != nil {
		return nil, invalid("%s %q carries credentials: give them with --mqtt-user and --mqtt-password-file", f.brokerFlag, u.Redacted())
	}
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, invalid("%s %q: give only a scheme, a host and a port (no path or query)", f.brokerFlag, u.Redacted())
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return nil, invalid("%s %q has no host", f.brokerFlag, u.Redacted())
	}
	if strings.HasSuffix(u.Host, ":") {
		return nil, invalid("%s %q has an empty port", f.brokerFlag, u.Redacted())
	}
	if port == "" {
		port = defPort
	}
	t := &transport{broker: &url.URL{Scheme: u.Scheme, Host: net.JoinHostPort(host, port)}}

	secure := u.Scheme == "mqtts"
	for _, tf := range []struct{ flag, file string }{{"--mqtt-ca", f.caFile}, {"--mqtt-cert", f.certFile}, {"--mqtt-key", f.keyFile}} {
		if tf.file != "" && !secure {
			return nil, invalid("%s is given but %s %q is not mqtts://: use mqtts:// for TLS", tf.flag, f.brokerFlag, u.Redacted())
		}
	}
	if (f.certFile == "") != (f.keyFile == "") {
		return nil, invalid("--mqtt-cert and --mqtt-key go together: give both or neither")
	}
	if secure {
		tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
		if f.caFile != "" {
			pem, err := os.ReadFile(f.caFile)
			if err != nil {
				return nil, invalid("--mqtt-ca %s: %v", f.caFile, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, invalid("--mqtt-ca %s holds no PEM certificate", f.caFile)
			}
			tc.RootCAs = pool
		}
		if f.certFile != "" {
			if err := privateFile("--mqtt-key", f.keyFile); err != nil {
				return nil, err
			}
			pair, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
			if err != nil {
				return nil, invalid("--mqtt-cert %s with --mqtt-key %s: %v", f.certFile, f.keyFile, err)
			}
			tc.Certificates = []tls.Certificate{pair}
		}
		t.tls = tc
	}

	if f.passwdFile != "" && f.user == "" {
		return nil, invalid("--mqtt-password-file is given without --mqtt-user")
	}
	if f.user != "" {
		if f.passwdFile == "" {
			return nil, invalid("--mqtt-user %q is given without --mqtt-password-file", f.user)
		}
		if len(f.user) > 256 || strings.ContainsAny(f.user, "\x00\r\n") {
			return nil, invalid("--mqtt-user %q: at most 256 characters, no NUL or line break", f.user)
		}
		if err := privateFile("--mqtt-password-file", f.passwdFile); err != nil {
			return nil, err
		}
		b, err := os.ReadFile(f.passwdFile)
		if err != nil {
			return nil, invalid("--mqtt-password-file %s: %v", f.passwdFile, err)
		}
		b = bytes.TrimSuffix(b, []byte("\n"))
		b = bytes.TrimSuffix(b, []byte("\r"))
		if len(b) == 0 {
			return nil, invalid("--mqtt-password-file %s is empty: write the password on its first line", f.passwdFile)
		}
		if bytes.ContainsAny(b, "\n\x00") {
			return nil, invalid("--mqtt-password-file %s holds more than one line: write only the password", f.passwdFile)
		}
		if len(b) > 65535 {
			return nil, invalid("--mqtt-password-file %s: the password is over 65535 bytes", f.passwdFile)
		}
		t.user, t.password = f.user, b
	}
	return t, nil
}

// privateFile refuses a secret that other users can read (or that is not a regular file).
func privateFile(flag, path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return invalid("%s %s: %v", flag, path, err)
	}
	if !fi.Mode().IsRegular() {
		return invalid("%s %s is not a regular file", flag, path)
	}
	if fi.Mode().Perm()&0o004 != 0 {
		return invalid("%s %s is readable by every user: chmod o-r %s", flag, path, path)
	}
	return nil
}

// checkName checks a device id or fleet name: it becomes one level of a topic, and (with
// use_identity_as_username) a broker's user name, so it is short and plain.
func checkName(flag, s string) error {
	if s == "" {
		return invalid("%s is missing", flag)
	}
	if len(s) > MaxNameLen {
		return invalid("%s %q is %d bytes long: at most %d", flag, s, len(s), MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			(i > 0 && (c == '.' || c == '_' || c == '-' || c == ':'))
		if !ok {
			return invalid("%s %q: byte %d (%q) is not allowed: use letters, digits and . _ - : (not first)", flag, s, i, c)
		}
	}
	return nil
}

func orDefault[T int | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// backoff is the delay before connection attempt n of one outage (n = 0 is the first): a random
// point in the upper half of min·2^(n-1), capped at max, so that a fleet that lost its broker
// does not come back all at once. Attempt 0 waits a random fraction of min.
func backoff(min, max time.Duration) func(int) time.Duration {
	return func(n int) time.Duration {
		if n <= 0 {
			return rand.N(min/4 + 1)
		}
		d := min
		for i := 1; i < n && d < max; i++ {
			d *= 2
		}
		if d > max {
			d = max
		}
		return d/2 + rand.N(d/2+1)
	}
}
