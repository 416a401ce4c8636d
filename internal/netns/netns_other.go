//go:build !linux

package netns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
)

// Stubs for platforms without network namespaces: Available reports why,
// Require skips (or fails under RELINK_REQUIRE_NETNS=1), New fails.

var (
	// ServerIP is the server namespace's address.
	ServerIP = netip.MustParseAddr("198.18.0.1")
	// ClientIP is the client namespace's address.
	ClientIP = netip.MustParseAddr("198.18.0.2")
)

// RequireEnv is the environment variable that turns Require's skip into a
// failure.
const RequireEnv = "RELINK_REQUIRE_NETNS"

var errNotLinux = errors.New("netns: network namespaces need Linux")

// Namespace is a network namespace; none exist on this platform.
type Namespace struct{}

// Name returns the namespace's name.
func (ns *Namespace) Name() string { return "" }

// Do fails: there are no namespaces on this platform.
func (ns *Namespace) Do(fn func() error) error { return errNotLinux }

// Do fails: there are no namespaces on this platform.
func Do(ns *Namespace, fn func() error) error { return errNotLinux }

// Pair is unavailable on this platform.
type Pair struct{}

// Available reports that network namespaces need Linux.
func Available() error { return errNotLinux }

// Require skips t, or fails it when RELINK_REQUIRE_NETNS=1.
func Require(t testing.TB) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%v (and %s=1 requires these tests to run)", errNotLinux, RequireEnv)
	}
	t.Skipf("skipping: %v", errNotLinux)
}

// ForTest skips t (see Require).
func ForTest(t testing.TB) *Pair { Require(t); return nil }

// New fails on this platform.
func New() (*Pair, error) { return nil, errNotLinux }

// Server returns nil.
func (p *Pair) Server() *Namespace { return nil }

// Client returns nil.
func (p *Pair) Client() *Namespace { return nil }

// ServerAddr returns ServerIP:port.
func (p *Pair) ServerAddr(port int) string {
	return netip.AddrPortFrom(ServerIP, uint16(port)).String()
}

// Listen fails on this platform.
func (p *Pair) Listen(network, addr string) (net.Listener, error) { return nil, errNotLinux }

// ListenTCP fails on this platform.
func (p *Pair) ListenTCP(port int) (*net.TCPListener, error) { return nil, errNotLinux }

// Dial fails on this platform.
func (p *Pair) Dial(network, addr string) (net.Conn, error) { return nil, errNotLinux }

// DialContext fails on this platform.
func (p *Pair) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return nil, errNotLinux
}

// DialWith fails on this platform.
func (p *Pair) DialWith(ctx context.Context, d *net.Dialer, network, addr string) (net.Conn, error) {
	return nil, errNotLinux
}

// BlackHole fails on this platform.
func (p *Pair) BlackHole(port int) (restore func() error, err error) { return nil, errNotLinux }

// Loss fails on this platform.
func (p *Pair) Loss(port, percent int) (restore func() error, err error) { return nil, errNotLinux }

// Close does nothing.
func (p *Pair) Close() error { return nil }
