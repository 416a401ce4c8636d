package backoff

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// observed returns the names of the gate's observable instruments that
// report a data point.
func observed(t *testing.T, reader *sdkmetric.ManualReader) map[string]bool {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				got[m.Name] = len(d.DataPoints) > 0
			case metricdata.Gauge[int64]:
				got[m.Name] = len(d.DataPoints) > 0
			case metricdata.Gauge[float64]:
				got[m.Name] = len(d.DataPoints) > 0
			}
		}
	}
	return got
}

// Close hands ErrClosed to the queued callers and to later ones, stops the
// timer (synctest fails on a timer left running into a leaked goroutine),
// unregisters the observable callback, and is idempotent.
func TestGateClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader(sdkmetric.WithTemporalitySelector(sdkmetric.DeltaTemporalitySelector))
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		g := NewGate(GateConfig{Destination: "reg.example:5060", Rate: 1, Burst: 1, MeterProvider: mp})
		if got := observed(t, reader); !got["relink.gate.in_flight"] || !got["relink.gate.state"] {
			t.Fatalf("an open gate's observable instruments: %v", got)
		}
		held, _ := g.Acquire(t.Context()) // takes the token: the next ones queue
		errs := make(chan error, 3)
		for range 3 {
			go func() {
				_, err := g.Acquire(t.Context())
				errs <- err
			}()
		}
		synctest.Wait()
		if q := g.Stats().Queued; q != 3 {
			t.Fatalf("%d queued, want 3", q)
		}
		if err := g.Close(); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := <-errs; !errors.Is(err, ErrClosed) || errors.Is(err, net.ErrClosed) {
				t.Fatalf("queued Acquire after Close: %v, want ErrClosed (not net.ErrClosed)", err)
			}
		}
		if _, err := g.AcquirePriority(t.Context()); !errors.Is(err, ErrClosed) {
			t.Fatalf("Acquire after Close: %v", err)
		}
		held.Done(Success) // a permit granted before Close still reports
		if err := g.Close(); err != nil {
			t.Fatal("second Close:", err)
		}
		if got := observed(t, reader); got["relink.gate.in_flight"] || got["relink.gate.state"] || got["relink.gate.rate"] {
			t.Fatalf("a closed gate's observable instruments still report: %v", got)
		}
		if s := g.Stats(); s.Queued != 0 || s.InFlight != 0 || s.Admitted != 1 {
			t.Fatalf("after Close: %+v", s)
		}
		var nilGate *Gate
		if err := nilGate.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

// WaitForStateChange wakes on each change; the events have the shared
// shape: Destination, From, To, At, and Until for a pause.
func TestGateWaitForStateChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var events []GateStateChange
		g := NewGate(GateConfig{Destination: "reg.example:5060", OnStateChange: func(e GateStateChange) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		}})
		defer g.Close()
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		if g.WaitForStateChange(ctx, GateOpen) {
			t.Fatal("WaitForStateChange returned true with no change")
		}
		cancel()
		woke := make(chan GateState, 1)
		go func() {
			g.WaitForStateChange(t.Context(), GateOpen)
			woke <- g.State()
		}()
		synctest.Wait()
		start := time.Now()
		p, _ := g.Acquire(t.Context())
		p.Done(Unreachable)
		if s := <-woke; s != GateClosed {
			t.Fatalf("woke in state %v, want closed", s)
		}
		if !g.WaitForStateChange(t.Context(), GateOpen) {
			t.Fatal("WaitForStateChange from a state left already: want true at once")
		}
		scout, _ := g.Acquire(t.Context()) // after the scout delay
		scout.Done(Overload(time.Second))  // answers: reopens, then pauses
		if !g.WaitForStateChange(t.Context(), GatePaused) || g.State() != GateOpen {
			t.Fatalf("after the pause: %v, want open", g.State())
		}
		mu.Lock()
		defer mu.Unlock()
		want := []struct{ from, to GateState }{{GateOpen, GateClosed}, {GateClosed, GateOpen}, {GateOpen, GatePaused}}
		if len(events) < len(want) {
			t.Fatalf("events %+v", events)
		}
		for i, w := range want {
			e := events[i]
			if e.Destination != "reg.example:5060" || e.From != w.from || e.To != w.to || e.Err != nil || e.At.Before(start) {
				t.Fatalf("event %d: %+v, want %v → %v", i, e, w.from, w.to)
			}
		}
		if e := events[2]; e.Until.Sub(e.At) < time.Second || e.Until.Sub(e.At) > 1200*time.Millisecond {
			t.Fatalf("pause event: until %v, at %v", e.Until, e.At)
		}
		if e := events[0]; !e.Until.IsZero() {
			t.Fatalf("close event with an Until: %+v", e)
		}
	})
}

