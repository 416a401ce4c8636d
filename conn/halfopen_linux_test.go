package conn_test

// Real half-open connections: a server and a client in two network
// namespaces, and an nft rule that silently drops the server port's packets
// both ways (internal/netns). Nothing answers for the peer, so the kernel
// options are tested as they work in production, which a proxy in the same
// kernel cannot do (see internal/faultproxy).
//
// Each scenario runs for an idle flow (the last bytes were acknowledged)
// and for a busy one (data written after the cut stays unacknowledged).
// Detection times are measured from the moment the rule is installed.

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/internal/testkit"
)

// hoFlowKinds are the two shapes of a flow when the path goes silent.
var hoFlowKinds = []string{"idle", "busy"}

// hoInFlight is what a busy flow writes after the cut: small enough for the
// socket buffer, so Write returns and the bytes wait unacknowledged.
const hoInFlight = 4 << 10

// hoEchoServer runs testkit's echo server in p's server namespace and
// returns its port. It answers relink's CRLF probes by echoing them.
func hoEchoServer(t *testing.T, p *netns.Pair) int {
	t.Helper()
	ln, err := p.ListenTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	srv := testkit.ServeEcho(ln)
	t.Cleanup(func() { srv.Close() })
	return srv.Port()
}

// hoReader drains c in a goroutine, as an application's read loop does: with
// relink, Read is where inbound bytes prove the peer alive.
type hoReader struct {
	done     chan struct{}
	err      error // valid after done
	at       time.Time
	lastByte atomic.Int64 // unix nanos of the last Read that returned bytes
}

func hoStartReader(t *testing.T, c net.Conn) *hoReader {
	t.Helper()
	r := &hoReader{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				r.lastByte.Store(time.Now().UnixNano())
			}
			if err != nil {
				r.err, r.at = err, time.Now()
				return
			}
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-r.done
	})
	return r
}

// hoExchange writes msg and waits until the reader has seen the echo.
func hoExchange(t *testing.T, c net.Conn, r *hoReader) {
	t.Helper()
	before := r.lastByte.Load()
	if _, err := c.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.lastByte.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("no echo within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hoCut black-holes port and, for a busy flow, writes data that can no longer
// be acknowledged. It returns the instant of the cut and the function that
// removes the rule (also called at cleanup).
func hoCut(t *testing.T, p *netns.Pair, port int, kind string, c net.Conn) (at time.Time, restore func() error) {
	t.Helper()
	restore, err := p.BlackHole(port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restore() })
	at = time.Now()
	if kind == "busy" {
		if _, err := c.Write(make([]byte, hoInFlight)); err != nil {
			t.Fatalf("write after the cut: %v", err)
		}
	}
	return at, restore
}

// hoTCPInfo reads TCP_INFO from the socket under c.
func hoTCPInfo(t *testing.T, c net.Conn) *unix.TCPInfo {
	t.Helper()
	if cc, ok := c.(*conn.Conn); ok {
		c = cc.NetConn()
	}
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := raw.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return info
}

// hoCheckBusy asserts that a busy flow really has unacknowledged data.
func hoCheckBusy(t *testing.T, kind string, c net.Conn) {
	t.Helper()
	if kind != "busy" {
		return
	}
	time.Sleep(100 * time.Millisecond)
	if info := hoTCPInfo(t, c); info.Unacked == 0 {
		t.Fatalf("busy flow has no unacknowledged segment (tcpi_unacked 0)")
	}
}

// (a) The control: a plain net.Conn from Go's default dialer (keepalive
// 15 s + 9 × 15 s, no TCP_USER_TIMEOUT) is still blocked in Read 30 s after
// the path went silent, idle or busy, and its kernel still calls it
// established.
func TestHalfOpenControlPlainConnStaysBlocked(t *testing.T) {
	t.Parallel()
	for _, kind := range hoFlowKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			p := netns.ForTest(t)
			port := hoEchoServer(t, p)
			c, err := p.DialContext(context.Background(), "tcp", p.ServerAddr(port))
			if err != nil {
				t.Fatal(err)
			}
			r := hoStartReader(t, c)
			hoExchange(t, c, r)
			at, _ := hoCut(t, p, port, kind, c)
			hoCheckBusy(t, kind, c)

			wait := time.NewTimer(30*time.Second - time.Since(at))
			defer wait.Stop()
			select {
			case <-r.done:
				t.Fatalf("plain conn unblocked %v after the cut: %v", r.at.Sub(at), r.err)
			case <-wait.C:
			}
			info := hoTCPInfo(t, c)
			if info.State != unix.BPF_TCP_ESTABLISHED {
				t.Fatalf("tcpi_state = %d, want ESTABLISHED", info.State)
			}
			t.Logf("%s: plain net.Conn still blocked %v after the cut (ESTABLISHED, %d unacked, %d retransmissions)",
				kind, time.Since(at).Round(time.Millisecond), info.Unacked, info.Total_retrans)
		})
	}
}

