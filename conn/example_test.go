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

	_, err := c.Read(make([]byte, 1)) // blocks until the peer is declared dead
	fmt.Println(errors.Is(err, conn.ErrUnresponsive))
	<-c.Done()
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
	cfg := conn.Config{} // keepalive 5 s/5 s/2 and TCP_USER_TIMEOUT 15 s
	dialerCreate := func(laddr net.Addr) net.Dialer {
		d := cfg.NetDialer()
		d.LocalAddr = laddr
		return d
	}
	d := dialerCreate(nil)
	fmt.Println(d.KeepAliveConfig.Idle, d.KeepAliveConfig.Interval, d.KeepAliveConfig.Count)
	// Output: 5s 1s 10
}

// A Prober for a protocol of your own: any byte the peer sends back proves
// it alive.
func ExampleProberFunc() {
	ping := conn.ProberFunc(func(w io.Writer) error {
		_, err := io.WriteString(w, "PING\n")
		return err
	})
	_ = conn.Config{Probe: ping, ProbeInterval: 30 * time.Second, ProbeTimeout: 10 * time.Second}
}
