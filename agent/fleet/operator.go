package fleet

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
)

// DefaultWait is how long Status collects retained messages, and SendCommand waits for a
// result, when given no wait.
const DefaultWait = 2 * time.Second

// DeviceState is one device as the broker's retained messages show it.
type DeviceState struct {
	ID     string          `json:"id"`
	Fleet  string          `json:"fleet,omitempty"` // from the messages' "fleet" property
	Online *bool           `json:"online"`          // nil: the device never said
	State  json.RawMessage `json:"state,omitempty"` // its /v1/device object; nil if none
	Error  string          `json:"error,omitempty"` // what was wrong with what it published
}

// message is one message an operator session received.
type message struct {
	topic    string
	payload  string
	retained bool
	fleet    string
}

// session is one short operator connection.
type session struct {
	cli *paho.Client
	max int
}

func randomID(prefix string) string {
	b := make([]byte, 8)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// dialOperator connects with a clean, short-lived session; deliver gets every message.
func dialOperator(ctx context.Context, cfg OperatorConfig, deliver func(message)) (*session, error) {
	t, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	max := orDefault(cfg.MaxPayload, DefaultMaxPayload)
	conn, err := dialBroker(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", t.broker.Redacted(), err)
	}
	id := cfg.ClientID
	if id == "" {
		id = randomID("latch-op-")
	}
	cli := paho.NewClient(paho.ClientConfig{
		ClientID: id,
		Conn:     conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			p := pr.Packet
			if deliver == nil || len(p.Payload) > max {
				return false, nil
			}
			m := message{topic: p.Topic, payload: string(p.Payload), retained: p.Retain}
			if p.Properties != nil {
				m.fleet = p.Properties.User.Get(fleetProperty)
			}
			deliver(m)
			return true, nil
		}},
	})
	maxPacket := uint32(max) + 64<<10
	cp := &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30,
		Properties: &paho.ConnectProperties{MaximumPacketSize: &maxPacket}}
	if t.user != "" {
		cp.UsernameFlag, cp.Username = true, t.user
		cp.PasswordFlag, cp.Password = true, t.password
	}
	ack, err := cli.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		if ack != nil && ack.ReasonCode >= 0x80 {
			return nil, fmt.Errorf("connect to %s: the broker refused (reason %#x %s): check --mqtt-user, --mqtt-password-file or the certificate",
				t.broker.Redacted(), ack.ReasonCode, ack.Properties.ReasonString)
		}
		return nil, fmt.Errorf("connect to %s: %w", t.broker.Redacted(), err)
	}
	return &session{cli: cli, max: max}, nil
}

// dialBroker opens the network connection to t's broker, over TLS when t says so.
func dialBroker(ctx context.Context, t *transport) (net.Conn, error) {
	if t.tls != nil {
		d := tls.Dialer{Config: t.tls}
		c, err := d.DialContext(ctx, "tcp", t.broker.Host)
		if err != nil {
			return nil, err
		}
		// A TLS connection is written by the client's sender and its keep-alive at once.
		return packets.NewThreadSafeConn(c), nil
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", t.broker.Host)
}

func (s *session) close() {
	s.cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
	<-s.cli.Done()
}

func (s *session) subscribe(ctx context.Context, filters ...string) error {
	sub := &paho.Subscribe{}
	for _, f := range filters {
		sub.Subscriptions = append(sub.Subscriptions, paho.SubscribeOptions{Topic: f, QoS: 1})
	}
	ack, err := s.cli.Subscribe(ctx, sub)
	if err != nil {
		return fmt.Errorf("subscribe to %v: %w", filters, err)
	}
	for i, rc := range ack.Reasons {
		if rc >= 0x80 && i < len(filters) {
			return fmt.Errorf("subscribe to %s: the broker refused it (reason %#x): check its access list", filters[i], rc)
		}
	}
	return nil
}

func (s *session) publish(ctx context.Context, topic string, payload []byte, retain bool) error {
	if len(payload) > s.max {
		return fmt.Errorf("publish to %s: %d bytes, over the limit of %d: %w", topic, len(payload), s.max, ErrPayloadTooLarge)
	}
	resp, err := s.cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: retain, Payload: payload})
	if err != nil && resp != nil {
		return fmt.Errorf("publish to %s: the broker refused it: %w: check its access list", topic, err)
	}
	if err != nil {
		return fmt.Errorf("publish to %s: %w", topic, err)
	}
	return nil
}

// withSession runs f on a fresh operator session.
func withSession(ctx context.Context, cfg OperatorConfig, deliver func(message), f func(*session) error) error {
	s, err := dialOperator(ctx, cfg, deliver)
	if err != nil {
		return err
	}
	defer s.close()
	return f(s)
}

