package conn

import (
	"context"
	"reflect"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ScopeName is the instrumentation scope of this package's metrics and
// spans.
const ScopeName = "github.com/relinkgo/relink/conn"

// instruments are a Conn's OpenTelemetry instruments, shared by every Conn
// with the same MeterProvider. They are used only when a probe is sent and
// when a connection ends, never per Read or Write.
//
//   - relink.conn.detection.duration (histogram, s): from the last inbound
//     byte to the moment the flow was declared dead, by error.type; recorded
//     only for Conns with a Prober (others do not track inbound bytes).
//   - relink.conn.probes (counter, {probe}): probes written.
//   - relink.conn.deaths (counter, {connection}): connections that ended
//     for another reason than Close, by error.type: unresponsive,
//     kernel_timeout, probe_error, eof, reset, _OTHER.
//
// All carry network.transport=tcp. The attribute sets are built once.
type instruments struct {
	detection metric.Float64Histogram
	probes    metric.Int64Counter
	deaths    metric.Int64Counter
}

var (
	attrTCP  = attribute.String("network.transport", "tcp")
	optTCP   = metric.WithAttributeSet(attribute.NewSet(attrTCP))
	addTCP   = []metric.AddOption{optTCP} // passed as addTCP...: no slice made per call
	optByWhy = func() (o [numReasons]metric.MeasurementOption) {
		for i, name := range reasonNames {
			o[i] = metric.WithAttributeSet(attribute.NewSet(attrTCP, attribute.String("error.type", name)))
		}
		return o
	}()
)

var instCache sync.Map // metric.MeterProvider → *instruments

// instrumentsFor returns the instruments of mp (nil: the global provider),
// creating them on first use.
func instrumentsFor(mp metric.MeterProvider) *instruments {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	cacheable := reflect.TypeOf(mp).Comparable()
	if cacheable {
		if in, ok := instCache.Load(mp); ok {
			return in.(*instruments)
		}
	}
	m := mp.Meter(ScopeName)
	in := &instruments{}
	// Errors only mean a misconfigured SDK; the instruments are then no-ops.
	in.detection, _ = m.Float64Histogram("relink.conn.detection.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from the last inbound byte to the flow being declared dead."),
		metric.WithExplicitBucketBoundaries(0.1, 0.25, 0.5, 1, 2, 2.5, 3, 4, 5, 7.5, 10, 12.5, 15, 17.5, 20, 30, 60, 120, 300, 900, 3600, 7200))
	in.probes, _ = m.Int64Counter("relink.conn.probes", metric.WithUnit("{probe}"),
		metric.WithDescription("Application probes written."))
	in.deaths, _ = m.Int64Counter("relink.conn.deaths", metric.WithUnit("{connection}"),
		metric.WithDescription("Connections that ended other than by Close, by error.type."))
	if cacheable {
		if prev, loaded := instCache.LoadOrStore(mp, in); loaded {
			return prev.(*instruments)
		}
	}
	return in
}

func (in *instruments) probeSent() {
	if in.probes != nil {
		in.probes.Add(context.Background(), 1, addTCP...)
	}
}

func (in *instruments) died(reason int, detection time.Duration, haveDetection bool) {
	if in.deaths != nil {
		in.deaths.Add(context.Background(), 1, optByWhy[reason])
	}
	if haveDetection && in.detection != nil {
		in.detection.Record(context.Background(), detection.Seconds(), optByWhy[reason])
	}
}
