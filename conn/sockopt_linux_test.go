//go:build linux

package conn_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkgo/relink/conn"
)

// sockopts are the kernel options read back from a socket.
type sockopts struct {
	keepAlive             bool
	idle, interval, count int // seconds, seconds, probes
	userTimeoutMS         int
}

func readSockopts(t *testing.T, nc net.Conn) sockopts {
	t.Helper()
	for {
		w, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		nc = w.NetConn()
	}
	rc, err := nc.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var o sockopts
	var errs []error
	get := func(fd, level, opt int) int {
		v, err := unix.GetsockoptInt(fd, level, opt)
		errs = append(errs, err)
		return v
	}
	if err := rc.Control(func(fd uintptr) {
		o.keepAlive = get(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE) != 0
		o.idle = get(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		o.interval = get(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
		o.count = get(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
		o.userTimeoutMS = get(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	}); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return o
}

// tlsLike wraps a net.Conn and exposes it through NetConn, as *tls.Conn does.
type tlsLike struct{ net.Conn }

func (w tlsLike) NetConn() net.Conn { return w.Conn }

func TestKernelOptionsAreSet(t *testing.T) {
	osDefault := func() sockopts {
		// What a fresh socket has, for fields that must be left alone.
		ln, _ := coreListen(t)
		c, err := rawDial(ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return readSockopts(t, c)
	}()
	configs := []struct {
		name string
		cfg  conn.Config
		want sockopts
	}{
		{"zero", conn.Config{}, sockopts{true, 5, 1, 10, 15000}},
		{"custom", conn.Config{KeepAlive: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: 2 * time.Second, Count: 3},
			UserTimeout: 3 * time.Second}, sockopts{true, 1, 2, 3, 3000}},
		{"enable with zero fields", conn.Config{KeepAlive: net.KeepAliveConfig{Enable: true}, UserTimeout: 1500 * time.Microsecond},
			sockopts{true, 5, 1, 10, 2}},
		{"disabled", conn.Config{KeepAlive: net.KeepAliveConfig{Idle: -1}, UserTimeout: -1},
			sockopts{false, osDefault.idle, osDefault.interval, osDefault.count, osDefault.userTimeoutMS}},
		{"enable, negative fields keep the OS values", conn.Config{KeepAlive: net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: 4}},
			sockopts{true, osDefault.idle, osDefault.interval, 4, 15000}},
	}
	ways := []struct {
		name string
		make func(t *testing.T, cfg conn.Config, addr string, accepted <-chan net.Conn) net.Conn
	}{
		{"Dialer", func(t *testing.T, cfg conn.Config, addr string, _ <-chan net.Conn) net.Conn {
			d := &conn.Dialer{Config: cfg}
			c, err := d.DialContext(t.Context(), "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}},
		{"Dialer.Dial", func(t *testing.T, cfg conn.Config, addr string, _ <-chan net.Conn) net.Conn {
			d := &conn.Dialer{Config: cfg, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var nd net.Dialer
				nd.KeepAlive = -1
				return nd.DialContext(ctx, network, addr)
			}}
			c, err := d.DialContext(t.Context(), "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}},
		{"Wrap dialed", func(t *testing.T, cfg conn.Config, addr string, _ <-chan net.Conn) net.Conn {
			nc, err := rawDial(addr)
			if err != nil {
				t.Fatal(err)
			}
			return conn.Wrap(nc, cfg)
		}},
		{"Wrap accepted", func(t *testing.T, cfg conn.Config, addr string, accepted <-chan net.Conn) net.Conn {
			nc, err := rawDial(addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { nc.Close() })
			return conn.Wrap(<-accepted, cfg)
		}},
		{"Wrap TLS-like", func(t *testing.T, cfg conn.Config, addr string, _ <-chan net.Conn) net.Conn {
			nc, err := rawDial(addr)
			if err != nil {
				t.Fatal(err)
			}
			return conn.Wrap(tlsLike{nc}, cfg)
		}},
		{"NetDialer", func(t *testing.T, cfg conn.Config, addr string, _ <-chan net.Conn) net.Conn {
			d := cfg.NetDialer()
			d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
			nc, err := d.DialContext(t.Context(), "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			return nc
		}},
	}
	for _, tc := range configs {
		for _, way := range ways {
			t.Run(tc.name+"/"+way.name, func(t *testing.T) {
				ln, accepted := coreListen(t)
				c := way.make(t, tc.cfg, ln.Addr().String(), accepted)
				defer c.Close()
				got := readSockopts(t, c)
				want := tc.want
				if !want.keepAlive { // the interval fields do not matter when off
					got.idle, got.interval, got.count = want.idle, want.interval, want.count
				}
				if got != want {
					t.Fatalf("socket options %+v, want %+v", got, want)
				}
			})
		}
	}
}

// A peer whose kernel stops acknowledging (here: it stops reading, and
// Linux applies TCP_USER_TIMEOUT to a zero window) makes the kernel abort
// with ETIMEDOUT, which the Conn reports as ErrUnresponsive.
func TestKernelTimeoutIsUnresponsive(t *testing.T) {
	ln, accepted := coreListen(t)
	d := &conn.Dialer{Config: conn.Config{UserTimeout: 300 * time.Millisecond}}
	c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := <-accepted // never reads
	defer srv.Close()
	c.NetConn().(*net.TCPConn).SetWriteBuffer(16 << 10)
	srv.(*net.TCPConn).SetReadBuffer(16 << 10)

	start := time.Now()
	buf := make([]byte, 64<<10)
	for {
		_, err = c.Write(buf)
		if err != nil || time.Since(start) > 20*time.Second {
			break
		}
	}
	elapsed := time.Since(start)
	if !errors.Is(err, conn.ErrUnresponsive) || !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("Write after %v: %v, want ErrUnresponsive wrapping ETIMEDOUT", elapsed, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Write error %v is not a net.Error with Timeout()", err)
	}
	within(t, c.Done(), 30*time.Second, "Done after the kernel's timeout")
	if cerr := c.Err(); !errors.Is(cerr, conn.ErrUnresponsive) || !errors.Is(cerr, syscall.ETIMEDOUT) {
		t.Fatalf("Err() = %v", cerr)
	}
	if elapsed > 10*time.Second {
		t.Fatalf("kernel timeout took %v with UserTimeout 300ms", elapsed)
	}
	t.Logf("ETIMEDOUT after %v with UserTimeout 300ms: %v", elapsed, err)
}

func TestResetIsReported(t *testing.T) {
	ln, accepted := coreListen(t)
	var d conn.Dialer
	c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := (<-accepted).(*net.TCPConn)
	srv.SetLinger(0)
	srv.Close() // RST
	_, err = c.Read(make([]byte, 10))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Read: %v, want ECONNRESET", err)
	}
	within(t, c.Done(), 5*time.Second, "Done after the reset")
	if !errors.Is(c.Err(), syscall.ECONNRESET) {
		t.Fatalf("Err() = %v", c.Err())
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("Write after reset succeeded")
	}
}

// A reader that does not read is not a dead peer: answers waiting in the
// kernel (SIOCINQ), their count growing, keep the Conn alive. Once they are
// read and the peer is silent, the Conn dies on time.
func TestStalledReaderIsNotDeclaredDead(t *testing.T) {
	const iv, to = 100 * time.Millisecond, 100 * time.Millisecond
	ln, accepted := coreListen(t)
	cfg := conn.Config{Probe: conn.CRLF, ProbeInterval: iv, ProbeTimeout: to}
	d := &conn.Dialer{Config: cfg}
	c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The control: the same stall on a Conn that cannot see the socket
	// (its net.Conn hides the *net.TCPConn) is a false death.
	blind, err := rawDial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	bc := conn.Wrap(struct{ net.Conn }{blind}, cfg)
	defer bc.Close()
	bsrv := <-accepted
	defer bsrv.Close()
	var silent atomic.Bool
	go answerProbes(bsrv, &silent)
	srv := <-accepted
	defer srv.Close()
	go answerProbes(srv, &silent)

	time.Sleep(10 * (iv + to)) // the readers stall while answers pile up
	if err := c.Err(); err != nil {
		t.Fatalf("declared dead while answers waited unread: %v", err)
	}
	if !errors.Is(bc.Err(), conn.ErrUnresponsive) {
		t.Fatalf("control: Err() = %v; the blind Conn should have died", bc.Err())
	}
	silent.Store(true)
	r := startCoreReader(c) // catches up, then waits
	caughtUp := time.Now()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not declared dead 5 s after the reader caught up with a silent peer")
	}
	within(t, r.done, 5*time.Second, "the reader's end")
	elapsed := time.Since(caughtUp)
	if !errors.Is(c.Err(), conn.ErrUnresponsive) || elapsed > iv+to+time.Second {
		t.Fatalf("Err() = %v after %v", c.Err(), elapsed)
	}
	t.Logf("declared dead %v after the reader caught up (bound %v)", elapsed, iv+to)
}

// answerProbes answers every probe read from c with one byte until silent.
func answerProbes(c net.Conn, silent *atomic.Bool) {
	buf := make([]byte, 64)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
		if !silent.Load() {
			if _, err := c.Write([]byte{'.'}); err != nil {
				return
			}
		}
	}
}

// With real sockets and real time: a silent peer behind the loopback (its
// kernel acknowledges, its application is gone) is detected by the prober
// within ProbeInterval + ProbeTimeout of its last byte.
func TestProbeDetectsSilentPeerOnLoopback(t *testing.T) {
	const iv, to = 200 * time.Millisecond, 200 * time.Millisecond
	c, _ := dialSilentPeer(t, iv, to)
	r := startCoreReader(c)
	start := time.Now()
	within(t, c.Done(), 10*(iv+to), "Done")
	within(t, r.done, 5*time.Second, "the reader's end")
	elapsed := time.Since(start)
	if !errors.Is(c.Err(), conn.ErrUnresponsive) || !errors.Is(r.err, conn.ErrUnresponsive) {
		t.Fatalf("Err() = %v, Read: %v", c.Err(), r.err)
	}
	if elapsed < iv+to || elapsed > iv+to+time.Second {
		t.Fatalf("detected after %v, want %v (+ scheduling slack)", elapsed, iv+to)
	}
}

// A peer that sends one byte and then hangs is declared dead within twice
// ProbeInterval + ProbeTimeout even if the application never reads that
// byte: an unread count that stops changing excuses the reader once, not for
// ever (issue 10, defect 4).
func TestOneUnreadByteDoesNotKeepDeadPeerAlive(t *testing.T) {
	const iv, to = 200 * time.Millisecond, 200 * time.Millisecond
	c, srv := dialSilentPeer(t, iv, to)
	if _, err := srv.Write([]byte{'x'}); err != nil {
		t.Fatal(err)
	}
	start := time.Now() // the peer's last byte; nobody reads it
	within(t, c.Done(), 20*(iv+to), "Done (one unread byte kept the peer alive)")
	elapsed := time.Since(start)
	if !errors.Is(c.Err(), conn.ErrUnresponsive) || elapsed > 2*(iv+to)+time.Second {
		t.Fatalf("Err() = %v after %v, want ErrUnresponsive within %v", c.Err(), elapsed, 2*(iv+to))
	}
	t.Logf("declared dead %v after the peer's last byte, one unread (bound 2 × %v)", elapsed, iv+to)
}

// dialSilentPeer dials a loopback peer with CRLF probes at iv and timeout to,
// and returns the probed Conn and the peer's end, which reads the probes and
// never answers. Both are closed when the test ends.
func dialSilentPeer(t *testing.T, iv, to time.Duration) (*conn.Conn, net.Conn) {
	t.Helper()
	ln, accepted := coreListen(t)
	d := &conn.Dialer{Config: conn.Config{Probe: conn.CRLF, ProbeInterval: iv, ProbeTimeout: to}}
	c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	srv := <-accepted
	t.Cleanup(func() { srv.Close() })
	go io.Copy(io.Discard, srv)
	return c, srv
}
