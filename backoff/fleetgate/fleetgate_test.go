package fleetgate

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/redistest"
)

func TestMain(m *testing.M) {
	// go-redis logs every failed dial; the tests kill Redis on purpose.
	redis.SetLogger(quiet{})
	goleak.VerifyTestMain(m)
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// newFleet returns a Fleet on s for one simulated process, with its own
// client (closed at cleanup), wrapped to time every call.
func newFleet(t *testing.T, s *redistest.Server, id string, cfg Config) (*timedFleet, *redis.Client) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), ContextTimeoutEnabled: true,
		DialTimeout: 50 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	cfg.ID = id
	f, err := New(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &timedFleet{Fleet: f}, c
}

// timedFleet counts and times the calls its members make.
type timedFleet struct {
	*Fleet
	calls, failed atomic.Int64
	slowest       atomic.Int64 // ns
	last          atomic.Pointer[timedMember]
}

func (f *timedFleet) Join(d string) backoff.FleetMember {
	m := &timedMember{FleetMember: f.Fleet.Join(d), f: f}
	f.last.Store(m)
	return m
}

// members is the member count of the last member joined.
func (f *timedFleet) members() int { return f.last.Load().Members() }

type timedMember struct {
	backoff.FleetMember
	f *timedFleet
}

func (m *timedMember) note(start time.Time, err error) {
	d := int64(time.Since(start))
	for {
		old := m.f.slowest.Load()
		if d <= old || m.f.slowest.CompareAndSwap(old, d) {
			break
		}
	}
	m.f.calls.Add(1)
	if err != nil {
		m.f.failed.Add(1)
	}
}

func (m *timedMember) Admit(ctx context.Context, req backoff.FleetRequest) (backoff.FleetReply, error) {
	start := time.Now()
	rep, err := m.FleetMember.Admit(ctx, req)
	m.note(start, err)
	return rep, err
}

func (m *timedMember) Scout(ctx context.Context, lease time.Duration, reopened bool) (backoff.FleetScout, error) {
	start := time.Now()
	rep, err := m.FleetMember.Scout(ctx, lease, reopened)
	m.note(start, err)
	return rep, err
}

func newGate(t *testing.T, f backoff.Fleet, cfg backoff.GateConfig) *backoff.Gate {
	t.Helper()
	cfg.Destination = "registrar.test:5060"
	cfg.Fleet = f
	g := backoff.NewGate(cfg)
	t.Cleanup(func() { g.Close() })
	return g
}

// herd admits n waiters through g, each done at once with Success, and
// sends each admission's time to at.
func herd(t *testing.T, g *backoff.Gate, n int, at chan<- time.Time, wg *sync.WaitGroup) {
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := g.Acquire(t.Context())
			if err != nil {
				t.Error(err)
				return
			}
			at <- time.Now()
			p.Done(backoff.Success)
		}()
	}
}

