package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tlsBroker is a broker that admits only clients with a certificate of its CA, named by the
// certificate's common name, each device limited to its own topics.
type tlsBroker struct {
	*broker
	ca  *pki
	dir string
}

func startTLSBroker(t *testing.T) *tlsBroker {
	t.Helper()
	mosquittoPath(t)
	dir := t.TempDir()
	ca := newCA(t, dir, "fleet-ca")
	srvCert, srvKey := ca.issue(t, "broker", true)
	acl := filepath.Join(dir, "acl")
	if err := os.WriteFile(acl, []byte("user operator\ntopic readwrite latch/#\n\npattern readwrite latch/devices/%u/#\npattern read latch/fleets/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := startBroker(t, fmt.Sprintf("cafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\nuse_identity_as_username true\nacl_file %s\n",
		ca.file, srvCert, srvKey, acl))
	return &tlsBroker{broker: b, ca: ca, dir: dir}
}

func (b *tlsBroker) operator(t *testing.T) OperatorConfig {
	cert, key := b.ca.issue(t, "operator", false)
	return OperatorConfig{Broker: b.url("mqtts"), CAFile: b.ca.file, CertFile: cert, KeyFile: key}
}

func (b *tlsBroker) device(t *testing.T, ca *pki, id string) Config {
	cert, key := ca.issue(t, id, false)
	return Config{Broker: b.url("mqtts"), DeviceID: id, Fleet: "f1", CAFile: b.ca.file, CertFile: cert, KeyFile: key,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond}
}

