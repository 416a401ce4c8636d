package sip

import (
	"context"
	"net"
	"testing"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/relinkgo/relink/internal/registrar"
)

// TestTelemetry: registrations by state, REGISTER round trips, responses by
// class, recoveries, dead flows, and one span per registration attempt.
func TestTelemetry(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())

	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	reg.SetFault(registrar.Fault{Code: 503, Times: 1})
	tr, _ := trunkOn(t, TrunkConfig{MeterProvider: mp, TracerProvider: tp,
		KeepAlive: 100 * time.Millisecond, KeepAliveTimeout: 200 * time.Millisecond}, reg.URI())
	stop := running(t, tr)
	waitState(t, tr, Registered, 10*time.Second)
	reg.CloseConnections() // the flow dies; the trunk recovers
	waitState(t, tr, Registering, 2*time.Second)
	waitState(t, tr, Registered, 5*time.Second)

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			got[m.Name] = m.Data
		}
	}
	byAttr := func(name string, key attribute.Key) map[string]int64 {
		out := map[string]int64{}
		s, ok := got[name].(metricdata.Sum[int64])
		if !ok {
			t.Fatalf("%s: %T", name, got[name])
		}
		for _, dp := range s.DataPoints {
			v, _ := dp.Attributes.Value(key)
			out[v.String()] += dp.Value
		}
		return out
	}
	if st := byAttr(metricRegistrations, attrState); st["registered"] != 1 || st["backoff"] != 0 || st["registering"] != 0 {
		t.Errorf("registrations by state %v", st)
	}
	cl := byAttr(metricResponses, attrStatusClass)
	if cl["5xx"] != 1 || cl["4xx"] != 1 || cl["2xx"] != 2 {
		t.Errorf("responses by class %v, want one 503, one 401, two 200", cl)
	}
	if r := byAttr(metricRecoveries, attrServer); r[reg.Addr()] != 1 {
		t.Errorf("recoveries %v", r)
	}
	if r := byAttr(metricFlowDeaths, attrServer); sum(r) != 1 {
		t.Errorf("flow failures %v", r)
	}
	h := got[metricDuration].(metricdata.Histogram[float64])
	if len(h.DataPoints) != 1 || h.DataPoints[0].Count != 4 {
		t.Errorf("duration histogram %+v, want 4 round trips", h.DataPoints)
	} else if v, _ := h.DataPoints[0].Attributes.Value(attrServer); v.AsString() != reg.Addr() {
		t.Errorf("server.address %q", v.AsString())
	}
	stop()
	var attempts int
	for _, s := range spans.Ended() {
		if s.Name() == "sip.register" {
			attempts++
		}
	}
	if attempts != 3 {
		t.Errorf("%d register spans, want 3 attempts (503, 401+200, 200)", attempts)
	}
}

func sum(m map[string]int64) (n int64) {
	for _, v := range m {
		n += v
	}
	return n
}

// TestReadFilterAllocs: the read filter sipgo calls on every read does not
// allocate.
func TestReadFilterAllocs(t *testing.T) {
	m := &flowMonitor{watchReads: true}
	m.init()
	l := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5060}
	r := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	k, _ := keyOf(l, r)
	m.byKey[k] = &flow{}
	props := sipmsg.TransportReadProps{Transport: "TCP", LocalAddr: l, RemoteAddr: r}
	data := []byte("\r\n")
	if n := testing.AllocsPerRun(1000, func() { m.filter(props, data) }); n != 0 {
		t.Errorf("%v allocations per read", n)
	}
}

func BenchmarkReadFilter(b *testing.B) {
	m := &flowMonitor{watchReads: true}
	m.init()
	l := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5060}
	r := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	k, _ := keyOf(l, r)
	m.byKey[k] = &flow{}
	props := sipmsg.TransportReadProps{Transport: "TCP", LocalAddr: l, RemoteAddr: r}
	data := []byte("\r\n")
	b.ReportAllocs()
	for b.Loop() {
		m.filter(props, data)
	}
}