// peak is the most admissions in any window.
func peak(at []time.Time, window time.Duration) int {
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	most, j := 0, 0
	for i := range at {
		for at[i].Sub(at[j]) >= window {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

// Two processes' gates towards one destination admit at one combined pace,
// about one Redis round trip per admission.
func TestTwoGatesAdmitAtOneCombinedPace(t *testing.T) {
	s := redistest.Start(t)
	fa, _ := newFleet(t, s, "a", Config{})
	fb, _ := newFleet(t, s, "b", Config{})
	ga := newGate(t, fa, backoff.GateConfig{Rate: 200}) // paced at 190/s, fleet-wide
	gb := newGate(t, fb, backoff.GateConfig{Rate: 200})
	const n = 150
	at := make(chan time.Time, 2*n)
	var wg sync.WaitGroup
	start := time.Now()
	herd(t, ga, n, at, &wg)
	herd(t, gb, n, at, &wg)
	waitWithin(t, &wg, 10*time.Second, "the herd")
	el := time.Since(start)
	close(at)
	var times []time.Time
	for x := range at {
		times = append(times, x)
	}
	calls := fa.calls.Load() + fb.calls.Load()
	t.Logf("%d admissions in %v (%.0f/s; alone each would be 190/s), %d calls (%.2f per admission), slowest %v, peak %d per 100 ms",
		2*n, el.Round(time.Millisecond), float64(2*n)/el.Seconds(), calls, float64(calls)/float64(2*n),
		time.Duration(max(fa.slowest.Load(), fb.slowest.Load())), peak(times, 100*time.Millisecond))
	if want := float64(2*n) / 190; el.Seconds() < 0.9*want || el.Seconds() > 1.3*want {
		t.Errorf("took %v, want about %.2f s: one pace of 190/s for both gates", el, want)
	}
	if p := peak(times, 100*time.Millisecond); p > 19+3 {
		t.Errorf("%d admissions in 100 ms, want ≤ 22 (19 at 190/s, plus the burst)", p)
	}
	if per := float64(calls) / float64(2*n); per > 1.5 {
		t.Errorf("%.2f Redis calls per admission, want about 1", per)
	}
}

// One Retry-After pauses every process: gate B, told nothing, waits for the
// pause gate A was told of.
func TestOneRetryAfterPausesBoth(t *testing.T) {
	s := redistest.Start(t)
	fa, ca := newFleet(t, s, "a", Config{})
	fb, _ := newFleet(t, s, "b", Config{})
	ga := newGate(t, fa, backoff.GateConfig{Rate: 200})
	gb := newGate(t, fb, backoff.GateConfig{Rate: 200})
	p, err := ga.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p.Done(backoff.Overload(400 * time.Millisecond))
	until := ga.Stats().PausedUntil
	if until.IsZero() {
		t.Fatal("gate A not paused by its 503")
	}
	for ca.Exists(t.Context(), DefaultPrefix+"{registrar.test:5060}:pause").Val() == 0 {
		if time.Now().After(until) {
			t.Fatal("the pause never reached Redis")
		}
		time.Sleep(time.Millisecond)
	}
	p, err = gb.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p.Done(backoff.Success)
	if early := time.Until(until); early > 5*time.Millisecond {
		t.Fatalf("gate B admitted %v before the pause gate A was told of ended", early)
	}
	t.Logf("gate B admitted %v after the pause's end", -time.Until(until))
}

// While the destination is dead, one scout at a time probes it for the
// whole fleet; its success reopens every gate.
func TestOneScoutForTheFleet(t *testing.T) {
	s := redistest.Start(t)
	var gates []*backoff.Gate
	for _, id := range []string{"a", "b", "c"} {
		f, _ := newFleet(t, s, id, Config{})
		g := newGate(t, f, backoff.GateConfig{Rate: 200, ScoutBase: 10 * time.Millisecond, ScoutMax: 300 * time.Millisecond})
		g.Observe(backoff.Unreachable)
		gates = append(gates, g)
	}
	var up atomic.Bool // the destination answers
	var out, most, scouts atomic.Int64
	var upAt atomic.Int64
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for _, g := range gates {
		for range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					p, err := g.Acquire(ctx)
					if err != nil {
						return
					}
					if up.Load() {
						p.Done(backoff.Success)
						continue
					}
					scouts.Add(1)
					n := out.Add(1)
					for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
					}
					time.Sleep(30 * time.Millisecond)
					out.Add(-1)
					if upAt.Load() != 0 {
						up.Store(true)
						p.Done(backoff.Success)
						continue
					}
					p.Done(backoff.Unreachable)
				}
			}()
		}
	}
	time.Sleep(1500 * time.Millisecond)
	if m := most.Load(); m != 1 {
		t.Errorf("%d scouts at once across the fleet, want 1", m)
	}
	if n := scouts.Load(); n < 10 {
		t.Errorf("%d scouts in 1.5 s, want ≥ 10 (one at a time, back to back)", n)
	}
	upAt.Store(time.Now().UnixNano())
	deadline := time.Now().Add(2 * time.Second)
	for _, g := range gates {
		for g.State() != backoff.GateOpen && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if g.State() != backoff.GateOpen {
			t.Errorf("a gate still %v 2 s after the destination came back", g.State())
		}
	}
	t.Logf("%d scouts in 1.5 s, at most %d at once; every gate open %v after the path returned",
		scouts.Load(), most.Load(), time.Since(time.Unix(0, upAt.Load())).Round(time.Millisecond))
	cancel()
	wg.Wait()
}

