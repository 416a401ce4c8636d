package conn_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/testkit"
)

// TestMain checks every test of package conn (both conn and conn_test) for
// leaked goroutines.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	corePI = conn.DefaultProbeInterval
	corePT = conn.DefaultProbeTimeout
)

// corePeer is the far end of a net.Pipe: it reads everything, counts the CRLF
// pings it sees and, when answer is set, answers each with "\r\n".
type corePeer struct {
	nc     net.Conn
	answer atomic.Bool
	pings  atomic.Int64
	data   atomic.Int64 // bytes read that were not pings
	done   chan struct{}
	mu     sync.Mutex
	stream bytes.Buffer // everything read, when keep is set
	keep   bool
}

func startCorePeer(nc net.Conn, answer, keep bool) *corePeer {
	p := &corePeer{nc: nc, done: make(chan struct{}), keep: keep}
	p.answer.Store(answer)
	go p.loop()
	return p
}

func (p *corePeer) loop() {
	defer close(p.done)
	buf := make([]byte, 4096)
	crlfs := 0 // consecutive "\r\n" pairs seen, modulo a ping
	var prev byte
	for {
		n, err := p.nc.Read(buf)
		if p.keep {
			p.mu.Lock()
			p.stream.Write(buf[:n])
			p.mu.Unlock()
		}
		for _, b := range buf[:n] {
			switch {
			case b == '\n' && prev == '\r':
				crlfs++
				if crlfs == 2 {
					crlfs = 0
					p.pings.Add(1)
					if p.answer.Load() {
						go p.nc.Write([]byte("\r\n")) // never block the coreReader
					}
				}
			case b == '\r':
			default:
				crlfs = 0
				p.data.Add(1)
			}
			prev = b
		}
		if err != nil {
			return
		}
	}
}

func (p *corePeer) close() { p.nc.Close(); <-p.done }

// coreReader reads c until an error, as a user's read loop does.
type coreReader struct {
	n    atomic.Int64
	err  error
	done chan struct{}
}

func startCoreReader(c net.Conn) *coreReader {
	r := &coreReader{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			r.n.Add(int64(n))
			if err != nil {
				r.err = err
				return
			}
		}
	}()
	return r
}

func coreCRLFConfig() conn.Config { return conn.Config{Probe: conn.CRLF} }

func TestIdlePeerAnsweringProbesStaysAlive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pipe(t)
		p := startCorePeer(b, true, false)
		c := conn.Wrap(a, coreCRLFConfig())
		r := startCoreReader(c)

		time.Sleep(time.Hour)
		if err := c.Err(); err != nil {
			t.Fatalf("Err() = %v after an hour with an answering peer", err)
		}
		select {
		case <-c.Done():
			t.Fatal("Done closed")
		default:
		}
		// One ping per ProbeInterval of silence (pongs arrive at once).
		if got, want := p.pings.Load(), int64(time.Hour/corePI); got < want-1 || got > want {
			t.Fatalf("%d pings in an hour, want %d", got, want)
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		within(t, r.done, time.Hour, "the reader's end")
		if !errors.Is(r.err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v, want net.ErrClosed", r.err)
		}
		if !errors.Is(c.Err(), net.ErrClosed) {
			t.Fatalf("Err() = %v after Close, want net.ErrClosed", c.Err())
		}
		p.close()
	})
}

