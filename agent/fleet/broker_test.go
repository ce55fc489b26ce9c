package fleet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// broker is a mosquitto of the test's own: its config in the test's folder, a free loopback
// port, stopped by its pid.
type broker struct {
	t    *testing.T
	dir  string
	conf string
	port int
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

func mosquittoPath(t *testing.T) string {
	t.Helper()
	if os.Getenv("LATCH_EMULATED") == "1" {
		t.Skip("under qemu-user (LATCH_EMULATED=1) the fleet's timing (reconnects, one state a second) is not the board's: the tests against a real broker run in the native suite and on 386")
	}
	p, err := exec.LookPath("mosquitto")
	if err != nil {
		p = "/usr/sbin/mosquitto"
		if _, err := os.Stat(p); err != nil {
			t.Skip("mosquitto is not installed: the fleet channel against a real broker was not tested")
		}
	}
	return p
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startBroker starts mosquitto with the listener lines it writes and the extra config lines.
func startBroker(t *testing.T, extra string) *broker {
	t.Helper()
	mosquittoPath(t)
	b := &broker{t: t, dir: t.TempDir()}
	for try := 0; ; try++ {
		b.port = freePort(t)
		b.conf = filepath.Join(b.dir, "mosquitto.conf")
		conf := fmt.Sprintf("listener %d 127.0.0.1\npersistence false\nuser root\nlog_type all\n%s", b.port, extra)
		if err := os.WriteFile(b.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := b.start(); err == nil {
			break
		} else if try == 4 {
			t.Fatalf("start mosquitto: %v\n%s", err, b.log())
		}
	}
	t.Cleanup(b.kill)
	return b
}

// log is what mosquitto said.
func (b *broker) log() string {
	out, _ := os.ReadFile(filepath.Join(b.dir, "mosquitto.log"))
	return string(out)
}

func (b *broker) start() error {
	logf, err := os.OpenFile(filepath.Join(b.dir, "mosquitto.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(mosquittoPath(b.t), "-c", b.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	// a test binary that dies (a timeout's panic skips the cleanups) takes its broker along
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", b.addr(), time.Second)
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
			return fmt.Errorf("mosquitto did not listen on %s", b.addr())
		}
	}
}

// kill stops the broker at once (SIGKILL: no clean goodbye to its clients).
func (b *broker) kill() {
	if b.cmd == nil {
		return
	}
	b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.done
	b.cmd = nil
}

// restart kills the broker and starts it again on the same port (retained messages are lost).
func (b *broker) restart() {
	b.t.Helper()
	b.kill()
	var err error
	for try := 0; try < 50; try++ {
		if err = b.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.t.Fatalf("restart mosquitto: %v\n%s", err, b.log())
}

func (b *broker) addr() string { return "127.0.0.1:" + strconv.Itoa(b.port) }
func (b *broker) url(scheme string) *url.URL {
	return &url.URL{Scheme: scheme, Host: b.addr()}
}

// deviceConfig is a device of the plain broker, quick to retry.
func (b *broker) deviceConfig(id, fleet string) Config {
	return Config{Broker: b.url("mqtt"), DeviceID: id, Fleet: fleet,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}
}

// pki makes CAs and certificates with crypto/x509.
type pki struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // the CA's PEM file
}

func newCA(t *testing.T, dir, name string) *pki {
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
	ca := &pki{dir: dir, cert: cert, key: key, file: filepath.Join(dir, name+".pem")}
	writePEM(t, ca.file, "CERTIFICATE", der)
	return ca
}

var serial int64 = 100
var serialMu sync.Mutex

// issue writes NAME.crt and NAME.key signed by the CA, for a server (with 127.0.0.1) or a client.
func (ca *pki) issue(t *testing.T, name string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serialMu.Lock()
	serial++
	sn := serial
	serialMu.Unlock()
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
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
	return certFile, keyFile
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// watcher is an operator-side subscriber that records every message it gets.
type watcher struct {
	mu   sync.Mutex
	msgs []message
	cond chan struct{} // closed and replaced at every message
}

func watch(t *testing.T, cfg OperatorConfig, filters ...string) *watcher {
	t.Helper()
	w := &watcher{cond: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := dialOperator(ctx, cfg, func(m message) {
		w.mu.Lock()
		w.msgs = append(w.msgs, m)
		close(w.cond)
		w.cond = make(chan struct{})
		w.mu.Unlock()
	})
	if err != nil {
		t.Fatalf("watch %v: %v", filters, err)
	}
	t.Cleanup(func() { s.close() })
	if err := s.subscribe(ctx, filters...); err != nil {
		t.Fatalf("watch %v: %v", filters, err)
	}
	return w
}

// waitFor waits until a message satisfies ok, and returns it.
func (w *watcher) waitFor(t *testing.T, what string, ok func(message) bool) message {
	t.Helper()
	m, _ := w.waitFrom(t, 0, what, ok)
	return m
}

// waitFrom waits until a message from the from-th on satisfies ok, and returns it and its index.
func (w *watcher) waitFrom(t *testing.T, from int, what string, ok func(message) bool) (message, int) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	seen := from
	for {
		w.mu.Lock()
		for ; seen < len(w.msgs); seen++ {
			if ok(w.msgs[seen]) {
				m := w.msgs[seen]
				w.mu.Unlock()
				return m, seen
			}
		}
		ch := w.cond
		w.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no message %s; got %v", what, w.all())
		}
	}
}

func (w *watcher) all() []message {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]message(nil), w.msgs...)
}

func on(topic, payload string) func(message) bool {
	return func(m message) bool { return m.topic == topic && m.payload == payload }
}
