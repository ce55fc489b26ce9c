package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session/state"
)

// errConnectionDown is returned by a publish or subscribe while no connection is up.
var errConnectionDown = errors.New("not connected to the broker")

// errShuttingDown is returned by awaitConnection once the connection is closed for good.
var errShuttingDown = errors.New("the fleet channel is closing")

// connTimeout bounds one attempt: the dial, TLS and the CONNECT/CONNACK exchange.
const connTimeout = 30 * time.Second

// connHooks are what a conn tells its owner; each runs on the conn's own goroutine, but the
// error hooks, which run on their own.
type connHooks struct {
	backoff      func(attempt int) time.Duration // wait before attempt (0 is the first since the last connection)
	connectError func(error)                     // an attempt failed
	up           func(*paho.Client)              // a connection came up
	down         func()                          // the connection went down; a new attempt follows
	clientError  func(error)                     // the connection failed
	serverClose  func(*paho.Disconnect)          // the broker sent a DISCONNECT
}

// conn keeps one MQTT connection to a broker up: it dials, connects, waits for the
// connection to fail and tries again after a backoff, until its context ends. Every
// connection shares one session state, so QoS 1 messages in flight survive a reconnect.
type conn struct {
	t       *transport
	connect func() *paho.Connect // a new CONNECT packet for every attempt
	client  paho.ClientConfig    // without Conn and the error callbacks, which conn sets
	hooks   connHooks
	bye     *paho.Disconnect // sent when the context ends while connected
	done    chan struct{}    // closed when run returns

	mu  sync.Mutex
	cli *paho.Client  // nil while down
	upC chan struct{} // closed while a connection is up
}

func newConn(t *transport, connect func() *paho.Connect, client paho.ClientConfig, hooks connHooks, bye *paho.Disconnect) *conn {
	client.Session = state.NewInMemory()
	return &conn{t: t, connect: connect, client: client, hooks: hooks, bye: bye,
		done: make(chan struct{}), upC: make(chan struct{})}
}

// run keeps the connection until ctx ends.
func (c *conn) run(ctx context.Context) {
	defer close(c.done)
	for {
		cli, failed := c.establish(ctx)
		if cli == nil {
			return
		}
		c.mu.Lock()
		c.cli = cli
		close(c.upC)
		c.mu.Unlock()
		c.hooks.up(cli)

		select {
		case <-failed:
		case <-cli.Done():
		case <-ctx.Done():
			if c.bye != nil {
				cli.Disconnect(c.bye)
			}
		}
		<-cli.Done()
		c.mu.Lock()
		c.cli = nil
		c.upC = make(chan struct{})
		c.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		c.hooks.down()
	}
}

// establish tries, after a backoff each time, until a connection is up or ctx ends (nil). The
// channel it returns gets the connection's first failure.
func (c *conn) establish(ctx context.Context) (*paho.Client, <-chan struct{}) {
	for attempt := 0; ; attempt++ {
		select {
		case <-time.After(c.hooks.backoff(attempt)):
		case <-ctx.Done():
			return nil, nil
		}
		cli, failed, err := c.attempt(ctx)
		if err == nil {
			return cli, failed
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		c.hooks.connectError(err)
	}
}

func (c *conn) attempt(ctx context.Context) (*paho.Client, <-chan struct{}, error) {
	actx, cancel := context.WithTimeout(ctx, connTimeout)
	defer cancel()
	nc, err := dialBroker(actx, c.t)
	if err != nil {
		return nil, nil, err
	}
	// Only the first failure of a connection ends it and is reported.
	failed := make(chan struct{})
	var once sync.Once
	fail := func() bool {
		first := false
		once.Do(func() { first = true; close(failed) })
		return first
	}
	cfg := c.client
	cfg.Conn = nc
	cfg.OnClientError = func(err error) {
		if fail() && ctx.Err() == nil {
			go c.hooks.clientError(err)
		}
	}
	cfg.OnServerDisconnect = func(d *paho.Disconnect) {
		fail()
		go c.hooks.serverClose(d)
	}
	cli := paho.NewClient(cfg)
	ack, err := cli.Connect(actx, c.connect())
	if err != nil {
		nc.Close()
		<-cli.Done()
		if ack != nil && ack.ReasonCode >= 0x80 {
			why := ""
			if ack.Properties != nil && ack.Properties.ReasonString != "" {
				why = " " + ack.Properties.ReasonString
			}
			return nil, nil, fmt.Errorf("the broker refused the connection (reason %#x%s): %w: check the device's user, password file or certificate", ack.ReasonCode, why, err)
		}
		return nil, nil, err
	}
	return cli, failed, nil
}

// awaitConnection returns once a connection is up, or with an error when ctx ends or the
// conn is closed.
func (c *conn) awaitConnection(ctx context.Context) error {
	c.mu.Lock()
	ch := c.upC
	c.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return errShuttingDown
	}
}

func (c *conn) current() *paho.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cli
}

// publish sends p on the connection that is up now.
func (c *conn) publish(ctx context.Context, p *paho.Publish) (*paho.PublishResponse, error) {
	cli := c.current()
	if cli == nil {
		return nil, errConnectionDown
	}
	return cli.Publish(ctx, p)
}