func TestSilentPeerDeclaredDead(t *testing.T) {
	for _, tc := range []struct {
		name  string
		drain bool // the peer reads (kernel alive) but never answers; else it does not even read
	}{{"drains", true}, {"blocks", false}} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a, b := pipe(t)
				var p *corePeer
				if tc.drain {
					p = startCorePeer(b, false, false)
				}
				start := time.Now()
				c := conn.Wrap(a, coreCRLFConfig())
				r := startCoreReader(c)

				within(t, c.Done(), time.Hour, "Done")
				if got := time.Since(start); got != corePI+corePT {
					t.Fatalf("declared dead after %v, want %v", got, corePI+corePT)
				}
				err := c.Err()
				if !errors.Is(err, conn.ErrUnresponsive) {
					t.Fatalf("Err() = %v, want ErrUnresponsive", err)
				}
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					t.Fatalf("Err() = %v: not a net.Error with Timeout()", err)
				}
				within(t, r.done, time.Hour, "the reader's end") // the blocked Read was unblocked
				if !errors.Is(r.err, conn.ErrUnresponsive) {
					t.Fatalf("blocked Read returned %v, want ErrUnresponsive", r.err)
				}
				if _, err := c.Write([]byte("late")); !errors.Is(err, conn.ErrUnresponsive) {
					t.Fatalf("Write after death: %v, want ErrUnresponsive", err)
				}
				if _, err := c.Read(make([]byte, 1)); !errors.Is(err, conn.ErrUnresponsive) {
					t.Fatalf("Read after death: %v, want ErrUnresponsive", err)
				}
				if err := c.Close(); err != nil {
					t.Fatalf("Close after death: %v", err)
				}
				if !errors.Is(c.Err(), conn.ErrUnresponsive) {
					t.Fatalf("Close replaced the cause: %v", c.Err())
				}
				if p != nil {
					if p.pings.Load() != 1 {
						t.Fatalf("%d pings, want 1", p.pings.Load())
					}
					p.close()
				} else {
					b.Close()
				}
			})
		})
	}
}

func TestInboundTrafficSuppressesProbes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pipe(t)
		p := startCorePeer(b, true, false)
		c := conn.Wrap(a, coreCRLFConfig())
		r := startCoreReader(c)
		for range 400 { // an hour of traffic, just under the interval apart
			time.Sleep(corePI - time.Millisecond)
			if _, err := b.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		if got := p.pings.Load(); got != 0 {
			t.Fatalf("%d pings sent despite inbound traffic", got)
		}
		time.Sleep(corePI + time.Millisecond) // now quiet: one ping
		if got := p.pings.Load(); got != 1 {
			t.Fatalf("%d pings after %v of silence, want 1", got, corePI)
		}
		if c.Err() != nil || r.n.Load() != 402 { // 400 bytes + the pong
			t.Fatalf("Err() = %v, read %d bytes", c.Err(), r.n.Load())
		}
		c.Close()
		within(t, r.done, time.Hour, "the reader's end")
		p.close()
	})
}

func TestPeerEOF(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pipe(t)
		c := conn.Wrap(a, coreCRLFConfig())
		r := startCoreReader(c)
		b.Close()
		within(t, r.done, time.Hour, "the reader's end")
		if !errors.Is(r.err, io.EOF) {
			t.Fatalf("Read: %v, want io.EOF", r.err)
		}
		within(t, c.Done(), time.Hour, "Done")
		if !errors.Is(c.Err(), io.EOF) {
			t.Fatalf("Err() = %v, want io.EOF", c.Err())
		}
		time.Sleep(time.Hour) // no probe, no death after EOF
		if !errors.Is(c.Err(), io.EOF) {
			t.Fatalf("Err() = %v, want io.EOF", c.Err())
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	})
}

func TestCloseIsIdempotent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pipe(t)
		defer b.Close()
		c := conn.Wrap(a, coreCRLFConfig())
		if c.Err() != nil {
			t.Fatalf("Err() = %v before Close", c.Err())
		}
		if err := c.Close(); err != nil {
			t.Fatalf("first Close: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		within(t, c.Done(), time.Hour, "Done")
		if !errors.Is(c.Err(), net.ErrClosed) {
			t.Fatalf("Err() = %v, want net.ErrClosed", c.Err())
		}
		if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close: %v", err)
		}
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v", err)
		}
		time.Sleep(time.Hour) // no probe after Close
	})
}

func TestConcurrentCloseReadWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pipe(t)
		p := startCorePeer(b, true, false)
		c := conn.Wrap(a, conn.Config{Probe: conn.CRLF, ProbeInterval: 10 * time.Millisecond})
		var wg sync.WaitGroup
		var readErr, writeErr error
		wg.Go(func() {
			buf := make([]byte, 10)
			for readErr == nil {
				_, readErr = c.Read(buf)
			}
		})
		wg.Go(func() {
			for writeErr == nil {
				_, writeErr = c.Write([]byte("0123456789"))
				time.Sleep(time.Millisecond)
			}
		})
		for range 3 {
			wg.Go(func() { time.Sleep(time.Second); c.Close() })
		}
		wg.Wait()
		if !errors.Is(readErr, net.ErrClosed) || !errors.Is(writeErr, net.ErrClosed) {
			t.Fatalf("Read: %v, Write: %v; want net.ErrClosed", readErr, writeErr)
		}
		if p.pings.Load() == 0 {
			t.Fatal("no probe during a second of reads and writes that the peer never answered with data") // pongs only
		}
		p.close()
	})
}

