package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/relinkgo/relink/internal/ratelimit"
)

// window is the server's admission window (the capacity is counted per
// window, as the fleet benchmark's server and Kamailio's htable counters
// do) and the width of the peak-load measurement.
const window = 100 * time.Millisecond

// server accepts TCP at once and admits capacity logins per second, counted
// per 100 ms window; it answers the rest BUSY (with the hint, if any) and
// closes. An admitted login gets OK and its connection stays open, the
// server reading and discarding what comes, until the client closes it.
type server struct {
	ln   net.Listener
	busy string // the refusal line

	mu       sync.Mutex
	lim      *ratelimit.Window
	windows  map[int64]int // logins per 100 ms window, by start
	logins   int           // LOGIN lines received
	refused  int           // BUSY answers
	conns    map[net.Conn]struct{}
	closed   bool
	serveWG  sync.WaitGroup
	acceptWG sync.WaitGroup
}

// newServer starts a server on loopback admitting capacity logins per
// second. retryAfter < 0 answers a bare BUSY.
func newServer(capacity float64, retryAfter time.Duration) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &server{ln: ln, busy: formatBusy(retryAfter), lim: ratelimit.NewWindow(window, capacity),
		windows: make(map[int64]int), conns: make(map[net.Conn]struct{})}
	s.acceptWG.Add(1)
	go s.accept()
	return s, nil
}

func (s *server) addr() string { return s.ln.Addr().String() }

func (s *server) accept() {
	defer s.acceptWG.Done()
	for {
		c, err := s.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil { // out of descriptors, say: the clients will retry
			time.Sleep(5 * time.Millisecond)
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.serveWG.Add(1)
		s.mu.Unlock()
		go s.serve(c)
	}
}

// serve answers the logins of one connection.
func (s *server) serve(c net.Conn) {
	defer s.serveWG.Done()
	defer s.forget(c)
	r := bufio.NewReaderSize(c, 256)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSpace(line)
		switch {
		case line == "": // a probe, if the client probes: ignored
			continue
		case !strings.HasPrefix(line, "LOGIN "):
			_, _ = io.WriteString(c, "ERR\n")
			return
		case s.admit(time.Now()):
			if _, err := io.WriteString(c, "OK\n"); err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, r) // the session: idle until closed
			return
		default:
			_, _ = io.WriteString(c, s.busy)
			return
		}
	}
}

// admit counts one login at now and reports whether it is admitted.
func (s *server) admit(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logins++
	s.windows[now.UnixNano()/int64(window)]++
	if s.lim.Admit(now) {
		return true
	}
	s.refused++
	return false
}

func (s *server) forget(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// counts returns the logins received, the BUSY answers and the most logins
// in one 100 ms window.
func (s *server) counts() (logins, refused, peak int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.windows {
		peak = max(peak, n)
	}
	return s.logins, s.refused, peak
}

// loginsBefore counts the logins received in the windows that began before
// t.
func (s *server) loginsBefore(t time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, end := 0, t.UnixNano()/int64(window)
	for w, c := range s.windows {
		if w < end {
			n += c
		}
	}
	return n
}

// close stops the server, closes every connection and waits for its
// goroutines.
func (s *server) close() {
	s.ln.Close()
	s.acceptWG.Wait()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.serveWG.Wait()
}
