package conn_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/relinkgo/relink/conn"
)

// On plain TCP a probe is one non-blocking write from the timing wheel.
// When the peer stopped reading and the send buffer is full, the probe is
// written on a goroutine, bounded by ProbeTimeout: a peer that keeps
// sending (every 150 ms, so the monitor's own timeout never runs out) but
// never reads is declared unresponsive when the probe cannot be written,
// as before the wheel, and later Writes fail with that cause.
func TestDirectProbeIntoFullSendBuffer(t *testing.T) {
	ln, accepted := coreListen(t)
	const pi, pt = 50 * time.Millisecond, 400 * time.Millisecond
	// A probe larger than the kernel's slack: a few bytes may always be
	// appended to the last queued segment, 256 KiB never.
	ping := make([]byte, 256<<10)
	d := &conn.Dialer{Config: conn.Config{ProbeInterval: pi, ProbeTimeout: pt, UserTimeout: -1,
		WriteTimeout: 200 * time.Millisecond,
		Probe:        conn.ProberFunc(func(w io.Writer) error { _, err := w.Write(ping); return err })}}
	c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var s interface {
		io.Writer
		Close() error
	}
	select {
	case s = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("no accept")
	}
	// The peer talks every 150 ms and never reads.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(150 * time.Millisecond):
				if _, err := s.Write([]byte("OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n")); err != nil {
					return
				}
			}
		}
	}()
	go io.Copy(io.Discard, c)
	// Fill the send buffer: the Write times out (WriteTimeout) once the
	// kernel takes no more, which leaves the Conn alive.
	big := make([]byte, 64<<20)
	if _, err := c.Write(big); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("filling Write: %v, want a deadline error", err)
	}
	if c.Err() != nil {
		t.Fatalf("Err() after a Write timeout: %v", c.Err())
	}
	start := time.Now()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("not declared dead within 10 s")
	}
	took := time.Since(start)
	if err := c.Err(); !errors.Is(err, conn.ErrUnresponsive) || !strings.Contains(err.Error(), "probe not written") {
		t.Fatalf("Err() = %v, want ErrUnresponsive for a probe not written", err)
	}
	if took > 150*time.Millisecond+pi+pt+time.Second {
		t.Fatalf("dead after %v, want within about %v", took, 150*time.Millisecond+pi+pt)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, conn.ErrUnresponsive) {
		t.Fatalf("Write after death: %v, want ErrUnresponsive", err)
	}
	_ = s.Close()
}

// A probe written by the wheel reaches the peer whole, between two Writes,
// and its pong is stripped: many rounds of Write, quiet, probe.
func TestDirectProbeBetweenWrites(t *testing.T) {
	ln, accepted := coreListen(t)
	d := &conn.Dialer{Config: conn.Config{Probe: conn.CRLF, ProbeInterval: 20 * time.Millisecond}}
	c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var s io.ReadWriteCloser
	select {
	case s = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("no accept")
	}
	defer s.Close()
	got := make(chan string, 1)
	go func() {
		var all bytes.Buffer
		buf := make([]byte, 4096)
		for {
			n, err := s.Read(buf)
			all.Write(buf[:n])
			if bytes.Count(buf[:n], []byte("\r\n\r\n")) > 0 {
				_, _ = s.Write([]byte("\r\n")) // the pong
			}
			if err != nil {
				got <- all.String()
				return
			}
		}
	}()
	msg := "MESSAGE sip:a SIP/2.0\r\nContent-Length: 0\r\n\r\n"
	for range 10 {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(60 * time.Millisecond) // a probe or more
	}
	c.Close()
	var all string
	select {
	case all = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("peer did not see the close")
	}
	// What the peer received is the messages with whole pings between.
	rest := strings.ReplaceAll(all, msg, "")
	if strings.Count(all, msg) != 10 || strings.Trim(rest, "\r\n") != "" || len(rest)%4 != 0 || len(rest) == 0 {
		t.Fatalf("peer got %d messages and %q beside them", strings.Count(all, msg), rest)
	}
	if c.Err() == nil || !errors.Is(c.Err(), net.ErrClosed) {
		t.Fatalf("Err() = %v after Close", c.Err())
	}
}