// (b) relink's Conn with a 1 s probe interval and 1 s probe timeout
// declares the peer dead within 2.5 s of the cut: ErrUnresponsive.
func TestHalfOpenProbeDetects(t *testing.T) {
	t.Parallel()
	for _, kind := range hoFlowKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			p := netns.ForTest(t)
			port := hoEchoServer(t, p)
			d := conn.Dialer{
				Config: conn.Config{Probe: conn.CRLF, ProbeInterval: time.Second, ProbeTimeout: time.Second},
				Dial:   p.DialContext,
			}
			c, err := d.DialContext(context.Background(), "tcp", p.ServerAddr(port))
			if err != nil {
				t.Fatal(err)
			}
			r := hoStartReader(t, c)
			hoExchange(t, c, r)
			at, _ := hoCut(t, p, port, kind, c)
			hoCheckBusy(t, kind, c)
			detected := hoAwaitDeath(t, c, at, 2500*time.Millisecond)
			if !errors.Is(c.Err(), conn.ErrUnresponsive) {
				t.Fatalf("Err = %v, want ErrUnresponsive", c.Err())
			}
			var ne net.Error
			if !errors.As(c.Err(), &ne) || !ne.Timeout() {
				t.Fatalf("Err = %v, want a net.Error with Timeout() true", c.Err())
			}
			<-r.done // the blocked Read was released
			last := time.Unix(0, r.lastByte.Load())
			t.Logf("%s: probe 1 s/1 s detected %v after the cut, %v after the last inbound byte (bound 2 s)",
				kind, detected.Round(time.Millisecond), time.Since(last).Round(time.Millisecond))
		})
	}
}

// (c) Kernel options alone — keepalive 1 s idle, 1 s interval, 3 probes,
// TCP_USER_TIMEOUT 3 s, no application probe — detect within 4.5 s: the
// kernel aborts with ETIMEDOUT, which the Conn reports as ErrUnresponsive.
func TestHalfOpenKernelOptionsDetect(t *testing.T) {
	t.Parallel()
	for _, kind := range hoFlowKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			p := netns.ForTest(t)
			port := hoEchoServer(t, p)
			d := conn.Dialer{
				Config: conn.Config{
					KeepAlive:   net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 3},
					UserTimeout: 3 * time.Second,
					// Probe nil: no application probe.
				},
				Dial: p.DialContext,
			}
			c, err := d.DialContext(context.Background(), "tcp", p.ServerAddr(port))
			if err != nil {
				t.Fatal(err)
			}
			r := hoStartReader(t, c)
			hoExchange(t, c, r)
			at, _ := hoCut(t, p, port, kind, c)
			hoCheckBusy(t, kind, c)
			detected := hoAwaitDeath(t, c, at, 4500*time.Millisecond)
			if !errors.Is(c.Err(), conn.ErrUnresponsive) || !errors.Is(c.Err(), syscall.ETIMEDOUT) {
				t.Fatalf("Err = %v, want ErrUnresponsive wrapping ETIMEDOUT", c.Err())
			}
			t.Logf("%s: kernel options (keepalive 1 s/1 s/3, user timeout 3 s) detected %v after the cut",
				kind, detected.Round(time.Millisecond))
		})
	}
}

