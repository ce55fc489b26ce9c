package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// flapWindow: a connection that the broker closes sooner than this after it opened counts as
// a flap.
const flapWindow = 30 * time.Second

// Handlers are the agent's side of a Device. Each may be nil. They run one at a time, in the
// order the broker delivered the messages, and must return promptly.
type Handlers struct {
	// OnTarget gets every target message, after ParseTarget accepted it: source is SourceFleet
	// or SourceDevice (the device's target wins over the fleet's). An empty payload means the
	// operator cleared that retained target. A retained target comes again on every connect.
	OnTarget func(source string, payload []byte)
	// OnCommand gets every command that ParseCommand accepted. The same command may come
	// again (after a lost acknowledgement): the agent runs each ID once.
	OnCommand func(Command)
	// OnConnect is called after every connection, once the device is subscribed and online.
	OnConnect func()
	// OnError gets every failed connection attempt and every message refused.
	OnError func(error)
}

// ConnState is a Device's connection, as latch status shows it.
type ConnState struct {
	Connected   bool
	Connects    int       // connections made since Start
	LastError   error     // the newest failed attempt or refused message, or nil
	LastErrorAt time.Time // when LastError happened
}

// Device is the device side of the fleet channel.
type Device struct {
	cfg      Config // with defaults filled in
	h        Handlers
	cm       *conn // set once, before started is closed
	started  chan struct{}
	ctx      context.Context
	cancel   context.CancelFunc
	kick     chan struct{} // a state to publish (capacity 1)
	wg       sync.WaitGroup
	closeOne sync.Once
	cmCancel context.CancelFunc // ends cm's loop

	mu         sync.Mutex // guards the fields below
	state      []byte     // newest state given to PublishState
	stateDirty bool       // state not yet published on the current connection
	status     ConnState  // but Connected, which is up && ready == gen
	gen        int        // connections come up so far
	up         bool       // connection gen is up
	ready      int        // the last connection that got subscribed and online
	upAt       time.Time  // when connection gen came up
	flaps      int        // connections in a row that the broker closed soon after they opened
	closed     bool       // Close was called: no new goroutine, no handler
}

