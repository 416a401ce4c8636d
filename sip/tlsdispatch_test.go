package sip

import (
	"context"
	"crypto/tls"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/relinkgo/relink/internal/kamailio"
)

// tlsServer serves TLS handshakes with cert on loopback until the test ends.
func tlsServer(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	return l.Addr().String()
}

func handshake(t *testing.T, cfg *tls.Config, addr, serverName string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cfg = cfg.Clone()
	cfg.ServerName = serverName // as sipgo sets it: the registrar's host
	c, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
	}
	return err
}

// TestTLSDispatchVerifies: the configuration relink gives sipgo verifies
// every server as crypto/tls would, with the configuration of the trunk
// registering at that host: the chain against its roots, the name (SNI)
// or, for an IP address, the address being dialled. Nothing is skipped: a
// certificate for another name or address fails, and so does an IP
// address relink is not dialling.
func TestTLSDispatchVerifies(t *testing.T) {
	ca, err := kamailio.NewCA("dispatch test")
	if err != nil {
		t.Fatal(err)
	}
	good, _ := ca.Issue("good", "good.example", "127.0.0.1")
	other, _ := ca.Issue("other", "other.example", "127.0.0.2")
	goodAddr, otherAddr := tlsServer(t, good), tlsServer(t, other)
	trunk := &tls.Config{RootCAs: ca.Pool()}

	d := newTLSDispatch(nil)
	cfg := d.config()
	if err := d.use("good.example", trunk); err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, cfg, goodAddr, "good.example"); err != nil {
		t.Errorf("good.example with its trunk's roots: %v", err)
	}
	var cve *tls.CertificateVerificationError
	if err := handshake(t, cfg, otherAddr, "good.example"); !errors.As(err, &cve) {
		t.Errorf("a certificate for other.example at good.example: %v, want a verification error", err)
	}
	if err := handshake(t, cfg, goodAddr, "unknown.example"); !errors.As(err, &cve) {
		t.Errorf("a host with no trunk configuration (system roots): %v, want a verification error", err)
	}
	if err := d.use("good.example", &tls.Config{}); !errors.Is(err, ErrTLSConfig) {
		t.Errorf("a second configuration for one host: %v, want ErrTLSConfig", err)
	}

	// IP addresses: no SNI; the address comes from the dial in progress.
	if err := handshake(t, cfg, goodAddr, "127.0.0.1"); !errors.As(err, &cve) {
		t.Errorf("an IP address relink is not dialling: %v, want a verification error", err)
	}
	d.dialIP(netip.MustParseAddr("127.0.0.1"), trunk)
	if err := handshake(t, cfg, goodAddr, "127.0.0.1"); err != nil {
		t.Errorf("127.0.0.1 dialled with its trunk's roots: %v", err)
	}
	if err := handshake(t, cfg, otherAddr, "127.0.0.1"); !errors.As(err, &cve) {
		t.Errorf("a certificate for 127.0.0.2 at 127.0.0.1: %v, want a verification error", err)
	}
}
