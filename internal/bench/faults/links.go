package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/faultproxy"
)

// dialFunc is the shape of net.Dialer.DialContext.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// linkSet is o.links conn.Links to one echo server through a fault proxy,
// sharing one Gate. A busy Link echoes a line every 50 ms; an idle one
// echoes one line per connection, then only reads (its probes keep it).
type linkSet struct {
	o      *options
	proxy  *faultproxy.Proxy
	server echoServer
	busy   bool
	runs   []*linkRun
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	cut       time.Time
	restored  time.Time
	fineAfter time.Duration
	stopping  bool
	falseN    int
}

// newline is the Links' probe: an empty line, which the echo server sends
// back and the Session skips.
var newline = conn.ProberFunc(func(w io.Writer) error {
	_, err := w.Write([]byte("\n"))
	return err
})

// linkRun is one Link and what it saw.
type linkRun struct {
	id       int
	set      *linkSet
	link     *conn.Link
	lostAt   time.Time // first time it left Ready at or after the cut
	backAt   time.Time // last time an echo was answered on a new connection
	lastEcho atomic.Int64
	lostN    atomic.Int64
	done     chan struct{}
}

// startLinks runs o.links Links to server (through a new proxy) and waits
// for each to be ready with an echo answered.
//
// With dial nil the Links go through a new fault proxy; otherwise they dial
// the server's address with dial (a network namespace's DialContext).
func startLinks(ctx context.Context, o *options, server echoServer, busy bool, dial dialFunc) (*linkSet, error) {
	s := &linkSet{o: o, server: server, busy: busy}
	addr := server.Addr()
	if dial == nil {
		p, err := faultproxy.New(server.Addr())
		if err != nil {
			return nil, err
		}
		s.proxy, addr = p, p.Addr()
	}
	gate := backoff.NewGate(backoff.GateConfig{Destination: addr})
	lctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	for i := range o.links {
		r := &linkRun{id: i, set: s, done: make(chan struct{})}
		l, err := conn.NewLink(conn.LinkConfig{
			Dialer:        &conn.Dialer{Dial: dial, Config: conn.Config{Probe: newline, ProbeInterval: o.keepAlive, ProbeTimeout: o.timeout}},
			Addrs:         []string{addr},
			Session:       r.session,
			Gate:          gate,
			HealthyAfter:  time.Second,
			OnStateChange: r.onState,
			Logger:        o.logger,
		})
		if err != nil {
			cancel()
			return s, err
		}
		r.link = l
		s.runs = append(s.runs, r)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer close(r.done)
			_ = l.Run(lctx)
		}()
	}
	return s, waitFor(ctx, 20*time.Second, "links ready", func() bool {
		for _, r := range s.runs {
			if r.link.State() != conn.LinkReady || r.lastEcho.Load() == 0 {
				return false
			}
		}
		return true
	})
}

func (r *linkRun) onState(ch conn.LinkStateChange) {
	s := r.set
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch.From != conn.LinkReady || ch.To == conn.LinkShutdown || s.stopping {
		return
	}
	inWindow := !s.cut.IsZero() && !ch.At.Before(s.cut) &&
		(s.restored.IsZero() || ch.At.Before(s.restored.Add(max(s.fineAfter, s.o.bound()))))
	switch {
	case !inWindow:
		s.falseN++
	case r.lostAt.IsZero():
		r.lostAt = ch.At
	}
}

// session echoes numbered lines: a line is lost when its reply does not come
// while the connection lives, or comes wrong.
func (r *linkRun) session(ctx context.Context, c *conn.Conn) error {
	br := bufio.NewReader(c)
	first := true
	for seq := 1; ; seq++ {
		want := fmt.Sprintf("%d-%d", r.id, seq)
		if _, err := fmt.Fprintf(c, "%s\n", want); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(2*r.set.o.bound() + 2*time.Second))
		got, err := readLine(br)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && !dead(c) && ctx.Err() == nil {
				r.lostN.Add(1)
			}
			return err
		}
		if got != want {
			r.lostN.Add(1)
			return fmt.Errorf("echo: got %q, want %q", got, want)
		}
		now := time.Now()
		r.lastEcho.Store(now.UnixNano())
		if first {
			first = false
			r.set.mu.Lock()
			r.backAt = now
			r.set.mu.Unlock()
		}
		if !r.set.busy {
			_ = c.SetReadDeadline(time.Time{})
			for {
				if _, err := readLine(br); err != nil {
					return err
				}
			}
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// readLine reads the next non-empty line (the echoes of CRLF probes are
// empty lines).
func readLine(br *bufio.Reader) (string, error) {
	for {
		s, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		if s = strings.TrimSpace(s); s != "" {
			return s, nil
		}
	}
}

func dead(c *conn.Conn) bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}