func TestProberError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pipe(t)
		p := startCorePeer(b, false, false)
		boom := errors.New("boom")
		start := time.Now()
		c := conn.Wrap(a, conn.Config{Probe: conn.ProberFunc(func(io.Writer) error { return boom })})
		within(t, c.Done(), time.Hour, "Done")
		if got := time.Since(start); got != corePI {
			t.Fatalf("dead after %v, want %v (at the probe)", got, corePI)
		}
		if err := c.Err(); !errors.Is(err, boom) || errors.Is(err, conn.ErrUnresponsive) {
			t.Fatalf("Err() = %v, want boom and not ErrUnresponsive", err)
		}
		if !strings.HasPrefix(c.Err().Error(), "conn: probe failed: ") {
			t.Fatalf("Err() = %q", c.Err())
		}
		p.close()
	})
}

func TestBlockingProber(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pipe(t)
		p := startCorePeer(b, false, false)
		release := make(chan struct{})
		unblock := sync.OnceFunc(func() { close(release) })
		defer unblock() // also when the test fails with the probe blocked
		var calls atomic.Int64
		start := time.Now()
		c := conn.Wrap(a, conn.Config{Probe: conn.ProberFunc(func(io.Writer) error {
			calls.Add(1)
			<-release // blocks without writing: only the ProbeTimeout can end it
			return nil
		})})
		// A Write issued while the prober holds the write side does not
		// hang past the death.
		time.Sleep(corePI + time.Second)
		werr := make(chan error, 1)
		go func() { _, err := c.Write([]byte("x")); werr <- err }()
		var err error
		select {
		case err = <-werr:
		case <-time.After(time.Hour):
			t.Fatal("Write still blocked an hour after the probe began")
		}
		if got := time.Since(start); got != corePI+corePT {
			t.Fatalf("Write returned after %v, want %v (the death)", got, corePI+corePT)
		}
		if !errors.Is(err, conn.ErrUnresponsive) || !errors.Is(c.Err(), conn.ErrUnresponsive) {
			t.Fatalf("Write: %v, Err(): %v; want ErrUnresponsive", err, c.Err())
		}
		unblock()
		time.Sleep(time.Minute)
		if calls.Load() != 1 {
			t.Fatalf("%d probe calls, want 1", calls.Load())
		}
		p.close()
	})
}

// A probe that cannot be written (the peer stopped reading) ends at its
// write deadline, ProbeTimeout, with ErrUnresponsive.
func TestProbeWriteBoundedByProbeTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pipe(t) // nobody reads b
		var probeErr error
		probeDone := make(chan struct{})
		start := time.Now()
		c := conn.Wrap(a, conn.Config{Probe: conn.ProberFunc(func(w io.Writer) error {
			defer close(probeDone)
			_, probeErr = w.Write([]byte("ping"))
			return probeErr
		})})
		<-probeDone
		if got := time.Since(start); got != corePI+corePT {
			t.Fatalf("probe write returned after %v, want %v", got, corePI+corePT)
		}
		// Its deadline and the monitor's timeout expire together: the write
		// fails on either.
		if !errors.Is(probeErr, os.ErrDeadlineExceeded) && !errors.Is(probeErr, io.ErrClosedPipe) {
			t.Fatalf("probe write: %v, want a deadline or closed error", probeErr)
		}
		within(t, c.Done(), time.Hour, "Done")
		if !errors.Is(c.Err(), conn.ErrUnresponsive) {
			t.Fatalf("Err() = %v", c.Err())
		}
		b.Close()
	})
}

