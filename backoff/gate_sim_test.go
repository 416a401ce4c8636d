package backoff

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/relinkgo/relink/internal/ratelimit"
)

// limiter is a simulated server's admission: true admits one request now.
// ratelimit.Bucket (a token bucket) and ratelimit.Window (Kamailio's
// counters per window) are the two kinds.
type limiter interface{ Admit(now time.Time) bool }

// simRecovery runs n clients that each retry through a fresh adaptive gate
// against lim until admitted; rejections carry retryAfter. It returns the time
// all took and the rejections.
func simRecovery(t *testing.T, lim limiter, n int, rtt, retryAfter time.Duration) (time.Duration, int) {
	// A seeded source for the scouts' and pauses' jitter: the same figures
	// on every run.
	return simRecoveryGate(t, NewGate(GateConfig{rand: rand.New(rand.NewPCG(1, 2))}), lim, n, rtt, retryAfter)
}

// simRecoveryGate is simRecovery through g.
func simRecoveryGate(t *testing.T, g *Gate, lim limiter, n int, rtt, retryAfter time.Duration) (time.Duration, int) {
	var mu sync.Mutex
	rej := 0
	start := time.Now()
	var wg sync.WaitGroup
	if os.Getenv("RELINK_SIM_TRACE") != "" {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			tk := time.NewTicker(250 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tk.C:
					s := g.Stats()
					mu.Lock()
					r := rej
					mu.Unlock()
					t.Logf("t=%5.2f %-7v pace %6.1f ok %5d rej %3d queued %5d", time.Since(start).Seconds(), s.State, s.Rate, s.Succeeded, r, s.Queued)
				}
			}
		}()
	}
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				p, err := g.Acquire(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				time.Sleep(rtt / 2)
				mu.Lock()
				ok := lim.Admit(time.Now())
				if !ok {
					rej++
				}
				mu.Unlock()
				time.Sleep(rtt / 2)
				if ok {
					p.Done(Success)
					return
				}
				p.Done(Overload(retryAfter))
			}
		}()
	}
	wg.Wait()
	return time.Since(start), rej
}

// TestGateLearnsCapacityWithRetryAfter runs a herd of N = 10·C clients (N/C =
// 10 s) through a gate that knows nothing, against servers of several
// capacities, admission models and round trips, whose 503s carry Retry-After:
// 1 s (each pauses the whole gate). It bounds the recovery for every case,
// and more tightly for the servers that limit like the Kamailio
// configuration of the integration tests (counters per 100 ms window) or with
// a small burst.
//
// RELINK_SIM_C=c runs one capacity; RELINK_SIM_TRACE=1 logs the gate every
// 250 ms (virtual time). The "RESULT" lines give the figures.
func TestGateLearnsCapacityWithRetryAfter(t *testing.T) {
	cs := []float64{50, 100, 200, 400, 1000}
	if os.Getenv("RELINK_SIM_C") != "" {
		c, err := strconv.ParseFloat(os.Getenv("RELINK_SIM_C"), 64)
		if err != nil || !(c >= 1) {
			t.Fatalf("RELINK_SIM_C=%q: want a capacity ≥ 1", os.Getenv("RELINK_SIM_C"))
		}
		cs = []float64{c}
	}
	for _, c := range cs {
		models := []struct {
			name  string
			tight bool // limits like Kamailio's 100 ms windows, or a small burst
			mk    func() limiter
		}{
			{"window-100ms", true, func() limiter { return ratelimit.NewWindow(100*time.Millisecond, c) }},
			{"bucket-20ms", true, func() limiter { return ratelimit.NewBucket(c, math.Max(1, c/50)) }},
			{"bucket-100ms", false, func() limiter { return ratelimit.NewBucket(c, math.Max(1, c/10)) }},
			{"window-1s", false, func() limiter { return ratelimit.NewWindow(time.Second, c) }},
		}
		for _, m := range models {
			for _, rtt := range []time.Duration{time.Millisecond, 20 * time.Millisecond, 80 * time.Millisecond} {
				t.Run(fmt.Sprintf("C=%v/%s/rtt=%v", c, m.name, rtt), func(t *testing.T) {
					synctest.Test(t, func(t *testing.T) {
						n := int(10 * c)
						d, rej := simRecovery(t, m.mk(), n, rtt, time.Second)
						ratio := d.Seconds() / 10
						t.Logf("RESULT C=%-5v %-13s rtt=%-5v ratio %.3f rejections %d", c, m.name, rtt, ratio, rej)
						// Before one cut per overshoot, a 20 ms round trip
						// cut the pace once per attempt in flight: 2–13 ×.
						limit, rejLimit := 1.75, 0.25
						if m.tight && rtt <= 20*time.Millisecond {
							limit, rejLimit = 1.6, 0.05
						}
						if ratio > limit {
							t.Errorf("recovery took %.2f × N/C, want ≤ %.2f", ratio, limit)
						}
						// Attempts in flight when a 503 comes back are
						// rejected too: up to pace × round trip per overshoot.
						if frac := float64(rej) / float64(n); frac > rejLimit {
							t.Errorf("%d rejections = %.1f %% of N, want ≤ %.0f %%", rej, 100*frac, 100*rejLimit)
						}
					})
				})
			}
		}
	}
}