// (d) After the rule is removed, a Link reconnects and its session runs
// again, with no manual action.
func TestHalfOpenLinkRecovers(t *testing.T) {
	t.Parallel()
	for _, kind := range hoFlowKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			p := netns.ForTest(t)
			port := hoEchoServer(t, p)

			sessions := make(chan *hoLinkSession, 16)
			var smu sync.Mutex
			var states []conn.LinkState
			l, err := conn.NewLink(conn.LinkConfig{
				Dialer: &conn.Dialer{
					Config: conn.Config{Probe: conn.CRLF, ProbeInterval: time.Second, ProbeTimeout: time.Second},
					Dial:   p.DialContext,
				},
				Addrs:       []string{p.ServerAddr(port)},
				Backoff:     backoff.NewFactory(backoff.Exponential{Base: 200 * time.Millisecond, Max: time.Second}),
				DialTimeout: time.Second,
				OnStateChange: func(sc conn.LinkStateChange) {
					smu.Lock()
					states = append(states, sc.To)
					smu.Unlock()
				},
				Session: func(ctx context.Context, c *conn.Conn) error {
					// The session's protocol: a hello, its echo, then read
					// until the connection ends.
					if _, err := c.Write([]byte("hello\n")); err != nil {
						return err
					}
					buf := make([]byte, 64<<10)
					if _, err := c.Read(buf); err != nil {
						return err
					}
					sessions <- &hoLinkSession{c: c, at: time.Now()}
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
			at, restore := hoCut(t, p, port, kind, first.c)
			hoCheckBusy(t, kind, first.c)
			detected := hoAwaitDeath(t, first.c, at, 2500*time.Millisecond)
			if !errors.Is(first.c.Err(), conn.ErrUnresponsive) {
				t.Fatalf("first conn Err = %v, want ErrUnresponsive", first.c.Err())
			}
			// Keep the path cut a while: the Link's redials time out.
			time.Sleep(3 * time.Second)
			if st := l.State(); st == conn.LinkReady {
				t.Fatal("Link Ready while the path is cut")
			}
			select {
			case s := <-sessions:
				t.Fatalf("a session ran at %v while the path was cut", s.at)
			default:
			}
			if err := restore(); err != nil {
				t.Fatal(err)
			}
			restoredAt := time.Now()

			second := hoNextSession(t, sessions)
			recovered := second.at.Sub(restoredAt)
			if recovered > 10*time.Second {
				t.Fatalf("session ran again %v after the path returned", recovered)
			}
			if second.c == first.c {
				t.Fatal("session ran again on the dead connection")
			}
			if st := l.State(); st != conn.LinkReady {
				t.Fatalf("State = %v, want ready", st)
			}
			smu.Lock()
			defer smu.Unlock()
			t.Logf("%s: detected %v after the cut; session ran again %v after the rule was removed; states %v",
				kind, detected.Round(time.Millisecond), recovered.Round(time.Millisecond), states)
		})
	}
}

// hoRunLink runs l in a goroutine and returns the function that stops it
// and checks that Run returned context.Canceled.
func hoRunLink(t *testing.T, l *conn.Link) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- l.Run(ctx) }()
	return func() {
		cancel()
		if err := <-runErr; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	}
}

// hoLinkSession is a session of the Link under test that exchanged its hello.
type hoLinkSession struct {
	c  *conn.Conn
	at time.Time
}

// hoNextSession waits for the Link's next session to exchange its hello.
func hoNextSession(t *testing.T, ch chan *hoLinkSession) *hoLinkSession {
	t.Helper()
	timer := time.NewTimer(15 * time.Second)
	defer timer.Stop()
	select {
	case s := <-ch:
		return s
	case <-timer.C:
		t.Fatal("no session within 15 s")
		return nil
	}
}

// hoAwaitDeath waits for c's death, fails if it comes later than bound after
// at, and returns the detection time.
func hoAwaitDeath(t *testing.T, c *conn.Conn, at time.Time, bound time.Duration) time.Duration {
	t.Helper()
	timer := time.NewTimer(bound + 5*time.Second)
	defer timer.Stop()
	select {
	case <-c.Done():
	case <-timer.C:
		t.Fatalf("not detected %v after the cut (bound %v)", time.Since(at).Round(time.Millisecond), bound)
	}
	took := time.Since(at)
	if took > bound {
		t.Fatalf("detected after %v, bound %v (Err %v)", took.Round(time.Millisecond), bound, c.Err())
	}
	return took
}
