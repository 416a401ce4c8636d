package faultproxy_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/testkit"
)

func ExampleNew() {
	// An echo server stands for the far end.
	srv, err := testkit.ListenEcho("")
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	p, err := faultproxy.New(srv.Addr())
	if err != nil {
		panic(err)
	}
	defer p.Close()
	c, _ := net.Dial("tcp", p.Addr())
	defer c.Close()
	buf := make([]byte, 4)

	c.Write([]byte("ping"))
	io.ReadFull(c, buf)
	fmt.Printf("forwarding: %s\n", buf)

	p.Freeze() // the path goes silent: no FIN, no RST
	c.Write([]byte("pong"))
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, err = c.Read(buf)
	fmt.Println("frozen, read times out:", errors.Is(err, os.ErrDeadlineExceeded))

	p.Resume() // nothing was lost
	c.SetReadDeadline(time.Time{})
	io.ReadFull(c, buf)
	fmt.Printf("resumed: %s\n", buf)
	// Output:
	// forwarding: ping
	// frozen, read times out: true
	// resumed: pong
}
