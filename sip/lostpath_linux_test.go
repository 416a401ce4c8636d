//go:build linux

package sip

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
	"golang.org/x/sys/unix"
)

// fullListener listens on loopback with the smallest accept queue and fills
// it, so that Linux drops every further SYN to it (a silent black hole, no
// root needed); drain accepts from then on: the path is back.
func fullListener(t *testing.T) (addr string, drain func()) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "listener")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	addr = ln.Addr().String()
	// Fill the queue: a backlog of 0 holds one connection; the next
	// connect's SYN is dropped.
	var conns []net.Conn
	done := make(chan struct{})
	drained := false
	t.Cleanup(func() {
		ln.Close()
		if drained {
			<-done // the accept loop closed what it accepted
		}
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break // dropped: the queue is full
		}
		conns = append(conns, c)
		if i > 8 {
			t.Fatal("the accept queue never filled")
		}
	}
	return addr, func() {
		drained = true
		go func() {
			defer close(done)
			var in []net.Conn
			defer func() {
				for _, c := range in {
					c.Close()
				}
			}()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				in = append(in, c)
			}
		}()
	}
}

// A connect whose destination's last connect timed out probes the path
// from its first attempt: a path restored during that attempt is seen
// within about a probe period, not at the attempt's end (the next
// REGISTER, or a new scout, used to send its first SYN unprobed and wait
// out the whole 1 s bound: a restore seen 0.49 s late in one fleet run of
// ten).
func TestConnectRemembersALostPath(t *testing.T) {
	addr, drain := fullListener(t)
	ua := newTestUA(t)
	var ruri sipmsg.Uri
	if err := sipmsg.ParseUri("sip:"+addr+";transport=tcp", &ruri); err != nil {
		t.Fatal(err)
	}
	connect := func(d time.Duration) (time.Time, error) {
		req := sipmsg.NewRequest(sipmsg.REGISTER, ruri)
		req.AppendHeader(&sipmsg.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "TCP",
			Host: "127.0.0.1", Params: sipmsg.NewParams()})
		req.SetTransport("TCP")
		req.SetDestination(addr)
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		c, err := ua.mon.connect(ctx, req, nil)
		if err == nil {
			c.TryClose()
		}
		return time.Now(), err
	}
	// The first call's connect times out in the hole: the destination is
	// lost.
	if _, err := connect(1200 * time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("through the black hole: %v, want the call's deadline", err)
	}
	// The next call starts its first attempt into the hole; the path comes
	// back 300 ms into it. Unprobed, that attempt's SYN is lost and the
	// next goes at its 1 s bound: 0.7 s after the restore.
	type result struct {
		at  time.Time
		err error
	}
	res := make(chan result, 1)
	go func() {
		at, err := connect(10 * time.Second)
		res <- result{at, err}
	}()
	time.Sleep(300 * time.Millisecond)
	drain()
	back := time.Now()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	took := r.at.Sub(back)
	if took > 450*time.Millisecond {
		t.Fatalf("connected %v after the restore, want within about a probe period (%v), well under the bound's 0.7 s",
			took, pathProbeEvery)
	}
	t.Logf("connected %v after the restore", took)
}
