package sip

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/relinkgo/relink/internal/neterr"
)

// ScopeName is the instrumentation scope of this package's metrics and spans.
const ScopeName = "github.com/relinkgo/relink/sip"

// Metric names (see the package doc).
const (
	metricRegistrations = "relink.sip.registrations"
	metricDuration      = "relink.sip.register.duration"
	metricResponses     = "relink.sip.responses"
	metricRecoveries    = "relink.sip.recoveries"
	metricFlowDeaths    = "relink.sip.flow.failures"
)

// Attribute keys.
const (
	attrState       = attribute.Key("relink.sip.state")
	attrStatusClass = attribute.Key("sip.response.status_class")
	attrServer      = attribute.Key("server.address")
	attrTransport   = attribute.Key("network.transport")
	attrErrorType   = attribute.Key("error.type")
)

// instruments are shared by the trunks of a Fleet (or owned by one Trunk).
type instruments struct {
	registrations metric.Int64UpDownCounter
	duration      metric.Float64Histogram
	responses     metric.Int64Counter
	recoveries    metric.Int64Counter
	flowDeaths    metric.Int64Counter
	tracer        trace.Tracer
}

// stateOpts are the attribute sets of registrations by state, built once.
var stateOpts = func() (o [numStates]metric.AddOption) {
	for s := range numStates {
		o[s] = metric.WithAttributeSet(attribute.NewSet(attrState.String(TrunkState(s).String())))
	}
	return o
}()

func newInstruments(mp metric.MeterProvider, tp trace.TracerProvider) *instruments {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	m := mp.Meter(ScopeName)
	in := &instruments{tracer: tp.Tracer(ScopeName)}
	// Errors from instrument creation leave a no-op instrument (the API
	// guarantees a usable value); there is nothing better to do with them.
	in.registrations, _ = m.Int64UpDownCounter(metricRegistrations,
		metric.WithUnit("{registration}"),
		metric.WithDescription("Trunks running, by registration state."))
	in.duration, _ = m.Float64Histogram(metricDuration,
		metric.WithUnit("s"),
		metric.WithDescription("Round trip of each REGISTER transaction, to its final response."),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 32))
	in.responses, _ = m.Int64Counter(metricResponses,
		metric.WithUnit("{response}"),
		metric.WithDescription("Final responses to REGISTER by status class, and transactions that got none (error.type)."))
	in.recoveries, _ = m.Int64Counter(metricRecoveries,
		metric.WithUnit("{recovery}"),
		metric.WithDescription("Registrations regained after being lost (dead flow, failed refresh)."))
	in.flowDeaths, _ = m.Int64Counter(metricFlowDeaths,
		metric.WithUnit("{flow}"),
		metric.WithDescription("Flows a trunk was using that were declared dead."))
	return in
}

// Response classes for targetAttrs.class.
const (
	class1xx = iota
	class2xx
	class3xx
	class4xx
	class5xx
	class6xx
	classTimeout
	numClasses
)

var classNames = [numClasses]string{"1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "timeout"}

// targetAttrs are the attribute sets of one registrar, built once per trunk
// and registrar: per-call WithAttributes would cost ~220 ns and 3
// allocations even with a no-op provider.
type targetAttrs struct {
	base      []attribute.KeyValue
	server    metric.MeasurementOption
	class     [numClasses]metric.AddOption
	spanAttrs []attribute.KeyValue
}

func newTargetAttrs(server, transport string) *targetAttrs {
	base := []attribute.KeyValue{attrServer.String(server), attrTransport.String(transport)}
	a := &targetAttrs{
		base:      base,
		server:    metric.WithAttributeSet(attribute.NewSet(base...)),
		spanAttrs: base,
	}
	for c := range numClasses {
		kv := append(append([]attribute.KeyValue{}, base...), attrStatusClass.String(classNames[c]))
		if c >= classTimeout {
			kv[len(kv)-1] = attrErrorType.String(classNames[c])
		}
		a.class[c] = metric.WithAttributeSet(attribute.NewSet(kv...))
	}
	return a
}

// transportError is the attribute set of a transaction that failed without
// a response, error.type from the classifier conn uses too. Built per call:
// it is the error path.
func (a *targetAttrs) transportError(err error) metric.AddOption {
	kv := append(append([]attribute.KeyValue{}, a.base...), attrErrorType.String(neterr.Type(err)))
	return metric.WithAttributeSet(attribute.NewSet(kv...))
}

func (in *instruments) stateChanged(ctx context.Context, from, to TrunkState, running bool) {
	if !running {
		return
	}
	in.registrations.Add(ctx, -1, stateOpts[from])
	in.registrations.Add(ctx, 1, stateOpts[to])
}