// Over TLS with client certificates and the broker's access list, a device gets its fleet's
// and its own target and publishes its own state; it cannot write another device's state.
func TestTLSClientCertificates(t *testing.T) {
	b := startTLSBroker(t)
	op := b.operator(t)
	w := watch(t, op, "latch/devices/#")
	ctx := ctxT(t)

	r := newRecorder()
	d1cfg := b.device(t, b.ca, "d1")
	d1 := startDevice(t, d1cfg, r.handlers())
	if err := d1.PublishState([]byte(`{"who":"d1"}`)); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "d1's state", on("latch/devices/d1/state", `{"who":"d1"}`))
	if err := PublishTarget(ctx, op, "f1", []byte(`{"apps":{}}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := PublishDeviceTarget(ctx, op, "d1", []byte(`{"apps":{"x":{}}}`), nil); err != nil {
		t.Fatal(err)
	}
	r.wait(t, "both targets", func() bool { return len(r.targets) >= 2 })
	if r.targets[0].source != SourceFleet || r.targets[1].source != SourceDevice {
		t.Errorf("targets %+v, want the fleet's then the device's", r.targets)
	}

	// d1's certificate, writing d2's state and then its own: the broker drops the first.
	rogue := op
	rogue.CertFile, rogue.KeyFile, rogue.ClientID = d1cfg.CertFile, d1cfg.KeyFile, "rogue-d1"
	s, err := dialOperator(ctx, rogue, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	// Mosquitto 2.0 answers "not authorized"; a broker may also ack and drop it.
	if err := s.publish(ctx, "latch/devices/d2/state", []byte(`{"forged":true}`), true); err != nil {
		t.Logf("the forgery: %v", err)
	}
	if err := s.publish(ctx, "latch/devices/d1/state", []byte(`{"who":"d1","after":"forgery"}`), true); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "d1's own write after the forgery", on("latch/devices/d1/state", `{"who":"d1","after":"forgery"}`))
	for _, m := range w.all() {
		if strings.Contains(m.payload, "forged") {
			t.Fatalf("the subscriber got the forged message %+v", m)
		}
	}
	got, err := Status(ctx, op, "", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range got {
		if d.ID == "d2" {
			t.Errorf("Status shows d2 = %+v; it never existed", d)
		}
	}
}

// A certificate of another CA is refused by the broker: the device keeps trying and says why.
func TestTLSForeignCertificateRefused(t *testing.T) {
	b := startTLSBroker(t)
	other := newCA(t, t.TempDir(), "other-ca")
	r := newRecorder()
	d := startDevice(t, b.device(t, other, "d3"), r.handlers())
	r.wait(t, "two failed attempts", func() bool { return len(r.errs) >= 2 })
	s := d.Status()
	if s.Connected || s.Connects != 0 || s.LastError == nil {
		t.Fatalf("Status() = %+v, want never connected, with an error", s)
	}
	if !strings.Contains(s.LastError.Error(), "connect to mqtts://") {
		t.Errorf("error %q does not name the broker", s.LastError)
	}
	// and the device never showed up
	got, err := Status(ctxT(t), b.operator(t), "", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Errorf("Status = %+v, want no device", got)
	}
}

// A broker with a password file: the right password connects, a wrong one is refused and
// reported, again and again.
func TestPasswordFile(t *testing.T) {
	passwd, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Skip("mosquitto_passwd is not installed: password authentication was not tested")
	}
	dir := t.TempDir()
	pwfile := filepath.Join(dir, "passwd")
	for i, u := range [][2]string{{"d1", "s3cret d1"}, {"operator", "op-pass"}} {
		args := []string{"-b", pwfile, u[0], u[1]}
		if i == 0 {
			args = append([]string{"-c"}, args...)
		}
		if out, err := exec.Command(passwd, args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
		}
	}
	b := startBroker(t, fmt.Sprintf("allow_anonymous false\npassword_file %s\n", pwfile))
	secret := func(name, pw string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	op := OperatorConfig{Broker: b.url("mqtt"), User: "operator", PasswordFile: secret("op.pw", "op-pass")}
	w := watch(t, op, "latch/devices/+/online")

	good := b.deviceConfig("d1", "f1")
	good.User, good.PasswordFile = "d1", secret("d1.pw", "s3cret d1")
	startDevice(t, good, Handlers{})
	w.waitFor(t, "d1 online", on("latch/devices/d1/online", "1"))

	bad := b.deviceConfig("d1", "f1")
	bad.User, bad.PasswordFile = "d1", secret("wrong.pw", "guess")
	r := newRecorder()
	d := startDevice(t, bad, r.handlers())
	r.wait(t, "two refusals", func() bool { return len(r.errs) >= 2 })
	if s := d.Status(); s.Connected || s.Connects != 0 {
		t.Errorf("Status() = %+v, want never connected", s)
	}
	r.mu.Lock()
	e := r.errs[0]
	r.mu.Unlock()
	if !strings.Contains(e.Error(), "connect to mqtt://") {
		t.Errorf("error %q does not name the broker", e)
	}

	// The operator side with a wrong password: a clear refusal.
	op.PasswordFile = secret("op-wrong.pw", "nope")
	_, err = Status(ctxT(t), op, "", 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "--mqtt-password-file") {
		t.Errorf("Status with a wrong password: %v, want a refusal naming --mqtt-password-file", err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Status with a wrong password waited: %v", err)
	}
}

// A device whose certificate names another device (a careless install): the broker refuses its
// writes (Mosquitto grants the subscriptions and delivers nothing), and the device says so,
// naming the access list.
func TestTLSCertificateOfAnotherDevice(t *testing.T) {
	b := startTLSBroker(t)
	cfg := b.device(t, b.ca, "d1")
	cfg.DeviceID = "d9"
	r := newRecorder()
	d := startDevice(t, cfg, r.handlers())
	r.wait(t, "the refusals", func() bool {
		for _, e := range r.errs {
			if strings.Contains(e.Error(), "publish online of d9") && strings.Contains(e.Error(), "access list") {
				return true
			}
		}
		return false
	})
	if err := d.PublishState([]byte(`{"who":"d9"}`)); err != nil {
		t.Fatal(err)
	}
	r.wait(t, "the refused state", func() bool {
		for _, e := range r.errs {
			if strings.Contains(e.Error(), "publish state of d9: the broker refused it") {
				return true
			}
		}
		return false
	})
	if s := d.Status(); !s.Connected {
		t.Errorf("Status() = %+v: the connection itself is up", s)
	}
}