// Outcomes are constants or values: Done allocates nothing for them.
func TestOutcomeDoneAllocs(t *testing.T) {
	g := NewGate(GateConfig{Rate: -1})
	defer g.Close()
	ctx := context.Background()
	for _, o := range []Outcome{Success, ClientFailure, Overload(0)} {
		allocs := testing.AllocsPerRun(100, func() {
			p, _ := g.Acquire(ctx)
			p.Done(o)
		})
		p, _ := g.Acquire(ctx)
		doneAllocs := testing.AllocsPerRun(100, func() { p.Done(o) })
		p.Done(o)
		if doneAllocs != 0 {
			t.Errorf("Done(%v): %v allocations, want 0 (Acquire+Done: %v)", o, doneAllocs, allocs)
		}
	}
	o := Unreachable // a variable of the constant's type holds any outcome
	if o.since() != (time.Time{}) {
		t.Fatal("Unreachable carries a time")
	}
	o = UnreachableSince(time.Unix(1000, 5))
	if o.since() != time.Unix(1000, 5) || o.kind() != Unreachable || o.RetryAfter() != 0 {
		t.Fatalf("UnreachableSince: since %v kind %v", o.since(), o.kind())
	}
	if UnreachableSince(time.Time{}) != Unreachable {
		t.Fatal("UnreachableSince(zero) is not Unreachable")
	}
	if ra := Overload(-time.Second).RetryAfter(); ra != 0 {
		t.Fatalf("Overload(-1s).RetryAfter() = %v", ra)
	}
	if ra := Overload(time.Duration(1 << 62)).RetryAfter(); ra <= 0 {
		t.Fatalf("a huge Retry-After wrapped to %v", ra)
	}
}

// In GateConfig zero is the default and a negative value turns a field off.
func TestGateConfigZeroAndNegative(t *testing.T) {
	z := GateConfig{}.resolve()
	if z.MaxInFlight != DefaultMaxInFlight || z.InitialRate != DefaultInitialRate || z.MinRate != DefaultMinRate ||
		z.ScoutBase != DefaultScoutBase || z.ScoutMax != DefaultScoutMax || z.MaxPushBack != DefaultMaxPushBack || z.Rate != 0 {
		t.Fatalf("zero config resolved to %+v", z)
	}
	n := GateConfig{Rate: -1, MaxInFlight: -1, InitialRate: -1, MinRate: -1, ScoutBase: -1, ScoutMax: -1, MaxPushBack: -1}.resolve()
	if n.MaxInFlight >= 0 || n.MinRate != minConfigurableRate || n.ScoutBase != MinDelay ||
		n.ScoutMax != time.Hour || n.MaxPushBack != MaxDelay || n.InitialRate >= 0 {
		t.Fatalf("negative config resolved to %+v", n)
	}
	if p := newPacer(n.Rate, n.InitialRate, n.MinRate, time.Now()); !p.unlimited() {
		t.Fatal("negative Rate: not unlimited")
	}
	for _, c := range []struct {
		depth int
		pace  float64
		burst float64
		slots int
	}{
		{0, 190, 3, 19}, // the default: pace/50, and the 100 ms guard
		{0, 5, 1, 0},    // under 10/s: no guard
		{4, 190, 4, 0},  // a configured depth, no guard
		{-1, 190, 1, 0}, // bursts off
	} {
		b := bucket{depth: c.depth}
		if got, slots := b.burst(c.pace), b.slots(c.pace); got != c.burst || slots != c.slots {
			t.Errorf("Burst %d at %v/s: depth %v, guard %d; want %v, %d", c.depth, c.pace, got, slots, c.burst, c.slots)
		}
	}
}