// Redis killed in the middle of a herd and restarted: nothing is lost, no
// admission waits on Redis more than 100 ms, the gates admit locally at
// their share meanwhile, and rejoin the fleet without a burst.
func TestRedisKilledMidHerd(t *testing.T) {
	s := redistest.Start(t)
	cfg := Config{Heartbeat: 100 * time.Millisecond}
	fa, _ := newFleet(t, s, "a", cfg)
	fb, _ := newFleet(t, s, "b", cfg)
	ga := newGate(t, fa, backoff.GateConfig{Rate: 200})
	gb := newGate(t, fb, backoff.GateConfig{Rate: 200})
	time.Sleep(250 * time.Millisecond) // both members counted
	const n = 200
	at := make(chan time.Time, 2*n)
	var wg sync.WaitGroup
	start := time.Now()
	herd(t, ga, n, at, &wg)
	herd(t, gb, n, at, &wg)
	time.Sleep(500 * time.Millisecond)
	s.Kill()
	killed := time.Now()
	time.Sleep(700 * time.Millisecond)
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	before := fa.calls.Load() - fa.failed.Load() + fb.calls.Load() - fb.failed.Load()
	waitWithin(t, &wg, 10*time.Second, "every waiter admitted") // none stuck
	el := time.Since(start)
	close(at)
	var times, after []time.Time
	for x := range at {
		times = append(times, x)
		if x.After(restarted) {
			after = append(after, x)
		}
	}
	slowest := time.Duration(max(fa.slowest.Load(), fb.slowest.Load()))
	rejoined := fa.calls.Load() - fa.failed.Load() + fb.calls.Load() - fb.failed.Load() - before
	t.Logf("%d admitted in %v (killed at %v for %v); %d failed calls, slowest call %v; %d calls answered after the restart; peak %d per 100 ms, %d after the restart",
		len(times), el.Round(time.Millisecond), killed.Sub(start).Round(time.Millisecond), restarted.Sub(killed).Round(time.Millisecond),
		fa.failed.Load()+fb.failed.Load(), slowest, rejoined, peak(times, 100*time.Millisecond), peak(after, 100*time.Millisecond))
	if testing.Verbose() {
		bins := make([]int, int(el/(50*time.Millisecond))+1)
		for _, x := range times {
			bins[int(x.Sub(start)/(50*time.Millisecond))]++
		}
		t.Logf("admissions per 50 ms: %v", bins)
	}
	if len(times) != 2*n {
		t.Fatalf("%d admitted, want %d", len(times), 2*n)
	}
	// Calls are bounded at 50 ms (FleetCallBound 100 ms); the wall clock
	// also counts a loaded machine's scheduling, so the test's bounds are
	// generous: the 100 ms figure is measured by internal/bench/fleet.
	if slowest > 250*time.Millisecond {
		t.Errorf("a call to Redis took %v, want ≤ 250 ms (bounded at 50 ms)", slowest)
	}
	if want := float64(2*n) / 190; el.Seconds() > 2.5*want || el.Seconds() < 0.85*want {
		t.Errorf("took %v, want about %.2f s (the fleet pace, shared or in shares)", el, want)
	}
	if rejoined == 0 {
		t.Error("no call answered after the restart: the gates never rejoined")
	}
	// 19 a window at the pace; a burst on rejoining would release the
	// waiters queued during the fallback at once (dozens to hundreds).
	if p := peak(after, 100*time.Millisecond); p > 2*19 {
		t.Errorf("%d admissions in 100 ms after the restart, want ≤ 38: a burst on rejoining", p)
	}
}