// Told the rate, the gate paces at 95 % of it and never probes past that; a
// lone Retry-After rejection pauses it without a cut (timing jitter at a
// server that counts per window); a second within 10 s cuts.
func TestGateConfiguredRateForgivesOneRejection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Rate: 200})
		attempt := func(o Outcome) {
			t.Helper()
			p, err := g.Acquire(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			p.Done(o)
		}
		for range 400 { // 2 s at the pace: time for probes, were there any
			attempt(Success)
		}
		if r := g.Stats().Rate; r != 190 {
			t.Fatalf("pace %v after 2 s, want 190 (95 %% of Rate, never more)", r)
		}
		attempt(Overload(time.Second))
		st := g.Stats()
		if st.Rate != 190 || st.State != GatePaused {
			t.Fatalf("after one 503: pace %v state %v, want 190 and paused", st.Rate, st.State)
		}
		start := time.Now()
		attempt(Success)
		if d := time.Since(start); d < time.Second {
			t.Fatalf("admitted %v after the 503, want the 1 s Retry-After", d)
		}
		for range 100 {
			attempt(Success)
		}
		attempt(Overload(time.Second))
		if r := g.Stats().Rate; r >= 190 {
			t.Fatalf("pace %v after a second 503 within 10 s, want a cut", r)
		}
	})
}

// No 100 ms holds more than pace × 100 ms admissions, not even the first,
// when the token bucket starts full (without the guard: 3 + 19 = 22 in the
// first 100 ms at 190/s, which a server counting 20 per 100 ms rejects).
func TestGateSmoothsEvery100ms(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Rate: 200}) // paced at 190/s: 19 per 100 ms
		var mu sync.Mutex
		var at []time.Duration
		start := time.Now()
		var wg sync.WaitGroup
		for range 200 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := g.Acquire(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				at = append(at, time.Since(start))
				mu.Unlock()
				p.Done(Success)
			}()
		}
		wg.Wait()
		slices.Sort(at)
		for i := range at {
			j := sort.Search(len(at), func(j int) bool { return at[j] >= at[i]+100*time.Millisecond })
			if n := j - i; n > 19 {
				t.Fatalf("%d admissions in the 100 ms from %v, want ≤ 19", n, at[i])
			}
		}
	})
}

// TestGateSweep (RELINK_SIM_SWEEP=1) sweeps C from 100 to 380/s in steps of
// 20 against three admission models, each from several phases of the
// server's windows, and prints the mean and worst recovery: the README's
// table of learning C from nothing.
func TestGateSweep(t *testing.T) {
	if os.Getenv("RELINK_SIM_SWEEP") == "" {
		t.Skip("RELINK_SIM_SWEEP=1 runs the sweep")
	}
	models := []struct {
		name string
		mk   func(c float64) limiter
	}{
		{"window-100ms", func(c float64) limiter { return ratelimit.NewWindow(100*time.Millisecond, c) }},
		{"bucket-20ms", func(c float64) limiter { return ratelimit.NewBucket(c, math.Max(1, c/50)) }},
		{"bucket-100ms", func(c float64) limiter { return ratelimit.NewBucket(c, math.Max(1, c/10)) }},
	}
	for _, m := range models {
		var sum, worst float64
		var runs, pauses int
		for c := 100.0; c <= 380; c += 20 {
			for phase := range 4 {
				synctest.Test(t, func(t *testing.T) {
					time.Sleep(time.Duration(phase) * 25 * time.Millisecond)
					n := int(10 * c)
					g := NewGate(GateConfig{rand: rand.New(rand.NewPCG(uint64(phase), 2))})
					d, rej := simRecoveryGate(t, g, m.mk(c), n, time.Millisecond, time.Second)
					r := d.Seconds() / 10
					sum += r
					worst = max(worst, r)
					runs++
					pauses += rej
					if os.Getenv("RELINK_SIM_SWEEP") == "v" {
						t.Logf("C=%v phase %d: %.3f, %d rejections", c, phase, r, rej)
					}
				})
			}
		}
		t.Logf("SWEEP %-13s mean %.3f worst %.3f rejections/run %.1f", m.name, sum/float64(runs), worst, float64(pauses)/float64(runs))
	}
}
