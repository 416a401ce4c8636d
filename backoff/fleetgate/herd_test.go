package fleetgate

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/ratelimit"
	"github.com/relinkgo/relink/internal/redistest"
)

// herdResult is one herd's figures.
type herdResult struct {
	ratio, rejected float64 // × N/C; rejections ÷ N
	peak            float64 // the most admissions the server saw in 100 ms ÷ (C/10)
	calls           float64 // Redis calls per admission
	failed          int64   // Redis calls that failed (timed out)
	slowest         time.Duration
}

// runHerd recovers n clients spread over procs gates (one per simulated
// process, each with its own Redis client and member when s is set; local
// gates when s is nil) against one server admitting c per 100 ms window,
// whose rejections carry Retry-After: 1 s; rtt is each attempt's round trip.
func runHerd(t *testing.T, s *redistest.Server, procs, n int, c float64, rtt time.Duration) herdResult {
	t.Helper()
	srv := ratelimit.NewWindow(100*time.Millisecond, c)
	var mu sync.Mutex
	var seen []time.Time
	var rej atomic.Int64
	// register is one REGISTER's round trip: true if the server took it.
	register := func() bool {
		time.Sleep(rtt / 2)
		mu.Lock()
		now := time.Now()
		ok := srv.Admit(now)
		seen = append(seen, now)
		mu.Unlock()
		time.Sleep(rtt / 2)
		return ok
	}
	var fleets []*timedFleet
	var wg sync.WaitGroup
	start := time.Now()
	for i := range procs {
		cfg := backoff.GateConfig{Destination: "registrar.test:5060"}
		if s != nil {
			f, _ := newFleet(t, s, fmt.Sprintf("p%d", i), Config{})
			fleets = append(fleets, f)
			cfg.Fleet = f
		}
		g := backoff.NewGate(cfg)
		defer g.Close()
		for range n / procs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for done := false; !done; {
					p, err := g.Acquire(t.Context())
					if err != nil {
						t.Error(err)
						return
					}
					outcome := backoff.Overload(time.Second) // the 503's Retry-After
					if done = register(); done {
						outcome = backoff.Success
					} else {
						rej.Add(1)
					}
					p.Done(outcome)
				}
			}()
		}
	}
	if s != nil && os.Getenv("RELINK_FLEET_TRACE") == "1" {
		stop := make(chan struct{})
		defer close(stop)
		_, c := newFleet(t, s, "trace", Config{})
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				h := c.HGetAll(t.Context(), DefaultPrefix+"{registrar.test:5060}:pace").Val()
				mu.Lock()
				k := len(seen)
				mu.Unlock()
				t.Logf("t=%5.2f attempts %4d rejected %3d pace %v", time.Since(start).Seconds(), k, rej.Load(), h)
			}
		}()
	}
	wg.Wait()
	r := herdResult{
		ratio:    time.Since(start).Seconds() / (float64(n) / c),
		rejected: float64(rej.Load()) / float64(n),
		peak:     float64(peak(seen, 100*time.Millisecond)) / (c / 10),
	}
	var calls int64
	for _, f := range fleets {
		calls += f.calls.Load()
		r.failed += f.failed.Load()
		r.slowest = max(r.slowest, time.Duration(f.slowest.Load()))
	}
	r.calls = float64(calls) / float64(n+int(rej.Load()))
	return r
}

// A fleet of adaptive gates (no Rate) learns the destination's capacity
// together: one pace, one pause per overshoot. RELINK_FLEET_CONTROL=1 also
// runs the same herd through local gates, for comparison.
func TestFleetLearnsCapacity(t *testing.T) {
	s := redistest.Start(t)
	procs, n, c := 10, 1000, 200.0
	if h := os.Getenv("RELINK_FLEET_HERD"); h != "" {
		if _, err := fmt.Sscanf(h, "%d,%d,%g", &procs, &n, &c); err != nil {
			t.Fatalf("RELINK_FLEET_HERD=%q: want procs,n,c", h)
		}
	}
	r := runHerd(t, s, procs, n, c, 5*time.Millisecond)
	t.Logf("shared: %d procs, N %d, C %v: %.2f × N/C, %.1f %% rejected, peak %.2f, %.2f calls per attempt (%d failed), slowest %v",
		procs, n, c, r.ratio, 100*r.rejected, r.peak, r.calls, r.failed, r.slowest)
	if os.Getenv("RELINK_FLEET_CONTROL") == "1" {
		l := runHerd(t, nil, procs, n, c, 5*time.Millisecond)
		t.Logf("local:  %d procs, N %d, C %v: %.2f × N/C, %.1f %% rejected, peak %.2f", procs, n, c, l.ratio, 100*l.rejected, l.peak)
	}
	// A fleet learns as one gate does, with one or two Retry-After pauses,
	// each 0.2 × N/C at N/C = 5 s: 1.38 measured on a quiet machine. The
	// bound is generous for a loaded CI machine under the race detector
	// (2.23 seen there); internal/bench/fleet measures the figure. (A CI
	// run read 5.47: the members' first calls timed out there, and each
	// admitted locally for a second at a share of a pace it never learned,
	// together twice the fleet pace; the fleet took the burst's 503 for its
	// capacity. A gate the store never answered now asks again in 100 ms.)
	if r.ratio > 2.8 || r.rejected > 0.03 || r.calls > 2 {
		t.Errorf("shared herd: %.2f × N/C, %.1f %% rejected, %.2f calls per attempt; want ≤ 2.8, ≤ 3 %%, ≤ 2",
			r.ratio, 100*r.rejected, r.calls)
	}
}
