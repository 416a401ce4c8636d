//go:build unix

package conn_test

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/testkit"
)

// countingCRLF is conn.CRLF (its pongs stripped) that signals each probe.
type countingCRLF struct {
	n    *atomic.Int64
	sent chan struct{}
}

func (p countingCRLF) Probe(w io.Writer) error {
	p.n.Add(1)
	select {
	case p.sent <- struct{}{}:
	default:
	}
	return conn.CRLF.Probe(w)
}

func (countingCRLF) NewStripper() conn.Stripper {
	return conn.CRLF.(conn.ReplyFilter).NewStripper()
}

// BenchmarkProbe is the cost of one probe, on the client's side (the echo
// server runs in a child process).
//
//   - write: the probe path alone on one loopback connection whose peer
//     discards (ProbeNow: what the monitor runs when a probe is due), without
//     scheduling or the pong.
//
//   - fleet: 500 connections probed every 50 ms (10,000 probes/s) against an
//     echo server, each with a reader, as the scale bench runs
//     them; one op is one probe, cpu-ns/op is the process's CPU per probe
//     (scheduling, the write and the pong's read), and
//     allocs/op the allocations per probe. Compare with raw-fleet, which
//     writes the same 4 bytes on plain connections from one goroutine at the
//     same rate (the floor: the write and the read without relink).
//
//     go test -run '^$' -bench Probe -benchmem ./conn
func BenchmarkProbe(b *testing.B) {
	b.Run("write", benchProbeWrite)
	b.Run("fleet", func(b *testing.B) { benchProbeFleet(b, true) })
	b.Run("raw-fleet", func(b *testing.B) { benchProbeFleet(b, false) })
}

func benchProbeWrite(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(io.Discard, s)
		s.Close()
	}()
	d := &conn.Dialer{Config: conn.Config{Probe: conn.CRLF, ProbeInterval: time.Hour}}
	c, err := d.DialContext(b.Context(), "tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	cpu0 := processCPU()
	for b.Loop() {
		if err := conn.ProbeNow(c); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

const (
	fleetConns    = 500
	fleetInterval = 50 * time.Millisecond
)

func benchProbeFleet(b *testing.B, wrapped bool) {
	if _, err := testkit.RaiseFileLimit(3*fleetConns + 200); err != nil {
		b.Skip(err)
	}
	addr, stopEcho := serverProcess(b, "echo")
	defer stopEcho()
	var n atomic.Int64
	sent := make(chan struct{}, 1<<16)
	d := &conn.Dialer{Config: conn.Config{Probe: countingCRLF{&n, sent}, ProbeInterval: fleetInterval}}
	conns := make([]net.Conn, 0, fleetConns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range fleetConns {
		var c net.Conn
		var err error
		if wrapped {
			c, err = d.DialContext(b.Context(), "tcp", addr)
		} else {
			c, err = net.Dial("tcp", addr)
		}
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		go func() {
			var buf [64]byte
			for {
				if _, err := c.Read(buf[:]); err != nil {
					return
				}
			}
		}()
	}
	stop := make(chan struct{})
	defer close(stop)
	if !wrapped {
		go rawProber(conns, &n, sent, stop)
	}
	time.Sleep(2 * fleetInterval) // settle
	b.ReportAllocs()
	cpu0 := processCPU()
	n0 := n.Load()
	watchdog := time.NewTimer(time.Hour)
	defer watchdog.Stop()
	for b.Loop() {
		watchdog.Reset(10 * time.Second)
		select {
		case <-sent:
		case <-watchdog.C:
			b.Fatal("no probe within 10 s")
		}
	}
	cpu := processCPU() - cpu0
	probes := n.Load() - n0
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(max(probes, 1)), "cpu-ns/op")
}

// rawProber writes conn.CRLF's ping on each plain connection once per
// fleetInterval, a tenth of them every tenth of it: the cheapest pacing.
func rawProber(conns []net.Conn, n *atomic.Int64, sent chan struct{}, stop chan struct{}) {
	ping := []byte("\r\n\r\n")
	t := time.NewTicker(fleetInterval / 10)
	defer t.Stop()
	for i := 0; ; {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		for range len(conns) / 10 {
			if _, err := conns[i].Write(ping); err != nil {
				return
			}
			i = (i + 1) % len(conns)
			n.Add(1)
			select {
			case sent <- struct{}{}:
			default:
			}
		}
	}
}
