package conn_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/conn"
)

// A Link keeps a connection to an echo server up: its Session says hello on
// each connection. The first session ends with an error, so the Link
// reconnects after a backoff delay and runs the Session again.
func ExampleLink() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()
	go func() { // an echo server
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sessions := 0
	link, err := conn.NewLink(conn.LinkConfig{
		Dialer: &conn.Dialer{Config: conn.Config{
			Probe: conn.CRLF, ProbeInterval: 5 * time.Second, ProbeTimeout: 2 * time.Second,
		}},
		Addrs: []string{ln.Addr().String()},
		Session: func(ctx context.Context, c *conn.Conn) error {
			sessions++
			fmt.Fprintf(c, "hello %d\n", sessions)
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return err
			}
			fmt.Print("echo: ", line)
			if sessions == 1 {
				return errors.New("session over")
			}
			cancel() // stop the example
			<-ctx.Done()
			return nil
		},
		Backoff: backoff.NewFactory(backoff.Exponential{Base: 10 * time.Millisecond}),
		OnStateChange: func(e conn.LinkStateChange) {
			if e.Err != nil {
				fmt.Printf("%v -> %v: %v\n", e.From, e.To, e.Err)
				return
			}
			fmt.Printf("%v -> %v\n", e.From, e.To)
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	err = link.Run(ctx)
	fmt.Println("Run:", err)
	// Output:
	// idle -> connecting
	// connecting -> ready
	// echo: hello 1
	// ready -> transient-failure: session over
	// transient-failure -> connecting
	// connecting -> ready
	// echo: hello 2
	// ready -> shutdown: context canceled
	// Run: context canceled
}
