// Package faultproxy is an in-process TCP proxy that injects the failures a
// long-lived connection meets in production: a path that goes silent (no FIN,
// no RST), a far end that comes back having forgotten the connection (and
// answers it with an RST, or drops it silently) or whose application hangs
// on it, a reset and an orderly close.
//
// The proxy listens on 127.0.0.1 and forwards each accepted connection to a
// target address, both ways. Its modes:
//
//   - Freeze stops forwarding on every connection while holding both sockets
//     open. The proxy stops reading, so the kernels' buffers and windows
//     absorb what the ends send; nothing is closed and nothing is lost.
//   - Resume continues forwarding: both ends kept their state, and the bytes
//     held during the freeze are delivered in order.
//   - ForgetReset ends a freeze as a far end that restarted, or failed over,
//     does: it lost the connections. Each connection that was frozen has its
//     target side closed, and the client's side answers the first byte it
//     receives after the freeze (at once for the bytes held during it) with
//     an RST, as a kernel answers a segment of a connection it does not
//     know. New connections are forwarded normally.
//   - ForgetDrop ends a freeze as a black hole that stays for the old
//     connections (a firewall or NAT that lost their state and drops their
//     packets): their target side is closed, and what the client sends on
//     them is read and discarded, with no answer, no FIN, no RST, until
//     Close. New connections are forwarded normally.
//   - Forget ends a freeze as a far end whose application hangs on the old
//     connections with its TCP alive: their target side is closed, and the
//     client's side stays open and silent for ever (until Close); the
//     proxy stops reading it, so its kernel keeps acknowledging what the
//     client sends until the receive window fills. New connections are
//     forwarded normally.
//   - Reset sends an RST on both sides of every connection; CloseAll a FIN.
//
// After each Forget variant the client's old connection is dead and a redial
// works; they differ in what the client's kernel and TCP stack can see,
// which decides how long a client without an application probe keeps it
// (see below).
//
// # What a freeze can and cannot show
//
// Behind this proxy only application probes can detect a freeze. The proxy's
// kernel still acknowledges every segment the client sends (and answers its
// keepalive probes and zero-window probes), so TCP keepalive and
// TCP_USER_TIMEOUT on the client never fire. Testing the kernel options needs
// a real black hole: see package internal/netns (network namespaces and an nft
// DROP rule). The same holds after ForgetDrop: it emulates a black hole for
// the client's application (nothing ever answers), not for its kernel, which
// in a real one retransmits its unacknowledged data until tcp_retries2
// (about 15.5 min by default) or TCP_USER_TIMEOUT, then aborts the
// connection. ForgetReset answers at once what a real far end answers at
// the client's next retransmission, which after a long black hole can come
// seconds later (the retransmission timer doubles up to 2 min).
//
// A connection accepted while the proxy is frozen completes its handshake
// (the proxy's kernel accepts it) but is not connected to the target until
// Resume or Forget; its bytes wait in the kernel meanwhile, as a client's
// retransmissions would get through once the path returns.
//
// Each connection costs two goroutines and two 8 KiB buffers; a frozen or
// forgotten connection parks its goroutines on a condition variable (no
// polling), so a few thousand connections are cheap.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// bufSize is the forwarding buffer per direction and connection.
const bufSize = 8 << 10

// dialTimeout bounds the dial to the target.
const dialTimeout = 5 * time.Second

// aLongTimeAgo is a deadline in the past: setting it interrupts a blocked
// Read or Write at once without closing the socket.
var aLongTimeAgo = time.Unix(1, 0)

// ErrClosed is returned by operations on a Proxy after Close; it wraps
// net.ErrClosed.
var ErrClosed = fmt.Errorf("faultproxy: proxy closed: %w", net.ErrClosed)

// state is the forwarding state of one proxied connection.
type state uint8

const (
	forwarding  state = iota // bytes flow both ways
	frozen                   // nothing flows; Resume or a Forget ends it
	forgotten                // nothing flows, for ever (Forget: hung)
	forgotReset              // the client's next byte gets an RST (ForgetReset)
	forgotDrop               // the client's bytes are read and dropped (ForgetDrop)
	closed                   // sockets closed; goroutines exit
)

// gone reports whether s is one of the forgotten states.
func (s state) gone() bool { return s == forgotten || s == forgotReset || s == forgotDrop }

