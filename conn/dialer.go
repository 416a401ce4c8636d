package conn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Dialer dials connections monitored by a Conn. The zero value dials with
// the defaults of Config.
type Dialer struct {
	// Config configures the connections dialed.
	Config Config

	// Dial, if set, dials instead of a net.Dialer (tests plug in pipes or
	// fault proxies here); it has the shape of http.Transport.DialContext.
	// The Config's kernel options are applied to the connection it returns
	// when that is (or wraps) a *net.TCPConn. When nil, Config.NetDialer()
	// dials, setting the options before connecting.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// TLSConfig, if set, makes DialContext run a TLS client handshake over
	// each connection it dials (bounded by DialContext's ctx) and return a
	// Conn that reads and writes through TLS: the kernel options are set on
	// the TCP socket underneath, probes are written through TLS, and only
	// decrypted bytes count as inbound traffic. When its ServerName is
	// empty, the host of addr is used, as tls.Dial does. nil (the default)
	// means plain connections. A handshake that fails after the connection
	// was made returns an error wrapping ErrTLSHandshake and naming addr
	// (an untrusted or mismatched certificate, a peer that does not speak
	// TLS); see LinkConfig.TLSConfig for how a Link retries it.
	TLSConfig *tls.Config
}

// DialContext connects to addr on the named network ("tcp", "tcp4",
// "tcp6", or any network Dial understands) and returns the connection
// wrapped in a Conn. ctx bounds the dial only, not the connection.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (*Conn, error) {
	nc, applied, err := d.dialNet(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if d.TLSConfig != nil {
		tc, err := clientTLS(ctx, nc, d.TLSConfig, addr)
		if err != nil {
			return nil, err
		}
		nc = tc
	}
	return wrap(nc, &d.Config, !applied), nil
}

// dialNet dials addr, in a conn.Dial span, and reports whether the kernel
// options were set already (by Config.NetDialer).
func (d *Dialer) dialNet(ctx context.Context, network, addr string) (nc net.Conn, applied bool, err error) {
	tp := d.Config.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	ctx, span := tp.Tracer(ScopeName).Start(ctx, "conn.Dial",
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("server.address", addr),
			attribute.String("network.transport", network)))
	defer span.End()

	if d.Dial != nil {
		nc, err = d.Dial(ctx, network, addr)
	} else {
		nd := d.Config.NetDialer()
		nc, err = nd.DialContext(ctx, network, addr)
		applied = true
	}
	if err == nil && nc == nil {
		err = errNoConn
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return nil, false, err
	}
	return nc, applied, nil
}

// clientTLS runs a TLS client handshake over nc, bounded by ctx. On failure
// it closes nc and returns an error naming addr: one wrapping
// ErrTLSHandshake when the TLS layer itself failed (see tlsFailure),
// otherwise the network's error.
func clientTLS(ctx context.Context, nc net.Conn, cfg *tls.Config, addr string) (*tls.Conn, error) {
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = nc.Close()
		if ctx.Err() == nil && tlsFailure(err) {
			return nil, fmt.Errorf("%w with %s: %w", ErrTLSHandshake, addr, err)
		}
		return nil, fmt.Errorf("conn: TLS handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// tlsFailure reports whether err, from a TLS handshake, is the TLS layer's
// own failure (a certificate refused, an alert, a peer that answered
// something other than TLS) rather than the network's (a timeout, a reset,
// the peer closing: a server that is down or overloaded looks like that).
func tlsFailure(err error) bool {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, context.Canceled):
		return false
	case errors.As(err, &ne) && ne.Timeout():
		return false
	}
	return true
}

var errNoConn = errors.New("conn: Dial returned neither a connection nor an error")
