// Command link keeps a supervised TCP link to an echo server and prints what
// happens to it: state changes, sessions, and why each connection ended.
//
// With no flags it runs stand-alone for 10 s against an in-process echo
// server on loopback that misbehaves on a schedule:
//
//	at 2 s  the server hangs: its connections stay open (the kernel keeps
//	        acknowledging) but nothing is answered — only the Conn's
//	        application probe can notice; the Link replaces the connection;
//	at 6 s  the server restarts: every connection is closed and the port
//	        refuses connections for 1 s; the Link redials through its
//	        backoff until the server is back.
//
// Usage:
//
//	go run ./examples/link                       # the 10 s demonstration
//	go run ./examples/link -addr host:7 -duration 0   # a real echo server, until Ctrl-C
//
// Flags:
//
//	-addr            echo server host:port; empty starts the built-in one
//	-probe-interval  inbound silence before a probe is sent (default 1s)
//	-probe-timeout   wait for an answer to a probe before declaring the peer dead (default 1s)
//	-duration        stop after this long; 0 runs until interrupted, except
//	                 with the built-in server, where 0 means 10s (default 0)
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/ctxtime"
	"github.com/relinkgo/relink/internal/testkit"
)

func main() {
	addr := flag.String("addr", "", "echo server host:port; empty starts a built-in one on loopback")
	interval := flag.Duration("probe-interval", time.Second, "inbound silence before a probe is sent")
	timeout := flag.Duration("probe-timeout", time.Second, "wait for an answer to a probe before declaring the peer dead")
	duration := flag.Duration("duration", 0, "stop after this long; 0 runs until interrupted (10s with the built-in server)")
	flag.Parse()
	if err := run(*addr, *interval, *timeout, *duration); err != nil {
		fmt.Fprintln(os.Stderr, "link:", err)
		os.Exit(1)
	}
}

var start = time.Now()

func logf(format string, args ...any) {
	fmt.Printf("[%6.3fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

func run(addr string, interval, timeout, duration time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	builtin := addr == ""
	if builtin && duration == 0 {
		duration = 10 * time.Second
	}
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, duration, fmt.Errorf("-duration %v elapsed", duration))
		defer cancel()
	}
	if builtin {
		srv, err := testkit.ListenEcho("")
		if err != nil {
			return err
		}
		addr = srv.Addr()
		logf("server: echo server listening on %s", addr)
		d := &demoServer{srv: srv}
		var wg sync.WaitGroup
		defer wg.Wait()
		defer d.stop()
		wg.Go(func() { d.misbehave(ctx) })
	}

	var sessions atomic.Int64
	link, err := conn.NewLink(conn.LinkConfig{
		Dialer: &conn.Dialer{Config: conn.Config{
			Probe:         conn.CRLF, // the echo server answers "\r\n\r\n" with itself
			ProbeInterval: interval,
			ProbeTimeout:  timeout,
		}},
		Addrs: []string{addr},
		Session: func(ctx context.Context, c *conn.Conn) error {
			return session(ctx, c, int(sessions.Add(1)))
		},
		// Short delays and a short healthy period suit a demonstration;
		// the defaults (500 ms…60 s, 30 s) suit a server.
		Backoff:      backoff.NewFactory(backoff.Exponential{Base: 200 * time.Millisecond, Max: 5 * time.Second}),
		HealthyAfter: 1500 * time.Millisecond,
		OnStateChange: func(e conn.LinkStateChange) {
			msg := fmt.Sprintf("link: %v → %v", e.From, e.To)
			if e.Destination != "" && e.To != conn.LinkShutdown {
				msg += " " + e.Destination
			}
			if e.Err != nil {
				msg += ": " + e.Err.Error()
			}
			logf("%s", msg)
		},
	})
	if err != nil {
		return err
	}
	logf("link: probing after %v of silence, dead %v after a probe", interval, timeout)
	err = link.Run(ctx)
	logf("link: Run returned: %v", err)
	if ctx.Err() != nil {
		return nil // stopped as asked
	}
	return err
}

// session sends a line every 500 ms and counts the echoes, until the
// connection ends or ctx is cancelled.
func session(ctx context.Context, c *conn.Conn, n int) error {
	began := time.Now()
	logf("session %d: started from %v", n, c.LocalAddr())
	var echoes atomic.Int64
	readErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) != "" { // blank lines: echoed probes
				echoes.Add(1)
			}
		}
		err := sc.Err()
		if err == nil {
			err = io.EOF
		}
		readErr <- err
	}()
	end := func(why error) error {
		logf("session %d: ended after %.1fs with %d echoes: %v", n, time.Since(began).Seconds(), echoes.Load(), why)
		return why
	}
	// closeAndWait ends the connection and waits for the reader; its end
	// is then no news.
	closeAndWait := func() error {
		_ = c.Close()
		return <-readErr
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			_ = closeAndWait()
			return end(context.Cause(ctx))
		case err := <-readErr:
			return end(err)
		case <-tick.C:
			if _, err := fmt.Fprintf(c, "ping %d\n", i); err != nil {
				_ = closeAndWait()
				return end(err)
			}
		}
	}
}

// demoServer is testkit's echo server on a schedule: it hangs (its
// connections stay open but answer nothing) and restarts (closes everything,
// refuses for a while).
type demoServer struct {
	mu      sync.Mutex
	srv     *testkit.Echo // nil while restarting
	stopped bool
}

// stop closes the server; final says that it stays closed.
func (d *demoServer) stop() { d.close(true) }

func (d *demoServer) close(final bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = d.stopped || final
	if d.srv != nil {
		d.srv.Close()
		d.srv = nil
	}
}

// misbehave runs the demonstration's schedule until ctx ends.
func (d *demoServer) misbehave(ctx context.Context) {
	if !ctxtime.Sleep(ctx, 2*time.Second) {
		return
	}
	logf("server: hanging — connections stay open, nothing is answered")
	d.mu.Lock()
	d.srv.Hang()
	addr := d.srv.Addr()
	d.mu.Unlock()
	if !ctxtime.Sleep(ctx, 4*time.Second) {
		return
	}
	logf("server: restarting — all connections closed, port closed for 1s")
	d.close(false)
	if !ctxtime.Sleep(ctx, time.Second) {
		return
	}
	srv, err := testkit.ListenEcho(addr)
	if err != nil {
		logf("server: cannot listen again: %v", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		srv.Close()
		return
	}
	d.srv = srv
	logf("server: listening again on %s", addr)
}