// Start checks cfg, then connects to the broker in the background and keeps the connection
// until ctx ends or Close is called. It returns at once, whether or not the broker is reachable.
func Start(ctx context.Context, cfg Config, h Handlers) (*Device, error) {
	t, err := cfg.resolve()
	if err != nil {
		return nil, fmt.Errorf("start fleet channel: %w", err)
	}
	cfg.MaxPayload = orDefault(cfg.MaxPayload, DefaultMaxPayload)
	cfg.KeepAlive = orDefault(cfg.KeepAlive, DefaultKeepAlive)
	cfg.SessionExpiry = orDefault(cfg.SessionExpiry, DefaultSessionExpiry)
	cfg.MinBackoff = orDefault(cfg.MinBackoff, DefaultMinBackoff)
	cfg.MaxBackoff = orDefault(cfg.MaxBackoff, DefaultMaxBackoff)
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	cfg.StateInterval = orDefault(cfg.StateInterval, DefaultStateInterval)

	d := &Device{cfg: cfg, h: h, kick: make(chan struct{}, 1), started: make(chan struct{})}
	wait := backoff(cfg.MinBackoff, cfg.MaxBackoff)
	d.ctx, d.cancel = context.WithCancel(ctx)

	var fleetProps paho.UserProperties
	fleetProps.Add(fleetProperty, cfg.Fleet)
	maxPacket := uint32(cfg.MaxPayload) + 64<<10 // room for the topic and properties
	expiry := uint32(cfg.SessionExpiry / time.Second)
	connect := func() *paho.Connect {
		// Clean start false on every connection, the first too: the broker keeps the session
		// (and the commands sent while the device was away) across restarts of the agent.
		cp := &paho.Connect{
			ClientID:   "latch-" + cfg.DeviceID,
			KeepAlive:  uint16(cfg.KeepAlive / time.Second),
			CleanStart: false,
			WillMessage: &paho.WillMessage{
				Topic: deviceTopic(cfg.DeviceID, "online"), Payload: []byte("0"), QoS: 1, Retain: true,
			},
			WillProperties: &paho.WillProperties{User: fleetProps},
			Properties:     &paho.ConnectProperties{MaximumPacketSize: &maxPacket},
		}
		if expiry != 0 {
			cp.Properties.SessionExpiryInterval = &expiry
		}
		if t.user != "" {
			cp.UsernameFlag, cp.Username = true, t.user
		}
		if len(t.password) > 0 {
			cp.PasswordFlag, cp.Password = true, t.password
		}
		return cp
	}
	hooks := connHooks{
		backoff: func(n int) time.Duration {
			// A connection that keeps dropping right after it opens (two boards with one id
			// taking the session from each other) backs off as a failed attempt would.
			d.mu.Lock()
			n += d.flaps
			d.mu.Unlock()
			return wait(n)
		},
		connectError: func(err error) {
			d.report(fmt.Errorf("connect to %s: %w", t.broker.Redacted(), err))
		},
		up: func(cli *paho.Client) {
			d.mu.Lock()
			d.gen++
			d.up, d.upAt = true, time.Now()
			gen := d.gen
			d.mu.Unlock()
			d.spawn(func() { d.connected(cli, gen) })
		},
		down: func() {
			d.mu.Lock()
			d.up = false
			if time.Since(d.upAt) < flapWindow {
				d.flaps++
			} else {
				d.flaps = 0
			}
			flaps := d.flaps
			d.mu.Unlock()
			if flaps >= 3 && d.ctx.Err() == nil {
				d.report(fmt.Errorf("the broker %s closed %d connections in a row soon after they opened: is another device using --device-id %s? (a broker drops the older of two clients with one id)",
					t.broker.Redacted(), flaps, cfg.DeviceID))
			}
		},
		clientError: func(err error) {
			if d.ctx.Err() == nil {
				d.report(fmt.Errorf("connection to %s lost: %w", t.broker.Redacted(), err))
			}
		},
		serverClose: func(dc *paho.Disconnect) {
			why := ""
			if dc.Properties != nil && dc.Properties.ReasonString != "" {
				why = " " + dc.Properties.ReasonString
			}
			d.report(fmt.Errorf("the broker %s closed the connection (reason %#x%s)", t.broker.Redacted(), dc.ReasonCode, why))
		},
	}
	client := paho.ClientConfig{
		ClientID:          "latch-" + cfg.DeviceID,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){d.received},
	}
	// Closing on purpose still tells the fleet the device is gone (reason 0x04: send the will).
	cm := newConn(t, connect, client, hooks, &paho.Disconnect{ReasonCode: 0x04})
	cmCtx, cmCancel := context.WithCancel(d.ctx)
	d.cmCancel = cmCancel
	go cm.run(cmCtx)
	d.cm = cm
	close(d.started)
	d.spawn(d.stateLoop)
	return d, nil
}

// conn is the connection manager, once Start has it (a message can arrive before).
func (d *Device) conn() *conn {
	<-d.started
	return d.cm
}

// spawn runs f on a goroutine that Close waits for, unless Close was called.
func (d *Device) spawn(f func()) {
	if !d.enter() {
		return
	}
	go func() {
		defer d.wg.Done()
		f()
	}()
}

// enter counts one more goroutine or handler for Close to wait for; false after Close.
func (d *Device) enter() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.wg.Add(1)
	return true
}

