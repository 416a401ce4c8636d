package conn

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/relinkgo/relink/internal/liveness"
)

// Conn is a net.Conn that knows when its peer is gone. Create one with a
// Dialer or Wrap.
//
// Any inbound byte returned by Read proves the peer alive. With a Prober
// configured, a probe is written after ProbeInterval without inbound bytes,
// and the flow is declared dead when nothing arrives within ProbeTimeout of
// it. When the flow dies — unanswered probe, kernel timeout, reset, or the
// peer's EOF — Done is closed and Err says why; except after EOF (the peer
// may only have half-closed), the underlying connection is closed, which
// unblocks a pending Read or Write, and later I/O returns an error carrying
// the cause. A Write that returned no error handed its bytes to the kernel,
// as with any TCP connection; one that may not have done so returns an
// error.
//
// Conn's methods are safe for concurrent use, as net.Conn's are. Read and
// Write do not allocate: Read adds one clock read and one atomic store when
// probing; Write, when probing, takes a lock that keeps probes out of the
// middle of it. Probes are scheduled on a timing wheel shared by the
// process (see the package doc's Cost): the detection bound is one 10 ms
// tick coarser than ProbeInterval + ProbeTimeout.
type Conn struct {
	nc           net.Conn
	raw          syscall.RawConn // the TCP socket underneath, for SIOCINQ/TCP_INFO and probes; may be nil
	sock         net.Conn        // the connection under a *tls.Conn nc; nil otherwise
	prober       Prober          // nil: no probing (mon is not started)
	strip        Stripper        // removes probe replies from inbound bytes; nil: none
	log          *slog.Logger    // nil: discard
	inst         *instruments
	probeTimeout time.Duration
	writeTimeout time.Duration

	mon liveness.Monitor // started when prober is set

	rmu sync.Mutex // serialises Reads when strip is set

	broken atomic.Bool // the underlying conn is closed or being closed
	closed atomic.Bool // nc.Close was called
	direct bool        // nc is the socket: probes may be written on raw without blocking

	dlmu sync.Mutex
	wdl  time.Time // the caller's write deadline, restored after a probe

	mu   sync.Mutex
	err  error
	done chan struct{} // made by Done (nil until then), closed by die
	// The write side, shared by Writes and probes when probing: held by
	// one of them (wbusy); the others wait for wwait (made by the first
	// to wait, closed when the holder releases it or the Conn dies).
	wbusy bool
	wwait chan struct{}
}

var _ net.Conn = (*Conn)(nil)

// Wrap returns a Conn monitoring nc, an accepted, dialed or TLS connection.
// When nc is (or wraps, through a NetConn method, as *tls.Conn does) a
// *net.TCPConn, Wrap applies cfg's keepalive and TCP_USER_TIMEOUT to its
// socket; failures to do so are logged and otherwise ignored. Wrap starts
// the probe timer when cfg has a Prober; Wrap itself counts as inbound
// traffic. The Conn owns nc from then on. Wrap panics if nc is nil.
func Wrap(nc net.Conn, cfg Config) *Conn {
	if nc == nil {
		panic("conn: Wrap of a nil net.Conn")
	}
	return wrap(nc, &cfg, true)
}