// Stats are the proxy's counters.
type Stats struct {
	// Accepted counts the connections accepted since New.
	Accepted int64
	// Active counts the connections currently held open (forwarding,
	// frozen or forgotten).
	Active int
	// Frozen counts the connections currently frozen or forgotten.
	Frozen int
	// BytesToTarget counts the bytes written towards the target.
	BytesToTarget int64
	// BytesFromTarget counts the bytes written back to the clients.
	// Both byte counters are updated just after each Write returns, so an
	// end may receive bytes a moment before they are counted.
	BytesFromTarget int64
	// Resets counts the RSTs sent to clients by ForgetReset's far end.
	Resets int64
	// BytesDropped counts the bytes ForgetDrop's black hole discarded.
	BytesDropped int64
}

// Proxy is a TCP forwarding proxy with fault modes. Its methods are safe for
// concurrent use.
type Proxy struct {
	target string
	ln     *net.TCPListener
	dialer net.Dialer
	ctx    context.Context // cancelled by Close: aborts dials to the target
	cancel context.CancelFunc

	mu       sync.Mutex
	cond     *sync.Cond // signalled when a pair's state changes
	isFrozen bool       // new connections start frozen
	isClosed bool
	pairs    map[*pair]struct{}
	changed  chan struct{} // closed and replaced when Accepted changes

	accepted atomic.Int64
	toTarget atomic.Int64
	fromTgt  atomic.Int64
	resets   atomic.Int64
	dropped  atomic.Int64

	wg sync.WaitGroup
}

// pair is one proxied connection: the client's socket and the target's.
type pair struct {
	client *net.TCPConn
	target *net.TCPConn // nil until dialed; guarded by Proxy.mu
	state  state        // guarded by Proxy.mu
	halves int          // directions finished with EOF; guarded by Proxy.mu
	held   int          // client bytes read, not forwarded when forgotten; guarded by Proxy.mu
}

// New starts a proxy listening on 127.0.0.1 (an ephemeral port) that forwards
// each connection to target. Close it when done.
func New(target string) (*Proxy, error) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{
		target:  target,
		ln:      ln,
		dialer:  net.Dialer{Timeout: dialTimeout},
		pairs:   make(map[*pair]struct{}),
		changed: make(chan struct{}),
	}
	p.cond = sync.NewCond(&p.mu)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the address clients should dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Stats returns a snapshot of the counters.
func (p *Proxy) Stats() Stats {
	s := Stats{
		Accepted:        p.accepted.Load(),
		BytesToTarget:   p.toTarget.Load(),
		BytesFromTarget: p.fromTgt.Load(),
		Resets:          p.resets.Load(),
		BytesDropped:    p.dropped.Load(),
	}
	p.mu.Lock()
	s.Active = len(p.pairs)
	for pc := range p.pairs {
		if pc.state == frozen || pc.state.gone() {
			s.Frozen++
		}
	}
	p.mu.Unlock()
	return s
}