// Close sends online "0" (the will, through a DISCONNECT that asks for it), ends the
// connection and waits for the Device's goroutines and a handler in progress, or for ctx; no
// handler is called once it returns (so a handler must not call it). It keeps the broker
// session, so commands sent while the device is away wait for it. Close is idempotent.
func (d *Device) Close(ctx context.Context) error {
	var err error
	d.closeOne.Do(func() {
		d.mu.Lock()
		d.closed = true
		d.mu.Unlock()
		d.cmCancel()
		select {
		case <-d.cm.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		d.cancel()
		done := make(chan struct{})
		go func() { d.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
		}
	})
	if err != nil {
		return fmt.Errorf("close fleet channel: %w", err)
	}
	return nil
}

// Status reports the connection.
func (d *Device) Status() ConnState {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.status
	s.Connected = d.up && d.ready == d.gen
	return s
}

// PublishState makes state (a JSON object, the agent's /v1/device) the device's retained state.
// It returns at once: the newest state is published at most once a StateInterval, and again on
// every connect, while the broker is unreachable only the newest is kept.
func (d *Device) PublishState(state []byte) error {
	if len(state) > d.cfg.MaxPayload {
		return fmt.Errorf("publish state of %s: %d bytes, over the limit of %d: %w", d.cfg.DeviceID, len(state), d.cfg.MaxPayload, ErrPayloadTooLarge)
	}
	s := bytes.TrimSpace(state)
	if len(s) == 0 || s[0] != '{' || !json.Valid(s) {
		return fmt.Errorf("publish state of %s: %w: not a JSON object", d.cfg.DeviceID, ErrBadState)
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("publish state of %s: %w", d.cfg.DeviceID, ErrClosed)
	}
	d.state = bytes.Clone(s)
	d.stateDirty = true
	d.mu.Unlock()
	d.poke()
	return nil
}

// PublishResult publishes the result of command id (not retained). It waits for a connection
// and for the broker's acknowledgement, or for ctx.
func (d *Device) PublishResult(ctx context.Context, id, status, message string) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("publish result of command %q: %w", id, err)
	}
	if status == "" || len(status) > 32 {
		return fmt.Errorf("publish result of command %s: status %q: give a word such as %q", id, status, StatusOK)
	}
	payload, err := json.Marshal(Result{ID: id, Status: status, Message: message})
	if err != nil {
		return fmt.Errorf("publish result of command %s: %w", id, err)
	}
	if len(payload) > d.cfg.MaxPayload {
		return fmt.Errorf("publish result of command %s: %d bytes, over the limit of %d: %w", id, len(payload), d.cfg.MaxPayload, ErrPayloadTooLarge)
	}
	if err := d.publish(ctx, &paho.Publish{Topic: deviceTopic(d.cfg.DeviceID, "result"), QoS: 1, Payload: payload}); err != nil {
		return fmt.Errorf("publish result of command %s: %w", id, err)
	}
	return nil
}

// publish sends p once a connection is up, again on a new connection if the one it went out
// on was lost, until the broker acknowledges it or ctx ends.
func (d *Device) publish(ctx context.Context, p *paho.Publish) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(d.ctx, cancel)
	defer stop()
	for {
		if err := d.conn().awaitConnection(ctx); err != nil {
			if d.ctx.Err() != nil {
				return ErrClosed
			}
			return err
		}
		resp, err := d.conn().publish(ctx, p)
		if err == nil {
			return nil
		}
		if resp != nil {
			return fmt.Errorf("the broker refused the message on %s: %w: check its access list", p.Topic, err)
		}
		if ctx.Err() != nil {
			if d.ctx.Err() != nil {
				return ErrClosed
			}
			return ctx.Err()
		}
		if !errors.Is(err, errConnectionDown) && !errors.Is(err, paho.ErrConnectionLost) &&
			!errors.Is(err, paho.ErrNetworkErrorAfterStored) {
			return err
		}
		// wait for the connection to go down and come back
		select {
		case <-time.After(d.cfg.MinBackoff / 4):
		case <-ctx.Done():
		}
	}
}

func (d *Device) poke() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

func (d *Device) report(err error) {
	d.mu.Lock()
	d.status.LastError, d.status.LastErrorAt = err, time.Now()
	d.mu.Unlock()
	if d.h.OnError != nil {
		d.h.OnError(err)
	}
}

// connected runs after each connection: subscribe, announce online, republish the state.
func (d *Device) connected(cli *paho.Client, gen int) {
	ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
	defer cancel()
	id := d.cfg.DeviceID
	topics := []string{fleetTargetTopic(d.cfg.Fleet), deviceTopic(id, "target"), deviceTopic(id, "cmd")}
	sub := &paho.Subscribe{}
	for _, t := range topics {
		sub.Subscriptions = append(sub.Subscriptions, paho.SubscribeOptions{Topic: t, QoS: 1})
	}
	ack, err := cli.Subscribe(ctx, sub)
	if err != nil {
		if d.ctx.Err() == nil {
			d.report(fmt.Errorf("subscribe to %v: %w", topics, err))
		}
		return
	}
	for i, rc := range ack.Reasons {
		if rc >= 0x80 && i < len(topics) {
			d.report(fmt.Errorf("subscribe to %s: the broker refused it (reason %#x): check its access list", topics[i], rc))
		}
	}
	var props paho.UserProperties
	props.Add(fleetProperty, d.cfg.Fleet)
	resp, err := cli.Publish(ctx, &paho.Publish{Topic: deviceTopic(id, "online"), QoS: 1, Retain: true, Payload: []byte("1"),
		Properties: &paho.PublishProperties{User: props}})
	if err != nil && resp == nil { // the connection failed; the next one tries again
		if d.ctx.Err() == nil {
			d.report(fmt.Errorf("publish online of %s: %w", id, err))
		}
		return
	}
	if err != nil { // the broker refused it: say so, and carry on
		d.report(fmt.Errorf("publish online of %s: %w: check the broker's access list", id, err))
	}
	d.mu.Lock()
	if gen == d.gen {
		d.ready = gen
	}
	d.status.Connects++
	if d.state != nil {
		d.stateDirty = true
	}
	d.mu.Unlock()
	d.poke()
	if d.h.OnConnect != nil {
		d.h.OnConnect()
	}
}

