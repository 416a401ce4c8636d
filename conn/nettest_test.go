package conn_test

import (
	"net"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"github.com/relinkgo/relink/conn"
)

// TestNetTestConn runs x/net's conformance suite for net.Conn
// implementations on Conns over loopback TCP, both ends wrapped, with the
// kernel options and the liveness monitor on. The suite echoes what it
// reads, so a probe would corrupt its data: the probe interval is longer
// than any of its tests.
func TestNetTestConn(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  conn.Config
	}{
		{"defaults", conn.Config{}},
		{"probing", conn.Config{Probe: conn.CRLF, ProbeInterval: time.Minute, ProbeTimeout: 5 * time.Second,
			UserTimeout: 10 * time.Second, KeepAlive: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 3}}},
		{"probing+WriteTimeout", conn.Config{Probe: conn.CRLF, ProbeInterval: time.Minute, WriteTimeout: time.Minute}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					return nil, nil, nil, err
				}
				defer ln.Close()
				accepted := make(chan net.Conn, 1)
				go func() {
					c, _ := ln.Accept()
					accepted <- c
				}()
				d := &conn.Dialer{Config: tc.cfg}
				dc, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
				if err != nil {
					return nil, nil, nil, err
				}
				ac := <-accepted
				if ac == nil {
					dc.Close()
					return nil, nil, nil, net.ErrClosed
				}
				wc := conn.Wrap(ac, tc.cfg)
				return dc, wc, func() { dc.Close(); wc.Close() }, nil
			})
		})
	}
}
