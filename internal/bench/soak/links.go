package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/ctxtime"
)

// linkSet is the client's conn.Links to the echo peer, sharing one Gate.
// Even-numbered Links are busy (a numbered line echoed every -echo-every);
// odd ones echo one line per connection, then only read: their Conn's
// probe keeps them.
type linkSet struct {
	o      *options
	runs   []*linkRun
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	win      window
	falseN   int
	stopping bool
}

// linkRun is one Link and what it saw in the current fault's window.
type linkRun struct {
	id     int
	set    *linkSet
	link   *conn.Link
	lostAt time.Time // first left Ready within the window (guarded by set.mu)
	backAt time.Time // first echo answered on its latest connection (set.mu)
	done   chan struct{}
	echoes atomic.Int64
}

// probeLine is the Links' probe: an empty line, which the peer echoes and
// the Session skips.
var probeLine = conn.ProberFunc(func(w io.Writer) error {
	_, err := io.WriteString(w, "\n")
	return err
})

// startLinks starts o.links Links to o.echoAddr.
func startLinks(ctx context.Context, o *options) (*linkSet, error) {
	s := &linkSet{o: o}
	gate := backoff.NewGate(backoff.GateConfig{Destination: o.echoAddr, Logger: o.logger})
	lctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	for i := range o.links {
		r := &linkRun{id: i, set: s, done: make(chan struct{})}
		l, err := conn.NewLink(conn.LinkConfig{
			Dialer:        &conn.Dialer{Config: conn.Config{Probe: probeLine, ProbeInterval: o.keepAlive, ProbeTimeout: o.timeout}},
			Addrs:         []string{o.echoAddr},
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
	return s, nil
}

func (r *linkRun) onState(ch conn.LinkStateChange) {
	s := r.set
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch.From != conn.LinkReady || ch.To == conn.LinkShutdown || s.stopping {
		return
	}
	switch {
	case !s.win.expects(true, ch.At):
		s.o.logger.Warn("soak: false Link death", "link", r.id, "at", ch.At, "err", ch.Err)
		s.falseN++
	case r.lostAt.IsZero():
		r.lostAt = ch.At
	}
}

// session echoes numbered lines on c: every -echo-every when busy, once
// when idle (then it only reads, so that the probe has work to do).
func (r *linkRun) session(ctx context.Context, c *conn.Conn) error {
	br := bufio.NewReader(c)
	busy := r.id%2 == 0
	for seq := 1; ; seq++ {
		want := fmt.Sprintf("%d-%d", r.id, seq)
		if _, err := fmt.Fprintf(c, "%s\n", want); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(2*r.set.o.bound() + 2*time.Second))
		got, err := nextLine(br)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("echo: got %q, want %q", got, want)
		}
		r.echoes.Add(1)
		if seq == 1 {
			r.set.mu.Lock()
			r.backAt = time.Now()
			r.set.mu.Unlock()
		}
		if !busy {
			_ = c.SetReadDeadline(time.Time{})
			for {
				if _, err := nextLine(br); err != nil {
					return err
				}
			}
		}
		if !ctxtime.Sleep(ctx, r.set.o.echoEvery) {
			return context.Cause(ctx)
		}
	}
}

// nextLine reads the next non-empty line (empty ones echo the probes).
func nextLine(br *bufio.Reader) (string, error) {
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

// cut installs the current fault's window and forgets the last one's
// losses.
func (s *linkSet) cut(w window) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.clear.IsZero() {
		for _, r := range s.runs {
			r.lostAt = time.Time{}
		}
	}
	s.win = w
}

// status returns the ready Links, those recovered from the current fault
// (an affected Link must have lost its connection and echoed on a new
// one; any other be ready), when the last came back, and the false deaths.
func (s *linkSet) status() (ready, recovered int, last time.Time, falseN int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.runs {
		if r.link.State() != conn.LinkReady {
			continue
		}
		ready++
		switch {
		case !s.win.links:
			recovered++
		case !r.lostAt.IsZero() && r.backAt.After(r.lostAt):
			recovered++
			last = later(last, r.backAt)
		}
	}
	return ready, recovered, last, s.falseN
}

// stop ends the Links and returns how many Runs did not return within d.
func (s *linkSet) stop(d time.Duration) int {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	s.cancel()
	t := time.NewTimer(d)
	defer t.Stop()
	stuck, expired := 0, false
	for _, r := range s.runs {
		if expired {
			select {
			case <-r.done:
			default:
				stuck++
			}
			continue
		}
		select {
		case <-r.done:
		case <-t.C:
			expired = true
			stuck++
		}
	}
	return stuck
}
