package sip

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
	"github.com/gobwas/ws"

	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/ctxtime"
)

// DefaultConnectTimeout bounds one connection attempt (TCP connect, and the
// TLS and WebSocket handshakes on it) of a trunk's REGISTER or OPTIONS: a
// connect started into a black hole is abandoned after it and redialled
// with a fresh SYN, instead of waiting in the kernel's SYN retransmission
// schedule (1, 2, 4, 8 ... s after the first), so that a restored path is
// seen within about this long.
const DefaultConnectTimeout = time.Second

// maxConnectTimeout caps the growth of the bound of one connection attempt
// whose TCP connect succeeded but whose handshake did not finish in time.
const maxConnectTimeout = 8 * time.Second

// dialKit makes the dialers of the transports relink installs in sipgo:
// every TCP connection gets the UA's kernel options.
type dialKit struct {
	kernel conn.Config
	tls    *tlsDispatch
}

// netDialer is TransportTCP.DialerCreate (TCP and TLS).
func (k *dialKit) netDialer(laddr net.Addr) net.Dialer {
	d := k.kernel.NetDialer()
	if a, ok := laddr.(*net.TCPAddr); ok && a != nil {
		d.LocalAddr = a
	}
	return d
}

// tlsDialer is the TLS transport's DialerCreate: netDialer that records
// each dial to an IP address for the TLS verification (tlsDispatch.verify)
// with the configuration in the dial's context (a trunk's), if any.
func (k *dialKit) tlsDialer(laddr net.Addr) net.Dialer {
	d := k.netDialer(laddr)
	next := d.ControlContext
	d.ControlContext = func(ctx context.Context, network, address string, rc syscall.RawConn) error {
		if ap, err := netip.ParseAddrPort(address); err == nil && k.tls != nil {
			cfg, _ := ctx.Value(tlsCtxKey{}).(*tls.Config)
			k.tls.dialIP(ap.Addr(), cfg)
		}
		if next != nil {
			return next(ctx, network, address, rc)
		}
		return nil
	}
	return d
}

// wsDialer is TransportWS.DialerCreate: the WebSocket handshake over a TCP
// connection with the kernel options.
func (k *dialKit) wsDialer(laddr net.Addr) ws.Dialer {
	nd := k.netDialer(laddr)
	return ws.Dialer{NetDial: nd.DialContext, Protocols: sipmsg.WebSocketProtocols}
}

// transports returns the transports relink installs in sipgo: TCP, TLS and
// WS dialled with the kernel options. sipgo v1.7.3's WSS transport dials
// with a net.Dialer of its own (no DialerCreate): its connections get the
// kernel options when their flow is first watched (tuneKernel).
func (k *dialKit) transports() sipmsg.TransportsConfig {
	return sipmsg.TransportsConfig{
		TCP: &sipmsg.TransportTCP{DialerCreate: k.netDialer},
		TLS: &sipmsg.TransportTLS{TransportTCP: &sipmsg.TransportTCP{DialerCreate: k.tlsDialer}},
		WS:  &sipmsg.TransportWS{DialerCreate: k.wsDialer},
	}
}

// tuneKernel sets the UA's kernel options on the TCP connection under c
// (for connections relink did not dial itself: sipgo's WSS).
func (k *dialKit) tuneKernel(c sipmsg.Connection) {
	tcp := tcpUnder(c)
	if tcp == nil {
		return
	}
	d := k.kernel.NetDialer()
	if d.KeepAlive < 0 {
		_ = tcp.SetKeepAlive(false)
	} else {
		_ = tcp.SetKeepAliveConfig(d.KeepAliveConfig)
	}
	if d.ControlContext != nil {
		if rc, err := tcp.SyscallConn(); err == nil {
			_ = d.ControlContext(context.Background(), "tcp", tcp.RemoteAddr().String(), rc)
		}
	}
}

