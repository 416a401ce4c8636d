// Command login measures N conn.Links recovering at the same moment towards
// a server that accepts TCP at once but admits only C logins per second,
// counted per 100 ms window, and answers the rest "BUSY retry-after=1" (or,
// with -hint=false, a bare "BUSY") and closes. The Links share one
// backoff.Gate.
//
//	go run ./internal/bench/login -json
//	go run ./internal/bench/login -hint=false -json
//	go run ./internal/bench/login -n 2000 -capacity 200 -strategies relink -trace
//
// Strategies (-strategies, comma-separated):
//
//   - relink: the login is the Link's Handshake (LinkConfig.Handshake), so
//     the Link is ready, and the gate hears Success, only once the server
//     said OK; BUSY becomes backoff.Overloaded(err, hint), which the gate
//     hears as Overload(hint). The gate learns C.
//   - relink-rate: the same, the gate told Rate = C.
//   - control: what a Link could do before Handshake: the login inside the
//     Session. The Link is "ready" at the TCP connect, the gate hears
//     Success for every connect, and a BUSY only ends the session (the
//     Link's own backoff, then the gate, then a new connection).
//
// A Link counts as ready when its login was answered OK; ready_s is when the
// last of the N was, from the moment they all started. Links not ready
// after -timeout are stuck (their time counts as -timeout).
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

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/ctxtime"
	"github.com/relinkgo/relink/internal/testkit"
)

// Result is one strategy's figures; -json prints one per line.
type Result struct {
	Strategy string  `json:"strategy"`
	N        int     `json:"n"`
	Capacity float64 `json:"capacity"`
	Hint     bool    `json:"hint"`
	// ReadyS is when the last Link was logged in, from the start.
	ReadyS       float64 `json:"ready_s"`
	RatioToLimit float64 `json:"ratio_to_limit"` // ReadyS ÷ (N/C)
	RefusedFrac  float64 `json:"refused_frac"`   // BUSY answers ÷ logins
	Logins       int     `json:"logins"`
	// Logins3s counts the logins of the first 3 s (the control:
	// 808 sessions in 3 s for 200 Links).
	Logins3s int `json:"logins_3s"`
	// PeakLoadRatio is the most logins in one 100 ms window ÷ (C/10).
	PeakLoadRatio float64 `json:"peak_load_ratio"`
	// LearnedRate is the gate's pace at the end, from Gate.Stats; -1 when
	// unlimited.
	LearnedRate float64 `json:"learned_rate"`
	// GateSucceeded and GateOverloaded are the outcomes the gate heard.
	GateSucceeded  uint64 `json:"gate_succeeded"`
	GateOverloaded uint64 `json:"gate_overloaded"`
	// ReadyEvents counts the Links' changes to LinkReady: N when a Link
	// is READY only once logged in, one per connection in the control.
	ReadyEvents int `json:"ready_events"`
	// Stuck counts the Links not ready at the timeout.
	Stuck int `json:"stuck"`
	// LateMeanMs and LateMaxMs say how late a 10 ms timer fired, on
	// average and at most, during the herd: the machine's scheduling
	// delay, which the gate's timer and every Link suffer too. On a loaded
	// machine (a mean above ~1 ms) the figures are the machine's.
	LateMeanMs float64 `json:"late_mean_ms"`
	LateMaxMs  float64 `json:"late_max_ms"`
}

// options are the flags.
type options struct {
	n          int
	capacity   float64
	hint       bool
	retryAfter time.Duration
	timeout    time.Duration
	strategies string
	jsonOut    bool
	trace      bool
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 2000, "Links, all starting at once")
	flag.Float64Var(&o.capacity, "capacity", 200, "logins per second the server admits, counted per 100 ms")
	flag.BoolVar(&o.hint, "hint", true, `the server's refusal carries a hint ("BUSY retry-after=1"); false: a bare "BUSY"`)
	flag.DurationVar(&o.retryAfter, "retry-after", time.Second, "the hint's value")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Second, "a strategy's Links not ready after this are stuck")
	flag.StringVar(&o.strategies, "strategies", "relink,relink-rate,control", "strategies to run, in order")
	flag.BoolVar(&o.jsonOut, "json", false, "one JSON object per strategy")
	flag.BoolVar(&o.trace, "trace", false, "print the gate's pace and counters every 100 ms to stderr")
	flag.Parse()
	if o.n <= 0 || !(o.capacity > 0) || o.retryAfter < 0 || o.timeout <= 0 {
		fmt.Fprintln(os.Stderr, "login: -n, -capacity and -timeout must be positive, -retry-after not negative")
		os.Exit(2)
	}
	if _, err := testkit.RaiseFileLimit(uint64(4*o.n + 1024)); err != nil {
		fmt.Fprintln(os.Stderr, "login:", err)
	}
	for i, strategy := range strings.Split(o.strategies, ",") {
		if i > 0 {
			// Let the previous strategy's goroutines and garbage go.
			runtime.GC()
			time.Sleep(500 * time.Millisecond)
		}
		r, err := herd(context.Background(), &o, strings.TrimSpace(strategy))
		if err != nil {
			fmt.Fprintf(os.Stderr, "login: %s: %v\n", strategy, err)
			os.Exit(1)
		}
		report(&o, r)
	}
}

