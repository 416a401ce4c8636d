package faultproxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server hands each accepted connection to the test, which plays the far
// end by hand; tests that only need an echo use newEcho.
type server struct {
	ln    net.Listener
	conns chan net.Conn
	wg    sync.WaitGroup
}

func newServer(t *testing.T) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln, conns: make(chan net.Conn, 4096)}
	var mu sync.Mutex
	var all []net.Conn
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			all = append(all, c)
			mu.Unlock()
			s.conns <- c
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range all {
			c.Close()
		}
		mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// newEcho starts testkit's echo server until the test ends.
func newEcho(t *testing.T) *testkit.Echo {
	t.Helper()
	srv, err := testkit.ListenEcho("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// next returns the server side of the next accepted connection.
func (s *server) next(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-s.conns:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("server accepted no connection")
		return nil
	}
}

func newProxy(t *testing.T, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, p *faultproxy.Proxy) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip writes msg and expects it echoed within 5 s.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if err := testkit.EchoOnce(c, msg, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// expectSilence asserts that nothing arrives on c for d: a read times out,
// with no EOF and no reset.
func expectSilence(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	var b [1]byte
	n, err := c.Read(b[:])
	if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read = %d, %v; want silence (deadline exceeded)", n, err)
	}
}

func TestForwardsBothWaysAndCounts(t *testing.T) {
	srv := newEcho(t)
	p := newProxy(t, srv.Addr())
	if p.Target() != srv.Addr() {
		t.Fatalf("Target = %q", p.Target())
	}
	c := dial(t, p)
	roundTrip(t, c, "hello")
	roundTrip(t, c, "world!")
	waitBytes(t, p, 11, 11)
	st := p.Stats()
	if st.Accepted != 1 || st.Active != 1 || st.Frozen != 0 {
		t.Fatalf("stats = %+v", st)
	}
	if st.BytesToTarget != 11 || st.BytesFromTarget != 11 {
		t.Fatalf("byte counters = %d/%d, want 11/11", st.BytesToTarget, st.BytesFromTarget)
	}
}

func TestHalfCloseIsForwarded(t *testing.T) {
	srv := newServer(t)
	p := newProxy(t, srv.ln.Addr().String())
	c := dial(t, p)
	s := srv.next(t)
	c.Write([]byte("request"))
	c.CloseWrite()
	got, err := io.ReadAll(s) // ends with the forwarded FIN
	if err != nil || string(got) != "request" {
		t.Fatalf("server read %q, %v", got, err)
	}
	s.Write([]byte("reply"))
	s.Close()
	got, err = io.ReadAll(c)
	if err != nil || string(got) != "reply" {
		t.Fatalf("client read %q, %v", got, err)
	}
	waitFor(t, func() bool { return p.Stats().Active == 0 })
}

func TestFreezeHoldsSocketsOpenAndResumeLosesNothing(t *testing.T) {
	srv := newServer(t)
	p := newProxy(t, srv.ln.Addr().String())
	c := dial(t, p)
	s := srv.next(t)
	roundTripVia(t, c, s, "before")
	waitBytes(t, p, 6, 6)

	p.Freeze()
	if st := p.Stats(); st.Frozen != 1 {
		t.Fatalf("Frozen = %d, want 1", st.Frozen)
	}
	// Far more than the socket buffers hold, both ways: the writers block
	// once the kernels' buffers and windows are full, without an error.
	up := randomBytes(t, 8<<20)
	down := randomBytes(t, 8<<20)
	before := p.Stats()
	var wg sync.WaitGroup
	wg.Add(2)
	var upErr, downErr error
	go func() { defer wg.Done(); _, upErr = c.Write(up) }()
	go func() { defer wg.Done(); _, downErr = s.Write(down) }()

	// Both ends see silence: no bytes, no FIN, no RST.
	expectSilence(t, c, 300*time.Millisecond)
	expectSilence(t, s, 300*time.Millisecond)
	if after := p.Stats(); after.BytesToTarget != before.BytesToTarget || after.BytesFromTarget != before.BytesFromTarget {
		t.Fatalf("bytes forwarded while frozen: %+v -> %+v", before, after)
	}

	p.Resume()
	var gotUp, gotDown []byte
	wg.Add(2)
	go func() { defer wg.Done(); gotUp = readN(t, s, len(up)) }()
	go func() { defer wg.Done(); gotDown = readN(t, c, len(down)) }()
	wg.Wait()
	if upErr != nil || downErr != nil {
		t.Fatalf("writes during freeze failed: %v, %v", upErr, downErr)
	}
	if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
		t.Fatal("bytes lost or reordered across freeze/resume")
	}
	roundTripVia(t, c, s, "after")
}

