//go:build unix

package conn_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/testkit"
)

// processCPU returns the CPU time (user + system) used by this process.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestScaleIdleConns measures what wrapping costs per idle connection: heap
// bytes and goroutines, over 10,000 loopback connections. The server ends
// live in a child process (this test binary, see scaleServer), so that this
// process needs only one descriptor per connection. Not run with -short.
//
//	go test -run TestScaleIdleConns -v ./conn/
func TestScaleIdleConns(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 10,000 connections")
	}
	const n = 10_000
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if need := uint64(n + 500); rl.Cur < need {
		old := rl
		rl.Cur = min(max(need, rl.Cur), rl.Max)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur < need {
			t.Skipf("RLIMIT_NOFILE %d < %d and cannot be raised: %v", old.Cur, need, err)
		}
		defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)
	}

	// The peer: a child process accepting and holding the connections.
	addr, stop := serverProcess(t, "1")
	defer stop()

	raw := make([]net.Conn, n)
	wrapped := make([]*conn.Conn, n)
	defer func() {
		for i := range raw {
			if wrapped[i] != nil {
				wrapped[i].Close()
			} else if raw[i] != nil {
				raw[i].Close()
			}
		}
	}()
	for i := range raw {
		var err error
		if raw[i], err = net.Dial("tcp", addr); err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
	}

	measure := func() (heap uint64, goroutines int) {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc, runtime.NumGoroutine()
	}
	h0, g0 := measure()
	cfg := conn.Config{Probe: conn.CRLF} // defaults: 10 s interval, keepalive, TCP_USER_TIMEOUT
	start := time.Now()
	for i, c := range raw {
		wrapped[i] = conn.Wrap(c, cfg)
	}
	wrapTime := time.Since(start)
	h1, g1 := measure()
	if time.Since(start) > conn.DefaultProbeInterval {
		t.Log("warning: probes may have started during the measurement")
	}
	perConn := float64(int64(h1)-int64(h0)) / n
	t.Logf("%d idle connections: wrapping adds %.0f heap bytes and %d goroutines per connection (Wrap: %v each; raw conns: heap %.1f MiB, %d goroutines in all)",
		n, perConn, (g1-g0)/n, wrapTime/n, float64(h0)/(1<<20), g0)
	if perConn > 1024 {
		t.Errorf("%.0f extra heap bytes per connection, goal ≤ 1024", perConn)
	}
	if g1 > g0+1 { // the process's timing wheel: one goroutine for all
		t.Errorf("wrapping added %d goroutines, want at most 1 in all", g1-g0)
	}
}

// TestScaleServerHelper is TestScaleIdleConns's peer process; it does
// nothing unless RELINK_SCALE_SERVER=1.
func TestScaleServerHelper(t *testing.T) {
	role := os.Getenv("RELINK_SCALE_SERVER")
	if role != "1" && role != "echo" {
		t.Skip("helper process for TestScaleIdleConns and BenchmarkProbe")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fmt.Println(ln.Addr())
	if role == "echo" {
		testkit.RaiseFileLimit(1 << 16)
		e := testkit.ServeEcho(ln)
		io.Copy(io.Discard, os.Stdin)
		e.Close()
		os.Exit(0)
	}
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	io.Copy(io.Discard, os.Stdin) // until the parent is done
	os.Exit(0)                    // skip the leak check: the accepted conns die with the process
}

// serverProcess starts TestScaleServerHelper in a child process (role "1":
// hold the connections; "echo": echo them) and returns its address and a
// function that stops it.
func serverProcess(tb testing.TB, role string) (addr string, stop func()) {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestScaleServerHelper$", "-test.count=1", "-test.bench=^$")
	cmd.Env = append(os.Environ(), "RELINK_SCALE_SERVER="+role)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	stop = func() {
		stdin.Close() // the child exits when its stdin closes
		cmd.Wait()
	}
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		stop()
		tb.Fatalf("scale server: %v", err)
	}
	return strings.TrimSpace(addr), stop
}