// wrap is Wrap; applyOpts says whether to set cfg's kernel options on nc
// (a Dialer's net.Dialer has set them already). It logs a failure to set
// them with context.Background: DialContext's ctx bounds the dial only.
//
//nolint:contextcheck // see above
func wrap(nc net.Conn, cfg *Config, applyOpts bool) *Conn {
	c := &Conn{
		nc:           nc,
		writeTimeout: cfg.writeTimeout(),
		log:          cfg.Logger,
		inst:         instrumentsFor(cfg.MeterProvider),
	}
	if tc, ok := nc.(*tls.Conn); ok {
		c.sock = tc.NetConn()
	}
	p, interval, timeout := cfg.probing()
	if tcp := tcpConnOf(nc); tcp != nil {
		if applyOpts {
			if err := applySockopts(tcp, cfg); err != nil && c.log != nil {
				c.log.LogAttrs(context.Background(), slog.LevelWarn, "conn: cannot set socket options",
					slog.String("error", err.Error()))
			}
		}
		if p != nil && hasSocketInfo {
			c.raw, _ = tcp.SyscallConn()
		}
	}
	if p != nil {
		c.prober = p
		if rf, ok := p.(ReplyFilter); ok {
			c.strip = rf.NewStripper()
		}
		c.probeTimeout = timeout
		_, isTCP := nc.(*net.TCPConn)
		c.direct = isTCP && c.raw != nil && canWriteNow
		// Under mu: the monitor's callbacks (die) take mu, so none runs
		// before the Conn is complete.
		c.mu.Lock()
		defer c.mu.Unlock()
		c.mon.Start(interval, timeout, (*target)(c), liveness.Default())
	}
	return c
}

