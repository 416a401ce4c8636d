package main

import (
	"errors"
	"net"
	"sync"
)

// peerMode is what the echo peer does with one connection.
type peerMode uint8

const (
	peerEcho      peerMode = iota // write back what arrives
	peerHung                      // read and discard: an application that stopped answering
	peerHalfClose                 // sent a FIN, reads and discards what still arrives
)

// peer is the Links' echo server. Each fault changes the connections open at
// the time (new ones are echoed): HalfClose sends a FIN on each and keeps
// reading, Hang stops answering with TCP alive, Resume echoes again on the
// hung ones.
type peer struct {
	ln net.Listener
	wg sync.WaitGroup

	mu    sync.Mutex
	conns map[*net.TCPConn]peerMode
}

// servePeer serves ln until Close.
func servePeer(ln net.Listener) *peer {
	p := &peer{ln: ln, conns: map[*net.TCPConn]peerMode{}}
	p.wg.Go(p.accept)
	return p
}

// Addr is the listening address.
func (p *peer) Addr() string { return p.ln.Addr().String() }

// Port is the listening port.
func (p *peer) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *peer) accept() {
	for c, err := p.ln.Accept(); err == nil; c, err = p.ln.Accept() {
		if tc, ok := c.(*net.TCPConn); ok && p.track(tc) {
			p.wg.Go(func() { p.serve(tc) })
			continue
		}
		_ = c.Close()
	}
}

// track adds c to the served connections (false after Close).
func (p *peer) track(c *net.TCPConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = peerEcho
	return true
}

// mode returns c's mode, and forgets c when gone.
func (p *peer) mode(c *net.TCPConn, gone bool) peerMode {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.conns[c]
	if gone {
		delete(p.conns, c)
	}
	return m
}

// serve echoes what c sends while its mode says so.
func (p *peer) serve(c *net.TCPConn) {
	defer c.Close()
	defer p.mode(c, true)
	buf := make([]byte, 2048)
	for n, err := c.Read(buf); err == nil; n, err = c.Read(buf) {
		if p.mode(c, false) != peerEcho {
			continue // hung or half-closed: read and discard
		}
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
	}
}

// set moves every open connection in mode from to mode to, calling each
// (outside nothing: under the lock, it must not block) and returns how many.
func (p *peer) set(from, to peerMode, each func(*net.TCPConn)) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c, m := range p.conns {
		if m != from {
			continue
		}
		p.conns[c] = to
		if each != nil {
			each(c)
		}
		n++
	}
	return n
}

// HalfClose sends a FIN on every echoed connection and keeps reading.
func (p *peer) HalfClose() int {
	return p.set(peerEcho, peerHalfClose, func(c *net.TCPConn) { _ = c.CloseWrite() })
}

// Hang stops answering on every echoed connection, TCP kept alive.
func (p *peer) Hang() int { return p.set(peerEcho, peerHung, nil) }

// Resume echoes again on the hung connections still open.
func (p *peer) Resume() int { return p.set(peerHung, peerEcho, nil) }

// Close stops the server and closes its connections.
func (p *peer) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
