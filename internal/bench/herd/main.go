// Command herd measures how N clients that all need to recover at the same
// moment load a server that serves at most C attempts per second and rejects
// the excess at once (as a registrar answers 503), for several retry
// strategies side by side.
//
//	go run ./internal/bench/herd -n 2000 -capacity 400
//	go run ./internal/bench/herd -json
//	go run ./internal/bench/herd -capacity 200 -window 100ms -retry-after 1s
//
// -window counts the capacity per fixed window (as Kamailio's htable
// counters do) instead of a token bucket; -retry-after puts a Retry-After on
// every rejection, which the gate strategies honour for everyone (a pause)
// and the backoff strategies as a floor on their own delay. Naive ignores it.
//
// Strategies: naive (retry at once), cenkalti (cenkalti/backoff/v4's default
// ExponentialBackOff), full-jitter (relink's Exponential, no gate), gate
// (relink's Gate told C) and gate-adaptive (the Gate learning C).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cenkalti "github.com/cenkalti/backoff/v4"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/ratelimit"
)

var trace bool

// Result is one strategy's figures; the -json output is one Result per line.
type Result struct {
	Strategy          string  `json:"strategy"`
	N                 int     `json:"n"`
	Capacity          float64 `json:"capacity"`
	Recovered         int     `json:"recovered"`
	RecoverS          float64 `json:"recover_s"`
	RatioToLimit      float64 `json:"ratio_to_limit"`
	AttemptsPerClient float64 `json:"attempts_per_client"`
	RejectedFrac      float64 `json:"rejected_frac"`
	PeakLoadRatio     float64 `json:"peak_load_ratio"`
	Limiter           string  `json:"limiter"`
	RetryAfterS       float64 `json:"retry_after_s"`
}

func main() {
	n := flag.Int("n", 2000, "clients that recover at the same moment")
	capacity := flag.Float64("capacity", 400, "attempts per second the server serves; the excess is rejected at once")
	burst := flag.Int("burst", 0, "server's burst (0: capacity/10)")
	rtt := flag.Duration("rtt", 5*time.Millisecond, "round trip of one attempt")
	limit := flag.Duration("timeout", 120*time.Second, "give up on a strategy after this long")
	only := flag.String("strategies", "naive,cenkalti,full-jitter,gate,gate-adaptive", "comma-separated strategies to run")
	asJSON := flag.Bool("json", false, "print one JSON object per strategy")
	window := flag.Duration("window", 0, "count the capacity per fixed window of this length instead of a token bucket")
	retryAfter := flag.Duration("retry-after", 0, "Retry-After on every rejection (0: none)")
	flag.BoolVar(&trace, "trace", false, "print the gates' pace and counters every 100 ms to stderr")
	flag.Parse()
	if *n <= 0 || !(*capacity > 0) || *rtt < 0 || *limit <= 0 || *window < 0 || *retryAfter < 0 {
		fmt.Fprintln(os.Stderr, "herd: -n and -capacity must be positive; -rtt, -timeout, -window and -retry-after non-negative")
		os.Exit(2)
	}
	b := *burst
	if b <= 0 {
		b = max(1, int(*capacity/10))
	}
	if !*asJSON {
		ra := ""
		if *retryAfter > 0 {
			ra = fmt.Sprintf(", Retry-After %v", *retryAfter)
		}
		fmt.Printf("herd: N=%d clients, server capacity C=%.0f/s (%s%s), rtt %v; physical limit N/C = %.2f s\n\n",
			*n, *capacity, limiterName(b, *window), ra, *rtt, float64(*n) / *capacity)
		fmt.Printf("%-14s %10s %10s %14s %10s %10s %10s\n", "strategy", "recovered", "time (s)", "× N/C", "att/client", "rejected", "peak/C")
	}
	for i, s := range strings.Split(*only, ",") {
		s = strings.TrimSpace(s)
		if i > 0 {
			// Let the previous strategy's goroutines and garbage go, so
			// that one run does not slow the next.
			runtime.GC()
			time.Sleep(500 * time.Millisecond)
		}
		r, err := run(s, *n, *capacity, b, *window, *retryAfter, *rtt, *limit)
		if err != nil {
			fmt.Fprintln(os.Stderr, "herd:", err)
			os.Exit(2)
		}
		if *asJSON {
			out, _ := json.Marshal(r)
			fmt.Println(string(out))
			continue
		}
		fmt.Printf("%-14s %10d %10.2f %14.2f %10.2f %9.1f%% %10.2f\n", r.Strategy, r.Recovered, r.RecoverS,
			r.RatioToLimit, r.AttemptsPerClient, 100*r.RejectedFrac, r.PeakLoadRatio)
	}
}

// server admits at most rate attempts per second with a burst, and rejects
// the rest at once. It records arrivals in 10 ms bins for the peak load.
type server struct {
	mu       sync.Mutex
	rate     float64
	burst    float64
	tokens   float64
	last     time.Time
	window   *ratelimit.Window // not nil: counts per fixed window instead
	start    time.Time
	bins     []int
	attempts atomic.Int64
	rejected atomic.Int64
}