// stateLoop publishes the newest state, at most once a StateInterval.
func (d *Device) stateLoop() {
	var last time.Time
	topic := deviceTopic(d.cfg.DeviceID, "state")
	var props paho.UserProperties
	props.Add(fleetProperty, d.cfg.Fleet)
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-d.kick:
		}
		if wait := time.Until(last.Add(d.cfg.StateInterval)); wait > 0 {
			select {
			case <-d.ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		if err := d.cm.awaitConnection(d.ctx); err != nil {
			return
		}
		d.mu.Lock()
		payload, dirty := d.state, d.stateDirty
		d.stateDirty = false
		d.mu.Unlock()
		if !dirty {
			continue
		}
		ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
		resp, err := d.cm.publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: payload,
			Properties: &paho.PublishProperties{User: props}})
		cancel()
		last = time.Now()
		if err != nil && resp != nil { // refused: the next state or connection tries again
			d.report(fmt.Errorf("publish state of %s: the broker refused it: %w: check its access list", d.cfg.DeviceID, err))
			continue
		}
		if err != nil {
			if d.ctx.Err() != nil {
				return
			}
			d.report(fmt.Errorf("publish state of %s: %w", d.cfg.DeviceID, err))
			d.mu.Lock()
			d.stateDirty = true // the next connection (or the next try) sends it
			d.mu.Unlock()
			d.poke()
		}
	}
}

// received routes one message from the broker; the broker gets its acknowledgement when this
// returns.
func (d *Device) received(pr paho.PublishReceived) (bool, error) {
	if !d.enter() {
		return false, nil
	}
	defer d.wg.Done()
	p := pr.Packet
	id := d.cfg.DeviceID
	var source string
	switch p.Topic {
	case fleetTargetTopic(d.cfg.Fleet):
		source = SourceFleet
	case deviceTopic(id, "target"):
		source = SourceDevice
	case deviceTopic(id, "cmd"):
	default:
		return false, nil
	}
	if len(p.Payload) > d.cfg.MaxPayload {
		d.report(fmt.Errorf("message on %s: %d bytes, over the limit of %d: refused: %w", p.Topic, len(p.Payload), d.cfg.MaxPayload, ErrPayloadTooLarge))
		return true, nil
	}
	if source != "" {
		if _, err := ParseTarget(p.Payload); err != nil {
			d.report(fmt.Errorf("target on %s: refused: %w", p.Topic, err))
			return true, nil
		}
		if d.h.OnTarget != nil {
			d.h.OnTarget(source, bytes.Clone(p.Payload))
		}
		return true, nil
	}
	cmd, err := ParseCommand(p.Payload)
	if err == nil && p.Retain {
		// A retained command would run again at every connect of every device that ever
		// subscribes: commands are sent without retain.
		err = fmt.Errorf("%w: command %s is retained on the broker: send commands without retain, and clear this one with an empty retained message to %s", ErrBadCommand, cmd.ID, p.Topic)
	}
	if err != nil {
		err = fmt.Errorf("command on %s: refused: %w", p.Topic, err)
		d.report(err)
		if cid := commandID(p.Payload); cid != "" {
			d.spawn(func() {
				ctx, cancel := context.WithTimeout(d.ctx, time.Minute)
				defer cancel()
				if perr := d.PublishResult(ctx, cid, StatusRefused, err.Error()); perr != nil && d.ctx.Err() == nil {
					d.report(perr)
				}
			})
		}
		return true, nil
	}
	if d.h.OnCommand != nil {
		d.h.OnCommand(cmd)
	}
	return true, nil
}
