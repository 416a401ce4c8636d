// Package conn provides a net.Conn that knows when its peer is gone.
//
// A TCP connection whose peer vanished without a FIN or RST (a crashed host,
// a NAT or firewall that dropped its state, a cable pulled) stays open for a
// long time with the operating system's defaults: ~2 h 11 min on an idle
// Linux connection with keepalive on (never with it off), ~15.5 min with
// data unacknowledged, 150 s idle with Go's net.Dialer. A Conn bounds that at
// 15 s by default, idle or busy, with three mechanisms that cover each
// other's blind spots:
//
//   - kernel keepalive (5 s idle, then a probe a second, 10 probes): idle
//     flows;
//   - TCP_USER_TIMEOUT (15 s, Linux): flows with unacknowledged data, where
//     keepalive is silent;
//   - an optional application probe (Config.Probe, e.g. CRLF for SIP): a
//     ping after ProbeInterval (10 s) of inbound silence, death if nothing
//     arrives within ProbeTimeout (5 s). Only this detects a hung peer
//     application, or a peer lost behind a middlebox that keeps
//     acknowledging for it.
//
// When the flow is declared dead, the underlying connection is closed (a
// blocked Read or Write returns), Done is closed and Err says why:
// ErrUnresponsive (a net.Error whose Timeout() is true), io.EOF, a reset, or
// net.ErrClosed after Close.
//
// The canonical composition, a SIP-over-TCP client:
//
//	d := &conn.Dialer{Config: conn.Config{Probe: conn.CRLF}}
//	c, err := d.DialContext(ctx, "tcp", "registrar.example:5060")
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	go serve(c) // reads keep the flow proven alive
//	select {
//	case <-c.Done():
//		log.Printf("flow lost: %v", c.Err()) // errors.Is(c.Err(), conn.ErrUnresponsive)
//	case <-ctx.Done():
//	}
//
// A Dialer with TLSConfig dials TLS; accepted connections, and TLS
// connections made elsewhere, are wrapped with Wrap. Code that must hand a
// net.Dialer to another library (sipgo's TransportTCP.DialerCreate) gets the
// kernel options from Config.NetDialer, and the probing from its own read
// loop.
//
// # Supervised connections
//
// A Link keeps one logical connection up: it dials (through a backoff.Gate
// shared with everything that recovers towards the same server, if given),
// brings each connection to readiness (TLS, then the protocol's login in
// Handshake), runs the caller's Session on it, and redials after a backoff
// delay when the connection dies, rotating through Addrs:
//
//	gate := backoff.NewGate(backoff.GateConfig{Destination: "login.example"})
//	link, err := conn.NewLink(conn.LinkConfig{
//		Dialer:    &conn.Dialer{Config: conn.Config{Probe: myPing}},
//		Addrs:     []string{"primary.example:7000", "backup.example:7000"},
//		TLSConfig: &tls.Config{}, // system roots; ServerName from the address
//		Gate:      gate,
//		Handshake: func(ctx context.Context, c *conn.Conn) error {
//			switch reply, err := login(ctx, c); {
//			case err != nil:
//				return err // the connection died or the reply was garbled
//			case reply.Busy:
//				return backoff.Overloaded(errBusy, reply.RetryAfter) // the Gate pauses
//			case reply.Denied:
//				return backoff.Permanent(errDenied) // Run returns it
//			}
//			return nil // ready: the Gate's success
//		},
//		Session: serve, // after readiness; its return reconnects
//	})
//	if err != nil {
//		return err
//	}
//	err = link.Run(ctx) // until ctx ends, or a Permanent error
//
// Its LinkState goes idle → connecting → ready → transient-failure →
// connecting … → shutdown, observed through State, WaitForStateChange and
// LinkConfig.OnStateChange (a LinkStateChange). The Link is ready only once
// Handshake returned nil (or, without a Handshake, once the connection and
// its TLS handshake are up).
//
// # What the Gate hears
//
// The Gate's permit is held from the dial to readiness and reported once:
// Success when Handshake returns nil; Overload(d) when it returns
// backoff.Overloaded(err, d) (the Gate pauses for d and cuts its pace);
// Unreachable when the dial fails for the network, the connection dies
// before readiness (the server closed or reset it, or stopped answering) or
// HandshakeTimeout expires; ClientFailure for this client's own failures (a
// certificate refused, ErrTLSHandshake, retried only after SlowRetry; a
// Permanent error; any other Handshake error). After readiness, a Session
// returning backoff.Overloaded(err, d) is reported with Gate.Observe
// (Overload(d)), and a connection declared dead by liveness
// (ErrUnresponsive) with Gate.Observe(backoff.UnreachableSince(its last
// inbound byte)), as sip does for a lost flow: the Gate closes unless
// another connection got through since.
//
// # TLS
//
// LinkConfig.TLSConfig (or Dialer.TLSConfig, for a Dialer used alone) runs
// TLS over the dialed TCP socket: the kernel options are set on the socket,
// the Conn watches it (SIOCINQ, TCP_INFO), probes are written through TLS and
// only decrypted bytes count as inbound traffic. A dead peer's connection is
// closed without waiting to send it a close_notify.
//
// # Probe replies
//
// A probe's reply arrives in the same stream as the protocol's bytes. A
// Prober that can tell them apart implements ReplyFilter, and Conn.Read
// removes the replies before the reader sees them: CRLF follows the inbound
// SIP framing and removes the CRLF pong found at the next message boundary
// after a ping (RFC 5626 §3.5.1), never a CR or LF inside a message. With
// a Prober that does not implement it (a ProberFunc), the replies reach the
// reader, which must skip them: choose a ping whose answer the protocol
// ignores, or one that is itself a message of the protocol (a PING the
// Session reads as a PONG).
//
// # Configuration
//
// In Config and LinkConfig, as everywhere in relink, the zero value of a
// field is its documented default and a negative value turns the setting off;
// each field's doc says what off means for it (no keepalive, no
// TCP_USER_TIMEOUT, no application probe, no write deadline, no dial bound,
// no handshake bound, no minimum healthy lifetime, no slow-retry floor, no
// attempt limit).
//
// # A slow reader is not a dead peer
//
// Only bytes returned by Read count as traffic, so a reader that stops
// reading (back-pressure) would look like a silent peer. On Linux, before
// declaring the flow dead, the Conn asks the kernel for the bytes received
// and not yet read (SIOCINQ): if their count changed since the last probe
// it excused (or since a read), the peer is alive and the monitor re-arms.
// The same count twice is not an excuse: a peer that sent one byte nobody
// reads and then hung is declared dead within twice ProbeInterval +
// ProbeTimeout of that byte. A reader stalled until the receive buffer is
// full (the peer can send nothing more) is likewise declared dead. TCP_INFO is read only for the log line that reports a
// death (tcpi_last_ack_recv, tcpi_unacked): ACKs come from the peer's kernel,
// or from any middlebox that terminates TCP, and keep coming while the
// peer's application is hung or the far side has lost the connection, so
// they never veto a death. The mirror case, a peer that stops reading what
// we write, is the kernel's call: Linux aborts a connection whose peer has
// advertised a zero window for UserTimeout (ETIMEDOUT, reported as
// ErrUnresponsive). On other platforms neither is available and the
// kernel options are not all set (TCP_USER_TIMEOUT is Linux-only): keep a
// Read pending on a probed Conn, as any protocol with pings requires.
//
// # Cost
//
// A Conn has no goroutine of its own, and no runtime timer. Every probing
// Conn of the process is scheduled on one timing wheel (a 10 ms tick, one
// goroutine started with the first probing Conn and ended when the last is
// closed). Inbound bytes only store a timestamp (one clock read and one
// atomic store per Read); the wheel looks at a Conn only when it is due,
// which on a busy flow is once per ProbeInterval. When a probe is due on a
// plain TCP Conn (one made by a Dialer without TLSConfig, or by Wrap of a
// *net.TCPConn), the wheel's goroutine writes it on the socket itself in one
// non-blocking write: no goroutine, no write deadline to set and restore,
// no allocation. If a Write holds the connection at that moment, the probe
// waits for it on a goroutine of its own, and if the socket takes only part
// of the probe (its send buffer is full: the peer is not reading), the rest
// is written on a goroutine under ProbeTimeout, as before. Probes on TLS
// Conns and on wrapped net.Conns (anything but a *net.TCPConn) are written
// through the net.Conn on a goroutine of their own, under a write deadline
// of ProbeTimeout.
//
// The wheel's tick adds up to 10 ms to the detection bound: a silent peer
// is declared dead within ProbeInterval + ProbeTimeout + 10 ms of its last
// byte (20 ms when ProbeTimeout is not a whole number of 10 ms). Inside a
// testing/synctest bubble (whose clock starts in 2000) Conns get a runtime
// timer each instead, exact to the nanosecond.
//
// A probing Conn over TCP holds about 490 bytes of heap beside the socket's
// own (TestScaleIdleConns); 100,000 of them, probed at the default
// interval, cost the CPU of internal/bench/scale's conns row (README). Read
// and Write do not allocate; metrics are recorded only when a probe is sent
// and when a connection ends.
//
// # Metrics
//
// With Config.MeterProvider (or the global one): relink.conn.detection.duration
// (histogram, s: last inbound byte → declared dead), relink.conn.probes
// (counter), relink.conn.deaths (counter by error.type). The Dialer makes one
// span per DialContext.
package conn
