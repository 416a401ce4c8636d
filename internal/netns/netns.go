//go:build linux

// Package netns builds a real network path that tests can cut: two network
// namespaces, a server and a client, joined by a veth pair, and nft rules
// that silently drop the server port's packets (a black hole) or a random
// share of them (loss). It needs root and the ip and nft commands (packages
// iproute2 and nftables).
//
// Unlike a proxy in the same kernel, a black hole here leaves no kernel to
// answer for the peer: TCP keepalive and TCP_USER_TIMEOUT see what they see
// in production, a peer that stopped acknowledging.
//
//	p, err := netns.New()
//	if err != nil { ... }
//	defer p.Close()
//	ln, _ := p.Listen("tcp", ":5060")          // in the server namespace
//	c, _ := p.DialContext(ctx, "tcp", p.ServerAddr(5060)) // from the client namespace
//	restore, _ := p.BlackHole(5060)            // silence, both directions
//	...
//	restore()                                  // the path is back
//
// Sockets keep the namespace they were created in, so the listener, the
// dialed connection and everything accepted from them work from any
// goroutine afterwards. DialContext has the shape of net.Dialer.DialContext,
// so it plugs into conn.Dialer.Dial.
//
// Namespace names embed the process id; New deletes namespaces left behind
// by processes that no longer exist, so a crashed run never blocks the next.
// Tests use ForTest, which skips (or fails, see Require) when the machine
// cannot do this, and closes the pair in t.Cleanup.
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Addresses on the veth pair, from 198.18.0.0/15 (RFC 2544's benchmarking
// range, never routed on the Internet).
var (
	// ServerIP is the server namespace's address.
	ServerIP = netip.MustParseAddr("198.18.0.1")
	// ClientIP is the client namespace's address.
	ClientIP = netip.MustParseAddr("198.18.0.2")
)

// RequireEnv is the environment variable that turns Require's skip into a
// failure: CI sets RELINK_REQUIRE_NETNS=1 so that tests which need network
// namespaces cannot silently stop running.
const RequireEnv = "RELINK_REQUIRE_NETNS"

// namePrefix starts every namespace name this package creates.
const namePrefix = "relink-"

const runDir = "/run/netns"

var seq atomic.Int64

// Namespace is a named network namespace, held open by a file descriptor.
type Namespace struct {
	name string
	fd   int
}

// Name returns the namespace's name (as `ip netns list` shows it).
func (ns *Namespace) Name() string { return ns.name }

// Do runs fn on an OS thread switched into ns, then switches the thread
// back. Sockets created by fn stay in ns for their whole life. fn must not
// start goroutines that expect to run in ns: they run on other threads.
func (ns *Namespace) Do(fn func() error) error { return Do(ns, fn) }

// Do runs fn on an OS thread switched into ns, then switches the thread
// back; see Namespace.Do.
func Do(ns *Namespace, fn func() error) error {
	type result struct{ err error }
	done := make(chan result, 1)
	// A fresh goroutine, locked to its thread for the duration: if the
	// thread cannot be switched back, the goroutine exits still locked and
	// the runtime discards the thread rather than reuse it in the wrong
	// namespace.
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{fmt.Errorf("netns: open current namespace: %w", err)}
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{fmt.Errorf("netns: enter %s: %w", ns.name, err)}
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			done <- result{errors.Join(ferr, fmt.Errorf("netns: leave %s: %w", ns.name, err))}
			return // thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		done <- result{ferr}
	}()
	return (<-done).err
}

// Pair is a server namespace and a client namespace joined by a veth pair:
// ServerIP in one, ClientIP in the other, a /24 between them.
type Pair struct {
	server, client *Namespace
	id             string

	mu     sync.Mutex
	rules  map[string]bool // live nft tables, by name
	closed bool
}

// Available reports why this machine cannot create a Pair, or nil if it
// can: it needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN), Linux, and the
// ip and nft commands.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("netns: needs root (network namespaces, veth and nft rules)")
	}
	var missing []string
	for _, cmd := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, cmd)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("netns: %s not found in PATH (install iproute2 and nftables)", strings.Join(missing, " and "))
	}
	return nil
}