// WaitAccepted blocks until at least n connections have been accepted since
// New, or ctx ends (returning context.Cause(ctx)), or the proxy is closed
// (returning ErrClosed).
func (p *Proxy) WaitAccepted(ctx context.Context, n int64) error {
	for {
		p.mu.Lock()
		ch, isClosed := p.changed, p.isClosed
		p.mu.Unlock()
		if p.accepted.Load() >= n {
			return nil
		}
		if isClosed {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// Freeze stops forwarding on every connection, and on connections accepted
// until Resume or Forget, without closing anything: no FIN, no RST. The
// proxy stops reading, so the ends' writes fill the kernel buffers and then
// block, as they would towards a peer that vanished.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.isClosed {
		return
	}
	p.isFrozen = true
	for pc := range p.pairs {
		if pc.state != forwarding {
			continue
		}
		pc.state = frozen
		// Interrupt the copiers' blocked Read and Write calls; they
		// notice the state and park. Unread bytes stay in the kernel.
		_ = pc.client.SetDeadline(aLongTimeAgo)
		if pc.target != nil {
			_ = pc.target.SetDeadline(aLongTimeAgo)
		}
	}
}

// Resume ends a freeze: every frozen connection forwards again, with the
// bytes held during the freeze delivered in order. Forgotten connections
// stay as they are.
func (p *Proxy) Resume() { p.thaw(forwarding) }

// Forget ends a freeze as a far end whose application hangs on its old
// connections with TCP alive: each frozen connection that reached the
// target stays open and silent for ever (until Close or Reset), the proxy
// no longer reading it, and its target side is closed, so the server
// forgets it. Connections accepted during the freeze, not yet connected to
// the target, are connected now and forwarded, as are new ones.
func (p *Proxy) Forget() { p.thaw(forgotten) }

// ForgetReset ends a freeze as a far end that lost its connections (a
// restart, a failover): each frozen connection that reached the target has
// its target side closed, and the client's side is aborted with an RST at
// the first byte the client sends after the freeze — at once if it sent
// any during it. Connections accepted during the freeze, not yet connected
// to the target, are connected now and forwarded, as are new ones.
func (p *Proxy) ForgetReset() { p.thaw(forgotReset) }

// ForgetDrop ends a freeze as a black hole that stays for the old
// connections: each frozen connection that reached the target has its
// target side closed, and whatever the client sends on it is read and
// discarded, with no answer, until Close or Reset (see the package doc for
// what the client's kernel sees). Connections accepted during the freeze,
// not yet connected to the target, are connected now and forwarded, as are
// new ones.
func (p *Proxy) ForgetDrop() { p.thaw(forgotDrop) }

// thaw ends a freeze: frozen connections that reached the target go to
// next (forwarding, or one of the forgotten states), the others forward.
func (p *Proxy) thaw(next state) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.isClosed {
		return
	}
	p.isFrozen = false
	for pc := range p.pairs {
		if pc.state != frozen {
			continue
		}
		if next != forwarding && pc.target != nil {
			pc.state = next
			pc.target.Close()
			if next != forgotten {
				// The client side is read again by its pipe, which
				// turns into the far end's sink.
				_ = pc.client.SetReadDeadline(time.Time{})
			}
			continue
		}
		pc.state = forwarding
		_ = pc.client.SetDeadline(time.Time{})
		if pc.target != nil {
			_ = pc.target.SetDeadline(time.Time{})
		}
	}
	p.cond.Broadcast()
}

// Reset aborts every connection with an RST on both sides (SO_LINGER 0,
// then close). New connections are still accepted.
func (p *Proxy) Reset() { p.closeAll(true) }

// CloseAll closes every connection with a FIN on both sides. New
// connections are still accepted.
func (p *Proxy) CloseAll() { p.closeAll(false) }

func (p *Proxy) closeAll(rst bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pc := range p.pairs {
		p.closePairLocked(pc, rst)
	}
}

// Close stops the listener, closes every connection (FIN) and waits for the
// proxy's goroutines to exit. It is idempotent and returns nil.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if !p.isClosed {
		p.isClosed = true
		p.cancel()
		p.ln.Close()
		for pc := range p.pairs {
			p.closePairLocked(pc, false)
		}
		close(p.changed)
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// closePairLocked closes both sockets of pc and wakes its goroutines.
func (p *Proxy) closePairLocked(pc *pair, rst bool) {
	if pc.state == closed {
		return
	}
	pc.state = closed
	delete(p.pairs, pc)
	if rst {
		_ = pc.client.SetLinger(0)
	}
	pc.client.Close()
	if pc.target != nil {
		if rst {
			_ = pc.target.SetLinger(0)
		}
		pc.target.Close()
	}
	p.cond.Broadcast()
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.AcceptTCP()
		if err != nil {
			p.mu.Lock()
			isClosed := p.isClosed
			p.mu.Unlock()
			if isClosed || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: wait a little rather than spin.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		pc := &pair{client: c}
		p.mu.Lock()
		if p.isClosed {
			p.mu.Unlock()
			c.Close()
			return
		}
		if p.isFrozen {
			pc.state = frozen
		}
		p.pairs[pc] = struct{}{}
		p.accepted.Add(1)
		close(p.changed)
		p.changed = make(chan struct{})
		p.wg.Add(2)
		p.mu.Unlock()
		go p.serve(pc)
	}
}

// await blocks while pc is frozen. It reports whether pc is forwarding;
// false means closed or forgotten, and the caller's goroutine exits (a
// forgotten connection needs no goroutine: it is only held open).
func (p *Proxy) await(pc *pair) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pc.state == frozen {
		p.cond.Wait()
	}
	return pc.state == forwarding
}

