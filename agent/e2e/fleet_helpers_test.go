package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fleetBroker is a mosquitto of the test's own, under the test's temp dir: TLS on a free
// loopback port, client certificates of its own CA (the common name is the MQTT user name),
// an access list that lets a device write only its own topics and read its fleet's, and an
// operator identity that may write everything. Its persistence directory survives Stop and
// Start: retained messages survive a Shutdown (which saves them) and, when the broker had
// saved them (every second), a Stop (SIGKILL).
type fleetBroker struct {
	t      *testing.T
	dir    string
	conf   string
	port   int
	CAFile string
	ca     *fleetCA

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// fleetNeeds skips unless the test is root and mosquitto is installed, and under qemu-user.
func fleetNeeds(t *testing.T) string {
	t.Helper()
	if os.Getenv("LATCH_EMULATED") == "1" {
		t.Skip("under qemu-user (LATCH_EMULATED=1) the fleet's timing (reconnects, one state a second) is not the board's: the agent against a real broker was not tested here; it runs in the native suite and on 386")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: the agent joining a fleet through a real mosquitto was not tested")
	}
	p, err := exec.LookPath("mosquitto")
	if err != nil {
		p = "/usr/sbin/mosquitto"
		if _, err := os.Stat(p); err != nil {
			t.Skip("mosquitto is not installed: the agent joining a fleet through a real broker was not tested")
		}
	}
	return p
}

// startFleetBroker starts the broker and stops it (by its pid) when the test ends.
func startFleetBroker(t *testing.T) *fleetBroker {
	t.Helper()
	fleetNeeds(t)
	dir := t.TempDir()
	ca := newFleetCA(t, dir, "fleet-ca")
	srvCert, srvKey := ca.issue(t, "broker", true)
	acl := filepath.Join(dir, "acl")
	if err := os.WriteFile(acl, []byte("user operator\ntopic readwrite latch/#\n\npattern readwrite latch/devices/%u/#\npattern read latch/fleets/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	persist := filepath.Join(dir, "persist")
	if err := os.Mkdir(persist, 0o700); err != nil {
		t.Fatal(err)
	}
	b := &fleetBroker{t: t, dir: dir, CAFile: ca.file, ca: ca, conf: filepath.Join(dir, "mosquitto.conf")}
	for try := 0; ; try++ {
		b.port = fleetFreePort(t)
		conf := fmt.Sprintf("listener %d 127.0.0.1\nuser root\nlog_type all\npersistence true\npersistence_location %s/\nautosave_interval 1\n"+
			"cafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\nuse_identity_as_username true\nacl_file %s\n",
			b.port, persist, ca.file, srvCert, srvKey, acl)
		if err := os.WriteFile(b.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		err := b.start()
		if err == nil {
			break
		}
		if try == 4 {
			t.Fatalf("start mosquitto: %v\n%s", err, b.Log())
		}
	}
	t.Cleanup(b.kill)
	return b
}

func fleetFreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// URL is the broker's address for --fleet.
func (b *fleetBroker) URL() string { return "mqtts://" + b.Addr() }

// Addr is host:port.
func (b *fleetBroker) Addr() string { return "127.0.0.1:" + strconv.Itoa(b.port) }

// Port is the TCP port (for mosquitto_pub -p).
func (b *fleetBroker) Port() int { return b.port }

// Log is what mosquitto said so far.
func (b *fleetBroker) Log() string {
	out, _ := os.ReadFile(filepath.Join(b.dir, "mosquitto.log"))
	return string(out)
}

// DeviceCert issues a client certificate whose common name is id (the device's MQTT user).
func (b *fleetBroker) DeviceCert(t *testing.T, id string) (cert, key string) {
	t.Helper()
	return b.ca.issue(t, id, false)
}

// OperatorCert issues the operator's client certificate (common name "operator": may write
// every latch/ topic).
func (b *fleetBroker) OperatorCert(t *testing.T) (cert, key string) {
	t.Helper()
	return b.opCert(t)
}

// ForeignCert issues a client certificate named id by another CA, one the broker does not trust.
func (b *fleetBroker) ForeignCert(t *testing.T, id string) (cert, key string) {
	t.Helper()
	d := filepath.Join(b.dir, "foreign")
	os.MkdirAll(d, 0o700)
	return newFleetCA(t, d, "foreign-ca").issue(t, id, false)
}

// Stop kills the broker (SIGKILL: no goodbye to its clients; what was persisted stays).
func (b *fleetBroker) Stop() { b.kill() }

// Shutdown ends the broker cleanly (SIGTERM): it saves its database, retained messages too.
func (b *fleetBroker) Shutdown() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		b.cmd.Process.Signal(syscall.SIGKILL)
		<-b.done
	}
	b.cmd = nil
}

// Start starts a stopped broker again on the same port with the same persistence directory.
func (b *fleetBroker) Start() {
	b.t.Helper()
	var err error
	for try := 0; try < 50; try++ {
		if err = b.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.t.Fatalf("restart mosquitto on %s: %v\n%s", b.Addr(), err, b.Log())
}

func (b *fleetBroker) start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(filepath.Join(b.dir, "mosquitto.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(fleetNeeds(b.t), "-c", b.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", b.Addr(), time.Second)
		if err == nil {
			c.Close()
			b.cmd, b.done = cmd, exited
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("mosquitto exited")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exited
			return fmt.Errorf("mosquitto did not listen on %s", b.Addr())
		}
	}
}

func (b *fleetBroker) kill() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return
	}
	b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.done
	b.cmd = nil
}