func (s *linkSet) setCut(t time.Time) {
	s.mu.Lock()
	s.cut = t
	s.mu.Unlock()
}

func (s *linkSet) setRestore(t time.Time, fineAfter time.Duration) {
	s.mu.Lock()
	s.restored, s.fineAfter = t, fineAfter
	s.mu.Unlock()
}

// recovered counts Links ready with an echo answered: when detect, on a
// connection made after they noticed the fault (an idle Link may have
// reconnected before the restore: a hung peer serves new connections);
// otherwise after the restore.
func (s *linkSet) recovered(detect bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.runs {
		if r.link.State() != conn.LinkReady {
			continue
		}
		if detect && !r.lostAt.IsZero() && r.backAt.After(r.lostAt) {
			n++
		} else if !detect && r.lastEcho.Load() > s.restored.UnixNano() {
			n++
		}
	}
	return n
}

// detections returns the Links' detection times and how many never left
// Ready.
func (s *linkSet) detections() ([]float64, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ds []float64
	und := 0
	for _, r := range s.runs {
		if r.lostAt.IsZero() {
			und++
			continue
		}
		ds = append(ds, r.lostAt.Sub(s.cut).Seconds())
	}
	return ds, und
}

func (s *linkSet) lastBack() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var last time.Time
	for _, r := range s.runs {
		if r.backAt.After(last) {
			last = r.backAt
		}
	}
	return last
}

func (s *linkSet) falseDeaths() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.falseN
}

func (s *linkSet) lost() int {
	n := 0
	for _, r := range s.runs {
		n += int(r.lostN.Load())
	}
	return n
}

// stop ends the Links and returns how many did not return within 5 s.
func (s *linkSet) stop() int {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	s.cancel()
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	stuck := 0
	for _, r := range s.runs {
		select {
		case <-r.done:
		case <-deadline.C:
			stuck++
		}
	}
	return stuck
}

func (s *linkSet) close() {
	if s.cancel != nil {
		s.cancel()
	}
	if s.proxy != nil {
		_ = s.proxy.Close()
	}
	_ = s.server.Close()
	s.wg.Wait()
}

// halfCloser is an echo server that can half-close its connections: it
// sends a FIN (CloseWrite) on each connection open at the call and keeps
// reading (and discarding) what the client sends.
type halfCloser struct {
	ln    net.Listener
	mu    sync.Mutex
	conns map[*net.TCPConn]bool // true: half-closed
	wg    sync.WaitGroup
}

func newHalfCloser() (*halfCloser, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &halfCloser{ln: ln, conns: map[*net.TCPConn]bool{}}
	h.wg.Add(1)
	go h.accept()
	return h, nil
}

func (h *halfCloser) Addr() string { return h.ln.Addr().String() }

func (h *halfCloser) accept() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		tc := c.(*net.TCPConn)
		h.mu.Lock()
		h.conns[tc] = false
		h.mu.Unlock()
		h.wg.Add(1)
		go h.serve(tc)
	}
}

func (h *halfCloser) serve(c *net.TCPConn) {
	defer h.wg.Done()
	defer func() {
		h.mu.Lock()
		delete(h.conns, c)
		h.mu.Unlock()
		_ = c.Close()
	}()
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		h.mu.Lock()
		half := h.conns[c]
		h.mu.Unlock()
		if !half {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	}
}

// HalfClose half-closes every connection open now.
func (h *halfCloser) HalfClose() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for c, half := range h.conns {
		if !half {
			h.conns[c] = true
			_ = c.CloseWrite()
			n++
		}
	}
	return n
}

func (h *halfCloser) Close() error {
	err := h.ln.Close()
	h.mu.Lock()
	for c := range h.conns {
		_ = c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
	return err
}
