package backoff

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/relinkgo/relink/internal/ratelimit"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// acquireAsync starts an Acquire and returns a channel with its permit.
func acquireAsync(ctx context.Context, g *Gate) <-chan *Permit {
	ch := make(chan *Permit, 1)
	go func() {
		p, err := g.Acquire(ctx)
		if err != nil {
			p = nil
		}
		ch <- p
	}()
	return ch
}

func TestGateFIFO(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Rate: 10, Burst: 1})
		var order []int
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := g.Acquire(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
				p.Done(Success)
			}()
			synctest.Wait() // queued in this order
		}
		wg.Wait()
		for i, v := range order {
			if v != i {
				t.Fatalf("admission order %v, want FIFO", order)
			}
		}
	})
}

func TestGateRateAndInFlightBounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const rate, burst, maxIn = 50.0, 3, 7
		g := NewGate(GateConfig{Rate: rate, Burst: burst, MaxInFlight: maxIn})
		start := time.Now()
		var admitted, inFlight, peak atomic.Int64
		var wg sync.WaitGroup
		for range 400 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := g.Acquire(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				n := admitted.Add(1)
				if limit := burst + rate*time.Since(start).Seconds(); float64(n) > limit+1e-9 {
					t.Errorf("admitted %d by %v: over the rate bound %.1f", n, time.Since(start), limit)
				}
				cur := inFlight.Add(1)
				for {
					old := peak.Load()
					if cur <= old || peak.CompareAndSwap(old, cur) {
						break
					}
				}
				time.Sleep(200 * time.Millisecond) // the attempt
				inFlight.Add(-1)
				p.Done(Success)
			}()
		}
		wg.Wait()
		if p := peak.Load(); p > maxIn {
			t.Fatalf("peak in flight %d > MaxInFlight %d", p, maxIn)
		}
		// 7 in flight × 200 ms caps throughput at 35/s, below the rate.
		el := time.Since(start)
		if el < 400/35*time.Second {
			t.Fatalf("400 attempts in %v: faster than MaxInFlight allows", el)
		}
		if s := g.Stats(); s.Admitted != 400 || s.InFlight != 0 || s.Queued != 0 || s.Succeeded != 400 {
			t.Fatalf("stats %+v", s)
		}
	})
}

func TestGatePushBackPausesEveryone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var changes []GateStateChange
		g := NewGate(GateConfig{Rate: 100, OnStateChange: func(c GateStateChange) {
			mu.Lock()
			changes = append(changes, c)
			mu.Unlock()
		}})
		p, _ := g.Acquire(t.Context())
		p.Done(Overload(5 * time.Second)) // a 503 with Retry-After: 5 from one client
		if s := g.State(); s != GatePaused {
			t.Fatalf("state %v after Overload with Retry-After, want paused", s)
		}
		start := time.Now()
		var chans []<-chan *Permit
		for range 10 {
			chans = append(chans, acquireAsync(t.Context(), g))
		}
		time.Sleep(4900 * time.Millisecond)
		synctest.Wait()
		if s := g.Stats(); s.Admitted != 1 || s.Queued != 10 {
			t.Fatalf("during the pause: %+v, want nothing admitted", s)
		}
		for _, ch := range chans {
			p := <-ch
			if el := time.Since(start); el < 5*time.Second {
				t.Fatalf("admitted after %v, inside the 5 s pause", el)
			}
			p.Done(Success)
		}
		if g.State() != GateOpen {
			t.Fatalf("state %v after the pause, want open", g.State())
		}
		mu.Lock()
		got := append([]GateStateChange(nil), changes...)
		mu.Unlock()
		if len(got) != 2 || got[0].To != GatePaused || got[1].To != GateOpen {
			t.Fatalf("state changes %+v, want paused then open", got)
		}
		// An absurd Retry-After is clamped.
		g.PushBack(time.Duration(math.MaxInt64))
		if until := g.Stats().PausedUntil; time.Until(until) > DefaultMaxPushBack {
			t.Fatalf("pause until %v: not clamped to %v", until, DefaultMaxPushBack)
		}
	})
}

