package conn_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/relinkgo/relink/conn"
)

func TestMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer mp.Shutdown(context.Background())
		cfg := conn.Config{Probe: conn.CRLF, MeterProvider: mp}

		// One silent peer (unresponsive after 1 probe), one that closes (eof),
		// one closed by us (not a death).
		a, b := pipe(t)
		p := startCorePeer(b, false, false)
		dead := conn.Wrap(a, cfg)
		within(t, dead.Done(), time.Hour, "the silent peer's death")
		p.close()

		a, b = pipe(t)
		eof := conn.Wrap(a, cfg)
		r := startCoreReader(eof)
		b.Close()
		within(t, r.done, time.Hour, "the reader's EOF")
		eof.Close()

		a, b = pipe(t)
		conn.Wrap(a, cfg).Close()
		b.Close()
		synctest.Wait() // each death is recorded just after its Done closes

		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		got := map[string]metricdata.Aggregation{}
		for _, sm := range rm.ScopeMetrics {
			if sm.Scope.Name != conn.ScopeName {
				t.Errorf("scope %q", sm.Scope.Name)
			}
			for _, m := range sm.Metrics {
				got[m.Name] = m.Data
			}
		}
		probes := got["relink.conn.probes"].(metricdata.Sum[int64])
		if len(probes.DataPoints) != 1 || probes.DataPoints[0].Value != 1 {
			t.Errorf("probes = %+v, want 1", probes.DataPoints)
		}
		deaths := map[string]int64{}
		for _, dp := range got["relink.conn.deaths"].(metricdata.Sum[int64]).DataPoints {
			v, _ := dp.Attributes.Value(attribute.Key("error.type"))
			tr, _ := dp.Attributes.Value(attribute.Key("network.transport"))
			if tr.AsString() != "tcp" {
				t.Errorf("network.transport = %q", tr.AsString())
			}
			deaths[v.AsString()] = dp.Value
		}
		if len(deaths) != 2 || deaths["unresponsive"] != 1 || deaths["eof"] != 1 {
			t.Errorf("deaths = %v, want unresponsive:1 eof:1 (Close is not a death)", deaths)
		}
		hist := got["relink.conn.detection.duration"].(metricdata.Histogram[float64])
		for _, dp := range hist.DataPoints {
			v, _ := dp.Attributes.Value(attribute.Key("error.type"))
			if v.AsString() == "unresponsive" && (dp.Count != 1 || dp.Sum != (conn.DefaultProbeInterval+conn.DefaultProbeTimeout).Seconds()) {
				t.Errorf("detection = count %d sum %v s, want 1 × 15 s", dp.Count, dp.Sum)
			}
		}
		if len(hist.DataPoints) != 2 {
			t.Errorf("detection histogram has %d series, want 2", len(hist.DataPoints))
		}
	})
}
