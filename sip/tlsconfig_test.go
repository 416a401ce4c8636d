package sip

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
)

// TestDecideTLSConfigError: a TLS handshake that fails after the TCP
// connect (an untrusted certificate, a plain port) is a configuration
// error: failed (slow retry), with the registrar's address in the error.
func TestDecideTLSConfigError(t *testing.T) {
	t.Parallel()
	x := exchange{registrar: "sips:r.example:5061", expires: time.Minute, transport: "tls", host: "r.example"}
	for _, err := range []error{
		fmt.Errorf("TLS handshake error: %w", io.EOF),
		fmt.Errorf("TLS handshake error: %w", &tls509{x509.UnknownAuthorityError{}}),
	} {
		_, d := decide(x, reply{err: err})
		if d.act != failed || !errors.Is(d.err, ErrTLSConfig) || !strings.Contains(d.err.Error(), "r.example:5061") {
			t.Errorf("%v: %v (%v), want failed, ErrTLSConfig with the address", err, d.act, d.err)
		}
	}
	if _, d := decide(x, reply{err: fmt.Errorf("dial TCP error: %w", io.EOF)}); d.act != unreachable {
		t.Errorf("a failed connect: %v, want unreachable", d.act)
	}
}

// tls509 wraps an x509 error as crypto/tls's verification error does.
type tls509 struct{ err error }

func (e *tls509) Error() string { return "tls: failed to verify certificate: " + e.err.Error() }
func (e *tls509) Unwrap() error { return e.err }

// TestRunnerTLSConfigError: a trunk whose TLS handshake keeps failing is
// Failed and retries slowly, not every 0.5–2 s.
func TestRunnerTLSConfigError(t *testing.T) {
	ua := newTestUA(t)
	synctest.Test(t, func(t *testing.T) {
		tr := virtualTrunk(t, ua, &fakeRegistrar{}, TrunkConfig{SlowRetry: time.Minute, UnregisterTimeout: -1})
		var n atomic.Int32
		tr.request = func(context.Context, *sipmsg.Request) (clientTx, error) {
			n.Add(1)
			return nil, fmt.Errorf("TLS handshake error: %w", io.EOF)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- tr.Run(ctx) }()
		time.Sleep(150 * time.Second)
		s := tr.State()
		cancel()
		<-done
		if s != Failed || n.Load() > 4 {
			t.Errorf("state %v after %d REGISTERs in 150 s, want Failed and a slow retry", s, n.Load())
		}
	})
}

// TestTLSHandshakeTimeoutNotConfig: a handshake that ran out of time (a
// bounded connection attempt, a path lost mid-handshake) is the path's
// failure, not a configuration error.
func TestTLSHandshakeTimeoutNotConfig(t *testing.T) {
	t.Parallel()
	for _, err := range []error{
		fmt.Errorf("TLS handshake error: %w", context.DeadlineExceeded),
		fmt.Errorf("TLS handshake error: %w", &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}),
	} {
		if tlsConfigError(err) {
			t.Errorf("%v: a configuration error, want a path failure", err)
		}
	}
	if !tlsConfigError(fmt.Errorf("x: %w", ErrTLSConfig)) {
		t.Error("ErrTLSConfig itself is not a configuration error")
	}
}