func TestForgetKeepsOldConnsSilentAndForwardsNewOnes(t *testing.T) {
	srv := newServer(t)
	p := newProxy(t, srv.ln.Addr().String())
	old := dial(t, p)
	oldSrv := srv.next(t)
	roundTripVia(t, old, oldSrv, "ping")

	p.Freeze()
	p.Forget()
	// The server's side of the forgotten connection is closed: the far
	// end lost it.
	oldSrv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := oldSrv.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("server side of forgotten conn: read %d, %v; want EOF", n, err)
	}
	// The client's side stays open and silent for ever: writes succeed,
	// nothing comes back, no FIN, no RST.
	if _, err := old.Write([]byte("anyone?")); err != nil {
		t.Fatalf("write on forgotten conn: %v", err)
	}
	expectSilence(t, old, 300*time.Millisecond)
	p.Resume() // a later Resume does not revive it
	expectSilence(t, old, 200*time.Millisecond)
	if st := p.Stats(); st.Frozen != 1 || st.Active != 1 {
		t.Fatalf("stats = %+v, want the forgotten conn held", st)
	}

	// A new connection is forwarded normally.
	fresh := dial(t, p)
	freshSrv := srv.next(t)
	roundTripVia(t, fresh, freshSrv, "hello again")
}

func TestConnAcceptedWhileFrozenWaitsForThaw(t *testing.T) {
	for _, forget := range []bool{false, true} {
		name := "resume"
		if forget {
			name = "forget"
		}
		t.Run(name, func(t *testing.T) {
			srv := newServer(t)
			p := newProxy(t, srv.ln.Addr().String())
			p.Freeze()
			c := dial(t, p)
			c.Write([]byte("early"))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := p.WaitAccepted(ctx, 1); err != nil {
				t.Fatal(err)
			}
			select {
			case <-srv.conns:
				t.Fatal("target dialed while frozen")
			case <-time.After(200 * time.Millisecond):
			}
			if forget {
				p.Forget()
			} else {
				p.Resume()
			}
			s := srv.next(t)
			if got := readN(t, s, 5); string(got) != "early" {
				t.Fatalf("server got %q", got)
			}
			roundTripVia(t, c, s, "then")
		})
	}
}

func TestResetSendsRSTBothWays(t *testing.T) {
	srv := newServer(t)
	p := newProxy(t, srv.ln.Addr().String())
	c := dial(t, p)
	s := srv.next(t)
	roundTripVia(t, c, s, "x")
	p.Reset()
	for name, conn := range map[string]net.Conn{"client": c, "server": s} {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := conn.Read(make([]byte, 1))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s read: %v, want ECONNRESET", name, err)
		}
	}
	if st := p.Stats(); st.Active != 0 {
		t.Fatalf("Active = %d after Reset", st.Active)
	}
	// The proxy keeps accepting.
	c2 := dial(t, p)
	roundTripVia(t, c2, srv.next(t), "y")
}

func TestResetAlsoEndsFrozenAndForgottenConns(t *testing.T) {
	srv := newEcho(t)
	p := newProxy(t, srv.Addr())
	a := dial(t, p)
	roundTrip(t, a, "a")
	p.Freeze()
	p.Forget()
	b := dial(t, p)
	roundTrip(t, b, "b")
	p.Freeze()
	p.Reset()
	for _, conn := range []net.Conn{a, b} {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("read: %v, want ECONNRESET", err)
		}
	}
}

