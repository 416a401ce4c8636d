package conn

import (
	"context"
	"errors"
	"net"

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
}

// DialContext connects to addr on the named network ("tcp", "tcp4",
// "tcp6", or any network Dial understands) and returns the connection
// wrapped in a Conn. ctx bounds the dial only, not the connection.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (*Conn, error) {
	tp := d.Config.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	ctx, span := tp.Tracer(ScopeName).Start(ctx, "conn.Dial",
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("server.address", addr),
			attribute.String("network.transport", network)))
	defer span.End()

	var (
		nc      net.Conn
		err     error
		applied bool
	)
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
		return nil, err
	}
	return wrap(nc, &d.Config, !applied), nil
}

var errNoConn = errors.New("conn: Dial returned neither a connection nor an error")
