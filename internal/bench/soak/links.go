package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strconv"
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
	lctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	tmpl := conn.LinkConfig{
		Dialer:       &conn.Dialer{Config: conn.Config{Probe: probeLine, ProbeInterval: o.keepAlive, ProbeTimeout: o.timeout}},
		Addrs:        []string{o.echoAddr},
		Gate:         backoff.NewGate(backoff.GateConfig{Destination: o.echoAddr, Logger: o.logger}),
		HealthyAfter: time.Second,
		Logger:       o.logger,
	}
	s.runs = make([]*linkRun, o.links)
	for i := range s.runs {
		r := &linkRun{id: i, set: s, done: make(chan struct{})}
		cfg := tmpl
		cfg.Session, cfg.OnStateChange = r.session, r.onState
		var err error
		if r.link, err = conn.NewLink(cfg); err != nil {
			cancel()
			s.runs = s.runs[:i]
			return s, err
		}
		s.runs[i] = r
		s.wg.Go(func() { r.run(lctx) })
	}
	return s, nil
}

// run runs the Link until ctx ends.
func (r *linkRun) run(ctx context.Context) {
	defer close(r.done)
	_ = r.link.Run(ctx)
}

// onState records a Link leaving Ready: the fault's doing inside its
// window, a false death outside.
func (r *linkRun) onState(ch conn.LinkStateChange) {
	if ch.From != conn.LinkReady || ch.To == conn.LinkShutdown {
		return
	}
	s := r.set
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return
	}
	if s.win.expects(true, ch.At) {
		if r.lostAt.IsZero() {
			r.lostAt = ch.At
		}
		return
	}
	s.o.logger.Warn("soak: false Link death", "link", r.id, "at", ch.At, "err", ch.Err)
	s.falseN++
}

// session echoes numbered lines on c: every -echo-every when busy (even
// ids), once when idle (then it only reads, and the probe keeps the
// connection).
func (r *linkRun) session(ctx context.Context, c *conn.Conn) error {
	br := bufio.NewReader(c)
	if err := r.echo(c, br, 1); err != nil {
		return err
	}
	r.set.mu.Lock()
	r.backAt = time.Now()
	r.set.mu.Unlock()
	if r.id%2 == 1 {
		_ = c.SetReadDeadline(time.Time{})
		for {
			if _, err := nextLine(br); err != nil {
				return err
			}
		}
	}
	for seq := 2; ctxtime.Sleep(ctx, r.set.o.echoEvery); seq++ {
		if err := r.echo(c, br, seq); err != nil {
			return err
		}
	}
	return context.Cause(ctx)
}

// echo sends line seq and waits for it to come back.
func (r *linkRun) echo(c *conn.Conn, br *bufio.Reader, seq int) error {
	line := strconv.Itoa(r.id) + "/" + strconv.Itoa(seq)
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(2*r.set.o.bound() + 2*time.Second))
	got, err := nextLine(br)
	switch {
	case err != nil:
		return err
	case got != line:
		return fmt.Errorf("soak: echo %q came back as %q", line, got)
	}
	r.echoes.Add(1)
	return nil
}

// nextLine returns the next line with text (the peer's echoes of the
// probes are empty lines, skipped).
func nextLine(br *bufio.Reader) (string, error) {
	line := ""
	var err error
	for line == "" && err == nil {
		line, err = br.ReadString('\n')
		line = strings.TrimSpace(line)
	}
	if err != nil {
		return "", err
	}
	return line, nil
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
