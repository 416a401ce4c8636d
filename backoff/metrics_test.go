package backoff

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

func TestGateMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		g := NewGate(GateConfig{Destination: "reg.example:5060", Rate: 10, Burst: 1, MeterProvider: mp})
		held, _ := g.Acquire(t.Context())
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		if _, err := g.Acquire(ctx); err == nil {
			t.Fatal("second Acquire within 50 ms at 10/s with burst 1 succeeded")
		}
		p, _ := g.Acquire(t.Context()) // waits the other ~50 ms of the token
		p.Done(Overload(0))
		held.Done(Success)

		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		got := map[string]metricdata.Aggregation{}
		for _, sm := range rm.ScopeMetrics {
			if sm.Scope.Name != ScopeName {
				t.Errorf("scope %q", sm.Scope.Name)
			}
			for _, m := range sm.Metrics {
				got[m.Name] = m.Data
			}
		}
		for _, name := range []string{"relink.gate.wait.duration", "relink.gate.shed", "relink.gate.outcomes",
			"relink.gate.admitted", "relink.gate.in_flight", "relink.gate.queue.length", "relink.gate.rate", "relink.gate.state"} {
			if got[name] == nil {
				t.Errorf("instrument %s not reported", name)
			}
		}
		if h, ok := got["relink.gate.wait.duration"].(metricdata.Histogram[float64]); !ok || h.DataPoints[0].Count != 2 {
			t.Errorf("wait histogram: %+v", got["relink.gate.wait.duration"])
		} else if mx, _ := h.DataPoints[0].Max.Value(); mx < 0.045 {
			t.Errorf("longest wait %.3f s, want about 0.05 s (the rest of the 100 ms token)", mx)
		}
		if s, ok := got["relink.gate.shed"].(metricdata.Sum[int64]); !ok || s.DataPoints[0].Value != 1 {
			t.Errorf("shed: %+v", got["relink.gate.shed"])
		}
		if s, ok := got["relink.gate.admitted"].(metricdata.Sum[int64]); !ok || s.DataPoints[0].Value != 2 {
			t.Errorf("admitted: %+v", got["relink.gate.admitted"])
		}
		if s, ok := got["relink.gate.outcomes"].(metricdata.Sum[int64]); !ok || len(s.DataPoints) != 2 {
			t.Errorf("outcomes by kind: %+v", got["relink.gate.outcomes"])
		}
		for _, dp := range got["relink.gate.in_flight"].(metricdata.Sum[int64]).DataPoints {
			if v, _ := dp.Attributes.Value("server.address"); v.AsString() != "reg.example:5060" || dp.Value != 0 {
				t.Errorf("in_flight point %+v", dp)
			}
		}
	})
}

func BenchmarkGateAcquireDone(b *testing.B) {
	g := NewGate(GateConfig{Rate: -1})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		p, _ := g.Acquire(ctx)
		p.Done(Success)
	}
}