// Require skips t with a clear message when Available reports that network
// namespaces cannot be used here, or fails t instead when the environment
// variable RELINK_REQUIRE_NETNS is "1".
func Require(t testing.TB) {
	t.Helper()
	err := Available()
	if err == nil {
		return
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%v (and %s=1 requires these tests to run)", err, RequireEnv)
	}
	t.Skipf("skipping: %v (set %s=1 to fail instead)", err, RequireEnv)
}

// ForTest calls Require, creates a Pair, and closes it in t.Cleanup.
func ForTest(t testing.TB) *Pair {
	t.Helper()
	Require(t)
	p, err := New()
	if err != nil {
		if os.Getenv(RequireEnv) != "1" && errors.Is(err, errUnsupported) {
			t.Skipf("skipping: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

var errUnsupported = errors.New("netns: network namespaces unsupported here")

// New creates the two namespaces and the veth pair between them. Close it
// when done; a process that dies first leaves namespaces that the next New
// in any process deletes.
func New() (*Pair, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	sweep()
	id := strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(seq.Add(1), 10)
	p := &Pair{id: id, rules: make(map[string]bool)}
	ok := false
	defer func() {
		if !ok {
			p.Close()
		}
	}()
	var err error
	if p.server, err = addNamespace(namePrefix + id + "-s"); err != nil {
		return nil, err
	}
	if p.client, err = addNamespace(namePrefix + id + "-c"); err != nil {
		return nil, err
	}
	s, c := p.server.name, p.client.name
	// The veth ends are created directly in the namespaces, so their names
	// never clash with other pairs' in the root namespace.
	steps := [][]string{
		{"-n", s, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", c},
		{"-n", s, "addr", "add", ServerIP.String() + "/24", "dev", "veth0"},
		{"-n", c, "addr", "add", ClientIP.String() + "/24", "dev", "veth0"},
		{"-n", s, "link", "set", "lo", "up"},
		{"-n", c, "link", "set", "lo", "up"},
		{"-n", s, "link", "set", "veth0", "up"},
		{"-n", c, "link", "set", "veth0", "up"},
	}
	for _, args := range steps {
		if err := run(nil, "ip", args...); err != nil {
			return nil, err
		}
	}
	ok = true
	return p, nil
}

func addNamespace(name string) (*Namespace, error) {
	if err := run(nil, "ip", "netns", "add", name); err != nil {
		if strings.Contains(err.Error(), "Operation not permitted") {
			return nil, fmt.Errorf("%w: %w", errUnsupported, err)
		}
		return nil, err
	}
	fd, err := unix.Open(runDir+"/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = run(nil, "ip", "netns", "del", name) // best effort: the open error says why
		return nil, fmt.Errorf("netns: open %s: %w", name, err)
	}
	return &Namespace{name: name, fd: fd}, nil
}

// sweep deletes namespaces left by processes that have exited.
func sweep() {
	entries, err := os.ReadDir(runDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), namePrefix)
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			_ = run(nil, "ip", "netns", "del", e.Name()) // best effort: a sweep of leftovers
		}
	}
}

// Server returns the server namespace.
func (p *Pair) Server() *Namespace { return p.server }

// Client returns the client namespace.
func (p *Pair) Client() *Namespace { return p.client }

// ServerAddr returns ServerIP:port, for dialing from the client namespace.
func (p *Pair) ServerAddr(port int) string {
	return netip.AddrPortFrom(ServerIP, uint16(port)).String()
}

// Listen is net.Listen in the server namespace. An address without a host
// (":0") listens on every address of that namespace, ServerIP included.
func (p *Pair) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := p.server.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenTCP listens on ServerIP:port in the server namespace; port 0 picks
// a free port (see the listener's Addr).
func (p *Pair) ListenTCP(port int) (*net.TCPListener, error) {
	var ln *net.TCPListener
	err := p.server.Do(func() error {
		var err error
		ln, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(ServerIP, uint16(port))))
		return err
	})
	return ln, err
}

