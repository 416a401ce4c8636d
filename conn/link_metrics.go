package conn

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// attemptOutcome classifies an attempt for metrics and the Gate.
type attemptOutcome int

const (
	outcomeSuccess attemptOutcome = iota
	outcomeUnreachable
	outcomeClientFailure
	outcomeCanceled
	outcomeOverload
	numAttemptOutcomes
)

var attemptOutcomeNames = [numAttemptOutcomes]string{"success", "unreachable", "client_failure", "canceled", "overload"}

// linkInstruments holds a Link's telemetry. Attribute sets are built once,
// in NewLink, so recording allocates nothing with a no-op provider.
type linkInstruments struct {
	links    metric.Int64UpDownCounter
	attempts metric.Int64Counter
	tracer   trace.Tracer
	byState  [LinkShutdown]metric.AddOption         // LinkConnecting, LinkReady, LinkTransientFailure
	byAddr   [][numAttemptOutcomes]metric.AddOption // per address and outcome
	spanOpts [][]trace.SpanStartOption              // per address
}

func newLinkInstruments(mp metric.MeterProvider, tp trace.TracerProvider, network string, addrs []string) *linkInstruments {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	m := mp.Meter(ScopeName)
	in := &linkInstruments{tracer: tp.Tracer(ScopeName)}
	transport := network
	switch network {
	case "tcp", "tcp4", "tcp6":
		transport = "tcp"
	}
	tr := attribute.String("network.transport", transport)
	for s := LinkConnecting; s < LinkShutdown; s++ {
		in.byState[s] = metric.WithAttributeSet(attribute.NewSet(tr, attribute.String("relink.link.state", s.String())))
	}
	in.byAddr = make([][numAttemptOutcomes]metric.AddOption, len(addrs))
	in.spanOpts = make([][]trace.SpanStartOption, len(addrs))
	for i, a := range addrs {
		sa := attribute.String("server.address", a)
		for o := range numAttemptOutcomes {
			in.byAddr[i][o] = metric.WithAttributeSet(attribute.NewSet(sa, tr,
				attribute.String("relink.outcome", attemptOutcomeNames[o])))
		}
		in.spanOpts[i] = []trace.SpanStartOption{
			trace.WithAttributes(sa, tr),
			trace.WithSpanKind(trace.SpanKindClient),
		}
	}
	// Errors from instrument creation only mean a misconfigured SDK; the
	// returned instruments are then no-ops.
	in.links, _ = m.Int64UpDownCounter("relink.link.connections", metric.WithUnit("{connection}"),
		metric.WithDescription("Running links by relink.link.state (connecting, ready, transient-failure)."))
	in.attempts, _ = m.Int64Counter("relink.link.attempts", metric.WithUnit("{attempt}"),
		metric.WithDescription("Dials made by links, first connections and reconnects, by relink.outcome."))
	return in
}

func (in *linkInstruments) stateChanged(ctx context.Context, from, to LinkState) {
	if from > LinkIdle && from < LinkShutdown {
		in.links.Add(ctx, -1, in.byState[from])
	}
	if to > LinkIdle && to < LinkShutdown {
		in.links.Add(ctx, 1, in.byState[to])
	}
}

func (in *linkInstruments) attempt(ctx context.Context, idx int, o attemptOutcome) {
	in.attempts.Add(ctx, 1, in.byAddr[idx][o])
}