const binWidth = 10 * time.Millisecond

func (s *server) serve() bool {
	s.attempts.Add(1)
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := int(now.Sub(s.start) / binWidth); i >= 0 {
		for len(s.bins) <= i {
			s.bins = append(s.bins, 0)
		}
		s.bins[i]++
	}
	if s.window != nil {
		if s.window.Admit(now) {
			return true
		}
		s.rejected.Add(1)
		return false
	}
	s.tokens = math.Min(s.burst, s.tokens+now.Sub(s.last).Seconds()*s.rate)
	s.last = now
	if s.tokens >= 1 {
		s.tokens--
		return true
	}
	s.rejected.Add(1)
	return false
}

// peak returns the largest number of arrivals in any 1 s window, per second.
func (s *server) peak() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	const w = int(time.Second / binWidth)
	best, sum := 0, 0
	for i, v := range s.bins {
		sum += v
		if i >= w {
			sum -= s.bins[i-w]
		}
		best = max(best, sum)
	}
	return float64(best)
}

func run(strategy string, n int, capacity float64, burst int, window, retryAfter, rtt, limit time.Duration) (Result, error) {
	start := time.Now()
	srv := &server{rate: capacity, burst: float64(burst), tokens: float64(burst), last: start, start: start}
	if window > 0 {
		srv.window = ratelimit.NewWindow(window, capacity)
	}
	attempt := func() bool {
		if rtt > 0 {
			time.Sleep(rtt / 2)
		}
		ok := srv.serve()
		if rtt > 0 {
			time.Sleep(rtt / 2)
		}
		return ok
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	sleep := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}

	var client func() bool
	switch strategy {
	case "naive":
		client = func() bool {
			for ctx.Err() == nil {
				if attempt() {
					return true
				}
			}
			return false
		}
	case "cenkalti", "full-jitter":
		client = func() bool {
			var b cenkalti.BackOff = cenkalti.NewExponentialBackOff()
			if strategy == "full-jitter" {
				b = &backoff.Exponential{}
			}
			for ctx.Err() == nil {
				if attempt() {
					return true
				}
				d := b.NextBackOff()
				if d == cenkalti.Stop {
					return false
				}
				if !sleep(max(d, retryAfter)) {
					return false
				}
			}
			return false
		}
	case "gate", "gate-adaptive":
		cfg := backoff.GateConfig{Destination: "herd"}
		if strategy == "gate" {
			cfg.Rate = capacity
		}
		g := backoff.NewGate(cfg)
		if trace {
			go func() {
				for ctx.Err() == nil {
					time.Sleep(100 * time.Millisecond)
					st := g.Stats()
					fmt.Fprintf(os.Stderr, "t=%.1f pace=%.0f est=%.0f q=%d adm=%d ok=%d over=%d\n", time.Since(start).Seconds(), st.Rate, st.Estimate, st.Queued, st.Admitted, st.Succeeded, st.Overloaded)
					if st.Queued == 0 && st.Succeeded >= uint64(n) {
						return
					}
				}
			}()
		}
		client = func() bool {
			for {
				p, err := g.Acquire(ctx)
				if err != nil {
					return false
				}
				if attempt() {
					p.Done(backoff.Success)
					return true
				}
				p.Done(backoff.Overload(retryAfter))
			}
		}
	default:
		return Result{}, fmt.Errorf("unknown strategy %q", strategy)
	}

	var wg sync.WaitGroup
	var recovered atomic.Int64
	var lastNanos atomic.Int64
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if client() {
				recovered.Add(1)
				d := int64(time.Since(start))
				for {
					cur := lastNanos.Load()
					if d <= cur || lastNanos.CompareAndSwap(cur, d) {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	rec := time.Duration(lastNanos.Load()).Seconds()
	if int(recovered.Load()) < n {
		rec = time.Since(start).Seconds()
	}
	att := srv.attempts.Load()
	return Result{
		Strategy:          strategy,
		N:                 n,
		Capacity:          capacity,
		Recovered:         int(recovered.Load()),
		RecoverS:          round(rec),
		RatioToLimit:      round(rec / (float64(n) / capacity)),
		AttemptsPerClient: round(float64(att) / float64(n)),
		RejectedFrac:      round(float64(srv.rejected.Load()) / float64(att)),
		PeakLoadRatio:     round(srv.peak() / capacity),
		Limiter:           limiterName(burst, window),
		RetryAfterS:       retryAfter.Seconds(),
	}, nil
}

func limiterName(burst int, window time.Duration) string {
	if window > 0 {
		return "window " + window.String()
	}
	return fmt.Sprintf("bucket %d", burst)
}

func round(v float64) float64 { return math.Round(v*1000) / 1000 }