func TestCloseAllSendsFIN(t *testing.T) {
	srv := newServer(t)
	p := newProxy(t, srv.ln.Addr().String())
	c := dial(t, p)
	s := srv.next(t)
	roundTripVia(t, c, s, "x")
	p.CloseAll()
	for name, conn := range map[string]net.Conn{"client": c, "server": s} {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("%s read: %v, want EOF", name, err)
		}
	}
}

func TestCloseEndsEverythingAndIsIdempotent(t *testing.T) {
	srv := newEcho(t)
	p, err := faultproxy.New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	var clients []net.Conn
	dialC := func() net.Conn {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		clients = append(clients, c)
		return c
	}
	roundTrip(t, dialC(), "forgotten")
	p.Freeze()
	p.Forget()
	roundTrip(t, dialC(), "frozen")
	p.Freeze()
	dialC() // accepted while frozen, never connected to the target
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.WaitAccepted(ctx, 3); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if err := p.WaitAccepted(ctx, 100); !errors.Is(err, net.ErrClosed) {
			t.Errorf("WaitAccepted after Close = %v, want net.ErrClosed", err)
		}
		close(done)
	}()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	<-done
	for _, c := range clients {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("read after Close: %v, want EOF", err)
		}
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Error("dial after Close succeeded")
	}
	// Freeze, Resume and Forget after Close are harmless no-ops.
	p.Freeze()
	p.Resume()
	p.Forget()
	p.Reset()
	p.CloseAll()
}

func TestUnreachableTargetClosesClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := newProxy(t, addr)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		return // reset before connect returned: closed, as wanted
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v, want the connection closed", err)
	}
}

func TestManyConnections(t *testing.T) {
	n := 2000
	if testing.Short() {
		n = 200
	}
	srv := newEcho(t)
	p := newProxy(t, srv.Addr())
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer c.Close()
		conns[i] = c
	}
	each(t, conns, func(c net.Conn) error { return testkit.EchoOnce(c, "a", 10*time.Second) })
	// A counter is updated just after its Write returns: let them settle.
	waitBytes(t, p, int64(n), int64(n))

	p.Freeze()
	if st := p.Stats(); st.Frozen != n {
		t.Fatalf("Frozen = %d, want %d", st.Frozen, n)
	}
	before := p.Stats()
	cpu := cpuTime()
	each(t, conns, func(c net.Conn) error {
		_, err := c.Write([]byte("b"))
		return err
	})
	time.Sleep(300 * time.Millisecond)
	// Parked, not polling: a frozen proxy burns no CPU. The budget covers
	// the test's own writes above.
	used := cpuTime() - cpu
	if used > time.Duration(n)*100*time.Microsecond+100*time.Millisecond {
		t.Errorf("CPU while frozen: %v for %d conns", used, n)
	}
	t.Logf("CPU during 300 ms frozen, writes included: %v", used)
	if after := p.Stats(); after.BytesToTarget != before.BytesToTarget || after.BytesFromTarget != before.BytesFromTarget {
		t.Fatalf("bytes crossed a frozen proxy: %+v -> %+v", before, after)
	}
	p.Resume()
	each(t, conns, func(c net.Conn) error {
		got := make([]byte, 1)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || got[0] != 'b' {
			return errors.New("held byte not delivered after Resume")
		}
		return testkit.EchoOnce(c, "c", 10*time.Second)
	})
	t.Logf("%d connections: %+v", n, p.Stats())
}

// helpers