// tcpConnOf finds the *net.TCPConn under nc, following NetConn methods
// (*tls.Conn, *Conn).
func tcpConnOf(nc net.Conn) *net.TCPConn {
	for range 8 {
		switch v := nc.(type) {
		case *net.TCPConn:
			return v
		case interface{ NetConn() net.Conn }:
			nc = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// applySockopts sets the kernel options of cfg on tcp.
func applySockopts(tcp *net.TCPConn, cfg *Config) error {
	var errs []error
	if ka, ok := cfg.keepAlive(); ok {
		errs = append(errs, tcp.SetKeepAliveConfig(ka))
	} else {
		errs = append(errs, tcp.SetKeepAlive(false))
	}
	if ut, ok := cfg.userTimeout(); ok {
		rc, err := tcp.SyscallConn()
		if err == nil {
			err = setUserTimeout(rc, ut)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Read reads from the connection. Bytes read prove the peer alive. After
// the flow died, Read returns an error carrying the cause (see Err).
//
// With a Prober that implements ReplyFilter, the probe replies are removed
// from the bytes returned (they count as traffic all the same); a Read
// whose bytes were all replies reads again, so Read returns 0 bytes only
// with an error.
func (c *Conn) Read(b []byte) (int, error) {
	if c.strip != nil {
		// The Stripper follows the stream in order: concurrent Reads take
		// turns (the socket serialises them anyway).
		c.rmu.Lock()
		defer c.rmu.Unlock()
	}
	for {
		n, err := c.nc.Read(b)
		if n > 0 && c.prober != nil {
			c.mon.Seen()
		}
		all := n > 0 && c.strip != nil
		if all {
			n = c.strip.Strip(b[:n])
			all = n == 0
		}
		if err != nil {
			return n, c.ioFailed("read", err)
		}
		if !all {
			return n, nil
		}
	}
}

// Write writes to the connection, never interleaved with a probe. With
// WriteTimeout set, it is bounded by it. After the flow died, Write returns
// an error carrying the cause (see Err) without writing.
func (c *Conn) Write(b []byte) (int, error) {
	if c.prober != nil {
		if err := c.lockWrite(); err != nil {
			return 0, err
		}
		defer c.unlockWrite()
	}
	if c.broken.Load() {
		return 0, c.deadError("write")
	}
	if c.writeTimeout > 0 {
		d := time.Now().Add(c.writeTimeout)
		c.dlmu.Lock()
		if !c.wdl.IsZero() && c.wdl.Before(d) {
			d = c.wdl
		}
		_ = c.nc.SetWriteDeadline(d)
		c.dlmu.Unlock()
	}
	n, err := c.nc.Write(b)
	if err != nil {
		err = c.ioFailed("write", err)
	}
	return n, err
}

// lockWrite takes the write side, shared with probes, waiting for its
// holder; it gives up when the connection dies under it (a Prober may
// block past the death).
func (c *Conn) lockWrite() error {
	c.mu.Lock()
	for c.wbusy {
		if c.broken.Load() {
			c.mu.Unlock()
			return c.deadError("write")
		}
		if c.wwait == nil {
			c.wwait = make(chan struct{})
		}
		wait := c.wwait
		c.mu.Unlock()
		<-wait
		c.mu.Lock()
	}
	c.wbusy = true
	c.mu.Unlock()
	return nil
}

// tryLockWrite takes the write side if it is free at once.
func (c *Conn) tryLockWrite() bool {
	if !c.mu.TryLock() {
		return false
	}
	free := !c.wbusy
	c.wbusy = true
	c.mu.Unlock()
	return free
}

// unlockWrite releases the write side and wakes who waits for it.
func (c *Conn) unlockWrite() {
	c.mu.Lock()
	c.wbusy = false
	c.wakeWritersLocked()
	c.mu.Unlock()
}

// wakeWritersLocked wakes the goroutines waiting for the write side. c.mu
// must be held.
func (c *Conn) wakeWritersLocked() {
	if c.wwait != nil {
		close(c.wwait)
		c.wwait = nil
	}
}

// Close closes the connection and stops its monitoring. Err then reports an
// error wrapping net.ErrClosed, unless the flow had died before. Close is
// idempotent: later calls return nil.
func (c *Conn) Close() error {
	c.die(errClosed, reasonClosed, false)
	c.broken.Store(true) // also after an EOF
	if c.closed.CompareAndSwap(false, true) {
		return c.nc.Close()
	}
	return nil
}

// Done returns a channel closed when the connection ends: its peer is
// declared dead or closed its side (EOF), or Close was called.
func (c *Conn) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		if c.err != nil {
			return closedChan
		}
		c.done = make(chan struct{}) // made on demand: most Conns are never asked
	}
	return c.done
}

// closedChan is Done's channel for a Conn that ended before Done was called.
var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// Err returns nil while the connection is alive, and then why it ended:
// an error matching ErrUnresponsive (no answer to a probe, or the kernel's
// ETIMEDOUT from TCP_USER_TIMEOUT or keepalive, which it wraps), io.EOF (the
// peer closed), the reset or other I/O error, a probe's error, or, after
// Close, an error wrapping net.ErrClosed. The first cause wins.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// NetConn returns the underlying connection. Reading from or writing to it
// bypasses the monitoring.
func (c *Conn) NetConn() net.Conn { return c.nc }

// LocalAddr returns the local network address.
func (c *Conn) LocalAddr() net.Addr { return c.nc.LocalAddr() }

// RemoteAddr returns the remote network address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// SetDeadline sets the read and write deadlines, as net.Conn does.
func (c *Conn) SetDeadline(t time.Time) error {
	c.dlmu.Lock()
	defer c.dlmu.Unlock()
	c.wdl = t
	return c.nc.SetDeadline(t)
}

// SetReadDeadline sets the read deadline, as net.Conn does. A read that
// times out does not end the connection.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline, as net.Conn does. Probes use
// their own deadline and restore this one.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.dlmu.Lock()
	defer c.dlmu.Unlock()
	c.wdl = t
	return c.nc.SetWriteDeadline(t)
}

// ioFailed turns an error from the underlying Read or Write into the error
// returned to the caller, ending the connection when the error is terminal.
func (c *Conn) ioFailed(op string, err error) error {
	if c.broken.Load() {
		if cause := c.Err(); cause != nil && !endedCleanly(cause) {
			return c.opError(op, cause) // closed because it died: say why
		}
		if !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded) {
			return c.opError(op, net.ErrClosed) // e.g. io.ErrClosedPipe
		}
		return err
	}
	cause, reason, terminal := classifyIOError(err)
	if !terminal && op == "write" && c.sock != nil {
		// crypto/tls fails every later Write once one timed out: the
		// connection is unusable, so it ends here.
		terminal = true
	}
	if !terminal {
		return err
	}
	if reason == reasonEOF {
		c.die(io.EOF, reasonEOF, false)
		return err
	}
	if !c.die(cause, reason, true) {
		if first := c.Err(); first != nil && !endedCleanly(first) {
			return c.opError(op, first)
		}
		return err
	}
	if cause != err { //nolint:errorlint // identity: did classifyIOError replace err?
		return c.opError(op, cause)
	}
	return err
}

// endedCleanly reports whether cause, a value of Err, is Close's errClosed
// or the peer's io.EOF rather than a death worth reporting. Err stores these
// two as they are; a cause that only wraps io.EOF (a failed probe's) is a
// death and is reported.
func endedCleanly(cause error) bool {
	return cause == errClosed || cause == io.EOF //nolint:errorlint // identity, see above
}

// deadError is the error of I/O attempted after the connection ended.
func (c *Conn) deadError(op string) error {
	cause := c.Err()
	if cause == nil || endedCleanly(cause) {
		cause = net.ErrClosed
	}
	return c.opError(op, cause)
}

func (c *Conn) opError(op string, cause error) error {
	var network string
	la := c.nc.LocalAddr()
	if la != nil {
		network = la.Network()
	}
	return &net.OpError{Op: op, Net: network, Source: la, Addr: c.nc.RemoteAddr(), Err: cause}
}

// lastInbound returns the time of the last inbound byte, or zero when the
// Conn does not probe (it does not track it then).
func (c *Conn) lastInbound() time.Time {
	if c.prober == nil {
		return time.Time{}
	}
	return c.mon.LastSeen()
}

// die records the connection's end, once: the first cause wins. It closes
// Done, stops the monitor, and closes the underlying connection when
// closeNC is set. It reports whether this call recorded the cause.
//
// No context reaches it (net.Conn's methods take none, and a death is found
// by a timer): it logs and records metrics with context.Background.
//
//nolint:contextcheck // see above
func (c *Conn) die(cause error, reason int, closeNC bool) bool {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return false
	}
	c.err = cause
	if closeNC || reason == reasonClosed {
		c.broken.Store(true) // before Done: woken writers must see it
	}
	if c.done != nil {
		close(c.done)
	}
	c.wakeWritersLocked() // they give up if broken, or wait on (EOF)
	c.mu.Unlock()

	var lastSeen time.Time
	if c.prober != nil {
		c.mon.Stop()
		lastSeen = c.mon.LastSeen()
	}
	if reason == reasonClosed {
		return true
	}
	var info tcpState
	var haveInfo bool
	logging := c.log != nil && c.log.Enabled(context.Background(), slog.LevelInfo)
	if logging && c.raw != nil && closeNC {
		info, haveInfo = tcpInfo(c.raw) // before closing the socket
	}
	if closeNC && c.closed.CompareAndSwap(false, true) {
		if c.sock != nil {
			// A dead peer gets no TLS close_notify: tls.Conn.Close would
			// wait up to 5 s to write it.
			_ = c.sock.Close()
		}
		_ = c.nc.Close()
	}
	var detection time.Duration
	if !lastSeen.IsZero() {
		detection = time.Since(lastSeen)
	}
	c.inst.died(reason, detection, !lastSeen.IsZero())
	if logging {
		attrs := []slog.Attr{
			slog.String("remote", c.nc.RemoteAddr().String()),
			slog.String("reason", reasonNames[reason]),
			slog.String("error", cause.Error()),
		}
		if !lastSeen.IsZero() {
			attrs = append(attrs, slog.Duration("since_last_inbound", detection))
		}
		if haveInfo {
			attrs = append(attrs, slog.Duration("tcpi_last_ack_recv", info.lastAckRecv),
				slog.Uint64("tcpi_unacked", uint64(info.unacked)))
		}
		c.log.LogAttrs(context.Background(), slog.LevelInfo, "conn: connection ended", attrs...)
	}
	return true
}
