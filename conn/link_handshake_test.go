package conn

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/relinkgo/relink/backoff"
)

// pipeServer is a Dialer.Dial for tests whose accepted connections are
// net.Pipes served by serve(n, server end), n counting dials from 1.
type pipeServer struct {
	serve func(n int, srv net.Conn)

	mu    sync.Mutex
	dials []time.Time
	wg    sync.WaitGroup
}

func (p *pipeServer) dial(context.Context, string, string) (net.Conn, error) {
	p.mu.Lock()
	p.dials = append(p.dials, time.Now())
	n := len(p.dials)
	p.mu.Unlock()
	cli, srv := net.Pipe()
	p.wg.Go(func() {
		defer srv.Close()
		p.serve(n, srv)
	})
	return cli, nil
}

func (p *pipeServer) dialer() *Dialer { return &Dialer{Dial: p.dial} }

func (p *pipeServer) dialTimes() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.dials...)
}

// greet writes "HELLO\n" after delay, then discards what it reads until the
// client closes.
func greet(delay time.Duration) func(int, net.Conn) {
	return func(_ int, srv net.Conn) {
		time.Sleep(delay)
		if _, err := io.WriteString(srv, "HELLO\n"); err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, srv)
	}
}

// readGreeting is a Handshake that reads one line and wants "HELLO".
func readGreeting(_ context.Context, c *Conn) error {
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	switch line {
	case "HELLO\n":
		return nil
	case "BUSY\n":
		return backoff.Overloaded(errors.New("server said BUSY"), time.Second)
	case "DENIED\n":
		return backoff.Permanent(errors.New("server said DENIED"))
	}
	return fmt.Errorf("unexpected greeting %q", line)
}

// A Link is never LinkReady before its Handshake returns nil: while the
// server's greeting is 5 s away the Link stays LinkConnecting, and every
// transition to LinkReady comes after Handshake returned.
func TestLinkNotReadyBeforeHandshake(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := &pipeServer{serve: greet(5 * time.Second)}
		var mu sync.Mutex
		var handshakeDone time.Time
		rec := &recorder{}
		l := mustLink(t, LinkConfig{Dialer: srv.dialer(), Addrs: []string{"srv:1"},
			Handshake: func(ctx context.Context, c *Conn) error {
				err := readGreeting(ctx, c)
				mu.Lock()
				handshakeDone = time.Now()
				mu.Unlock()
				return err
			},
			Session:       func(ctx context.Context, c *Conn) error { <-ctx.Done(); return nil },
			OnStateChange: rec.record})
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		time.Sleep(4 * time.Second)
		synctest.Wait()
		wantState(t, l, LinkConnecting)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		wantState(t, l, LinkReady)
		cancel()
		if err := wait(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range rec.events() {
			if e.To == LinkReady && (handshakeDone.IsZero() || e.At.Before(handshakeDone)) {
				t.Fatalf("LinkReady at %v, Handshake returned at %v", e.At, handshakeDone)
			}
		}
		srv.wg.Wait()
	})
}

// Handshake's backoff.Permanent stops the Link: Run returns it, after one
// dial, and the Gate heard a client failure, not a success.
func TestLinkHandshakePermanentStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := &pipeServer{serve: func(_ int, c net.Conn) { _, _ = io.WriteString(c, "DENIED\n") }}
		gate := backoff.NewGate(backoff.GateConfig{Destination: "srv"})
		defer gate.Close()
		l := mustLink(t, LinkConfig{Dialer: srv.dialer(), Addrs: []string{"srv:1"}, Gate: gate,
			Handshake: readGreeting,
			Session:   func(context.Context, *Conn) error { t.Error("Session ran"); return nil }})
		err := startRun(t.Context(), t, l)()
		if !backoff.IsPermanent(err) || err.Error() != "server said DENIED" {
			t.Fatalf("Run = %v, want the Handshake's permanent error", err)
		}
		if n := len(srv.dialTimes()); n != 1 {
			t.Fatalf("%d dials, want 1", n)
		}
		if s := gate.Stats(); s.Succeeded != 0 || s.ClientFailures != 1 || s.InFlight != 0 {
			t.Fatalf("gate stats %+v, want 1 client failure and no success", s)
		}
		wantState(t, l, LinkShutdown)
		srv.wg.Wait()
	})
}

