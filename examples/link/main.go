// Command link keeps a supervised TLS link to a server with a login, and
// prints what happens to it: the gate's and the link's state changes, the
// logins, the sessions and why each connection ended.
//
// With no flags it runs stand-alone for 12 s against a built-in TLS server
// on loopback (with a self-signed certificate it generates, which the client
// trusts alone) that misbehaves on a schedule:
//
//	0–1 s   logins are refused: "BUSY 1". The Link's Handshake turns that
//	        into backoff.Overloaded(err, 1 s): the shared Gate pauses for
//	        1 s, and the Link is not READY until a login is welcomed;
//	at 3 s  the server hangs: its connections stay open (the kernel keeps
//	        acknowledging) but nothing is answered — only the Conn's probe
//	        (CRLF through TLS) notices; the Link replaces the connection
//	        and logs in again;
//	at 6.5 s the server restarts: every connection is closed and the port
//	        refuses connections for 1 s, then logins are refused for 1 s
//	        more; the Link redials through its backoff and the Gate.
//
// With -password set to anything but "secret" the server answers DENIED,
// which the Handshake marks backoff.Permanent: the Link stops and Run
// returns that error.
//
// Usage:
//
//	go run ./examples/link                        # the 12 s demonstration
//	go run ./examples/link -password wrong        # a login refused for good
//	go run ./examples/link -addr host:port -ca ca.pem -duration 0   # your server, until Ctrl-C
//
// Flags:
//
//	-addr            a TLS server speaking the protocol in server.go; empty
//	                 starts the built-in one
//	-ca              PEM file of the CA that signed -addr's certificate
//	                 (default: the system's roots)
//	-user, -password the login (default demo / secret)
//	-probe-interval  inbound silence before a probe is sent (default 1s)
//	-probe-timeout   wait for an answer to a probe before declaring the peer dead (default 1s)
//	-duration        stop after this long; 0 runs until interrupted, except
//	                 with the built-in server, where 0 means 12s (default 0)
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/ctxtime"
)

// options are the flags.
type options struct {
	addr, ca          string
	user, password    string
	interval, timeout time.Duration
	duration          time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "", "TLS server host:port; empty starts a built-in one on loopback")
	flag.StringVar(&o.ca, "ca", "", "PEM file of the CA that signed -addr's certificate (default: the system's roots)")
	flag.StringVar(&o.user, "user", "demo", "login user")
	flag.StringVar(&o.password, "password", password, "login password")
	flag.DurationVar(&o.interval, "probe-interval", time.Second, "inbound silence before a probe is sent")
	flag.DurationVar(&o.timeout, "probe-timeout", time.Second, "wait for an answer to a probe before declaring the peer dead")
	flag.DurationVar(&o.duration, "duration", 0, "stop after this long; 0 runs until interrupted (12s with the built-in server)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "link:", err)
		stop()
		os.Exit(1)
	}
}

// out receives the demonstration's lines, timed from start; the tests set
// both before run.
var (
	out   io.Writer = os.Stdout
	start           = time.Now()
)

func logf(format string, args ...any) {
	fmt.Fprintf(out, "[%6.3fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

// run reads as the demonstration's phases: the server (built-in, on its
// schedule, or yours), the gate, the link, until the duration ends.
func run(ctx context.Context, o options) error {
	builtin := o.addr == ""
	if builtin && o.duration == 0 {
		o.duration = 12 * time.Second
	}
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, o.duration, fmt.Errorf("-duration %v elapsed", o.duration))
		defer cancel()
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	var err error
	if builtin {
		var stop func()
		if o.addr, tlsConfig.RootCAs, stop, err = startServer(ctx); err != nil {
			return err
		}
		defer stop()
	} else if o.ca != "" {
		if tlsConfig.RootCAs, err = readCA(o.ca); err != nil {
			return err
		}
	}
	gate := newGate(o.addr)
	defer gate.Close()
	link, err := newLink(o, tlsConfig, gate)
	if err != nil {
		return err
	}
	logf("link: probing after %v of silence, dead %v after a probe", o.interval, o.timeout)
	err = link.Run(ctx)
	logf("link: Run returned: %v", err)
	if ctx.Err() != nil {
		return nil // stopped as asked
	}
	return err
}

// startServer starts the built-in server and its schedule: its address,
// the pool that trusts its certificate, and the function that stops both.
func startServer(ctx context.Context) (addr string, roots *x509.CertPool, stop func(), err error) {
	srv, err := newServer(time.Second)
	if err != nil {
		return "", nil, nil, err
	}
	logf("server: TLS login server on %s (self-signed certificate), refusing logins for 1s", srv.addr)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { misbehave(ctx, srv) })
	stop = func() {
		srv.closeAll(true)
		cancel() // the schedule ends with run
		wg.Wait()
	}
	return srv.addr, srv.roots(), stop, nil
}

// readCA reads the PEM file of a CA to trust.
func readCA(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("-ca %s: no certificate in it", path)
	}
	return pool, nil
}

// newGate is the Gate that admits the Link's attempts; in a gateway, every
// Link and trunk towards the same server shares one.
func newGate(addr string) *backoff.Gate {
	return backoff.NewGate(backoff.GateConfig{
		Destination: addr,
		OnStateChange: func(e backoff.GateStateChange) {
			msg := fmt.Sprintf("gate: %v → %v", e.From, e.To)
			if !e.Until.IsZero() {
				msg += fmt.Sprintf(" for %.1fs", time.Until(e.Until).Seconds())
			}
			if e.Err != nil {
				msg += ": " + e.Err.Error()
			}
			logf("%s", msg)
		},
	})
}

// newLink is the Link: TLS, the login as its Handshake, the echo session,
// the Gate, and its state changes printed.
func newLink(o options, tlsConfig *tls.Config, gate *backoff.Gate) (*conn.Link, error) {
	var sessions int // only Run's goroutines use it, one session at a time
	return conn.NewLink(conn.LinkConfig{
		Dialer: &conn.Dialer{Config: conn.Config{
			Probe:         conn.CRLF, // the server echoes "\r\n\r\n"
			ProbeInterval: o.interval,
			ProbeTimeout:  o.timeout,
		}},
		Addrs:            []string{o.addr},
		TLSConfig:        tlsConfig,
		HandshakeTimeout: 3 * time.Second,
		Handshake: func(ctx context.Context, c *conn.Conn) error {
			return login(ctx, c, o.user, o.password)
		},
		Session: func(ctx context.Context, c *conn.Conn) error {
			sessions++
			return session(ctx, c, sessions)
		},
		Gate: gate,
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
}

// misbehave runs the built-in server's schedule until ctx ends.
func misbehave(ctx context.Context, srv *server) {
	sleep := func(d time.Duration) bool { return ctxtime.Sleep(ctx, d) }
	if !sleep(3 * time.Second) {
		return
	}
	logf("server: hanging — connections stay open, nothing is answered")
	srv.hang()
	if !sleep(3500 * time.Millisecond) {
		return
	}
	logf("server: restarting — all connections closed, port closed for 1s, then busy for 1s")
	if err := srv.restart(time.Second, time.Second, sleep); err != nil && !errors.Is(err, context.Canceled) {
		logf("server: cannot listen again: %v", err)
		return
	}
	if ctx.Err() == nil {
		logf("server: listening again on %s", srv.addr)
	}
}
