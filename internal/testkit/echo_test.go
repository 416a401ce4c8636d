package testkit_test

import (
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/relinkgo/relink/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startEcho(t *testing.T) *testkit.Echo {
	t.Helper()
	srv, err := testkit.ListenEcho("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectSilence asserts that nothing arrives on c for d: no bytes, no EOF,
// no reset.
func expectSilence(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	var b [1]byte
	if n, err := c.Read(b[:]); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read = %d, %v; want silence", n, err)
	}
}

func waitConns(t *testing.T, srv *testkit.Echo, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); srv.Conns() != n; {
		if time.Now().After(deadline) {
			t.Fatalf("Conns = %d, want %d", srv.Conns(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestEchoEchoesAndAnswersCRLF(t *testing.T) {
	srv := startEcho(t)
	c := dial(t, srv.Addr())
	for _, msg := range []string{"hello", "\r\n\r\n", string(make([]byte, 10000))} {
		if err := testkit.EchoOnce(c, msg, 5*time.Second); err != nil {
			t.Fatalf("%q: %v", msg[:min(len(msg), 8)], err)
		}
	}
	waitConns(t, srv, 1)
	if p := srv.Port(); p == 0 || srv.Addr() != net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) {
		t.Fatalf("Addr %s, Port %d", srv.Addr(), p)
	}
}

func TestEchoFreezeHoldsAndResumeLosesNothing(t *testing.T) {
	srv := startEcho(t)
	c := dial(t, srv.Addr())
	if err := testkit.EchoOnce(c, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	srv.Freeze()
	if _, err := io.WriteString(c, "held"); err != nil {
		t.Fatal(err)
	}
	expectSilence(t, c, 200*time.Millisecond)

	// A new connection is served while the old one stays frozen.
	fresh := dial(t, srv.Addr())
	if err := testkit.EchoOnce(fresh, "fresh", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	expectSilence(t, c, 50*time.Millisecond)
	waitConns(t, srv, 2)

	srv.Resume()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "held" {
		t.Fatalf("after Resume: %q, %v", got, err)
	}
	if err := testkit.EchoOnce(c, "after", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestEchoHangReadsButNeverAnswers(t *testing.T) {
	srv := startEcho(t)
	c := dial(t, srv.Addr())
	if err := testkit.EchoOnce(c, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	srv.Hang()
	// Far more than the socket buffers hold: a hung server keeps reading.
	big := make([]byte, 8<<20)
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(big); err != nil {
		t.Fatalf("write to a hung server: %v", err)
	}
	c.SetWriteDeadline(time.Time{})
	expectSilence(t, c, 200*time.Millisecond)
	srv.Resume()
	if err := testkit.EchoOnce(c, "after", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestEchoFreezeStopsReading(t *testing.T) {
	srv := startEcho(t)
	c := dial(t, srv.Addr())
	if err := testkit.EchoOnce(c, "x", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	srv.Freeze()
	// A frozen server reads nothing: the buffers fill and a write stalls.
	c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	_, err := c.Write(make([]byte, 64<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write to a frozen server = %v, want a stall", err)
	}
}

func TestEchoHalfClose(t *testing.T) {
	srv := startEcho(t)
	c := dial(t, srv.Addr()).(*net.TCPConn)
	io.WriteString(c, "bye")
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye" {
		t.Fatalf("ReadAll = %q, %v; want the echo, then EOF", got, err)
	}
	waitConns(t, srv, 0)
}

func TestEchoCloseEndsFrozenConns(t *testing.T) {
	srv, err := testkit.ListenEcho("")
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	c := dial(t, addr)
	if err := testkit.EchoOnce(c, "x", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	srv.Freeze()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read after Close succeeded")
	}
	// A restart on the same port.
	again, err := testkit.ListenEcho(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := testkit.EchoOnce(dial(t, addr), "again", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestServeEchoOnGivenListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := testkit.ServeEcho(ln)
	defer srv.Close()
	if srv.Addr() != ln.Addr().String() {
		t.Fatalf("Addr %s, listener %s", srv.Addr(), ln.Addr())
	}
	if err := testkit.EchoOnce(dial(t, srv.Addr()), "x", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := testkit.EchoOnce(dial(t, srv.Addr()), "yy", time.Nanosecond); err == nil {
		t.Fatal("EchoOnce within 1 ns succeeded")
	}
}
