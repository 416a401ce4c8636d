package main

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/relinkgo/relink/internal/netns"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A small run of each method: every flow is detected, by ErrUnresponsive,
// within the bound plus scheduling slack, and everything is torn down.
func TestRunDetectsEveryFlow(t *testing.T) {
	for _, method := range []string{"proxy", "netns"} {
		t.Run(method, func(t *testing.T) {
			if method == "netns" {
				netns.Require(t)
			}
			o := options{flows: 50, interval: 200 * time.Millisecond, timeout: 200 * time.Millisecond,
				method: method, settle: 500 * time.Millisecond}
			r, err := run(context.Background(), o, t.Logf)
			if err != nil {
				t.Fatal(err)
			}
			if r.Method != method || r.Flows != 50 || r.BoundS != 0.4 {
				t.Fatalf("result %+v", r.Result)
			}
			if r.Detected != r.Flows {
				t.Fatalf("detected %d of %d; other ends: %v", r.Detected, r.Flows, r.otherEnds)
			}
			// The probe promises detection at the bound after the last
			// inbound byte; allow for a loaded CI machine.
			if r.P50S < 0.4 || r.P99S > 0.4+0.3 || r.MaxS < r.P99S || r.P99S < r.P50S {
				t.Fatalf("p50 %.3f s, p99 %.3f s, max %.3f s; bound 0.4 s", r.P50S, r.P99S, r.MaxS)
			}
			for _, d := range r.fromCut {
				if d > 400*time.Millisecond+300*time.Millisecond {
					t.Fatalf("a flow took %v from the cut", d)
				}
			}
			t.Logf("%s: p50 %.1f ms, p99 %.1f ms, max %.1f ms", method, r.P50S*1e3, r.P99S*1e3, r.MaxS*1e3)
		})
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50}, {99, 99}, {100, 100}, {0, 1}, {1, 1}} {
		if got := pct(d, c.p); got != c.want {
			t.Errorf("pct(%v) = %v, want %v", c.p, got, c.want)
		}
	}
	if pct(nil, 50) != 0 {
		t.Error("pct of nothing")
	}
	if got := pct([]time.Duration{7}, 99); got != 7 {
		t.Errorf("pct of one = %v", got)
	}
}