// Handshake's backoff.Overloaded(err, 1 s) pauses the Gate for 1 s
// (GatePaused, PausedUntil 1 s ahead), and the Link redials when the pause
// ends, through the Gate.
func TestLinkHandshakeOverloadedPausesGate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := &pipeServer{serve: func(n int, c net.Conn) {
			if n == 1 {
				_, _ = io.WriteString(c, "BUSY\n")
				return
			}
			greet(0)(n, c)
		}}
		gate := backoff.NewGate(backoff.GateConfig{Destination: "srv"})
		defer gate.Close()
		var paused backoff.GateStats
		l := mustLink(t, LinkConfig{Dialer: srv.dialer(), Addrs: []string{"srv:1"}, Gate: gate,
			Handshake: readGreeting,
			Session:   func(ctx context.Context, c *Conn) error { <-ctx.Done(); return nil },
			OnStateChange: func(e LinkStateChange) {
				if e.To == LinkTransientFailure && paused.State == backoff.GateOpen {
					paused = gate.Stats()
				}
			}})
		start := time.Now()
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		wantState(t, l, LinkReady)
		if paused.State != backoff.GatePaused || !paused.PausedUntil.Equal(start.Add(time.Second)) {
			t.Errorf("gate after BUSY: %v until %v, want paused until start+1s", paused.State,
				paused.PausedUntil.Sub(start))
		}
		if paused.Overloaded != 1 || paused.Succeeded != 0 {
			t.Errorf("gate after BUSY: %+v, want one overload and no success", paused)
		}
		dials := srv.dialTimes()
		if len(dials) != 2 || dials[1].Sub(start) < time.Second || dials[1].Sub(start) > 2*time.Second {
			t.Fatalf("dials at %v, want 2, the second 1–2 s after the first", dials)
		}
		cancel()
		if err := wait(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v", err)
		}
		srv.wg.Wait()
	})
}

// A connection the server closes before readiness (no greeting) counts
// against the pace: the Gate hears Unreachable, not Success.
func TestLinkClosedBeforeReadyIsFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := &pipeServer{serve: func(n int, c net.Conn) {
			if n > 1 {
				greet(0)(n, c)
			}
		}}
		gate := backoff.NewGate(backoff.GateConfig{Destination: "srv"})
		defer gate.Close()
		var after backoff.GateStats
		var why error
		l := mustLink(t, LinkConfig{Dialer: srv.dialer(), Addrs: []string{"srv:1"}, Gate: gate,
			Handshake: readGreeting,
			Session:   func(ctx context.Context, c *Conn) error { <-ctx.Done(); return nil },
			OnStateChange: func(e LinkStateChange) {
				if e.To == LinkTransientFailure && why == nil {
					after, why = gate.Stats(), e.Err
				}
			}})
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		time.Sleep(time.Minute)
		synctest.Wait()
		wantState(t, l, LinkReady)
		if !errors.Is(why, io.EOF) {
			t.Errorf("first failure %v, want io.EOF", why)
		}
		if after.Succeeded != 0 || after.Unreachable != 1 {
			t.Errorf("gate after the closed connection: %+v, want 1 unreachable, no success", after)
		}
		if s := gate.Stats(); s.Succeeded != 1 {
			t.Errorf("gate at the end: %+v, want 1 success", s)
		}
		cancel()
		if err := wait(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v", err)
		}
		srv.wg.Wait()
	})
}

// A Handshake that never returns on its own (it reads without watching
// ctx) is cut at HandshakeTimeout: the Conn is closed, the attempt fails
// with ErrHandshakeTimeout naming the address, and the Gate hears
// Unreachable.
func TestLinkHandshakeTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := &pipeServer{serve: func(_ int, c net.Conn) { _, _ = io.Copy(io.Discard, c) }}
		gate := backoff.NewGate(backoff.GateConfig{Destination: "srv"})
		defer gate.Close()
		start := time.Now()
		l := mustLink(t, LinkConfig{Dialer: srv.dialer(), Addrs: []string{"srv:1"}, Gate: gate,
			HandshakeTimeout: 2 * time.Second, MaxAttempts: 1,
			Handshake: func(_ context.Context, c *Conn) error {
				_, err := c.Read(make([]byte, 1))
				return err
			},
			Session: func(context.Context, *Conn) error { t.Error("Session ran"); return nil }})
		err := startRun(t.Context(), t, l)()
		if !errors.Is(err, ErrLinkGaveUp) || !errors.Is(err, ErrHandshakeTimeout) {
			t.Fatalf("Run = %v, want ErrLinkGaveUp and ErrHandshakeTimeout", err)
		}
		if got := time.Since(start); got != 2*time.Second {
			t.Errorf("gave up after %v, want 2s", got)
		}
		if s := gate.Stats(); s.Unreachable != 1 || s.Succeeded != 0 {
			t.Errorf("gate %+v, want 1 unreachable", s)
		}
		srv.wg.Wait()
	})
}