// Independent gates (no Fleet) paused by the same Retry-After at the same
// instant come back at different instants, each at a random point of its
// first pace interval after the pause: never before it, at most one
// interval (1/pace) after it. Before, every gate resumed at exactly +R and
// paced on from there in step with the others.
func TestGatePausedGatesResumeSpread(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var gates, rate = 8, 10.0 // paced at 9.5/s: an interval of 105 ms
		interval := time.Duration(float64(time.Second)/(cruiseGain*rate) + 1)
		var gs []*Gate
		for range gates {
			g := NewGate(GateConfig{Rate: rate})
			p, err := g.Acquire(t.Context()) // spend the first token
			if err != nil {
				t.Fatal(err)
			}
			p.Done(Success)
			gs = append(gs, g)
		}
		time.Sleep(time.Second) // each bucket full again
		r := time.Now().Add(2 * time.Second)
		for _, g := range gs {
			g.PushBack(2 * time.Second) // one registrar's Retry-After: 2, told to every process
		}
		ats := make([]time.Duration, gates)
		var wg sync.WaitGroup
		for i, g := range gs {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				defer cancel()
				p, err := g.Acquire(ctx)
				if err != nil {
					t.Errorf("gate %d: %v 5 s after a 2 s pause", i, err)
					return
				}
				ats[i] = time.Since(r)
				p.Done(Success)
			})
		}
		wg.Wait()
		seen := map[time.Duration]bool{}
		first, last := ats[0], ats[0]
		for i, at := range ats {
			if at < 0 {
				t.Fatalf("gate %d admitted %v before the pause's end", i, -at)
			}
			if at > interval {
				t.Fatalf("gate %d admitted %v after the pause's end, want within one interval (%v)", i, at, interval)
			}
			first, last = min(first, at), max(last, at)
			seen[at] = true
		}
		if len(seen) < gates {
			t.Fatalf("%d gates resumed at %d distinct instants, want %d", gates, len(seen), gates)
		}
		t.Logf("%d gates resumed between +%v and +%v after the pause", gates, first, last)
		for _, g := range gs {
			g.Close()
		}
	})
}

// simServer is the shared token-bucket model (ratelimit.Bucket) for a herd
// of clients: it serves at most rate attempts per second (full at the
// start), rejects the rest at once and counts the rejections.
type simServer struct {
	mu  sync.Mutex
	b   *ratelimit.Bucket
	rej int
}

func newSimServer(rate, burst float64) *simServer {
	return &simServer{b: ratelimit.NewBucket(rate, burst)}
}

// Admit serves one attempt at now.
func (s *simServer) Admit(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Admit(now) {
		return true
	}
	s.rej++
	return false
}

func (s *simServer) setRate(r float64) {
	s.mu.Lock()
	s.b.SetRate(r, r/10)
	s.mu.Unlock()
}

// herd runs n clients that each retry through g until served.
func herd(t *testing.T, g *Gate, srv *simServer, n int) time.Duration {
	return herdRA(t, g, srv, n, 0)
}

// herdRA is herd against a server whose rejections carry a Retry-After.
func herdRA(t *testing.T, g *Gate, srv *simServer, n int, retryAfter time.Duration) time.Duration {
	d, _ := simRecoveryGate(t, g, srv, n, 5*time.Millisecond, retryAfter)
	return d
}

