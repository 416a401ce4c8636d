package conn_test

// Half-open TLS connections in network namespaces (see
// halfopen_linux_test.go): a Link with TLSConfig to a TLS echo server, the
// path black-holed by nft, the flow idle or busy (the client keeps writing
// after the cut). CRLF probes go through TLS; the Conn watches the TCP
// socket under it.

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/internal/testkit"
)

// hoTLSEchoServer runs testkit's echo server over TLS in p's server
// namespace, with a certificate for ServerIP, and returns its port and the
// client config that trusts it.
func hoTLSEchoServer(t *testing.T, p *netns.Pair) (int, *tls.Config) {
	t.Helper()
	ca, err := kamailio.NewCA("relink half-open TLS test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("server", netns.ServerIP.String())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := p.ListenTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	srv := testkit.ServeEcho(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port, &tls.Config{RootCAs: ca.Pool()}
}

// hoSIPPing is a SIP message the sessions exchange: CRLF's ReplyFilter
// follows SIP framing.
const hoSIPPing = "OPTIONS sip:relink.invalid SIP/2.0\r\nContent-Length: 0\r\n\r\n"

// A Link over TLS with 1 s/1 s CRLF probes declares a black-holed peer dead
// within 2.5 s of the cut, idle or while the client keeps writing, and
// reports the death to its Gate (which closes).
func TestHalfOpenTLSLinkDetects(t *testing.T) {
	t.Parallel()
	for _, kind := range hoFlowKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			p := netns.ForTest(t)
			port, clientTLS := hoTLSEchoServer(t, p)
			addr := p.ServerAddr(port)
			gate := backoff.NewGate(backoff.GateConfig{Destination: addr})
			defer gate.Close()
			sessions := make(chan *hoLinkSession, 16)
			l, err := conn.NewLink(conn.LinkConfig{
				Dialer: &conn.Dialer{
					Config: conn.Config{Probe: conn.CRLF, ProbeInterval: time.Second, ProbeTimeout: time.Second},
					Dial:   p.DialContext,
				},
				Addrs: []string{addr}, TLSConfig: clientTLS, Gate: gate, DialTimeout: time.Second,
				Handshake: func(_ context.Context, c *conn.Conn) error {
					return testkit.EchoOnce(c, hoSIPPing, 5*time.Second)
				},
				Session: func(ctx context.Context, c *conn.Conn) error {
					sessions <- &hoLinkSession{c: c, at: time.Now()}
					if kind == "busy" {
						go hoKeepWriting(ctx, c)
					}
					buf := make([]byte, 64<<10)
					for {
						if _, err := c.Read(buf); err != nil {
							return err
						}
					}
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer hoRunLink(t, l)()

			first := hoNextSession(t, sessions)
			if _, ok := first.c.NetConn().(*tls.Conn); !ok {
				t.Fatalf("session's Conn is over %T, want *tls.Conn", first.c.NetConn())
			}
			at, _ := hoCut(t, p, port, "idle", first.c)
			if kind == "busy" {
				time.Sleep(300 * time.Millisecond)
				if info := hoTLSTCPInfo(t, first.c); info.Unacked == 0 {
					t.Fatal("busy flow has no unacknowledged segment (tcpi_unacked 0)")
				}
			}
			detected := hoAwaitDeath(t, first.c, at, 2500*time.Millisecond)
			if !errors.Is(first.c.Err(), conn.ErrUnresponsive) {
				t.Fatalf("Err = %v, want ErrUnresponsive", first.c.Err())
			}
			deadline := time.Now().Add(5 * time.Second)
			for gate.State() != backoff.GateClosed && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if st := gate.State(); st != backoff.GateClosed {
				t.Errorf("gate %v after the death, want closed", st)
			}
			t.Logf("%s: TLS, probe 1 s/1 s: detected %v after the cut (bound 2.5 s); gate %v",
				kind, detected.Round(time.Millisecond), gate.State())
		})
	}
}

// hoKeepWriting writes a SIP message every 50 ms until ctx ends or a Write
// fails: a busy client whose bytes go unacknowledged after the cut.
func hoKeepWriting(ctx context.Context, c *conn.Conn) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := c.Write([]byte(hoSIPPing)); err != nil {
			return
		}
	}
}

// hoTLSTCPInfo reads TCP_INFO from the TCP socket under c's TLS.
func hoTLSTCPInfo(t *testing.T, c *conn.Conn) *unix.TCPInfo {
	t.Helper()
	tcp := c.NetConn().(*tls.Conn).NetConn()
	return hoTCPInfo(t, tcp)
}

// The kernel options alone (keepalive 1 s/1 s/3, TCP_USER_TIMEOUT 3 s, no
// application probe) bound a TLS connection from a Dialer with TLSConfig as
// they bound a plain one: set on the socket under TLS, they abort it within
// 4.5 s of the cut, idle or busy, and the Conn reports ErrUnresponsive.
func TestHalfOpenTLSKernelOptionsDetect(t *testing.T) {
	t.Parallel()
	for _, kind := range hoFlowKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			p := netns.ForTest(t)
			port, clientTLS := hoTLSEchoServer(t, p)
			d := conn.Dialer{
				Config: conn.Config{
					KeepAlive:   net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 3},
					UserTimeout: 3 * time.Second,
				},
				Dial:      p.DialContext,
				TLSConfig: clientTLS,
			}
			c, err := d.DialContext(context.Background(), "tcp", p.ServerAddr(port))
			if err != nil {
				t.Fatal(err)
			}
			r := hoStartReader(t, c)
			hoExchange(t, c, r)
			at, _ := hoCut(t, p, port, kind, c)
			if kind == "busy" {
				time.Sleep(100 * time.Millisecond)
				if info := hoTLSTCPInfo(t, c); info.Unacked == 0 {
					t.Fatal("busy flow has no unacknowledged segment (tcpi_unacked 0)")
				}
			}
			detected := hoAwaitDeath(t, c, at, 4500*time.Millisecond)
			if !errors.Is(c.Err(), conn.ErrUnresponsive) {
				t.Fatalf("Err = %v, want ErrUnresponsive", c.Err())
			}
			t.Logf("%s: TLS, kernel options alone: detected %v after the cut (bound 4.5 s)",
				kind, detected.Round(time.Millisecond))
		})
	}
}