// Dial dials from the client namespace, with a zero net.Dialer.
func (p *Pair) Dial(network, addr string) (net.Conn, error) {
	return p.DialContext(context.Background(), network, addr)
}

// DialContext dials from the client namespace with a zero net.Dialer
// (Go's defaults: keepalive 15 s idle, 15 s interval, 9 probes). Its shape
// is net.Dialer.DialContext's, for conn.Dialer.Dial.
func (p *Pair) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return p.DialWith(ctx, &net.Dialer{}, network, addr)
}

// DialWith dials from the client namespace with d, so the caller chooses
// the keepalive settings and Control function.
func (p *Pair) DialWith(ctx context.Context, d *net.Dialer, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := p.client.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// BlackHole silently drops every packet to and from the server's TCP port,
// in both directions, until restore is called: no RST, no ICMP, nothing. The
// drops happen on the receiving side of the veth (the server namespace's
// prerouting hook for packets to the port, the client namespace's for
// packets from it), so neither sender's kernel sees an error either.
func (p *Pair) BlackHole(port int) (restore func() error, err error) {
	return p.addRule(port, "drop", "blackhole")
}

// Loss drops percent % of the packets to and from the server's TCP port, in
// each direction independently, chosen at random (nft numgen), until
// restore is called. percent must be within 1..100.
func (p *Pair) Loss(port, percent int) (restore func() error, err error) {
	if percent < 1 || percent > 100 {
		return nil, fmt.Errorf("netns: loss percent %d outside 1..100", percent)
	}
	return p.addRule(port, "numgen random mod 100 < "+strconv.Itoa(percent)+" drop", "loss")
}

func (p *Pair) addRule(port int, verdict, kind string) (func() error, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("netns: port %d outside 1..65535", port)
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, fmt.Errorf("netns: pair closed: %w", net.ErrClosed)
	}
	table := "relink_" + kind + "_" + strconv.Itoa(port) + "_" + strconv.FormatInt(seq.Add(1), 10)
	p.rules[table] = true
	p.mu.Unlock()

	ruleset := func(match string) string {
		return "table inet " + table + " {\n" +
			"  chain pre {\n" +
			"    type filter hook prerouting priority raw; policy accept;\n" +
			"    " + match + " " + verdict + "\n" +
			"  }\n" +
			"}\n"
	}
	ps := strconv.Itoa(port)
	restore := func() error { return p.removeRule(table) }
	if err := run(strings.NewReader(ruleset("tcp dport "+ps)), "ip", "netns", "exec", p.server.name, "nft", "-f", "-"); err != nil {
		_ = restore() // the install error says why
		return nil, err
	}
	if err := run(strings.NewReader(ruleset("tcp sport "+ps)), "ip", "netns", "exec", p.client.name, "nft", "-f", "-"); err != nil {
		_ = restore() // the install error says why
		return nil, err
	}
	return restore, nil
}

// removeRule deletes table from both namespaces. Deleting a table that is
// already gone is not an error, so restore functions are idempotent.
func (p *Pair) removeRule(table string) error {
	p.mu.Lock()
	live := p.rules[table]
	delete(p.rules, table)
	closed := p.closed
	p.mu.Unlock()
	if !live || closed {
		return nil
	}
	var errs []error
	for _, ns := range []*Namespace{p.server, p.client} {
		err := run(nil, "ip", "netns", "exec", ns.name, "nft", "delete", "table", "inet", table)
		if err != nil && !strings.Contains(err.Error(), "No such file or directory") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close deletes both namespaces, with the veth pair and every rule in them.
// Sockets still open in them keep working but lose their path. It is
// idempotent.
func (p *Pair) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	var errs []error
	for _, ns := range []*Namespace{p.server, p.client} {
		if ns == nil {
			continue
		}
		unix.Close(ns.fd)
		if err := run(nil, "ip", "netns", "del", ns.name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// run runs a command, with stdin if non-nil, and returns an error carrying
// its output when it fails.
func run(stdin *strings.Reader, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// Never let a signal meant for the test process's group reach ip/nft
	// half-way; Close must be able to run after an interrupt.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("netns: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