// A member that leaves releases its share at once; one that stops
// heartbeating (a crash) within three heartbeats.
func TestStoppedMemberReleasesItsShare(t *testing.T) {
	s := redistest.Start(t)
	cfg := Config{Heartbeat: 50 * time.Millisecond}
	fa, _ := newFleet(t, s, "a", cfg)
	fb, _ := newFleet(t, s, "b", cfg)
	fc, cc := newFleet(t, s, "c", cfg)
	ma, mb, mc := fa.Join("d"), fb.Join("d"), fc.Join("d")
	defer ma.Leave()
	waitMembers := func(want int, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for ma.Members() != want {
			if time.Since(start) > within {
				t.Fatalf("members %d after %v, want %d", ma.Members(), within, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
		return time.Since(start)
	}
	waitMembers(3, time.Second)
	if err := mb.Leave(); err != nil {
		t.Fatal(err)
	}
	left := waitMembers(2, 2*cfg.Heartbeat)
	cc.Close() // c's heartbeats fail from now on, as if it had crashed
	crashed := waitMembers(1, 5*cfg.Heartbeat)
	_ = mc.Leave()
	t.Logf("a leaving member counted out in %v, a crashed one in %v (heartbeat %v)", left, crashed, cfg.Heartbeat)
}

// Members that start together are counted one by one as their first
// heartbeats land; each answer to Admit carries the count as it is, so a
// member's share does not wait for its next heartbeat (a second by
// default) to reflect the processes that joined after it.
func TestAdmitCountsTheMembers(t *testing.T) {
	s := redistest.Start(t)
	cfg := Config{Heartbeat: time.Hour} // one heartbeat each, at Join
	fa, ca := newFleet(t, s, "a", cfg)
	fb, _ := newFleet(t, s, "b", cfg)
	key := DefaultPrefix + "{d}:members"
	counted := func(want int64) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Second); ca.ZCard(t.Context(), key).Val() != want; {
			if time.Now().After(deadline) {
				t.Fatalf("%d members heartbeaten, want %d", ca.ZCard(t.Context(), key).Val(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	ma := fa.Join("d")
	defer ma.Leave()
	counted(1)
	mb := fb.Join("d")
	defer mb.Leave()
	counted(2)
	if n := ma.Members(); n != 1 {
		t.Fatalf("a counts %d members before b joined, want 1 (its one heartbeat)", n)
	}
	if _, err := ma.Admit(t.Context(), backoff.FleetRequest{Pace: backoff.FleetPace{Pace: 20, Startup: true}}); err != nil {
		t.Fatal(err)
	}
	if n := ma.Members(); n != 2 {
		t.Fatalf("a counts %d members after an Admit, want 2", n)
	}
}

// What one process learned is where a restarted process starts, until
// PaceTTL passes with no admission.
func TestLearnedPaceOutlivesAProcess(t *testing.T) {
	s := redistest.Start(t)
	cfg := Config{PaceTTL: 300 * time.Millisecond}
	fa, c := newFleet(t, s, "a", cfg)
	ga := newGate(t, fa, backoff.GateConfig{}) // adaptive: startup at 20/s
	p, err := ga.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p.Done(backoff.Overload(10 * time.Millisecond)) // a Retry-After: the pace halves
	learned := ga.Stats()
	ga.Close()
	if learned.Rate != 10 || learned.Estimate == 0 {
		t.Fatalf("gate A: pace %v estimate %v after a Retry-After in startup, want 10 and an estimate", learned.Rate, learned.Estimate)
	}
	// The ceiling (the pace that drew the Retry-After) and the Retry-After
	// travel with the pace: a new member probes no closer to it, and
	// weighs a probe against that pause.
	raw, _ := newFleet(t, s, "raw", cfg)
	m := raw.Join("registrar.test:5060")
	rep, err := m.Admit(t.Context(), backoff.FleetRequest{})
	_ = m.Leave()
	if err != nil {
		t.Fatal(err)
	}
	if rep.Pace.Ceiling != 20 || rep.Pace.RetryAfter != 10*time.Millisecond || rep.Pace.CeilingAge > time.Second {
		t.Fatalf("stored with the pace: ceiling %v (age %v), Retry-After %v; want 20 (just now) and 10ms",
			rep.Pace.Ceiling, rep.Pace.CeilingAge, rep.Pace.RetryAfter)
	}
	restarted := func() backoff.GateStats {
		t.Helper()
		fb, _ := newFleet(t, s, "b", cfg)
		gb := newGate(t, fb, backoff.GateConfig{})
		defer gb.Close()
		p, err := gb.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		p.Done(backoff.Success)
		return gb.Stats()
	}
	if st := restarted(); st.Rate != learned.Rate || st.Estimate != learned.Estimate {
		t.Fatalf("a restarted process starts at pace %v estimate %v, want the learned %v and %v",
			st.Rate, st.Estimate, learned.Rate, learned.Estimate)
	}
	time.Sleep(400 * time.Millisecond)
	if n := c.Exists(t.Context(), DefaultPrefix+"{registrar.test:5060}:pace").Val(); n != 0 {
		t.Fatal("the learned pace outlived PaceTTL")
	}
	if st := restarted(); st.Rate != backoff.DefaultInitialRate {
		t.Fatalf("after PaceTTL a new process starts at %v, want InitialRate %v", st.Rate, backoff.DefaultInitialRate)
	}
}

// TestFmtFloatHasNoExponent: the numbers the scripts read are written
// without an exponent, which Lua engines other than Redis's may not parse
// (gopher-lua reads "1e+06" as nil).
func TestFmtFloatHasNoExponent(t *testing.T) {
	for f, want := range map[float64]string{1e6: "1000000", 20: "20", 1.5e7: "15000000", 0.25: "0.25", 190.5: "190.5"} {
		if got := fmtFloat(f); got != want {
			t.Errorf("fmtFloat(%v) = %q, want %q", f, got, want)
		}
	}
}

// During startup the store reckons every place on the growth to come: a
// place booked now but due two steps later is spaced at the pace of its
// step, not at today's. Before, a place reckoned before a step was due late,
// and members that heard of the step caught up at once: against a
// registrar counting per 100 ms, a window of 21 after one of 17, and a
// first Retry-After blamed on the wrong step.
func TestStartupPlacesFollowTheGrowth(t *testing.T) {
	s := redistest.Start(t)
	f, _ := newFleet(t, s, "a", Config{})
	m := f.Join("registrar.test:5060")
	defer m.Leave()
	req := backoff.FleetRequest{Pace: backoff.FleetPace{Pace: 100, Startup: true}, Book: true,
		Grow: 100 * time.Millisecond, Gentle: 50, Ceiling: 1e6}
	var due []time.Time
	for range 40 {
		rep, err := m.Admit(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		due = append(due, time.Now().Add(rep.Wait))
	}
	// Places 2–8 are due in the first step (100/s), 25–31 in the third
	// (121/s): spaced 10 and 8.3 ms.
	first, third := due[8].Sub(due[2])/6, due[31].Sub(due[25])/6
	if ratio := float64(first) / float64(third); ratio < 1.12 || ratio > 1.35 {
		t.Fatalf("places spaced %v in the first step and %v in the third (ratio %.2f), want 10 and 8.3 ms (1.21)",
			first, third, ratio)
	}
}

// Members that draw rejections in the same overshoot each propose a cut
// from the version they last saw: the lowest stands (the earliest rejected
// attempt's count is the closest to the capacity), a higher one does not
// undo it, and a cut from an older version is refused.
func TestLowestCutOfAnOvershootStands(t *testing.T) {
	s := redistest.Start(t)
	f, _ := newFleet(t, s, "a", Config{})
	m := f.Join("registrar.test:5060")
	defer m.Leave()
	admit := func(pace float64, startup bool, from uint64) backoff.FleetPace {
		t.Helper()
		rep, err := m.Admit(t.Context(), backoff.FleetRequest{Propose: true, Ceiling: 1e6,
			Pace: backoff.FleetPace{Pace: pace, Startup: startup, Version: from}})
		if err != nil {
			t.Fatal(err)
		}
		return rep.Pace
	}
	base := admit(220, true, 0) // the startup step that overshoots
	got := admit(195, false, base.Version)
	if got.Pace != 195 {
		t.Fatalf("the first cut: pace %v, want 195", got.Pace)
	}
	if got = admit(190, false, base.Version); got.Pace != 190 {
		t.Fatalf("a lower cut of the same overshoot: pace %v, want 190", got.Pace)
	}
	if got = admit(193, false, base.Version); got.Pace != 190 {
		t.Fatalf("a higher cut of the same overshoot: pace %v, want 190 kept", got.Pace)
	}
	if got = admit(188, false, base.Version); got.Pace != 188 {
		t.Fatalf("a third, lower cut of the same overshoot: pace %v, want 188", got.Pace)
	}
	if got = admit(150, false, base.Version-1); got.Pace != 188 {
		t.Fatalf("a cut from an older version: pace %v, want 188 kept", got.Pace)
	}
}
