package conn_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"time"

	"github.com/relinkgo/relink/conn"
)

// A SIP-style client: dial with CRLF keepalive pings, use the connection,
// and learn when the peer is gone through Done and Err.
func ExampleDialer() {
	// An echo server stands in for the peer.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()

	d := &conn.Dialer{Config: conn.Config{Probe: conn.CRLF}} // 15 s bound by default
	c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(c, "OPTIONS sip:peer SIP/2.0\r\n")
	line, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Printf("echoed: %q\n", line)

	c.Close()
	<-c.Done()
	fmt.Println("closed:", errors.Is(c.Err(), net.ErrClosed))
	// Output:
	// echoed: "OPTIONS sip:peer SIP/2.0\r\n"
	// closed: true
}

// Wrap an accepted (or TLS) connection; here the peer never answers the
// probes, so the Conn declares it dead after ProbeInterval + ProbeTimeout.
func ExampleWrap() {
	client, server := net.Pipe()
	defer server.Close()
	go io.Copy(io.Discard, server) // the peer reads but never answers

	c := conn.Wrap(client, conn.Config{
		Probe:         conn.CRLF,
		ProbeInterval: 50 * time.Millisecond,
		ProbeTimeout:  50 * time.Millisecond,
	})
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a bound of its own, far above the detection

	_, err := c.Read(make([]byte, 1))                 // blocks until the peer is declared dead
	fmt.Println(errors.Is(err, conn.ErrUnresponsive)) // Done is closed by then
	fmt.Println(c.Err())
	var ne net.Error
	fmt.Println(errors.As(c.Err(), &ne) && ne.Timeout())
	// Output:
	// true
	// conn: peer unresponsive: no inbound byte within ProbeTimeout of a probe
	// true
}

// Config.NetDialer gives the kernel options to libraries that take a
// net.Dialer, such as sipgo's TransportTCP.DialerCreate.
func ExampleConfig_NetDialer() {
	cfg := conn.Config{} // keepalive 5 s idle, 1 s interval, 10 probes; TCP_USER_TIMEOUT 15 s
	dialerCreate := func(laddr net.Addr) net.Dialer {
		d := cfg.NetDialer()
		d.LocalAddr = laddr
		return d
	}
	d := dialerCreate(nil)
	fmt.Println(d.KeepAliveConfig.Idle, d.KeepAliveConfig.Interval, d.KeepAliveConfig.Count)
	// Output: 5s 1s 10
}

// The zero Config is the documented default; a negative value turns a
// setting off: here kernel keepalive and TCP_USER_TIMEOUT, leaving detection
// to the application probe.
func ExampleConfig() {
	def := conn.Config{}.NetDialer()
	fmt.Println("default keepalive:", def.KeepAliveConfig.Idle, def.KeepAliveConfig.Interval, def.KeepAliveConfig.Count,
		"TCP_USER_TIMEOUT set:", def.ControlContext != nil)

	cfg := conn.Config{
		KeepAlive:   net.KeepAliveConfig{Idle: -1}, // off
		UserTimeout: -1,                            // off: the kernel's own bound
		Probe:       conn.CRLF,
		// ProbeInterval and ProbeTimeout zero: 10 s and 5 s.
	}
	off := cfg.NetDialer()
	fmt.Println("keepalive off:", off.KeepAlive < 0, "TCP_USER_TIMEOUT set:", off.ControlContext != nil)
	// Output:
	// default keepalive: 5s 1s 10 TCP_USER_TIMEOUT set: true
	// keepalive off: true TCP_USER_TIMEOUT set: false
}

// A Prober for a protocol of your own: the Conn writes "PING\n" after
// ProbeInterval without inbound bytes, and any byte the peer sends back (here
// its "PONG\n") proves it alive.
func ExampleProberFunc() {
	ping := conn.ProberFunc(func(w io.Writer) error {
		_, err := io.WriteString(w, "PING\n")
		return err
	})

	client, server := net.Pipe()
	go func() { // the peer answers each PING with a PONG
		defer server.Close()
		r := bufio.NewReader(server)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if line == "PING\n" {
				if _, err := io.WriteString(server, "PONG\n"); err != nil {
					return
				}
			}
		}
	}()

	c := conn.Wrap(client, conn.Config{
		Probe:         ping,
		ProbeInterval: 20 * time.Millisecond, // 10 s by default
		ProbeTimeout:  time.Second,           // 5 s by default
	})
	defer c.Close()
	r := bufio.NewReader(c)
	for range 3 { // three quiet intervals, three probes, three answers
		line, err := r.ReadString('\n')
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Print(line)
	}
	// Output:
	// PONG
	// PONG
	// PONG
}
