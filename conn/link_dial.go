package conn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/neterr"
)

// dial makes one attempt at Addrs[idx], in one span: the Gate's admission,
// the dial, the TLS handshake and Handshake. The Gate's permit is held
// across all of them and reported once, with the attempt's outcome.
func (l *Link) dial(ctx context.Context, idx, attempt int) (*Conn, error) {
	addr := l.cfg.Addrs[idx]
	ctx, span := l.inst.tracer.Start(ctx, "relink.link.connect", l.inst.spanOpts[idx]...)
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("relink.link.attempt", attempt))
	}
	var permit *backoff.Permit
	if l.cfg.Gate != nil {
		p, err := l.cfg.Gate.Acquire(ctx)
		if err != nil {
			span.SetStatus(codes.Error, "gate: "+err.Error())
			return nil, err
		}
		permit = p
		span.AddEvent("gate admitted")
	}
	c, o, err := l.establish(ctx, addr)
	if permit != nil {
		// Done and Abandon take no ctx (the Gate logs its state changes
		// with context.Background): a permit outlives the Acquire that
		// made it.
		if o == outcomeCanceled {
			permit.Abandon() //nolint:contextcheck // the attempt told us nothing about the server
		} else {
			permit.Done(gateOutcome(o, err)) //nolint:contextcheck // see above
		}
	}
	l.lastOutcome = o
	l.inst.attempt(ctx, idx, o)
	if err != nil {
		l.dialFailed(ctx, span, addr, attempt, err)
		return nil, err
	}
	l.log.LogAttrs(ctx, slog.LevelDebug, "link connected", slog.String("server.address", addr),
		slog.Int("attempt", attempt))
	return c, nil
}

// establish dials addr and brings the connection to readiness: the TLS
// handshake, then Handshake. It returns the ready Conn, or the attempt's
// outcome and error (the connection closed).
func (l *Link) establish(ctx context.Context, addr string) (*Conn, attemptOutcome, error) {
	dctx, cancel := ctx, context.CancelFunc(func() {})
	if l.dialTimeout > 0 {
		dctx, cancel = context.WithTimeout(ctx, l.dialTimeout)
	}
	nc, applied, err := l.dialer.dialNet(dctx, l.network, addr)
	o := classifyDial(ctx, dctx, err)
	cancel()
	if err != nil {
		return nil, o, err
	}
	hctx, hcancel := ctx, context.CancelFunc(func() {})
	if l.handshakeTimeout > 0 {
		hctx, hcancel = context.WithTimeoutCause(ctx, l.handshakeTimeout, errHandshakeExpired)
	}
	defer hcancel()
	if l.tlsConfig != nil {
		tc, err := clientTLS(hctx, nc, l.tlsConfig, addr)
		if err != nil {
			return nil, classifyHandshake(ctx, hctx, nil, err), l.handshakeError(hctx, addr, err)
		}
		nc = tc
	}
	c := wrap(nc, &l.dialer.Config, !applied)
	if l.cfg.Handshake == nil {
		return c, outcomeSuccess, nil
	}
	// A Handshake blocked in a Read that does not watch ctx returns once
	// the Conn is closed.
	stop := context.AfterFunc(hctx, func() { c.Close() })
	err = l.cfg.Handshake(hctx, c)
	if !stop() && err == nil {
		err = context.Cause(hctx) // ready too late: the Conn is closed
	}
	if err != nil {
		o := classifyHandshake(ctx, hctx, c, err)
		c.Close()
		return nil, o, l.handshakeError(hctx, addr, err)
	}
	return c, outcomeSuccess, nil
}

// errHandshakeExpired is the cause of a handshake's ctx when
// HandshakeTimeout expired.
var errHandshakeExpired = fmt.Errorf("%w", ErrHandshakeTimeout)

// handshakeError returns the error of a failed TLS handshake or Handshake:
// err, or, when HandshakeTimeout expired (and err is not Permanent or
// Overloaded, which the caller meant), an error wrapping
// ErrHandshakeTimeout and err, naming addr.
func (l *Link) handshakeError(hctx context.Context, addr string, err error) error {
	if !errors.Is(context.Cause(hctx), errHandshakeExpired) || backoff.IsPermanent(err) {
		return err
	}
	if _, ok := backoff.RetryAfter(err); ok {
		return err
	}
	return fmt.Errorf("%w after %v with %s: %w", ErrHandshakeTimeout, l.handshakeTimeout, addr, err)
}

// classifyHandshake judges a TLS handshake or Handshake that returned err,
// under Run's ctx and the handshake's own hctx; c is the Conn Handshake ran
// on (nil for the TLS handshake).
func classifyHandshake(ctx, hctx context.Context, c *Conn, err error) attemptOutcome {
	switch {
	case ctx.Err() != nil:
		return outcomeCanceled
	case backoff.IsPermanent(err):
		return outcomeClientFailure
	case errors.Is(err, backoff.ErrOverloaded):
		return outcomeOverload
	case hctx.Err() != nil:
		return outcomeUnreachable // the server did not answer in time
	case errors.Is(err, ErrTLSHandshake):
		return outcomeClientFailure // a configuration error: see LinkConfig.TLSConfig
	case c == nil:
		return outcomeUnreachable // the network cut the TLS handshake
	}
	select {
	case <-c.Done():
		return outcomeUnreachable // the connection died before readiness
	default:
	}
	return outcomeClientFailure
}

// classifyDial judges a dial that returned err, under Run's ctx and the
// dial's own dctx.
func classifyDial(ctx, dctx context.Context, err error) attemptOutcome {
	switch {
	case err == nil:
		return outcomeSuccess
	case ctx.Err() != nil:
		return outcomeCanceled
	case backoff.IsPermanent(err):
		return outcomeClientFailure // retrying cannot help: this client's own failure
	case neterr.Unreachable(err) || dctx.Err() != nil:
		return outcomeUnreachable
	}
	return outcomeClientFailure
}

// dialFailed records a failed dial in the attempt's span and the log.
func (l *Link) dialFailed(ctx context.Context, span trace.Span, addr string, attempt int, err error) {
	if span.IsRecording() {
		span.SetAttributes(attribute.String("error.type", neterr.Type(err)))
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	l.log.LogAttrs(ctx, slog.LevelDebug, "link dial failed", slog.String("server.address", addr),
		slog.Int("attempt", attempt), slog.String("error", err.Error()))
}

// gateOutcome maps an attempt's outcome, and its error, to the Gate's
// vocabulary.
func gateOutcome(o attemptOutcome, err error) backoff.Outcome {
	switch o {
	case outcomeSuccess:
		return backoff.Success
	case outcomeUnreachable:
		return backoff.Unreachable
	case outcomeOverload:
		d, _ := backoff.RetryAfter(err)
		return backoff.Overload(d)
	}
	return backoff.ClientFailure
}