func TestGateAdaptiveAgainstRetryAfter(t *testing.T) {
	// Each rejection pauses everyone for 1 s, so probing past the capacity
	// is expensive: the gate must learn the rate and then probe rarely.
	synctest.Test(t, func(t *testing.T) {
		srv := newSimServer(200, 20)
		g := NewGate(GateConfig{})
		first := herdRA(t, g, srv, 1000, time.Second)
		firstRej := srv.rej
		srv.rej = 0
		second := herdRA(t, g, srv, 2000, time.Second)
		t.Logf("first herd (rate unknown): %v, %d rejections; second (rate learned): %v for N/C = 10 s, %d rejections, estimate %.0f/s",
			first, firstRej, second, srv.rej, g.Stats().Estimate)
		if second > 13*time.Second {
			t.Errorf("second herd took %v, want ≤ 1.3 × N/C = 13 s", second)
		}
		if srv.rej > 100 {
			t.Errorf("%d rejections for 2000 clients, want ≤ 5 %%", srv.rej)
		}
	})
}

func TestGateScoutLostInBlackHoleDoesNotBlockTheNext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Rate: 100})
		p, _ := g.Acquire(t.Context())
		p.Done(Unreachable)
		lost, _ := g.Acquire(t.Context()) // the scout: never answers
		start := time.Now()
		next, err := g.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if el := time.Since(start); el < DefaultScoutMax || el > DefaultScoutMax+10*time.Millisecond {
			t.Fatalf("next scout after %v with the first still out, want ScoutMax = %v", el, DefaultScoutMax)
		}
		next.Done(Success)
		lost.Done(Unreachable) // late: the gate is open again and stays so
		if g.State() != GateOpen {
			t.Fatalf("state %v, want open", g.State())
		}
	})
}

func TestGateAdaptiveFollowsCapacity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newSimServer(200, 20)
		g := NewGate(GateConfig{})
		took := herd(t, g, srv, 1000)
		s := g.Stats()
		t.Logf("capacity 200/s: 1000 recovered in %v, estimate %.0f/s, pace %.0f/s, %d rejected", took, s.Estimate, s.Rate, srv.rej)
		if s.Estimate < 170 || s.Estimate > 230 {
			t.Errorf("estimate %.0f/s, want about 200/s", s.Estimate)
		}
		if took > 6*time.Second {
			t.Errorf("recovery took %v, want ≤ 1.2 × N/C = 6 s", took)
		}
		if srv.rej > 50 {
			t.Errorf("%d rejections for 1000 clients, want ≤ 5 %%", srv.rej)
		}

		// The server halves: the gate falls with it.
		srv.setRate(100)
		srv.rej = 0
		took = herd(t, g, srv, 1000)
		s = g.Stats()
		t.Logf("capacity 100/s: recovered in %v, estimate %.0f/s, %d rejected", took, s.Estimate, srv.rej)
		if s.Estimate > 120 || s.Rate > 115 {
			t.Errorf("after the capacity fell to 100/s: estimate %.0f, pace %.0f", s.Estimate, s.Rate)
		}
		if took > 13*time.Second {
			t.Errorf("recovery at 100/s took %v, want ≤ 13 s", took)
		}

		// The server recovers to 400/s: the gate probes back up.
		srv.setRate(400)
		srv.rej = 0
		took = herd(t, g, srv, 4000)
		s = g.Stats()
		t.Logf("capacity 400/s: recovered in %v, pace %.0f/s, estimate %.0f/s, %d rejected", took, s.Rate, s.Estimate, srv.rej)
		if s.Rate < 300 {
			t.Errorf("pace %.0f/s after 4000 attempts against 400/s: did not climb back", s.Rate)
		}
		if took > 16*time.Second {
			t.Errorf("recovery at 400/s took %v (limit 10 s), want ≤ 16 s", took)
		}
	})
}