// A Session that returns backoff.Overloaded(err, 3 s) after readiness
// pauses the Gate for 3 s; the Link redials after the pause.
func TestLinkSessionOverloadedPushesBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := &pipeServer{serve: greet(0)}
		gate := backoff.NewGate(backoff.GateConfig{Destination: "srv"})
		defer gate.Close()
		var mu sync.Mutex
		runs := 0
		var pausedUntil time.Time
		l := mustLink(t, LinkConfig{Dialer: srv.dialer(), Addrs: []string{"srv:1"}, Gate: gate,
			Handshake: readGreeting,
			Session: func(ctx context.Context, c *Conn) error {
				mu.Lock()
				runs++
				n := runs
				mu.Unlock()
				if n == 1 {
					time.Sleep(time.Minute)
					return backoff.Overloaded(errors.New("503"), 3*time.Second)
				}
				<-ctx.Done()
				return nil
			},
			OnStateChange: func(e LinkStateChange) {
				if e.To == LinkTransientFailure {
					pausedUntil = gate.Stats().PausedUntil
				}
			}})
		start := time.Now()
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		wantState(t, l, LinkReady)
		if want := start.Add(time.Minute + 3*time.Second); !pausedUntil.Equal(want) {
			t.Errorf("paused until start+%v, want start+1m3s", pausedUntil.Sub(start))
		}
		dials := srv.dialTimes()
		// The Gate admits at its pace once the pause is over (within a
		// second here).
		if d := dials[len(dials)-1].Sub(start); len(dials) != 2 || d < time.Minute+3*time.Second || d > time.Minute+4*time.Second {
			t.Errorf("%d dials, the last at start+%v; want 2, the second at 1m3s–1m4s", len(dials), dials[len(dials)-1].Sub(start))
		}
		cancel()
		if err := wait(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v", err)
		}
		srv.wg.Wait()
	})
}

// A ready Link's connection declared dead by liveness (the server went
// silent) is reported to the Gate, which closes.
func TestLinkDeadConnClosesGate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		silent := make(chan struct{})
		srv := &pipeServer{serve: func(n int, c net.Conn) {
			if n == 1 {
				_, _ = io.WriteString(c, "HELLO\n")
				_, _ = io.Copy(io.Discard, c) // reads the probes, never answers
				return
			}
			<-silent
		}}
		gate := backoff.NewGate(backoff.GateConfig{Destination: "srv"})
		defer gate.Close()
		var states []backoff.GateState
		l := mustLink(t, LinkConfig{
			Dialer: &Dialer{Dial: srv.dial, Config: Config{Probe: CRLF, ProbeInterval: time.Second, ProbeTimeout: time.Second}},
			Addrs:  []string{"srv:1"}, Gate: gate, HealthyAfter: -1,
			Handshake: readGreeting,
			Session: func(ctx context.Context, c *Conn) error {
				_, err := io.Copy(io.Discard, c)
				return err
			},
			OnStateChange: func(e LinkStateChange) {
				if e.To == LinkTransientFailure {
					states = append(states, gate.State())
				}
			}})
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if len(states) == 0 || states[0] != backoff.GateClosed {
			t.Errorf("gate states after the death: %v, want closed", states)
		}
		cancel()
		close(silent)
		if err := wait(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v", err)
		}
		srv.wg.Wait()
	})
}

// Without a Gate, a Handshake's backoff.Overloaded(err, d) makes the Link
// wait at least d before it redials, whatever its backoff says.
func TestLinkOverloadedWithoutGateWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := &pipeServer{serve: func(n int, c net.Conn) {
			if n == 1 {
				_, _ = io.WriteString(c, "BUSY\n") // readGreeting: retry after 1 s
				return
			}
			greet(0)(n, c)
		}}
		l := mustLink(t, LinkConfig{Dialer: srv.dialer(), Addrs: []string{"srv:1"},
			Backoff:   backoff.NewFactory(backoff.Exponential{Base: time.Millisecond, Jitter: backoff.NoJitter}),
			Handshake: readGreeting,
			Session:   func(ctx context.Context, c *Conn) error { <-ctx.Done(); return nil }})
		start := time.Now()
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		wantState(t, l, LinkReady)
		if dials := srv.dialTimes(); len(dials) != 2 || dials[1].Sub(start) != time.Second {
			t.Errorf("%d dials, the last at start+%v; want 2, the second at 1s", len(dials), dials[len(dials)-1].Sub(start))
		}
		cancel()
		if err := wait(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v", err)
		}
		srv.wg.Wait()
	})
}
