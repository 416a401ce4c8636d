package conn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/neterr"
	"github.com/relinkgo/relink/internal/testkit"
)

// tlsEcho starts a TLS echo server on loopback with a certificate for
// hosts, signed by a fresh CA, and returns it with the client config that
// trusts the CA.
func tlsEcho(t *testing.T, hosts ...string) (*testkit.Echo, *tls.Config) {
	t.Helper()
	ca, err := kamailio.NewCA("relink conn test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("server", hosts...)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := testkit.ServeEcho(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
	t.Cleanup(func() { e.Close() })
	return e, &tls.Config{RootCAs: ca.Pool()}
}

// sipOptions is a SIP message: CRLF's ReplyFilter follows SIP framing.
const sipOptions = "OPTIONS sip:relink.invalid SIP/2.0\r\nContent-Length: 0\r\n\r\n"

// A Link with TLSConfig talks TLS to a TLS echo server: the Session's bytes
// come back decrypted, CRLF probes go through TLS (the server answers them,
// so the connection outlives many probe intervals) and the Conn watches the
// TCP socket underneath.
func TestLinkTLSEchoWithProbes(t *testing.T) {
	e, clientTLS := tlsEcho(t, "127.0.0.1")
	type result struct {
		probes uint64
		err    error
	}
	res := make(chan result, 1)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	l := mustLink(t, LinkConfig{
		Dialer:    &Dialer{Config: Config{Probe: CRLF, ProbeInterval: 100 * time.Millisecond, ProbeTimeout: time.Second}},
		Addrs:     []string{e.Addr()},
		TLSConfig: clientTLS,
		Handshake: func(_ context.Context, c *Conn) error {
			if _, ok := c.NetConn().(*tls.Conn); !ok || c.raw == nil && hasSocketInfo {
				return backoff.Permanent(errors.New("not TLS over a watched TCP socket"))
			}
			return testkit.EchoOnce(c, sipOptions, 5*time.Second)
		},
		Session: func(ctx context.Context, c *Conn) error {
			// ~10 probe intervals of silence from us; the server's answers
			// to the probes are removed by CRLF's ReplyFilter.
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(make([]byte, 64))
			if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				res <- result{err: fmt.Errorf("read %d bytes (%w) while only probe replies came, want a timeout", n, err)}
				return nil
			}
			err = testkit.EchoOnce(c, sipOptions, 5*time.Second)
			res <- result{c.mon.Probes(), err}
			<-ctx.Done()
			return nil
		},
	})
	wait := startRun(ctx, t, l)
	select {
	case r := <-res:
		if r.err != nil {
			t.Errorf("echo after 1 s of probes: %v", r.err)
		}
		if r.probes < 3 {
			t.Errorf("%d probes sent in 1 s at a 100 ms interval, want ≥ 3", r.probes)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no session result within 10 s")
	}
	cancel()
	if err := wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
}

// A TLS handshake refused by the client (an untrusted certificate, a
// hostname mismatch, a plain TCP port) is a configuration error: the error
// wraps ErrTLSHandshake and names the address, the Gate hears a client
// failure, and the Link retries no sooner than SlowRetry.
func TestLinkTLSConfigErrorRetriedSlowly(t *testing.T) {
	trusted, trustingTLS := tlsEcho(t, "127.0.0.1")
	_, otherTLS := tlsEcho(t, "127.0.0.1") // another CA
	mismatched, mismatchedTLS := tlsEcho(t, "other.example")
	plain, err := testkit.ListenEcho("")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for _, tc := range []struct {
		name, addr string
		cfg        *tls.Config
		want       string
	}{
		{"untrusted", trusted.Addr(), otherTLS, "certificate signed by unknown authority"},
		{"plain TCP port", plain.Addr(), trustingTLS, "tls:"},
		{"hostname mismatch", mismatched.Addr(), mismatchedTLS, "cannot validate certificate for 127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gate := backoff.NewGate(backoff.GateConfig{Destination: tc.addr})
			defer gate.Close()
			var mu sync.Mutex
			var tries []time.Time
			const slow = 400 * time.Millisecond
			l := mustLink(t, LinkConfig{
				Dialer: &Dialer{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
					mu.Lock()
					tries = append(tries, time.Now())
					mu.Unlock()
					var d net.Dialer
					return d.DialContext(ctx, network, addr)
				}},
				Addrs: []string{tc.addr}, TLSConfig: tc.cfg, Gate: gate,
				SlowRetry: slow, MaxAttempts: 2,
				Backoff: backoff.NewFactory(backoff.Exponential{Base: time.Millisecond, Jitter: backoff.NoJitter}),
				Session: func(context.Context, *Conn) error { return errors.New("session ran") },
			})
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			err := l.Run(ctx)
			if !errors.Is(err, ErrLinkGaveUp) || !errors.Is(err, ErrTLSHandshake) {
				t.Fatalf("Run = %v, want ErrLinkGaveUp and ErrTLSHandshake", err)
			}
			if !strings.Contains(err.Error(), tc.addr) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %s and %q", err, tc.addr, tc.want)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(tries) != 2 || tries[1].Sub(tries[0]) < slow {
				t.Errorf("%d dials, %v apart; want 2, at least SlowRetry (%v) apart", len(tries), tries[len(tries)-1].Sub(tries[0]), slow)
			}
			if s := gate.Stats(); s.ClientFailures != 2 || s.Succeeded != 0 || s.Unreachable != 0 {
				t.Errorf("gate %+v, want 2 client failures", s)
			}
		})
	}
}

