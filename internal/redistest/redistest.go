// Package redistest starts a real redis-server (Debian's redis-server 7)
// for tests: one per test, on a free loopback port, with no persistence, and
// kills and restarts it on the same port, as package kamailio does for
// Kamailio.
//
// In a test:
//
//	s := redistest.Start(t) // skips without redis-server, unless RELINK_REQUIRE_REDIS=1
//	c := redis.NewClient(&redis.Options{Addr: s.Addr(), ContextTimeoutEnabled: true})
//	s.Kill()    // SIGKILL: connections reset, every key lost
//	s.Restart() // an empty server on the same port
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvRequire is the environment variable that turns Require's skip into a
// failure when set to "1" (CI sets it after installing redis-server).
const EnvRequire = "RELINK_REQUIRE_REDIS"

// ErrNotInstalled is returned when redis-server is missing.
var ErrNotInstalled = errors.New("redistest: redis-server not installed (apt-get install -y --no-install-recommends redis-server)")

// Require skips the test when redis-server is not installed, or fails it
// when RELINK_REQUIRE_REDIS=1.
func Require(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err == nil {
		return
	}
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("%v, and %s=1", ErrNotInstalled, EnvRequire)
	}
	t.Skipf("%v; set %s=1 to fail instead of skipping", ErrNotInstalled, EnvRequire)
}

// Server is a running (or killed) redis-server.
type Server struct {
	addr string
	dir  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts a redis-server for t (calling Require first) and stops it in
// t.Cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	Require(t)
	s, err := Launch(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	return s
}

// Launch starts a redis-server on a free loopback port, its log in dir, for
// a program (a benchmark) rather than a test; the caller calls Kill.
func Launch(dir string) (*Server, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, ErrNotInstalled
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir}
	if err := s.Restart(); err != nil {
		return nil, err
	}
	return s, nil
}

// Addr returns the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Dir returns the server's directory (its log).
func (s *Server) Dir() string { return s.dir }

// Restart starts the server again on the same port, empty, and waits until
// it answers PING; a server still running is killed first.
func (s *Server) Restart() error {
	s.Kill()
	_, port, _ := net.SplitHostPort(s.addr)
	cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--protected-mode", "no",
		"--logfile", "redis.log")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redistest: start: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		if ping(s.addr) == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("redistest: redis-server exited during start (see %s/redis.log)", s.dir)
		case <-tick.C:
		}
	}
	s.Kill()
	return errors.New("redistest: redis-server did not answer PING within 10 s")
}

// Kill ends the server at once (SIGKILL): clients see their connections
// reset and every key is lost. It is a no-op on a killed server.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// ping sends one PING and expects +PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("redistest: PING answered %q", line)
	}
	return nil
}

// freePort returns a free TCP port on loopback.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("redistest: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
