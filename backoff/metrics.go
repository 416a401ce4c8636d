package backoff

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ScopeName is the instrumentation scope of this package's metrics.
const ScopeName = "github.com/relinkgo/relink/backoff"

// gateInstruments holds a Gate's OpenTelemetry instruments. Attribute sets
// are built once, so recording costs no allocation with a no-op provider.
type gateInstruments struct {
	wait     metric.Float64Histogram
	shedC    metric.Int64Counter
	outcomes metric.Int64Counter
	attrs    metric.MeasurementOption
	byKind   [4]metric.MeasurementOption
	reg      metric.Registration // the observable callback; nil if none
}

func newGateInstruments(g *Gate) *gateInstruments {
	mp := g.cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(ScopeName)
	base := []attribute.KeyValue{attribute.String("server.address", g.cfg.Destination)}
	in := &gateInstruments{attrs: metric.WithAttributeSet(attribute.NewSet(base...))}
	for k, name := range []string{"success", "client_failure", "unreachable", "overload"} {
		in.byKind[k] = metric.WithAttributeSet(attribute.NewSet(append(base[:1:1], attribute.String("relink.outcome", name))...))
	}
	// Errors from instrument creation only mean a misconfigured SDK; the
	// returned instruments are then no-ops, which is what we want.
	in.wait, _ = m.Float64Histogram("relink.gate.wait.duration", metric.WithUnit("s"),
		metric.WithDescription("Time an attempt waited in the gate before admission."),
		metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
	in.shedC, _ = m.Int64Counter("relink.gate.shed", metric.WithUnit("{attempt}"),
		metric.WithDescription("Acquire calls that gave up before admission."))
	in.outcomes, _ = m.Int64Counter("relink.gate.outcomes", metric.WithUnit("{attempt}"),
		metric.WithDescription("Outcomes reported by admitted attempts, by relink.outcome."))
	admitted, _ := m.Int64ObservableCounter("relink.gate.admitted", metric.WithUnit("{attempt}"),
		metric.WithDescription("Attempts admitted by the gate."))
	inFlight, _ := m.Int64ObservableUpDownCounter("relink.gate.in_flight", metric.WithUnit("{attempt}"),
		metric.WithDescription("Admitted attempts that have not reported an outcome."))
	queued, _ := m.Int64ObservableUpDownCounter("relink.gate.queue.length", metric.WithUnit("{attempt}"),
		metric.WithDescription("Attempts waiting for admission."))
	rate, _ := m.Float64ObservableGauge("relink.gate.rate", metric.WithUnit("{attempt}/s"),
		metric.WithDescription("The gate's current pace; learned when no rate is configured."))
	state, _ := m.Int64ObservableGauge("relink.gate.state",
		metric.WithDescription("0 open, 1 closed (scouting), 2 paused (push-back)."))
	if admitted != nil {
		// The callback keeps the gate reachable through the provider
		// until Close unregisters it.
		in.reg, _ = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			s := g.Stats()
			o.ObserveInt64(admitted, int64(s.Admitted), in.attrs)
			o.ObserveInt64(inFlight, int64(s.InFlight), in.attrs)
			o.ObserveInt64(queued, int64(s.Queued), in.attrs)
			if s.Rate < maxConfigurableRate {
				o.ObserveFloat64(rate, s.Rate, in.attrs)
			}
			o.ObserveInt64(state, int64(s.State), in.attrs)
			return nil
		}, admitted, inFlight, queued, rate, state)
	}
	return in
}

func (in *gateInstruments) waited(ctx context.Context, d time.Duration) {
	in.wait.Record(ctx, d.Seconds(), in.attrs)
}

func (in *gateInstruments) shed(ctx context.Context) { in.shedC.Add(ctx, 1, in.attrs) }

// outcome counts an outcome reported through Permit.Done, which has no ctx.
//
//nolint:contextcheck // see above
func (in *gateInstruments) outcome(o Outcome) {
	in.outcomes.Add(context.Background(), 1, in.byKind[o.kind()])
}

// close unregisters the observable callback: a closed gate's instruments
// stop reporting, and the provider no longer holds the gate.
func (in *gateInstruments) close() {
	if in.reg != nil {
		_ = in.reg.Unregister()
	}
}