func TestGateClosesScoutsAndReopens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Rate: 1000})
		p, _ := g.Acquire(t.Context())
		p.Done(Unreachable)
		if g.State() != GateClosed {
			t.Fatalf("state %v after an unreachable outcome, want closed", g.State())
		}
		var chans []<-chan *Permit
		for range 50 {
			chans = append(chans, acquireAsync(t.Context(), g))
			synctest.Wait() // queued in this order
		}
		// Scouts fail for 20 s; one at a time, never more than ScoutMax apart.
		var scouts int
		last := time.Now()
		next := 0
		for time.Since(last) < time.Hour {
			p := <-chans[next]
			next++
			scouts++
			if gap := time.Since(last); gap > DefaultScoutMax {
				t.Fatalf("scout %d came %v after the previous one, want ≤ %v", scouts, gap, DefaultScoutMax)
			}
			synctest.Wait()
			if s := g.Stats(); s.InFlight != 1 {
				t.Fatalf("closed gate has %d in flight, want 1 scout", s.InFlight)
			}
			if time.Since(p.stamp.at) < 0 || scouts > 40 {
				t.Fatal("too many scouts")
			}
			if next == 15 {
				p.Done(Success) // the path is back
				break
			}
			time.Sleep(100 * time.Millisecond)
			p.Done(Unreachable)
			last = time.Now()
		}
		if g.State() != GateOpen {
			t.Fatalf("state %v after a scout succeeded, want open", g.State())
		}
		reopened := time.Now()
		for _, ch := range chans[next:] {
			(<-ch).Done(Success)
		}
		// 35 left at 1000/s: admitted at the configured rate at once.
		if el := time.Since(reopened); el > 100*time.Millisecond {
			t.Fatalf("queue drained in %v after reopening, want the configured rate", el)
		}
	})
}

func TestGateUnreachableWhileOthersSucceedDoesNotClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Rate: 100})
		slow, _ := g.Acquire(t.Context())
		fast, _ := g.Acquire(t.Context())
		fast.Done(Success)
		slow.Done(Unreachable) // admitted before a success: the server is alive
		if g.State() != GateOpen {
			t.Fatalf("state %v, want open: another attempt got through", g.State())
		}
		c, _ := g.Acquire(t.Context())
		c.Done(ClientFailure)
		if g.State() != GateOpen {
			t.Fatal("a client failure changed the gate's state")
		}
	})
}

func TestGateCancelWhileQueuedLeavesNoTrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Rate: 1, Burst: 1})
		first, err := g.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancelCause(t.Context())
		errc := make(chan error, 1)
		go func() {
			_, err := g.Acquire(ctx)
			errc <- err
		}()
		synctest.Wait()
		if q := g.Stats().Queued; q != 1 {
			t.Fatalf("queued %d, want 1", q)
		}
		boom := errors.New("caller gave up")
		cancel(boom)
		if err := <-errc; !errors.Is(err, boom) {
			t.Fatalf("Acquire returned %v, want the ctx cause", err)
		}
		s := g.Stats()
		if s.Queued != 0 || s.InFlight != 1 || s.Shed != 1 || s.Admitted != 1 {
			t.Fatalf("after cancel: %+v", s)
		}
		first.Done(Success)
		first.Done(Unreachable) // ignored
		if s := g.Stats(); s.InFlight != 0 || s.Unreachable != 0 {
			t.Fatalf("double Done counted: %+v", s)
		}
		// Abandon frees the slot and reports nothing.
		a, _ := g.Acquire(t.Context())
		a.Abandon()
		a.Done(Unreachable)
		if s := g.Stats(); s.InFlight != 0 || s.Unreachable != 0 || g.State() != GateOpen {
			t.Fatalf("after Abandon: %+v", s)
		}
		// An already-ended ctx never queues.
		if _, err := g.Acquire(ctx); !errors.Is(err, boom) {
			t.Fatalf("Acquire on an ended ctx: %v", err)
		}
		var nilGate *Gate
		if _, err := nilGate.Acquire(t.Context()); !errors.Is(err, errNilGate) {
			t.Fatalf("nil gate: %v", err)
		}
	})
}

func TestGateBadConfig(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, cfg := range []GateConfig{
			{Rate: math.NaN(), Burst: -4, MaxInFlight: -1, InitialRate: math.Inf(-1), MinRate: -3},
			{Rate: math.Inf(1), ScoutBase: -time.Second, ScoutMax: -time.Hour, MaxPushBack: -1},
			{Rate: -1},
			{Rate: 1e-9},
		} {
			g := NewGate(cfg)
			for range 3 {
				p, err := g.Acquire(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				p.Done(Overload(-time.Second))
			}
			g.PushBack(-time.Second)
			g.PushBack(0)
		}
	})
}