func roundTripVia(t *testing.T, c, s net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, s, len(msg)); string(got) != msg {
		t.Fatalf("server got %q, want %q", got, msg)
	}
	if _, err := s.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, c, len(msg)); string(got) != msg {
		t.Fatalf("client got %q, want %q", got, msg)
	}
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Errorf("read %d bytes: %v", n, err)
	}
	return b
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// each runs f on every conn, 64 at a time, and fails on the first error.
func each(t *testing.T, conns []net.Conn, f func(net.Conn) error) {
	t.Helper()
	sem := make(chan struct{}, 64)
	errc := make(chan error, len(conns))
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(c); err != nil {
				errc <- err
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// waitBytes waits for the byte counters to reach to and from: each is
// updated just after its Write returns, so the far end may see the bytes a
// moment before the counter does.
func waitBytes(t *testing.T, p *faultproxy.Proxy, to, from int64) {
	t.Helper()
	waitFor(t, func() bool {
		st := p.Stats()
		return st.BytesToTarget == to && st.BytesFromTarget == from
	})
}

// expectReset asserts that a read on c fails with ECONNRESET within 5 s.
func expectReset(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	if n, err := c.Read(make([]byte, 64)); n != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read = %d, %v; want a reset", n, err)
	}
}

// expectServerEOF asserts that the server's side of a forgotten connection
// reads EOF within 5 s: the far end lost it.
func expectServerEOF(t *testing.T, s net.Conn) {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := s.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("server side of forgotten conn: read %d, %v; want EOF", n, err)
	}
}

// TestForgetResetAnswersNextByteWithRST: a far end that lost its
// connections answers the client's next segment with an RST: an idle old
// connection stays quiet until the client writes, one whose client wrote
// during the freeze is reset at once; new connections are forwarded.
func TestForgetResetAnswersNextByteWithRST(t *testing.T) {
	srv := newServer(t)
	p := newProxy(t, srv.ln.Addr().String())
	// One at a time: the proxy dials upstream per connection, so two
	// dialled together may reach the server in either order.
	idle := dial(t, p)
	idleSrv := srv.next(t)
	roundTripVia(t, idle, idleSrv, "a")
	busy := dial(t, p)
	busySrv := srv.next(t)
	roundTripVia(t, busy, busySrv, "b")

	p.Freeze()
	if _, err := busy.Write([]byte("REGISTER during the freeze")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the bytes reach the proxy's kernel
	p.ForgetReset()
	expectServerEOF(t, idleSrv)
	expectServerEOF(t, busySrv)
	expectReset(t, busy) // held bytes: reset at once
	expectSilence(t, idle, 200*time.Millisecond)
	if _, err := idle.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	expectReset(t, idle)
	if st := p.Stats(); st.Resets != 2 || st.Active != 0 {
		t.Fatalf("stats = %+v, want 2 resets, nothing held", st)
	}
	fresh := dial(t, p)
	roundTripVia(t, fresh, srv.next(t), "hello again")
}

// TestForgetDropSwallowsEverything: a black hole that stays for the old
// connections reads what the client sends and never answers, not even with
// a FIN or an RST; the client's own close ends it; new connections are
// forwarded.
func TestForgetDropSwallowsEverything(t *testing.T) {
	srv := newServer(t)
	p := newProxy(t, srv.ln.Addr().String())
	old := dial(t, p)
	oldSrv := srv.next(t)
	roundTripVia(t, old, oldSrv, "a")

	p.Freeze()
	if _, err := old.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	p.ForgetDrop()
	expectServerEOF(t, oldSrv)
	big := make([]byte, 1<<20) // more than any window: it is read, not held
	done := make(chan error, 1)
	go func() { _, err := old.Write(big); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write into the black hole: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a 1 MiB write into the black hole blocked: the proxy is not reading")
	}
	expectSilence(t, old, 200*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().BytesDropped < int64(len(big)+len("held")) {
		if time.Now().After(deadline) {
			t.Fatalf("dropped %d bytes, want %d", p.Stats().BytesDropped, len(big)+4)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := p.Stats(); st.Resets != 0 || st.Active != 1 {
		t.Fatalf("stats = %+v, want the old conn held, no reset", st)
	}
	fresh := dial(t, p)
	roundTripVia(t, fresh, srv.next(t), "hello again")
	old.Close()
	for p.Stats().Active != 1 { // fresh only
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatalf("the client's close did not end the dropped conn: %+v", p.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
