package systemd

import (
	"context"
	"fmt"
	"strings"

	"github.com/godbus/dbus/v5"
)

// Inhibitor is one of logind's inhibitor locks (org.freedesktop.login1
// ListInhibitors): a program that asked to delay or block what.
type Inhibitor struct {
	What string // colon-separated: shutdown, sleep, idle, handle-power-key, ...
	Who  string // the program's name for itself
	Why  string
	Mode string // "block" or "delay"
	UID  uint32
	PID  uint32
}

// Logind asks systemd-logind about inhibitors over D-Bus.
type Logind struct {
	conn *dbus.Conn
	own  bool // the connection is Logind's to close
}

// ConnectLogind connects to logind on the system bus; ErrNotSystemd when
// there is no system bus.
func ConnectLogind(ctx context.Context) (*Logind, error) {
	c, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("connect to logind: %w: %v", ErrNotSystemd, err)
	}
	return &Logind{conn: c, own: true}, nil
}

// NewLogind asks logind through an open bus connection (which the caller
// keeps and closes).
func NewLogind(conn *dbus.Conn) *Logind { return &Logind{conn: conn} }

// Close closes the connection that ConnectLogind opened.
func (l *Logind) Close() error {
	if l.own {
		return l.conn.Close()
	}
	return nil
}

// Inhibitors lists every inhibitor lock that logind knows.
func (l *Logind) Inhibitors(ctx context.Context) ([]Inhibitor, error) {
	var raw [][]any
	obj := l.conn.Object("org.freedesktop.login1", "/org/freedesktop/login1")
	if err := obj.CallWithContext(ctx, "org.freedesktop.login1.Manager.ListInhibitors", 0).Store(&raw); err != nil {
		return nil, fmt.Errorf("list logind inhibitors: %w", err)
	}
	out := make([]Inhibitor, 0, len(raw))
	for i, r := range raw {
		if len(r) != 6 {
			return nil, fmt.Errorf("list logind inhibitors: entry %d has %d fields, want 6 (what, who, why, mode, uid, pid)", i, len(r))
		}
		var in Inhibitor
		var ok [6]bool
		in.What, ok[0] = r[0].(string)
		in.Who, ok[1] = r[1].(string)
		in.Why, ok[2] = r[2].(string)
		in.Mode, ok[3] = r[3].(string)
		in.UID, ok[4] = r[4].(uint32)
		in.PID, ok[5] = r[5].(uint32)
		for j, good := range ok {
			if !good {
				return nil, fmt.Errorf("list logind inhibitors: entry %d field %d is %T", i, j, r[j])
			}
		}
		out = append(out, in)
	}
	return out, nil
}

// ShutdownBlockers lists the inhibitors that block a shutdown or reboot
// (what names "shutdown", mode "block"); "delay" ones only delay it.
func (l *Logind) ShutdownBlockers(ctx context.Context) ([]Inhibitor, error) {
	all, err := l.Inhibitors(ctx)
	if err != nil {
		return nil, err
	}
	var out []Inhibitor
	for _, in := range all {
		if in.Mode != "block" {
			continue
		}
		for _, w := range strings.Split(in.What, ":") {
			if w == "shutdown" {
				out = append(out, in)
				break
			}
		}
	}
	return out, nil
}
