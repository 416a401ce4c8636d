// Package dnstest starts a real DNS server (Debian's dnsmasq) for tests:
// one per test, serving the SRV and address records the test gives it and
// nothing else (no upstream, no /etc/hosts), on a free loopback port or
// inside a network namespace, as package redistest starts redis-server.
//
// In a test:
//
//	s := dnstest.Start(t, dnstest.Options{ // skips without dnsmasq, unless RELINK_REQUIRE_DNSMASQ=1
//		Domain: "test",
//		SRV:   []dnstest.SRV{{Name: "_sip._tcp.registrar.test", Target: "a.registrar.test", Port: 5060, Priority: 10}},
//		Hosts: []dnstest.Host{{Name: "a.registrar.test", IP: "127.0.0.1"}},
//	})
//	r := s.Resolver(nil) // a *net.Resolver that asks only this server
package dnstest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvRequire is the environment variable that turns Require's skip into a
// failure when set to "1" (CI sets it after installing dnsmasq).
const EnvRequire = "RELINK_REQUIRE_DNSMASQ"

// ErrNotInstalled is returned when dnsmasq is missing.
var ErrNotInstalled = errors.New("dnstest: dnsmasq not installed (apt-get install -y --no-install-recommends dnsmasq)")

// Require skips the test when dnsmasq is not installed, or fails it when
// RELINK_REQUIRE_DNSMASQ=1.
func Require(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err == nil {
		return
	}
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("%v, and %s=1", ErrNotInstalled, EnvRequire)
	}
	t.Skipf("%v; set %s=1 to fail instead of skipping", ErrNotInstalled, EnvRequire)
}

// SRV is one SRV record (RFC 2782).
type SRV struct {
	// Name is the owner, e.g. "_sip._tcp.registrar.test".
	Name string
	// Target is the host, e.g. "a.registrar.test".
	Target string
	// Port, Priority and Weight are the record's fields.
	Port, Priority, Weight int
}

// Host is one name's address record (A or AAAA).
type Host struct {
	Name string
	IP   string
}

// Options configures a Server.
type Options struct {
	// Netns is the network namespace (by name, as `ip netns list` shows
	// it) to run dnsmasq in; empty means the current one.
	Netns string
	// Addr is the IP address to listen on. Empty means 127.0.0.1.
	Addr string
	// Port is the UDP and TCP port. Zero means 53 in a namespace of
	// Netns, and a free port of the current namespace otherwise.
	Port int
	// Domain, if set, is answered locally only: a name under it without
	// records gets NXDOMAIN instead of a refusal.
	Domain string
	// SRV and Hosts are the records served.
	SRV   []SRV
	Hosts []Host
	// StartTimeout bounds the wait for dnsmasq to start. Zero means 5 s.
	StartTimeout time.Duration
}

// Server is a running dnsmasq.
type Server struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{}

	mu  sync.Mutex
	log strings.Builder
}

// Start starts a dnsmasq for t (calling Require first) and stops it in
// t.Cleanup.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	Require(t)
	s, err := Launch(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// args is dnsmasq's command line for opts, listening on ip:port.
func args(opts Options, ip string, port int) []string {
	a := []string{"--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		"--no-poll", "--bind-interfaces", "--listen-address=" + ip, "--port=" + strconv.Itoa(port),
		"--log-facility=-", "--pid-file=", "--user=root", "--cache-size=0"}
	if opts.Domain != "" {
		a = append(a, "--local=/"+opts.Domain+"/")
	}
	for _, r := range opts.SRV {
		a = append(a, fmt.Sprintf("--srv-host=%s,%s,%d,%d,%d", r.Name, r.Target, r.Port, r.Priority, r.Weight))
	}
	for _, h := range opts.Hosts {
		a = append(a, "--host-record="+h.Name+","+h.IP)
	}
	return a
}

// Launch starts dnsmasq for a program rather than a test; the caller calls
// Stop.
func Launch(opts Options) (*Server, error) {
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		return nil, ErrNotInstalled
	}
	ip := opts.Addr
	if ip == "" {
		ip = "127.0.0.1"
	}
	port := opts.Port
	switch {
	case port == 0 && opts.Netns != "":
		port = 53
	case port == 0:
		if port, err = freePort(ip); err != nil {
			return nil, err
		}
	}
	argv := append([]string{bin}, args(opts, ip, port)...)
	if opts.Netns != "" {
		argv = append([]string{"ip", "netns", "exec", opts.Netns}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("dnstest: start dnsmasq: %w", err)
	}
	s := &Server{addr: net.JoinHostPort(ip, strconv.Itoa(port)), cmd: cmd, done: make(chan struct{})}
	started := make(chan struct{})
	go s.readLog(stderr, started)
	go func() { _ = cmd.Wait(); close(s.done) }()
	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	select {
	case <-started:
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("dnstest: dnsmasq exited: %s", s.Log())
	case <-time.After(timeout):
		_ = s.Stop()
		return nil, fmt.Errorf("dnstest: dnsmasq not started within %v: %s", timeout, s.Log())
	}
}

// readLog keeps dnsmasq's log and closes started at its "started" line
// (its sockets are bound by then).
func (s *Server) readLog(r io.Reader, started chan struct{}) {
	sc := bufio.NewScanner(r)
	once := sync.Once{}
	for sc.Scan() {
		line := sc.Text()
		s.mu.Lock()
		s.log.WriteString(line + "\n")
		s.mu.Unlock()
		if strings.Contains(line, "started, version") {
			once.Do(func() { close(started) })
		}
	}
}

func freePort(ip string) (int, error) {
	// A port free for both UDP and TCP: dnsmasq binds both.
	for range 20 {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		u, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
		if err == nil {
			u.Close()
			return port, nil
		}
	}
	return 0, errors.New("dnstest: no free port")
}

// Addr returns the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Log returns what dnsmasq logged so far.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// Resolver returns a pure-Go *net.Resolver that sends every query to this
// server. dial, if set, makes the connection (e.g. from inside a network
// namespace); nil uses a net.Dialer.
func (s *Server) Resolver(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *net.Resolver {
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dial(ctx, network, s.addr)
	}}
}

// Stop kills dnsmasq and waits for it to exit. It is idempotent.
func (s *Server) Stop() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(3 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	return nil
}
