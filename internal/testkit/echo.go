package testkit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/relinkgo/relink/internal/ctxtime"
)

// mode is what the server does with one connection's bytes.
type mode int

const (
	serving mode = iota // echo what arrives
	frozen              // read nothing, write nothing: a silent peer
	hung                // read and discard: an application that never answers
)

// Echo is a TCP echo server: every byte read on a connection is written
// back on it. Relink's CRLF probe ("\r\n\r\n") is answered by its own echo,
// which is a valid answer: any inbound byte proves the peer alive, and a
// SIP peer reads "\r\n\r\n" as a ping followed by a pong-sized keepalive.
// When a client half-closes, the server finishes echoing and half-closes too.
//
// [Echo.Freeze] and [Echo.Hang] change the connections open at the time of
// the call; connections accepted later are served normally (a client that
// redials reaches a working server), until [Echo.Resume] or [Echo.Close].
// It is safe for concurrent use.
type Echo struct {
	ln     net.Listener
	ctx    context.Context // ends with Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]*echoConn
}

// echoConn is one served connection; mode and wake are guarded by Echo.mu.
type echoConn struct {
	net.Conn
	mode mode
	wake chan struct{} // closed when the connection leaves the frozen mode
}

// ListenEcho starts an echo server on addr ("" means a new loopback port,
// "127.0.0.1:0"). A restarted server may ask for the port it had: while the
// old socket lingers (EADDRINUSE), ListenEcho retries for up to a second.
func ListenEcho(addr string) (*Echo, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	deadline := time.Now().Add(time.Second)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			return ServeEcho(ln), nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return nil, fmt.Errorf("testkit: echo server: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ServeEcho serves an echo server on ln (a listener inside a network
// namespace, say) until Close, which closes ln.
func ServeEcho(ln net.Listener) *Echo {
	ctx, cancel := context.WithCancel(context.Background())
	e := &Echo{ln: ln, ctx: ctx, cancel: cancel, conns: map[net.Conn]*echoConn{}}
	e.wg.Go(e.accept)
	return e
}

// Addr is the server's address, host:port.
func (e *Echo) Addr() string { return e.ln.Addr().String() }

// Port is the server's TCP port.
func (e *Echo) Port() int {
	_, p, _ := net.SplitHostPort(e.Addr())
	n, _ := strconv.Atoi(p)
	return n
}

// Conns is the number of connections open on the server.
func (e *Echo) Conns() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.conns)
}

// Freeze silences the connections open now: the server stops reading and
// writing on them (a read already under way may complete; its bytes are held
// and echoed on Resume) while their sockets stay open, so the kernel keeps
// acknowledging what fits in its buffers. To the client the peer is silent,
// neither closed nor reset: only an application probe can tell.
func (e *Echo) Freeze() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ec := range e.conns {
		if ec.mode != frozen {
			ec.mode = frozen
			ec.wake = make(chan struct{})
			_ = ec.SetReadDeadline(time.Unix(1, 0)) // interrupt the pending Read
		}
	}
}

// Hang makes the connections open now read and discard everything without
// answering: the peer's application hangs while its TCP stack is healthy.
func (e *Echo) Hang() { e.setAll(hung) }

// Resume serves every open connection normally again. A frozen connection
// echoes what it was holding and what waited in its socket; what a hung one
// discarded is lost.
func (e *Echo) Resume() { e.setAll(serving) }

func (e *Echo) setAll(m mode) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ec := range e.conns {
		if ec.mode == frozen {
			close(ec.wake)
		}
		ec.mode = m
	}
}

// Close closes the listener and every connection, and waits for the
// server's goroutines. It is idempotent.
func (e *Echo) Close() error {
	e.cancel()
	err := e.ln.Close()
	e.mu.Lock()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (e *Echo) accept() {
	for {
		c, err := e.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || e.ctx.Err() != nil {
				return
			}
			// EMFILE and the like: do not spin.
			if !ctxtime.Sleep(e.ctx, 10*time.Millisecond) {
				return
			}
			continue
		}
		ec := &echoConn{Conn: c}
		e.mu.Lock()
		if e.ctx.Err() != nil {
			e.mu.Unlock()
			c.Close()
			return
		}
		e.conns[c] = ec
		e.mu.Unlock()
		e.wg.Go(func() { e.serve(ec) })
	}
}

// state returns ec's mode and, when frozen, the channel closed on thaw.
func (e *Echo) state(ec *echoConn) (mode, chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return ec.mode, ec.wake
}

func (e *Echo) serve(ec *echoConn) {
	defer func() {
		e.mu.Lock()
		delete(e.conns, ec.Conn)
		e.mu.Unlock()
		ec.Close()
	}()
	buf := make([]byte, 4096)
	for {
		n, err := ec.Read(buf)
		m, wake := e.state(ec)
		if m == frozen { // hold what was read until Resume
			select {
			case <-wake:
			case <-e.ctx.Done():
				return
			}
			m, _ = e.state(ec)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) { // set by Freeze
			_ = ec.SetReadDeadline(time.Time{})
			err = nil
		}
		if n > 0 && m == serving {
			if _, werr := ec.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if tc, ok := ec.Conn.(interface{ CloseWrite() error }); ok && errors.Is(err, io.EOF) {
				_ = tc.CloseWrite() // answer a half-close with one
			}
			return
		}
	}
}

// EchoOnce writes msg on c and waits, up to within, for the same bytes to
// come back. It clears c's deadline before returning.
func EchoOnce(c net.Conn, msg string, within time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(within)); err != nil {
		return err
	}
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("testkit: echo %q, want %q", got, msg)
	}
	return nil
}
