package netns_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo serves testkit's echo server on ln until the test ends.
func echo(t *testing.T, ln net.Listener) {
	t.Helper()
	srv := testkit.ServeEcho(ln)
	t.Cleanup(func() { srv.Close() })
}

func port(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

func TestPairConnectsServerAndClient(t *testing.T) {
	p := netns.ForTest(t)
	ln, err := p.ListenTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, ln)
	if got := ln.Addr().(*net.TCPAddr).IP.String(); got != netns.ServerIP.String() {
		t.Fatalf("listener on %s, want %s", got, netns.ServerIP)
	}
	c, err := p.DialContext(context.Background(), "tcp", p.ServerAddr(port(ln)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != netns.ClientIP.String() {
		t.Fatalf("client address %s, want %s", got, netns.ClientIP)
	}
	if err := testkit.EchoOnce(c, "hello", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// The server's address is not reachable from the root namespace.
	if c, err := net.DialTimeout("tcp", p.ServerAddr(port(ln)), 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("server namespace reachable from the root namespace")
	}
}

func TestDoSwitchesOnlyItsThread(t *testing.T) {
	p := netns.ForTest(t)
	self := func() string {
		s, err := os.Readlink("/proc/thread-self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	root := self()
	var inServer, inClient string
	if err := p.Server().Do(func() error { inServer = self(); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := netns.Do(p.Client(), func() error { inClient = self(); return nil }); err != nil {
		t.Fatal(err)
	}
	if inServer == root || inClient == root || inServer == inClient {
		t.Fatalf("namespaces: root %s, server %s, client %s", root, inServer, inClient)
	}
	if self() != root {
		t.Fatal("calling thread left in another namespace")
	}
	want := errors.New("from fn")
	if err := p.Server().Do(func() error { return want }); !errors.Is(err, want) {
		t.Fatalf("Do error = %v, want fn's", err)
	}
	if !strings.HasPrefix(p.Server().Name(), "relink-") {
		t.Fatalf("name %q", p.Server().Name())
	}
}

func TestBlackHoleIsSilentAndRestorable(t *testing.T) {
	p := netns.ForTest(t)
	ln, err := p.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	echo(t, ln)
	addr := p.ServerAddr(port(ln))
	c, err := p.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := testkit.EchoOnce(c, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}

	restore, err := p.BlackHole(port(ln))
	if err != nil {
		t.Fatal(err)
	}
	// Established flow: the write is accepted by the kernel, nothing comes
	// back, and there is no error: no RST, no ICMP.
	if _, err := c.Write([]byte("during")); err != nil {
		t.Fatalf("write into the black hole: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := c.Read(make([]byte, 16)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read = %d, %v; want silence", n, err)
	}
	// New flow: the SYN vanishes, the dial times out (no "refused", no
	// "no route to host").
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, err = p.DialContext(ctx, "tcp", addr)
	cancel()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("dial into the black hole = %v, want a timeout", err)
	}

	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if err := restore(); err != nil {
		t.Fatalf("second restore: %v", err)
	}
	// TCP retransmits the held bytes: the flow survives a short cut.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len("during"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "during" {
		t.Fatalf("after restore: %q, %v", got, err)
	}
	c2, err := p.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := testkit.EchoOnce(c2, "after", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []*netns.Namespace{p.Server(), p.Client()} {
		out, err := exec.Command("ip", "netns", "exec", ns.Name(), "nft", "list", "tables").CombinedOutput()
		if err != nil || strings.Contains(string(out), "relink_") {
			t.Fatalf("tables left in %s: %s %v", ns.Name(), out, err)
		}
	}
}

func TestBlackHoleOnlyAffectsItsPort(t *testing.T) {
	p := netns.ForTest(t)
	a, err := p.ListenTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.ListenTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, a)
	echo(t, b)
	if _, err := p.BlackHole(port(a)); err != nil {
		t.Fatal(err)
	}
	c, err := p.Dial("tcp", p.ServerAddr(port(b)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := testkit.EchoOnce(c, "other port", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestPairsAreIndependent(t *testing.T) {
	p1 := netns.ForTest(t)
	p2 := netns.ForTest(t)
	if p1.Server().Name() == p2.Server().Name() {
		t.Fatal("two pairs share a name")
	}
	l1, err := p1.ListenTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := p2.ListenTCP(port(l1)) // same address and port: separate stacks
	if err != nil {
		t.Fatal(err)
	}
	echo(t, l1)
	echo(t, l2)
	if _, err := p1.BlackHole(port(l1)); err != nil {
		t.Fatal(err)
	}
	c, err := p2.Dial("tcp", p2.ServerAddr(port(l2)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := testkit.EchoOnce(c, "unaffected", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestLossDropsSomeButNotAll(t *testing.T) {
	p := netns.ForTest(t)
	ln, err := p.ListenTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, ln)
	if _, err := p.Loss(port(ln), 0); err == nil {
		t.Fatal("Loss(0) accepted")
	}
	if _, err := p.Loss(port(ln), 101); err == nil {
		t.Fatal("Loss(101) accepted")
	}
	c, err := p.Dial("tcp", p.ServerAddr(port(ln)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	restore, err := p.Loss(port(ln), 10)
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	// 10 % each way: TCP retransmits, so the data still gets through, and
	// the kernel counts the retransmissions the drops caused (the chance
	// that 50 round trips lose no packet at all is about 1e-4).
	for i := range 50 {
		if err := testkit.EchoOnce(c, "packet "+strconv.Itoa(i), 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	info := tcpInfo(t, c)
	if info.Total_retrans == 0 {
		t.Fatal("no retransmissions under 10 % loss")
	}
	t.Logf("50 round trips under 10 %% loss: %d retransmissions", info.Total_retrans)
}

func TestCloseRemovesNamespacesAndSweepsStaleOnes(t *testing.T) {
	netns.Require(t)
	// A namespace named as if a dead process had left it behind.
	dead := 1 << 22
	for unix.Kill(dead, 0) == nil {
		dead--
	}
	stale := "relink-" + strconv.Itoa(dead) + "-1-s"
	if out, err := exec.Command("ip", "netns", "add", stale).CombinedOutput(); err != nil {
		t.Fatalf("%s %v", out, err)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", stale).Run() })

	p, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	names := []string{p.Server().Name(), p.Client().Name()}
	if exists(stale) {
		t.Fatalf("stale namespace %s not swept", stale)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, n := range names {
		if exists(n) {
			t.Fatalf("namespace %s left after Close", n)
		}
	}
	if _, err := p.BlackHole(5060); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("BlackHole after Close = %v", err)
	}
}

func TestRequireFailsWhenRequired(t *testing.T) {
	// Require must not skip when the machine can do it; with
	// RELINK_REQUIRE_NETNS=1 CI turns any skip into a failure, which the
	// other tests exercise by running at all.
	netns.Require(t)
	if err := netns.Available(); err != nil {
		t.Fatalf("Require passed but Available = %v", err)
	}
}

func exists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

func tcpInfo(t *testing.T, c net.Conn) *unix.TCPInfo {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var serr error
	raw.Control(func(fd uintptr) { info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if serr != nil {
		t.Fatal(serr)
	}
	return info
}