// A Dialer with TLSConfig returns a Conn over TLS, or an error wrapping
// ErrTLSHandshake that names the address.
func TestDialerTLS(t *testing.T) {
	e, clientTLS := tlsEcho(t, "127.0.0.1")
	d := &Dialer{TLSConfig: clientTLS}
	c, err := d.DialContext(t.Context(), "tcp", e.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := testkit.EchoOnce(c, "over TLS\n", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if st := c.NetConn().(*tls.Conn).ConnectionState(); !st.HandshakeComplete {
		t.Fatal("handshake not complete")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	d = &Dialer{TLSConfig: &tls.Config{}} // the system roots do not know the test CA
	_, err = d.DialContext(t.Context(), "tcp", e.Addr())
	if !errors.Is(err, ErrTLSHandshake) || !strings.Contains(err.Error(), e.Addr()) {
		t.Fatalf("DialContext = %v, want ErrTLSHandshake naming %s", err, e.Addr())
	}
}

// A server that closes the connection during the TLS handshake looks like
// an overloaded or failing server, not a configuration error: no
// ErrTLSHandshake, and the Gate hears Unreachable.
func TestLinkTLSHandshakeCutIsUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Read(make([]byte, 1))
			c.Close()
		}
	})
	gate := backoff.NewGate(backoff.GateConfig{Destination: ln.Addr().String()})
	defer gate.Close()
	l := mustLink(t, LinkConfig{Addrs: []string{ln.Addr().String()}, TLSConfig: &tls.Config{}, Gate: gate,
		MaxAttempts: 1, Session: func(context.Context, *Conn) error { return nil }})
	err = l.Run(t.Context())
	if !errors.Is(err, ErrLinkGaveUp) || errors.Is(err, ErrTLSHandshake) || !errors.Is(err, io.EOF) && !neterr.Reset(err) {
		t.Fatalf("Run = %v, want ErrLinkGaveUp with io.EOF or a reset, not ErrTLSHandshake", err)
	}
	if s := gate.Stats(); s.Unreachable != 1 {
		t.Errorf("gate %+v, want 1 unreachable", s)
	}
}

// A Write through TLS that times out (WriteTimeout, a server that stopped
// reading) ends the Conn: crypto/tls fails every later Write, so a Conn
// left open would look alive and never write again.
func TestTLSWriteTimeoutEndsConn(t *testing.T) {
	e, clientTLS := tlsEcho(t, "127.0.0.1")
	d := &Dialer{TLSConfig: clientTLS, Config: Config{WriteTimeout: 200 * time.Millisecond}}
	c, err := d.DialContext(t.Context(), "tcp", e.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := testkit.EchoOnce(c, "hello\n", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	e.Freeze()
	defer e.Resume()
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(10 * time.Second)
	for err == nil && time.Now().Before(deadline) {
		_, err = c.Write(buf)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write = %v, want a timeout", err)
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Conn not done after its TLS write timed out")
	}
	if c.Err() == nil {
		t.Fatal("Err = nil after the TLS write timed out")
	}
}
