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
	"github.com/relinkgo/relink/internal/ctxtime"
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

// server admits what its limiter admits (a token bucket, or a fixed window)
// and rejects the rest at once. It records arrivals in 10 ms bins for the
// peak load.
type server struct {
	mu       sync.Mutex
	limiter  interface{ Admit(time.Time) bool } // guarded by mu
	start    time.Time
	bins     []int
	attempts atomic.Int64
	rejected atomic.Int64
}

const binWidth = 10 * time.Millisecond

// newServer returns a server of the given capacity: a full token bucket of
// depth burst, or with window > 0 a fixed-window counter.
func newServer(capacity float64, burst int, window time.Duration) *server {
	s := &server{start: time.Now(), limiter: ratelimit.NewBucket(capacity, float64(burst))}
	if window > 0 {
		s.limiter = ratelimit.NewWindow(window, capacity)
	}
	return s
}

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
	if s.limiter.Admit(now) {
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

// herd is one strategy's run: its server, its parameters and its deadline.
type herd struct {
	strategy   string
	n          int
	capacity   float64
	retryAfter time.Duration
	rtt        time.Duration
	srv        *server
	start      time.Time
	gate       *backoff.Gate // the gate strategies' gate, closed at the end
}

// run measures one strategy: setup (a fresh server and the strategy's
// client) → the herd (N clients recovering at once) → report.
func run(strategy string, n int, capacity float64, burst int, window, retryAfter, rtt, limit time.Duration) (Result, error) {
	h := &herd{strategy: strategy, n: n, capacity: capacity, retryAfter: retryAfter, rtt: rtt,
		srv: newServer(capacity, burst, window), start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	defer func() {
		if h.gate != nil {
			h.gate.Close()
		}
	}()
	client, err := h.client(ctx)
	if err != nil {
		return Result{}, err
	}
	recovered, last := h.recover(client)
	r := h.result(recovered, last)
	r.Limiter = limiterName(burst, window)
	return r, nil
}

// attempt is one attempt: half a round trip out, the server, half back.
func (h *herd) attempt() bool {
	if h.rtt > 0 {
		time.Sleep(h.rtt / 2)
	}
	ok := h.srv.serve()
	if h.rtt > 0 {
		time.Sleep(h.rtt / 2)
	}
	return ok
}

// client returns the strategy's client: it attempts until it is served
// (true) or ctx ends (false).
func (h *herd) client(ctx context.Context) (func() bool, error) {
	switch h.strategy {
	case "naive":
		return func() bool {
			for ctx.Err() == nil {
				if h.attempt() {
					return true
				}
			}
			return false
		}, nil
	case "cenkalti", "full-jitter":
		return func() bool { return h.backoffClient(ctx) }, nil
	case "gate", "gate-adaptive":
		return h.gateClient(ctx), nil
	}
	return nil, fmt.Errorf("unknown strategy %q", h.strategy)
}

// backoffClient retries on its own backoff, at least Retry-After.
func (h *herd) backoffClient(ctx context.Context) bool {
	var b cenkalti.BackOff = cenkalti.NewExponentialBackOff()
	if h.strategy == "full-jitter" {
		b = &backoff.Exponential{}
	}
	for ctx.Err() == nil {
		if h.attempt() {
			return true
		}
		d := b.NextBackOff()
		if d == cenkalti.Stop {
			return false
		}
		if !ctxtime.Sleep(ctx, max(d, h.retryAfter)) {
			return false
		}
	}
	return false
}

// gateClient returns a client whose attempts go through one shared Gate,
// told the capacity ("gate") or learning it ("gate-adaptive").
func (h *herd) gateClient(ctx context.Context) func() bool {
	cfg := backoff.GateConfig{Destination: "herd"}
	if h.strategy == "gate" {
		cfg.Rate = h.capacity
	}
	g := backoff.NewGate(cfg)
	h.gate = g
	if trace {
		go h.trace(ctx, g)
	}
	return func() bool {
		for {
			p, err := g.Acquire(ctx)
			if err != nil {
				return false
			}
			if h.attempt() {
				p.Done(backoff.Success)
				return true
			}
			p.Done(backoff.Overload(h.retryAfter))
		}
	}
}

// trace prints the gate's pace and counters every 100 ms to stderr.
func (h *herd) trace(ctx context.Context, g *backoff.Gate) {
	for ctxtime.Sleep(ctx, 100*time.Millisecond) {
		st := g.Stats()
		fmt.Fprintf(os.Stderr, "t=%.1f pace=%.0f est=%.0f q=%d adm=%d ok=%d over=%d\n", time.Since(h.start).Seconds(), st.Rate, st.Estimate, st.Queued, st.Admitted, st.Succeeded, st.Overloaded)
		if st.Queued == 0 && st.Succeeded >= uint64(h.n) {
			return
		}
	}
}

// recover runs N clients at once and returns how many recovered and when
// the last one did, from the start.
func (h *herd) recover(client func() bool) (int, time.Duration) {
	var wg sync.WaitGroup
	var recovered atomic.Int64
	var lastNanos atomic.Int64
	for range h.n {
		wg.Go(func() {
			if !client() {
				return
			}
			recovered.Add(1)
			d := int64(time.Since(h.start))
			for {
				cur := lastNanos.Load()
				if d <= cur || lastNanos.CompareAndSwap(cur, d) {
					break
				}
			}
		})
	}
	wg.Wait()
	return int(recovered.Load()), time.Duration(lastNanos.Load())
}

// result sums the run up; a run in which some client did not recover
// counts until now.
func (h *herd) result(recovered int, last time.Duration) Result {
	rec := last.Seconds()
	if recovered < h.n {
		rec = time.Since(h.start).Seconds()
	}
	att := h.srv.attempts.Load()
	return Result{
		Strategy:          h.strategy,
		N:                 h.n,
		Capacity:          h.capacity,
		Recovered:         recovered,
		RecoverS:          round(rec),
		RatioToLimit:      round(rec / (float64(h.n) / h.capacity)),
		AttemptsPerClient: round(float64(att) / float64(h.n)),
		RejectedFrac:      round(float64(h.srv.rejected.Load()) / float64(att)),
		PeakLoadRatio:     round(h.srv.peak() / h.capacity),
		RetryAfterS:       h.retryAfter.Seconds(),
	}
}

func limiterName(burst int, window time.Duration) string {
	if window > 0 {
		return "window " + window.String()
	}
	return fmt.Sprintf("bucket %d", burst)
}

func round(v float64) float64 { return math.Round(v*1000) / 1000 }