// Probes never land inside a Write: the peer sees whole blocks and whole
// pings.
func TestProbeNeverInterleavesWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pipe(t)
		p := startCorePeer(b, true, true)
		c := conn.Wrap(a, conn.Config{Probe: conn.CRLF, ProbeInterval: time.Millisecond, ProbeTimeout: time.Second})
		r := startCoreReader(c)
		block := bytes.Repeat([]byte("x"), 1000)
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				for range 200 {
					if _, err := c.Write(block); err != nil {
						t.Error(err)
						return
					}
					time.Sleep(3 * time.Millisecond)
				}
			})
		}
		wg.Wait()
		if c.Err() != nil {
			t.Fatalf("Err() = %v", c.Err())
		}
		c.Close()
		within(t, r.done, time.Hour, "the reader's end")
		p.close()
		if p.pings.Load() < 10 {
			t.Fatalf("only %d pings: the test did not exercise interleaving", p.pings.Load())
		}
		s := p.stream.String()
		s = strings.ReplaceAll(s, "\r\n\r\n", "")
		if strings.ContainsAny(s, "\r\n") || len(s) != 3*200*1000 {
			t.Fatalf("stream corrupted: %d data bytes, stray CR/LF: %v", len(s), strings.ContainsAny(s, "\r\n"))
		}
		// Every ping sits on a block boundary.
		for i, part := range strings.Split(p.stream.String(), "\r\n\r\n") {
			if len(part)%1000 != 0 {
				t.Fatalf("segment %d has %d bytes: a ping split a Write", i, len(part))
			}
		}
	})
}

func TestWriteDeadlineRestoredAfterProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pipe(t)
		p := startCorePeer(b, true, false)
		c := conn.Wrap(a, coreCRLFConfig())
		r := startCoreReader(c)
		if err := c.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(corePI + time.Second) // a probe went out, with its own deadline
		if p.pings.Load() != 1 {
			t.Fatalf("%d pings, want 1", p.pings.Load())
		}
		if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write past the caller's deadline: %v, want ErrDeadlineExceeded", err)
		}
		if c.Err() != nil {
			t.Fatalf("a deadline ended the connection: %v", c.Err())
		}
		c.SetWriteDeadline(time.Time{})
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatalf("Write after clearing the deadline: %v", err)
		}
		c.Close()
		within(t, r.done, time.Hour, "the reader's end")
		p.close()
	})
}

func TestWriteTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pipe(t) // nobody reads b
		defer b.Close()
		c := conn.Wrap(a, conn.Config{WriteTimeout: 2 * time.Second})
		defer c.Close()
		start := time.Now()
		if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write: %v, want ErrDeadlineExceeded", err)
		}
		if got := time.Since(start); got != 2*time.Second {
			t.Fatalf("Write returned after %v, want 2s", got)
		}
		// An earlier deadline of the caller's wins.
		c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		start = time.Now()
		c.Write([]byte("x"))
		if got := time.Since(start); got != 500*time.Millisecond {
			t.Fatalf("Write returned after %v, want 500ms", got)
		}
		if c.Err() != nil {
			t.Fatalf("a write timeout ended the connection: %v", c.Err())
		}
	})
}

func TestProbingDisabled(t *testing.T) {
	for name, cfg := range map[string]conn.Config{
		"nil Probe":              {},
		"negative ProbeInterval": {Probe: conn.CRLF, ProbeInterval: -1},
		"negative ProbeTimeout":  {Probe: conn.CRLF, ProbeTimeout: -time.Hour},
		"negative everything": {Probe: conn.CRLF, ProbeInterval: -1, ProbeTimeout: -1, WriteTimeout: -1,
			UserTimeout: -1, KeepAlive: net.KeepAliveConfig{Idle: -1, Interval: -1, Count: -1}},
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a, b := pipe(t)
				p := startCorePeer(b, false, false)
				c := conn.Wrap(a, cfg)
				time.Sleep(24 * time.Hour)
				if p.pings.Load() != 0 || c.Err() != nil {
					t.Fatalf("%d pings, Err() = %v; want none, nil", p.pings.Load(), c.Err())
				}
				if _, err := c.Write([]byte("x")); err != nil {
					t.Fatalf("Write: %v", err)
				}
				c.Close()
				p.close()
			})
		})
	}
}

func TestTinyIntervalsAreClamped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pipe(t)
		p := startCorePeer(b, true, false)
		c := conn.Wrap(a, conn.Config{Probe: conn.CRLF, ProbeInterval: time.Nanosecond, ProbeTimeout: time.Nanosecond})
		r := startCoreReader(c)
		time.Sleep(time.Second)
		if c.Err() != nil {
			t.Fatalf("Err() = %v with an answering peer", c.Err())
		}
		// At most one ping per MinProbeInterval.
		if got := p.pings.Load(); got > int64(time.Second/conn.MinProbeInterval) || got < 10 {
			t.Fatalf("%d pings in 1s, want ≤ %d", got, time.Second/conn.MinProbeInterval)
		}
		p.answer.Store(false)
		silent := time.Now()
		within(t, c.Done(), time.Hour, "Done")
		if got := time.Since(silent); got > 2*conn.MinProbeInterval {
			t.Fatalf("dead %v after the peer went silent, want ≤ %v", got, 2*conn.MinProbeInterval)
		}
		within(t, r.done, time.Hour, "the reader's end")
		p.close()
	})
}

