package faultproxy_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
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

func ExampleProxy_ForgetReset() {
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
	old, _ := net.Dial("tcp", p.Addr())
	defer old.Close()
	// A round trip first: the connection has reached the far end, as a
	// working flow has (one only accepted when the freeze begins is
	// connected and forwarded when it ends).
	fmt.Println("old connection echoes:", testkit.EchoOnce(old, "ping", 5*time.Second) == nil)

	p.Freeze()
	old.Write([]byte("REGISTER")) // sent into the silence
	time.Sleep(50 * time.Millisecond)
	p.ForgetReset() // the far end restarted: it answers the old connection with an RST
	old.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = old.Read(make([]byte, 8))
	fmt.Println("old connection reset:", errors.Is(err, syscall.ECONNRESET))

	fresh, _ := net.Dial("tcp", p.Addr()) // a redial works
	defer fresh.Close()
	fmt.Println("new connection echoes:", testkit.EchoOnce(fresh, "ping", 5*time.Second) == nil)
	// Output:
	// old connection echoes: true
	// old connection reset: true
	// new connection echoes: true
}