// serve connects pc to the target and forwards client → target itself, with
// a second goroutine for target → client. Both were counted in wg.
func (p *Proxy) serve(pc *pair) {
	if !p.await(pc) {
		p.wg.Add(-2)
		return
	}
	tc, err := p.dialer.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		p.fail(pc)
		p.wg.Add(-2)
		return
	}
	target := tc.(*net.TCPConn)
	p.mu.Lock()
	if pc.state == closed || pc.state.gone() {
		p.mu.Unlock()
		target.Close()
		p.wg.Add(-2)
		return
	}
	pc.target = target
	if pc.state == frozen {
		// Frozen while dialing: the new socket is frozen too.
		_ = target.SetDeadline(aLongTimeAgo)
	}
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		p.pipe(pc, target, pc.client, &p.fromTgt)
	}()
	defer p.wg.Done()
	p.pipe(pc, pc.client, target, &p.toTarget)
	p.sink(pc)
}

// sink plays the far end of a connection forgotten by ForgetReset or
// ForgetDrop, on the client's side, once its client → target pipe has
// stopped: the first byte read (or one held by the pipe) gets an RST; or
// every byte is dropped. It returns when the pair is closed, or at once for
// any other state.
func (p *Proxy) sink(pc *pair) {
	p.mu.Lock()
	st, held := pc.state, pc.held
	p.mu.Unlock()
	if st != forgotReset && st != forgotDrop {
		return
	}
	if st == forgotDrop {
		p.dropped.Add(int64(held))
	}
	buf := make([]byte, bufSize)
	for {
		if st == forgotReset && held > 0 {
			p.mu.Lock()
			if pc.state == forgotReset {
				p.resets.Add(1)
				p.closePairLocked(pc, true)
			}
			p.mu.Unlock()
			return
		}
		n, err := pc.client.Read(buf)
		held = n
		if st == forgotDrop {
			p.dropped.Add(int64(n))
		}
		if err != nil && n == 0 {
			// The client closed (or Close did): the far end's kernel
			// answers its FIN; nothing is left to do.
			p.mu.Lock()
			if pc.state == st {
				p.closePairLocked(pc, false)
			}
			p.mu.Unlock()
			return
		}
	}
}

// pipe copies src to dst until EOF or an error, parking while pc is frozen.
// A read or write that fails with a timeout was interrupted by Freeze: the
// bytes not yet written are kept and written after Resume.
func (p *Proxy) pipe(pc *pair, src, dst *net.TCPConn, count *atomic.Int64) {
	buf := make([]byte, bufSize)
	for {
		if !p.await(pc) {
			return
		}
		n, rerr := src.Read(buf)
		for off := 0; off < n; {
			if !p.await(pc) {
				if src == pc.client {
					p.mu.Lock()
					pc.held = n - off
					p.mu.Unlock()
				}
				return
			}
			m, werr := dst.Write(buf[off:n])
			off += m
			count.Add(int64(m))
			if werr != nil && !errors.Is(werr, os.ErrDeadlineExceeded) {
				p.fail(pc)
				return
			}
		}
		switch {
		case rerr == nil, errors.Is(rerr, os.ErrDeadlineExceeded):
			// Forwarding, or interrupted by Freeze: loop to await.
		case errors.Is(rerr, io.EOF):
			if p.halfClose(pc, dst) {
				return
			}
			// Frozen meanwhile: forward the EOF after Resume.
			for !p.halfClose(pc, dst) {
				if !p.await(pc) {
					return
				}
			}
			return
		default:
			p.fail(pc)
			return
		}
	}
}

// halfClose forwards an EOF: it shuts dst's write side, and closes the pair
// once both directions have ended. It reports false, doing nothing, when pc
// is frozen: the caller awaits and retries.
func (p *Proxy) halfClose(pc *pair, dst *net.TCPConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch pc.state {
	case frozen:
		return false
	case forwarding:
		_ = dst.CloseWrite()
		pc.halves++
		if pc.halves == 2 {
			p.closePairLocked(pc, false)
		}
	}
	return true
}

// fail propagates an abort (a reset, or an error): both sides are reset.
func (p *Proxy) fail(pc *pair) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.state == forwarding || pc.state == frozen {
		p.closePairLocked(pc, true)
	}
}
