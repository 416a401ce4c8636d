package conn

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/neterr"
)

// dial makes one attempt at Addrs[idx]: the Gate's admission, then the dial,
// in one span.
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
	dctx := ctx
	if l.dialTimeout > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, l.dialTimeout)
		defer cancel()
	}
	c, err := l.dialer.DialContext(dctx, l.network, addr)
	if err == nil && c == nil {
		err = errNoConn
	}

	o := classifyDial(ctx, dctx, err)
	if permit != nil {
		// Done and Abandon take no ctx (the Gate logs its state changes
		// with context.Background): a permit outlives the Acquire that
		// made it.
		if o == outcomeCanceled {
			permit.Abandon() //nolint:contextcheck // the attempt told us nothing about the server
		} else {
			permit.Done(gateOutcome(o)) //nolint:contextcheck // see above
		}
	}
	l.lastOutcome = o
	l.inst.attempt(ctx, idx, o)
	if err != nil {
		l.dialFailed(ctx, span, addr, attempt, err)
		if c != nil {
			c.Close()
		}
		return nil, err
	}
	l.log.LogAttrs(ctx, slog.LevelDebug, "link connected", slog.String("server.address", addr),
		slog.Int("attempt", attempt))
	return c, nil
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

// gateOutcome maps an attempt's outcome to the Gate's vocabulary.
func gateOutcome(o attemptOutcome) backoff.Outcome {
	switch o {
	case outcomeSuccess:
		return backoff.Success
	case outcomeUnreachable:
		return backoff.Unreachable
	}
	return backoff.ClientFailure
}