// Status collects, for wait (DefaultWait when zero), the retained state and online messages of
// every device, and returns the devices of fleet (all devices when fleet is empty), by id.
func Status(ctx context.Context, cfg OperatorConfig, fleet string, wait time.Duration) ([]DeviceState, error) {
	if fleet != "" {
		if err := checkName("--fleet", fleet); err != nil {
			return nil, fmt.Errorf("fleet status: %w", err)
		}
	}
	if wait <= 0 {
		wait = DefaultWait
	}
	var mu sync.Mutex
	devices := map[string]*DeviceState{}
	deliver := func(m message) {
		id, leaf, ok := deviceOf(m.topic)
		if !ok || (leaf != "state" && leaf != "online") {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		d := devices[id]
		if d == nil {
			d = &DeviceState{ID: id}
			devices[id] = d
		}
		if m.fleet != "" {
			d.Fleet = m.fleet
		}
		switch {
		case leaf == "online" && m.payload == "":
			d.Online = nil
		case leaf == "online":
			on := m.payload == "1"
			d.Online = &on
			if m.payload != "0" && m.payload != "1" {
				d.Error = fmt.Sprintf("online is %q, not 0 or 1", m.payload)
			}
		case m.payload == "":
			d.State = nil
		case json.Valid([]byte(m.payload)):
			d.State = json.RawMessage(m.payload)
		default:
			d.State, d.Error = nil, "its state is not JSON"
		}
	}
	err := withSession(ctx, cfg, deliver, func(s *session) error {
		if err := s.subscribe(ctx, "latch/devices/+/state", "latch/devices/+/online"); err != nil {
			return err
		}
		select {
		case <-time.After(wait):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	if err != nil {
		return nil, fmt.Errorf("fleet status: %w", err)
	}
	mu.Lock()
	defer mu.Unlock()
	var out []DeviceState
	for _, d := range devices {
		if fleet == "" || d.Fleet == fleet {
			out = append(out, *d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// PublishTarget makes {"target": doc, "sig": sig} the retained target of fleet. doc is a JSON
// object, embedded as it is; sig is the .sig bundle (a JSON object, embedded as it is) or a
// bare base64 signature (embedded as a string), or empty.
func PublishTarget(ctx context.Context, cfg OperatorConfig, fleet string, doc, sig []byte) error {
	if err := checkName("--fleet", fleet); err != nil {
		return fmt.Errorf("publish target of fleet %q: %w", fleet, err)
	}
	return publishTarget(ctx, cfg, fleetTargetTopic(fleet), doc, sig)
}

// PublishDeviceTarget makes {"target": doc, "sig": sig} the retained target of one device,
// which wins over its fleet's.
func PublishDeviceTarget(ctx context.Context, cfg OperatorConfig, device string, doc, sig []byte) error {
	if err := checkName("device", device); err != nil {
		return fmt.Errorf("publish target of device %q: %w", device, err)
	}
	return publishTarget(ctx, cfg, deviceTopic(device, "target"), doc, sig)
}

// ClearDeviceTarget removes the retained target of one device: it follows its fleet's again.
func ClearDeviceTarget(ctx context.Context, cfg OperatorConfig, device string) error {
	if err := checkName("device", device); err != nil {
		return fmt.Errorf("clear target of device %q: %w", device, err)
	}
	topic := deviceTopic(device, "target")
	return withSession(ctx, cfg, nil, func(s *session) error { return s.publish(ctx, topic, nil, true) })
}

func publishTarget(ctx context.Context, cfg OperatorConfig, topic string, doc, sig []byte) error {
	payload, err := targetMessage(doc, sig)
	if err != nil {
		return fmt.Errorf("publish target to %s: %w", topic, err)
	}
	if max := orDefault(cfg.MaxPayload, DefaultMaxPayload); len(payload) > max {
		return fmt.Errorf("publish target to %s: %d bytes, over the limit of %d: %w", topic, len(payload), max, ErrPayloadTooLarge)
	}
	return withSession(ctx, cfg, nil, func(s *session) error { return s.publish(ctx, topic, payload, true) })
}

// SendCommand sends cmd to device and waits, for wait (DefaultWait when zero), for the result
// with its id. A command without an id gets a random one. With no result in time it returns
// ErrNoResult: the command may still run when the device comes back, while its session lasts.
// A result of any status (also "refused") is returned with a nil error.
func SendCommand(ctx context.Context, cfg OperatorConfig, device string, cmd Command, wait time.Duration) (Result, error) {
	if err := checkName("device", device); err != nil {
		return Result{}, fmt.Errorf("send command to %q: %w", device, err)
	}
	if cmd.ID == "" {
		cmd.ID = randomID("cmd-")
	}
	if err := cmd.Validate(); err != nil {
		return Result{}, fmt.Errorf("send command to %s: %w", device, err)
	}
	if wait <= 0 {
		wait = DefaultWait
	}
	payload, err := json.Marshal(cmd)
	if err != nil {
		return Result{}, fmt.Errorf("send command %s to %s: %w", cmd.ID, device, err)
	}
	results := make(chan Result, 1)
	resultTopic := deviceTopic(device, "result")
	deliver := func(m message) {
		if m.topic != resultTopic {
			return
		}
		var r Result
		if json.Unmarshal([]byte(m.payload), &r) != nil || r.ID != cmd.ID {
			return
		}
		select {
		case results <- r:
		default:
		}
	}
	var res Result
	err = withSession(ctx, cfg, deliver, func(s *session) error {
		if err := s.subscribe(ctx, resultTopic); err != nil {
			return err
		}
		if err := s.publish(ctx, deviceTopic(device, "cmd"), payload, false); err != nil {
			return err
		}
		select {
		case res = <-results:
			return nil
		case <-time.After(wait):
			return fmt.Errorf("%w from %s for command %s within %v: is the device online? (latch fleet status)", ErrNoResult, device, cmd.ID, wait)
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	if err != nil {
		if errors.Is(err, ErrNoResult) {
			return Result{ID: cmd.ID}, err
		}
		return Result{}, fmt.Errorf("send command %s to %s: %w", cmd.ID, device, err)
	}
	return res, nil
}