func TestOutcomeStrings(t *testing.T) {
	for o, want := range map[Outcome]string{Success: "success", ClientFailure: "client-failure",
		Unreachable: "unreachable", Overload(0): "overload", Overload(time.Second): "overload(retry-after 1s)"} {
		if o.String() != want {
			t.Errorf("%v: %q", want, o.String())
		}
	}
	if GateClosed.String() != "closed" || GateState(9).String() != "GateState(9)" {
		t.Error("GateState.String")
	}
}

func TestGatePriorityGoesFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Rate: 10, Burst: 1})
		first, _ := g.Acquire(t.Context()) // takes the token
		var order []string
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := func(name string, prio bool) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				acq := g.Acquire
				if prio {
					acq = g.AcquirePriority
				}
				p, err := acq(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				order = append(order, name)
				mu.Unlock()
				p.Done(Success)
			}()
			synctest.Wait()
		}
		start("recover1", false)
		start("recover2", false)
		start("refresh1", true)
		start("refresh2", true)
		first.Done(Success)
		wg.Wait()
		want := "[refresh1 refresh2 recover1 recover2]"
		if got := fmt.Sprint(order); got != want {
			t.Fatalf("order %s, want %s", got, want)
		}
	})
}

func TestGateObserveUnreachableClosesAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Rate: 1000})
		g.Observe(Unreachable) // a keepalive went unanswered: the flow is dead
		if g.State() != GateClosed {
			t.Fatalf("state %v, want closed", g.State())
		}
		var chans []<-chan *Permit
		for range 20 {
			chans = append(chans, acquireAsync(t.Context(), g))
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if s := g.Stats(); s.InFlight != 1 || s.Queued != 19 {
			t.Fatalf("closed gate: %+v, want one scout in flight, the rest queued", s)
		}
		g.Observe(Success)
		if g.State() != GateOpen {
			t.Fatalf("state %v after an observed success, want open", g.State())
		}
		for _, ch := range chans {
			(<-ch).Done(Success)
		}
		if s := g.Stats(); s.Unreachable != 0 || s.Succeeded != 20 {
			t.Fatalf("observed outcomes counted as admitted ones: %+v", s)
		}
	})
}

func TestGateObserveUnreachableSince(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Rate: 1000})
		silent := time.Now()
		time.Sleep(10 * time.Second)
		p, _ := g.Acquire(t.Context())
		p.Done(Success) // another connection got through after the flow went silent
		time.Sleep(5 * time.Second)
		g.Observe(UnreachableSince(silent))
		if g.State() != GateOpen {
			t.Fatalf("state %v: a success after the flow went silent should keep the gate open", g.State())
		}
		q, _ := g.Acquire(t.Context())
		q.Done(Success) // completed by the flow's own last bytes
		g.Observe(UnreachableSince(time.Now()))
		if g.State() != GateClosed {
			t.Fatalf("state %v: no success since the flow went silent, want closed", g.State())
		}
	})
}

func TestGateScoutsRespectARunningPushBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Rate: 100})
		early, _ := g.Acquire(t.Context())
		g.PushBack(5 * time.Second)
		early.Done(Unreachable) // an attempt from before the pause times out
		if g.State() != GateClosed {
			t.Fatalf("state %v, want closed", g.State())
		}
		start := time.Now()
		p, err := g.Acquire(t.Context()) // the first scout
		if err != nil {
			t.Fatal(err)
		}
		if el := time.Since(start); el < 5*time.Second {
			t.Fatalf("scout sent %v into a 5 s push-back", el)
		}
		p.Done(Success)
		if g.State() != GateOpen {
			t.Fatalf("state %v after the scout succeeded, want open", g.State())
		}
	})
}