// tcpUnder finds the *net.TCPConn under a sipgo connection (TCP, TLS, WS,
// WSS).
func tcpUnder(c any) *net.TCPConn {
	for range 6 {
		switch v := c.(type) {
		case *net.TCPConn:
			return v
		case *sipmsg.TCPConnection:
			c = v.Conn
		case *sipmsg.WSConnection:
			c = v.Conn
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// connect returns sipgo's connection for req (the pooled one, or a new one
// it dials), as TransportLayer.ClientRequestConnection does, with each
// connection attempt bounded: after the UA's connect timeout without a
// connection the attempt is abandoned and a new one starts at once (a
// fresh SYN), until ctx ends. While an attempt follows one whose TCP
// connect timed out (this call's, or, within a minute, the last to the same
// destination: lostPaths), a bare TCP connect probes the path every 100 ms
// (pathProbe): when one gets through, the waiting attempt, whose SYN was
// lost, is abandoned and redialled at once, so a restored path is seen
// within about 100 ms rather than within the bound. An attempt whose TCP
// connect succeeded but whose TLS or WebSocket handshake ran out of time
// gets twice the bound next time (at most 8 s). tlsCfg, if set, is the
// trunk's TLS configuration for a TLS or WSS connection it dials. The
// caller must TryClose the connection (it holds a reference).
func (m *flowMonitor) connect(ctx context.Context, req *sipmsg.Request, tlsCfg *tls.Config) (sipmsg.Connection, error) {
	network := sipmsg.NetworkToLower(req.Transport())
	if tlsCfg != nil && (network == "tls" || network == "wss") {
		if m.tls == nil {
			return nil, fmt.Errorf("%w: %s: a trunk's TLSConfig needs a UA made by NewUA", ErrTLSConfig, req.Destination())
		}
		host, _, err := net.SplitHostPort(req.Destination())
		if err != nil {
			return nil, err
		}
		if err := m.tls.use(host, tlsCfg); err != nil {
			return nil, err
		}
		ctx = withTLSConfig(ctx, tlsCfg)
	}
	if network == "wss" && m.tls != nil {
		// sipgo dials WSS with a dialer of its own: record an IP
		// destination here for the verification of its handshake.
		if ap, err := netip.ParseAddrPort(req.Destination()); err == nil {
			m.tls.dialIP(ap.Addr(), tlsCfg)
		}
	}
	if m.connectTimeout <= 0 || network == "udp" {
		return m.tp.ClientRequestConnection(ctx, req)
	}
	return m.connectBounded(ctx, req)
}

// connectBounded is connect's loop of bounded attempts (see connect).
func (m *flowMonitor) connectBounded(ctx context.Context, req *sipmsg.Request) (sipmsg.Connection, error) {
	bound := m.connectTimeout
	dest := req.Destination()
	// The last attempt's TCP connect timed out (a black hole, maybe): this
	// call's, or the last call's to the same destination.
	lost := m.lost.has(dest, time.Now())
	for {
		actx, cancel := context.WithTimeout(ctx, bound)
		start := time.Now()
		var probe *pathProbe
		if lost {
			probe = startPathProbe(actx, cancel, m.probeDialer(), req.Destination())
		}
		c, err := m.tp.ClientRequestConnection(actx, req)
		back := probe != nil && probe.end()
		cancel()
		switch {
		case err == nil:
			m.lost.found(dest)
			return c, nil
		case ctx.Err() != nil:
			return nil, fmt.Errorf("%w (connecting to %s)", context.Cause(ctx), req.Destination())
		case back:
			// The path is back and this attempt's SYN was lost: a fresh
			// one at once, with no probe (the path answers).
			lost = false
			continue
		case !attemptTimedOut(actx, err):
			return nil, err
		}
		if lost = connectFailed(err); lost {
			m.lost.lose(dest, time.Now())
		} else {
			bound = min(2*bound, maxConnectTimeout) // connected: the handshake needs longer
		}
		// A fresh SYN at once; but never spin on an error that came at
		// once (a dial that fails without waiting is not a timeout).
		if wait := time.Until(start.Add(bound / 4)); wait > 0 && !ctxtime.Sleep(ctx, wait) {
			return nil, context.Cause(ctx)
		}
	}
}

// probeDialer is the dialer of the path probes: the UA's kernel options.
func (m *flowMonitor) probeDialer() net.Dialer {
	if m.kit != nil {
		return m.kit.netDialer(nil)
	}
	return net.Dialer{}
}

// attemptTimedOut reports whether a connection attempt ended because its
// bound passed.
func attemptTimedOut(actx context.Context, err error) bool {
	if errors.Is(actx.Err(), context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// connectFailed reports whether err is a failed TCP connect (rather than a
// handshake on a connected socket).
func connectFailed(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// lostMemory is how long a destination whose TCP connect timed out is
// remembered as lost: the first attempt of the next call to it probes the
// path from its start (see connect).
const lostMemory = time.Minute

// maxLostPaths bounds the destinations remembered as lost.
const maxLostPaths = 1024

// lostPaths remembers the destinations whose last TCP connect timed out,
// and when. A new call to connect (the next REGISTER, a new scout) would
// otherwise send its first SYN into a black hole unprobed, and a path
// restored during that attempt would be seen only at its end, up to the
// whole bound later (0.49 s after a restore in one fleet run of ten; 0.06–
// 0.15 s in the others).
type lostPaths struct {
	mu sync.Mutex
	at map[string]time.Time
}

// has reports whether dest's last TCP connect timed out within lostMemory
// of now.
func (l *lostPaths) has(dest string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.at[dest]
	return ok && now.Sub(at) < lostMemory
}

// found notes that dest connected: it is no longer lost.
func (l *lostPaths) found(dest string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.at, dest)
}

// lose notes that dest's TCP connect timed out at at.
func (l *lostPaths) lose(dest string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.at == nil {
		l.at = make(map[string]time.Time)
	}
	if _, ok := l.at[dest]; !ok && len(l.at) >= maxLostPaths {
		// Full: forget the expired, and others at random until there is room.
		for d, t := range l.at {
			if at.Sub(t) >= lostMemory || len(l.at) >= maxLostPaths {
				delete(l.at, d)
			}
		}
	}
	l.at[dest] = at
}
