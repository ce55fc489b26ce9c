package fleet

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca := newCA(t, dir, "ca")
	cert, key := ca.issue(t, "d1", false)
	pw := write("pw", "secret\n", 0o600)
	worldPW := write("pw-world", "secret\n", 0o644)
	emptyPW := write("pw-empty", "\n", 0o600)
	twoLines := write("pw-two", "a\nb\n", 0o600)
	notPEM := write("ca-bad", "hello", 0o600)
	worldKey := write("key-world", "x", 0o644)

	base := func() Config {
		return Config{Broker: mustURL(t, "mqtt://broker.local:1883"), DeviceID: "board-7", Fleet: "kiosks"}
	}
	tests := []struct {
		name string
		edit func(*Config)
		want string // "" = valid
	}{
		{"plain", func(c *Config) {}, ""},
		{"default port", func(c *Config) { c.Broker = mustURL(t, "mqtt://broker.local") }, ""},
		{"tls with everything", func(c *Config) {
			c.Broker, c.CAFile, c.CertFile, c.KeyFile = mustURL(t, "mqtts://127.0.0.1:8883"), ca.file, cert, key
		}, ""},
		{"password", func(c *Config) { c.User, c.PasswordFile = "u", pw }, ""},
		{"no broker", func(c *Config) { c.Broker = nil }, "--fleet is missing"},
		{"http", func(c *Config) { c.Broker = mustURL(t, "http://broker.local") }, `--fleet "http://broker.local": scheme "http"`},
		{"credentials in url", func(c *Config) { c.Broker = mustURL(t, "mqtt://u:p@broker.local") }, "--mqtt-user"},
		{"path", func(c *Config) { c.Broker = mustURL(t, "mqtt://broker.local/x") }, "no path"},
		{"no host", func(c *Config) { c.Broker = mustURL(t, "mqtt://:1883") }, "has no host"},
		{"empty port", func(c *Config) { c.Broker = mustURL(t, "mqtt://h:") }, "empty port"},
		{"no device", func(c *Config) { c.DeviceID = "" }, "--device-id is missing"},
		{"wildcard device", func(c *Config) { c.DeviceID = "a+b" }, "--device-id"},
		{"slash device", func(c *Config) { c.DeviceID = "a/b" }, "--device-id"},
		{"hash fleet", func(c *Config) { c.Fleet = "#" }, "--fleet-name"},
		{"nul fleet", func(c *Config) { c.Fleet = "a\x00" }, "--fleet-name"},
		{"dollar device", func(c *Config) { c.DeviceID = "$SYS" }, "--device-id"},
		{"leading dot", func(c *Config) { c.DeviceID = ".." }, "--device-id"},
		{"long device", func(c *Config) { c.DeviceID = strings.Repeat("a", MaxNameLen+1) }, "at most 64"},
		{"no fleet", func(c *Config) { c.Fleet = "" }, "--fleet-name is missing"},
		{"ca on mqtt", func(c *Config) { c.CAFile = ca.file }, "--mqtt-ca is given but --fleet"},
		{"missing ca", func(c *Config) { c.Broker, c.CAFile = mustURL(t, "mqtts://h"), filepath.Join(dir, "nope") }, "--mqtt-ca"},
		{"ca not pem", func(c *Config) { c.Broker, c.CAFile = mustURL(t, "mqtts://h"), notPEM }, "--mqtt-ca " + notPEM + " holds no PEM"},
		{"cert without key", func(c *Config) { c.Broker, c.CertFile = mustURL(t, "mqtts://h"), cert }, "--mqtt-cert and --mqtt-key go together"},
		{"key readable by all", func(c *Config) { c.Broker, c.CertFile, c.KeyFile = mustURL(t, "mqtts://h"), cert, worldKey }, "--mqtt-key " + worldKey + " is readable by every user"},
		{"key not matching", func(c *Config) {
			_, other := ca.issue(t, "d2", false)
			c.Broker, c.CertFile, c.KeyFile = mustURL(t, "mqtts://h"), cert, other
		}, "--mqtt-cert"},
		{"user without password", func(c *Config) { c.User = "u" }, "without --mqtt-password-file"},
		{"password without user", func(c *Config) { c.PasswordFile = pw }, "without --mqtt-user"},
		{"password readable by all", func(c *Config) { c.User, c.PasswordFile = "u", worldPW }, "--mqtt-password-file " + worldPW + " is readable by every user"},
		{"password empty", func(c *Config) { c.User, c.PasswordFile = "u", emptyPW }, "is empty"},
		{"password two lines", func(c *Config) { c.User, c.PasswordFile = "u", twoLines }, "more than one line"},
		{"password missing", func(c *Config) { c.User, c.PasswordFile = "u", filepath.Join(dir, "none") }, "--mqtt-password-file"},
		{"backoff upside down", func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Minute, time.Second }, "above the maximum"},
		{"negative payload", func(c *Config) { c.MaxPayload = -1 }, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.edit(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate() = %v, want ErrInvalidConfig saying %q", err, tt.want)
			}
		})
	}
}

func TestOperatorConfigNamesBrokerFlag(t *testing.T) {
	err := OperatorConfig{Broker: mustURL(t, "ws://h")}.Validate()
	if err == nil || !strings.HasPrefix(strings.TrimPrefix(err.Error(), ErrInvalidConfig.Error()+": "), "--broker") {
		t.Errorf("Validate() = %v, want it to name --broker", err)
	}
	if err := (OperatorConfig{Broker: mustURL(t, "mqtt://h"), ClientID: "a/b"}).Validate(); err == nil {
		t.Error("a client id with a slash was accepted")
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	_, err := Start(t.Context(), Config{Broker: mustURL(t, "mqtt://h"), DeviceID: "a#", Fleet: "f"}, Handlers{})
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "--device-id") {
		t.Errorf("Start = %v, want the bad --device-id", err)
	}
}

func TestBackoffBounded(t *testing.T) {
	f := backoff(time.Second, 30*time.Second)
	for n := 0; n < 200; n++ {
		for i := 0; i < 20; i++ {
			d := f(n)
			lo, hi := time.Duration(0), 30*time.Second
			if n == 0 {
				hi = time.Second / 4
			} else if n == 1 {
				lo, hi = time.Second/2, time.Second
			} else if n > 10 {
				lo = 15 * time.Second
			}
			if d < lo || d > hi {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, d, lo, hi)
			}
		}
	}
	// jittered: not every device waits the same
	seen := map[time.Duration]bool{}
	for i := 0; i < 50; i++ {
		seen[f(5)] = true
	}
	if len(seen) < 10 {
		t.Errorf("backoff(5) took only %d values in 50 draws: no jitter", len(seen))
	}
}