func report(o *options, r Result) {
	if o.jsonOut {
		b, _ := json.Marshal(r)
		fmt.Println(string(b))
		return
	}
	fmt.Printf("%-11s N=%d C=%v hint=%v: all ready in %.2f s = %.2f × N/C, %.1f %% of %d logins refused, peak %.2f, pace %.0f/s, stuck %d, timers late %.1f ms (max %.0f)\n",
		r.Strategy, r.N, r.Capacity, r.Hint, r.ReadyS, r.RatioToLimit, 100*r.RefusedFrac, r.Logins,
		r.PeakLoadRatio, r.LearnedRate, r.Stuck, r.LateMeanMs, r.LateMaxMs)
}

// herd runs one strategy: a fresh server and gate, N Links started at once,
// until all are ready or the timeout; then everything is stopped.
func herd(ctx context.Context, o *options, strategy string) (Result, error) {
	retryAfter := o.retryAfter
	if !o.hint {
		retryAfter = -1
	}
	srv, err := newServer(o.capacity, retryAfter)
	if err != nil {
		return Result{}, err
	}
	defer srv.close()
	gcfg := backoff.GateConfig{Destination: srv.addr()}
	if strategy == "relink-rate" {
		gcfg.Rate = o.capacity
	}
	gate := backoff.NewGate(gcfg)
	defer gate.Close()
	tr := newTracker(o.n)
	links := make([]*conn.Link, o.n)
	for i := range links {
		if links[i], err = newLink(strategy, i, srv.addr(), gate, tr); err != nil {
			return Result{}, err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.trace {
		go traceGate(ctx, gate, tr)
	}
	late := watchTimers(ctx)
	failed := runAll(ctx, links, tr, o.timeout)
	cancel()
	if err := <-failed; err != nil {
		return Result{}, err
	}
	// Nothing was in flight when the last Link became ready, and nothing
	// since: the gate's figures are those of the herd.
	r := tally(o, strategy, srv, gate.Stats(), tr)
	r.LateMeanMs, r.LateMaxMs = late.result()
	return r, nil
}

// runAll starts every Link's Run at once (the clock starts then) and waits until all are ready,
// the timeout, or every Run returned. The channel it returns yields, once
// ctx is cancelled and every Run returned, the first error of a Run that
// returned for another reason than ctx's end (nil if none).
func runAll(ctx context.Context, links []*conn.Link, tr *tracker, timeout time.Duration) <-chan error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	// Every goroutine is started and parked before the clock starts, so
	// that starting 2,000 of them is not part of the herd.
	var parked sync.WaitGroup
	parked.Add(len(links))
	gun := make(chan struct{})
	for _, l := range links {
		wg.Go(func() {
			parked.Done()
			<-gun
			if err := l.Run(ctx); ctx.Err() == nil {
				mu.Lock()
				first = cmp(first, fmt.Errorf("a Link stopped: %w", err))
				mu.Unlock()
			}
		})
	}
	parked.Wait()
	tr.begin()
	close(gun)
	returned := make(chan struct{})
	go func() { wg.Wait(); close(returned) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-tr.all:
	case <-t.C:
	case <-returned:
	}
	tr.end()
	out := make(chan error, 1)
	go func() {
		<-ctx.Done()
		<-returned
		mu.Lock()
		defer mu.Unlock()
		out <- first
	}()
	return out
}

// cmp returns a when it is set, else b.
func cmp(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// tally sums a run up.
func tally(o *options, strategy string, srv *server, st backoff.GateStats, tr *tracker) Result {
	logins, refused, peak := srv.counts()
	ready, took := tr.result()
	tr.mu.Lock()
	start := tr.start
	tr.mu.Unlock()
	r := Result{Strategy: strategy, N: o.n, Capacity: o.capacity, Hint: o.hint, Logins: logins,
		Logins3s: srv.loginsBefore(start.Add(3 * time.Second)),
		ReadyS:   round(took.Seconds()), Stuck: o.n - ready, ReadyEvents: int(tr.readyEvents.Load()),
		PeakLoadRatio:  round(float64(peak) / (o.capacity * window.Seconds())),
		LearnedRate:    round(st.Rate),
		GateSucceeded:  st.Succeeded,
		GateOverloaded: st.Overloaded}
	r.RatioToLimit = round(took.Seconds() / (float64(o.n) / o.capacity))
	if logins > 0 {
		r.RefusedFrac = round(float64(refused) / float64(logins))
	}
	if math.IsInf(st.Rate, 1) {
		r.LearnedRate = -1
	}
	return r
}

func round(v float64) float64 { return math.Round(v*1000) / 1000 }

// traceGate prints the gate's pace and counters every 100 ms to stderr.
func traceGate(ctx context.Context, g *backoff.Gate, tr *tracker) {
	for ctxtime.Sleep(ctx, 100*time.Millisecond) {
		st := g.Stats()
		ready, took := tr.result()
		fmt.Fprintf(os.Stderr, "t=%.1f ready=%d state=%v pace=%.0f est=%.0f q=%d in=%d adm=%d ok=%d over=%d\n",
			took.Seconds(), ready, st.State, st.Rate, st.Estimate, st.Queued, st.InFlight, st.Admitted,
			st.Succeeded, st.Overloaded)
	}
}

// newLink returns Link i of strategy towards addr. Every strategy's Links
// are alike (the default Dialer, backoff and HealthyAfter, the shared
// gate); only where the login happens differs.
func newLink(strategy string, i int, addr string, gate *backoff.Gate, tr *tracker) (*conn.Link, error) {
	cfg := conn.LinkConfig{Addrs: []string{addr}, Gate: gate}
	handshake := strategy != "control"
	cfg.OnStateChange = func(e conn.LinkStateChange) {
		if e.To == conn.LinkReady {
			tr.readyEvents.Add(1)
			if handshake {
				tr.ready(i) // the Handshake, the login, returned nil
			}
		}
	}
	switch strategy {
	case "relink", "relink-rate":
		cfg.Handshake = func(ctx context.Context, c *conn.Conn) error {
			a, err := login(ctx, c, i)
			switch {
			case err != nil:
				return err
			case a.ok:
				return nil
			}
			return backoff.Overloaded(errBusy, a.retryAfter) // zero: no hint
		}
		cfg.Session = idle
	case "control":
		cfg.Session = func(ctx context.Context, c *conn.Conn) error {
			a, err := login(ctx, c, i)
			switch {
			case err != nil:
				return err
			case !a.ok:
				return errBusy // today a Session has no way to tell the gate
			}
			tr.ready(i)
			return idle(ctx, c)
		}
	default:
		return nil, fmt.Errorf("unknown strategy %q (want relink, relink-rate or control)", strategy)
	}
	return conn.NewLink(cfg)
}

// login sends LOGIN and reads the answer, giving up when ctx ends.
func login(ctx context.Context, c *conn.Conn, id int) (answer, error) {
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	a, err := func() (answer, error) {
		if _, err := fmt.Fprintf(c, "LOGIN %d\n", id); err != nil {
			return answer{}, err
		}
		line, err := readLine(c)
		if err != nil {
			return answer{}, err
		}
		return parseAnswer(line)
	}()
	if !stop() && ctx.Err() != nil {
		return answer{}, context.Cause(ctx) // the deadline may be set
	}
	return a, err
}

// idle is the session after the login: it reads and discards until the
// connection ends (the Link closes it when Run's ctx ends).
func idle(_ context.Context, c *conn.Conn) error {
	var buf [512]byte
	for {
		if _, err := c.Read(buf[:]); err != nil {
			return err
		}
	}
}

// tracker records when each Link first became ready.
type tracker struct {
	mu    sync.Mutex
	start time.Time
	stop  time.Time // the end of the wait; zero while it lasts
	seen  []bool
	n     int           // Links ready
	last  time.Duration // when the last of them was, from start
	all   chan struct{} // closed when every Link was ready

	readyEvents atomic.Int64 // changes to LinkReady
}

func newTracker(n int) *tracker {
	return &tracker{seen: make([]bool, n), all: make(chan struct{})}
}

func (t *tracker) begin() {
	t.mu.Lock()
	t.start = time.Now()
	t.mu.Unlock()
}

func (t *tracker) end() {
	t.mu.Lock()
	t.stop = time.Now()
	t.mu.Unlock()
}

// ready records that Link i is ready; only its first time counts.
func (t *tracker) ready(i int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seen[i] || !t.stop.IsZero() {
		return
	}
	t.seen[i] = true
	t.n++
	t.last = time.Since(t.start)
	if t.n == len(t.seen) {
		close(t.all)
	}
}

// result returns how many Links were ready and when the last was; with
// some not ready, the time the wait lasted (or has lasted so far).
func (t *tracker) result() (int, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == len(t.seen) {
		return t.n, t.last
	}
	if t.stop.IsZero() {
		return t.n, time.Since(t.start)
	}
	return t.n, t.stop.Sub(t.start)
}

// lateness is what watchTimers measured.
type lateness struct {
	done      chan struct{}
	sum, most time.Duration
	n         int
}

// watchTimers sleeps 10 ms at a time until ctx ends, recording how late
// each sleep ends.
func watchTimers(ctx context.Context) *lateness {
	l := &lateness{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		const tick = 10 * time.Millisecond
		for {
			t0 := time.Now()
			if !ctxtime.Sleep(ctx, tick) {
				return
			}
			late := max(time.Since(t0)-tick, 0)
			l.sum += late
			l.most = max(l.most, late)
			l.n++
		}
	}()
	return l
}

// result waits for the watch to end (its ctx) and returns the mean and the
// largest lateness in milliseconds.
func (l *lateness) result() (mean, most float64) {
	<-l.done
	if l.n == 0 {
		return 0, 0
	}
	return round(float64(l.sum) / float64(l.n) / 1e6), round(float64(l.most) / 1e6)
}
