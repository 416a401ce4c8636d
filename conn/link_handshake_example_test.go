package conn_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/conn"
)

// A login-based protocol: the server greets each connection with "OK" or
// "BUSY <seconds>". The Link's Handshake reads the greeting: BUSY is the
// server's push-back (backoff.Overloaded), which pauses the shared Gate for
// the seconds given; the Link becomes ready only on OK.
func ExampleLinkConfig_handshake() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()
	go func() { // the first login is refused with BUSY 1, the next accepted
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if n == 0 {
				fmt.Fprint(c, "BUSY 1\n")
				c.Close()
				continue
			}
			fmt.Fprint(c, "OK\n")
			go func() { _, _ = c.Read(make([]byte, 1)); c.Close() }()
		}
	}()

	gate := backoff.NewGate(backoff.GateConfig{Destination: ln.Addr().String()})
	defer gate.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	link, err := conn.NewLink(conn.LinkConfig{
		Addrs: []string{ln.Addr().String()},
		Gate:  gate,
		Handshake: func(ctx context.Context, c *conn.Conn) error {
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return err
			}
			var secs int
			if _, err := fmt.Sscanf(line, "BUSY %d", &secs); err == nil {
				return backoff.Overloaded(errors.New(strings.TrimSpace(line)), time.Duration(secs)*time.Second)
			}
			if line != "OK\n" {
				return fmt.Errorf("unexpected greeting %q", line)
			}
			return nil
		},
		Session: func(ctx context.Context, c *conn.Conn) error {
			<-ctx.Done()
			return nil
		},
		OnStateChange: func(sc conn.LinkStateChange) {
			switch sc.To {
			case conn.LinkTransientFailure:
				fmt.Printf("%v: %v; gate %v\n", sc.To, sc.Err, gate.State())
			case conn.LinkReady:
				fmt.Println(sc.To)
				cancel()
			}
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	err = link.Run(ctx)
	fmt.Println("Run:", err)
	// Output:
	// transient-failure: backoff: overloaded, retry after 1s: BUSY 1; gate paused
	// ready
	// Run: context canceled
}
