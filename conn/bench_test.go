package conn_test

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/relinkgo/relink/conn"
)

const chunk = 64 << 10

// benchConfig is a Conn with everything on: kernel options, a prober (its
// interval longer than any benchmark, so that the data stays clean) and a
// write lock shared with probes.
var benchConfig = conn.Config{Probe: conn.CRLF, ProbeInterval: time.Hour}

// loopbackPair returns a client connection (raw or wrapped) and the server
// end, over loopback TCP.
func loopbackPair(tb testing.TB, wrapped bool) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	var c net.Conn
	if wrapped {
		d := &conn.Dialer{Config: benchConfig}
		c, err = d.DialContext(tb.Context(), "tcp", ln.Addr().String())
	} else {
		c, err = net.Dial("tcp", ln.Addr().String())
	}
	if err != nil {
		tb.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		tb.Fatal("accept failed")
	}
	return c, s
}

// reportCPU reports the process CPU time per operation (both ends of the
// connection, kernel copies included) and the throughput per CPU second:
// unlike wall time, they hardly move when other processes load the machine.
func reportCPU(b *testing.B, cpu0 time.Duration) {
	cpu := processCPU() - cpu0
	if cpu <= 0 {
		return // not measurable on this platform
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(b.N)*chunk/cpu.Seconds()/1e6, "MB/cpu-s")
}

// BenchmarkWrite64KiB and BenchmarkRead64KiB compare a Conn (probing on)
// with a raw *net.TCPConn over loopback. Compare MB/s, or, on a busy
// machine, MB/cpu-s (throughput per CPU second, both ends included).
func BenchmarkWrite64KiB(b *testing.B) {
	for _, mode := range []struct {
		name    string
		wrapped bool
	}{{"raw", false}, {"wrapped", true}} {
		b.Run(mode.name, func(b *testing.B) {
			c, s := loopbackPair(b, mode.wrapped)
			var wg sync.WaitGroup
			wg.Go(func() { io.CopyBuffer(io.Discard, s, make([]byte, chunk)) })
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0)
			c.Close()
			wg.Wait()
			s.Close()
		})
	}
}

func BenchmarkRead64KiB(b *testing.B) {
	for _, mode := range []struct {
		name    string
		wrapped bool
	}{{"raw", false}, {"wrapped", true}} {
		b.Run(mode.name, func(b *testing.B) {
			c, s := loopbackPair(b, mode.wrapped)
			var wg sync.WaitGroup
			wg.Go(func() {
				buf := make([]byte, chunk)
				for {
					if _, err := s.Write(buf); err != nil {
						return
					}
				}
			})
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0)
			s.Close()
			c.Close()
			wg.Wait()
		})
	}
}

// nopConn is a net.Conn whose Read and Write return at once: it isolates
// the wrapper's own cost.
type nopConn struct{ net.Conn }

func (nopConn) Read(b []byte) (int, error)       { return len(b), nil }
func (nopConn) Write(b []byte) (int, error)      { return len(b), nil }
func (nopConn) Close() error                     { return nil }
func (nopConn) SetDeadline(time.Time) error      { return nil }
func (nopConn) SetReadDeadline(time.Time) error  { return nil }
func (nopConn) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkWrapperCost is the CPU a Conn adds to each Read and Write, with
// probing and a WriteTimeout on (the most expensive configuration).
func BenchmarkWrapperCost(b *testing.B) {
	buf := make([]byte, chunk)
	for _, tc := range []struct {
		name string
		cfg  conn.Config
	}{
		{"probing", benchConfig},
		{"probing+WriteTimeout", conn.Config{Probe: conn.CRLF, ProbeInterval: time.Hour, WriteTimeout: time.Minute}},
	} {
		a, p := net.Pipe() // gives nopConn its addresses
		c := conn.Wrap(nopConn{a}, tc.cfg)
		b.Run(tc.name+"/Read", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.Read(buf)
			}
		})
		b.Run(tc.name+"/Write", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.Write(buf)
			}
		})
		c.Close()
		a.Close()
		p.Close()
	}
}

// Read and Write do not allocate, with probing and a WriteTimeout on.
func TestReadWriteDoNotAllocate(t *testing.T) {
	cfg := benchConfig
	cfg.WriteTimeout = time.Minute
	ln, accepted := coreListen(t)
	d := &conn.Dialer{Config: cfg}
	c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-accepted
	go io.Copy(s, s) // echo
	buf := make([]byte, 512)
	if n := testing.AllocsPerRun(200, func() {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("Write+Read allocate %v times", n)
	}
}