// Pub publishes one raw message as the operator with mosquitto_pub (retained if asked).
func (b *fleetBroker) Pub(t *testing.T, topic string, payload []byte, retain bool) {
	t.Helper()
	pub, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Skip("mosquitto_pub is not installed: raw messages to the agent were not tested")
	}
	cert, key := b.opCert(t)
	args := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(b.port), "--cafile", b.CAFile, "--cert", cert, "--key", key,
		"-q", "1", "-t", topic, "-s"}
	if len(payload) == 0 {
		args[len(args)-1] = "-n" // a null message: clears a retained one
	}
	if retain {
		args = append(args, "-r")
	}
	cmd := exec.Command(pub, args...)
	cmd.Stdin = bytes.NewReader(payload)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub %s: %v\n%s", topic, err, out)
	}
}

var fleetOpMu sync.Mutex

// opCert is one operator certificate per broker, issued on first use.
func (b *fleetBroker) opCert(t *testing.T) (string, string) {
	fleetOpMu.Lock()
	defer fleetOpMu.Unlock()
	c, k := filepath.Join(b.ca.dir, "operator.crt"), filepath.Join(b.ca.dir, "operator.key")
	if _, err := os.Stat(k); err == nil {
		return c, k
	}
	return b.ca.issue(t, "operator", false)
}

// fleetCA makes a CA and its certificates with crypto/x509.
type fleetCA struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

var fleetSerial struct {
	sync.Mutex
	n int64
}

func newFleetCA(t *testing.T, dir, name string) *fleetCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &fleetCA{dir: dir, cert: cert, key: key, file: filepath.Join(dir, name+".pem")}
	fleetWritePEM(t, ca.file, "CERTIFICATE", der)
	return ca
}

// issue writes NAME.crt and NAME.key (mode 0600) signed by the CA, for a server (127.0.0.1,
// localhost) or a client (common name NAME).
func (ca *fleetCA) issue(t *testing.T, name string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	fleetSerial.Lock()
	fleetSerial.n++
	sn := 100 + fleetSerial.n
	fleetSerial.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(sn), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(ca.dir, name+".crt"), filepath.Join(ca.dir, name+".key")
	fleetWritePEM(t, certFile, "CERTIFICATE", der)
	fleetWritePEM(t, keyFile, "EC PRIVATE KEY", kder)
	return certFile, keyFile
}

func fleetWritePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Sub returns the retained message of topic (empty if none), read with mosquitto_sub.
func (b *fleetBroker) Sub(t *testing.T, topic string) string {
	t.Helper()
	sub, err := exec.LookPath("mosquitto_sub")
	if err != nil {
		t.Skip("mosquitto_sub is not installed: the retained messages were not read")
	}
	cert, key := b.opCert(t)
	out, err := exec.Command(sub, "-h", "127.0.0.1", "-p", strconv.Itoa(b.port), "--cafile", b.CAFile, "--cert", cert, "--key", key,
		"-t", topic, "--retained-only", "-C", "1", "-W", "2").Output()
	if err != nil && len(out) == 0 {
		return ""
	}
	return string(bytes.TrimRight(out, "\n"))
}

// fleetWatch is a mosquitto_sub of the operator, writing every message of its topics to a
// file, one line each ("topic payload"), stopped by its pid when the test ends.
type fleetWatch struct {
	file string
}

// Watch starts recording the messages of topic (wildcards allowed) from now on.
func (b *fleetBroker) Watch(t *testing.T, topic string) *fleetWatch {
	t.Helper()
	sub, err := exec.LookPath("mosquitto_sub")
	if err != nil {
		t.Skip("mosquitto_sub is not installed: the agent's messages were not read")
	}
	cert, key := b.opCert(t)
	w := &fleetWatch{file: filepath.Join(t.TempDir(), "watch.log")}
	out, err := os.Create(w.file)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	// -R: no retained messages, only what is published while it watches
	cmd := exec.Command(sub, "-h", "127.0.0.1", "-p", strconv.Itoa(b.port), "--cafile", b.CAFile, "--cert", cert, "--key", key,
		"-i", fmt.Sprintf("watch-%d", time.Now().UnixNano()), "-q", "1", "-R", "-v", "-t", topic)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	// subscribed once a probe published now arrives (on the topic itself when it has no
	// wildcard; Lines leaves probes out)
	if strings.ContainsAny(topic, "+#") {
		time.Sleep(500 * time.Millisecond)
		return w
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(w.all(), fleetProbe) {
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto_sub on %s did not start: %s", topic, w.all())
		}
		b.Pub(t, topic, []byte(fleetProbe), false)
		time.Sleep(100 * time.Millisecond)
	}
	return w
}

const fleetProbe = "latch-watch-probe"

func (w *fleetWatch) all() string {
	b, _ := os.ReadFile(w.file)
	return string(b)
}

// Lines are the messages so far on topic, payloads only.
func (w *fleetWatch) Lines(topic string) []string {
	var out []string
	for _, l := range strings.Split(w.all(), "\n") {
		if p, ok := strings.CutPrefix(l, topic+" "); ok && p != fleetProbe {
			out = append(out, p)
		}
	}
	return out
}

// The helper itself: a retained message survives a Shutdown and Start on the same port.
func TestFleetBrokerHelper(t *testing.T) {
	b := startFleetBroker(t)
	b.Pub(t, "latch/fleets/f1/target", []byte(`{"x":1}`), true)
	b.Shutdown()
	b.Start()
	if got := b.Sub(t, "latch/fleets/f1/target"); got != `{"x":1}` {
		t.Fatalf("retained after restart = %q, want {\"x\":1}\n%s", got, b.Log())
	}
}