func TestDeathIsLogged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf testkit.SyncBuffer
		log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		a, b := pipe(t)
		p := startCorePeer(b, false, false)
		c := conn.Wrap(a, conn.Config{Probe: conn.CRLF, Logger: log})
		within(t, c.Done(), time.Hour, "Done")
		synctest.Wait() // Done closes first; the log line follows on the dying goroutine
		p.close()
		out := buf.String()
		for _, want := range []string{"conn: probe sent", "conn: connection ended", "reason=unresponsive", "since_last_inbound=15s"} {
			if !strings.Contains(out, want) {
				t.Errorf("log lacks %q:\n%s", want, out)
			}
		}
	})
}

func TestDialerWithDialFunc(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var p *corePeer
		d := &conn.Dialer{
			Config: coreCRLFConfig(),
			Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if network != "tcp" || addr != "registrar:5060" {
					t.Errorf("Dial(%q, %q)", network, addr)
				}
				a, b := pipe(t)
				p = startCorePeer(b, false, false)
				return a, nil
			},
		}
		c, err := d.DialContext(t.Context(), "tcp", "registrar:5060")
		if err != nil {
			t.Fatal(err)
		}
		within(t, c.Done(), time.Hour, "Done")
		if !errors.Is(c.Err(), conn.ErrUnresponsive) {
			t.Fatalf("Err() = %v", c.Err())
		}
		p.close()

		d.Dial = func(context.Context, string, string) (net.Conn, error) { return nil, nil }
		if c, err := d.DialContext(t.Context(), "tcp", "x:1"); err == nil || c != nil {
			t.Fatalf("DialContext with a Dial returning nil, nil: %v, %v", c, err)
		}
		boom := errors.New("no route")
		d.Dial = func(context.Context, string, string) (net.Conn, error) { return nil, boom }
		if _, err := d.DialContext(t.Context(), "tcp", "x:1"); !errors.Is(err, boom) {
			t.Fatalf("DialContext: %v, want the Dial error", err)
		}
	})
}

func TestErrUnresponsive(t *testing.T) {
	if ErrUnresponsive := conn.ErrUnresponsive; ErrUnresponsive.Error() != "conn: peer unresponsive" {
		t.Fatalf("ErrUnresponsive = %q", ErrUnresponsive)
	}
	var ne net.Error
	if !errors.As(conn.ErrUnresponsive, &ne) || !ne.Timeout() {
		t.Fatal("ErrUnresponsive is not a net.Error with Timeout()")
	}
}

// coreListen returns a loopback listener whose accepted connections are
// sent on the returned channel.
func coreListen(t *testing.T) (net.Listener, <-chan net.Conn) {
	t.Helper()
	lc := net.ListenConfig{KeepAlive: -1} // leave accepted sockets at the OS defaults
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan net.Conn, 16)
	go func() {
		defer close(ch)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ch <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range ch {
			c.Close()
		}
	})
	return ln, ch
}

// rawDial dials without touching the socket's keepalive settings, unlike
// net.Dial.
func rawDial(addr string) (net.Conn, error) {
	d := net.Dialer{KeepAlive: -1}
	return d.Dial("tcp", addr)
}

func TestWrapNilPanics(t *testing.T) {
	defer func() {
		if r := recover(); r != "conn: Wrap of a nil net.Conn" {
			t.Fatalf("recovered %v", r)
		}
	}()
	conn.Wrap(nil, conn.Config{})
}

// within waits for ch to be closed and fails the test if it is not within d
// (virtual time under synctest: a broken timeout fails at once, not at the
// test binary's timeout).
func within(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("%s: not within %v", what, d)
	}
}

// pipe is net.Pipe with both ends closed when the test ends, so that a test
// failing at a deadline leaves no goroutine blocked in the synctest bubble.
func pipe(t *testing.T) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}
