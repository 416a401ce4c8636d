package fleetgate

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/redistest"
)

// waitWithin waits for wg, failing the test if that takes longer than d.
func waitWithin(t *testing.T, wg *sync.WaitGroup, d time.Duration, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s: not done within %v", what, d)
	}
}

// Two members never hold the scout lease at once: eight members, each
// asking for it in a loop, holding it a random moment and releasing it,
// for a second; and a holder that never releases it (a scout lost in a
// black hole) keeps it exactly its lease.
func TestScoutLeaseNeverHeldTwice(t *testing.T) {
	s := redistest.Start(t)
	var holder atomic.Int64 // the member holding the lease, 0: none
	var grants, overlaps atomic.Int64
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for id := int64(1); id <= 8; id++ {
		f, _ := newFleet(t, s, "p"+string(rune('0'+id)), Config{Heartbeat: -1})
		m := f.Join("registrar.test:5060")
		defer m.Leave()
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(id), 1))
			for ctx.Err() == nil {
				rep, err := m.Scout(ctx, 500*time.Millisecond, false)
				if err != nil || !rep.Granted {
					time.Sleep(time.Duration(r.IntN(2000)) * time.Microsecond)
					continue
				}
				grants.Add(1)
				if was := holder.Swap(id); was != 0 {
					overlaps.Add(1)
					t.Errorf("member %d granted the lease while member %d held it", id, was)
				}
				time.Sleep(time.Duration(r.IntN(5000)) * time.Microsecond) // the scout
				holder.Store(0)
				if _, err := m.Scout(context.WithoutCancel(ctx), 0, false); err != nil {
					t.Errorf("member %d: release: %v", id, err)
				}
			}
		})
	}
	waitWithin(t, &wg, 5*time.Second, "the members")
	if grants.Load() < 50 {
		t.Errorf("%d grants in 1 s, want ≥ 50 (released at once, taken at once)", grants.Load())
	}
	t.Logf("%d grants in 1 s among 8 members, %d overlaps", grants.Load(), overlaps.Load())

	// A holder that never releases: nobody else gets it for its lease.
	fa, _ := newFleet(t, s, "lost", Config{Heartbeat: -1})
	fb, _ := newFleet(t, s, "other", Config{Heartbeat: -1})
	ma, mb := fa.Join("d2"), fb.Join("d2")
	defer ma.Leave()
	defer mb.Leave()
	if rep, err := ma.Scout(t.Context(), 300*time.Millisecond, false); err != nil || !rep.Granted {
		t.Fatalf("first ask: %+v %v, want granted", rep, err)
	}
	start := time.Now()
	for {
		rep, err := mb.Scout(t.Context(), 300*time.Millisecond, false)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Granted {
			break
		}
		if time.Since(start) > 2*time.Second {
			t.Fatal("the lease of a holder that never released it did not lapse in 2 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Fatalf("another member got the lease %v after it was granted for 300 ms", el)
	}
}

// A member that leaves, or crashes, releases its share: with Redis gone, a
// gate admits at 70 % of its share of the last known fleet pace, and once
// the others are counted out (Leave at once; a crash within three
// heartbeats, believed one heartbeat later: 5 heartbeats is the bound
// checked) a lone member admits at the whole pace.
func TestShareGrowsWhenMembersGo(t *testing.T) {
	s := redistest.Start(t)
	cfg := Config{Heartbeat: 50 * time.Millisecond}
	fa, _ := newFleet(t, s, "a", cfg)
	fb, _ := newFleet(t, s, "b", cfg)
	fc, cc := newFleet(t, s, "c", cfg)
	const rate = 100 // the fleet paces at 95/s
	ga := newGate(t, fa, backoff.GateConfig{Rate: rate})
	gb := newGate(t, fb, backoff.GateConfig{Rate: rate})
	gc := newGate(t, fc, backoff.GateConfig{Rate: rate})
	members := fa.members
	waitMembers := func(want int, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for members() != want {
			if time.Now().After(deadline) {
				t.Fatalf("gate a counts %d members after %v, want %d", members(), within, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// rateWithoutRedis kills Redis, measures gate a's admissions for 1 s
	// with attempts always waiting, and restarts Redis.
	rateWithoutRedis := func(live ...*backoff.Gate) float64 {
		t.Helper()
		for _, g := range live {
			admitOne(t, g) // every member knows the fleet pace
		}
		s.Kill()
		admitOne(t, ga) // the failed call: a on its share from now on
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		n := 0
		for {
			p, err := ga.Acquire(ctx)
			if err != nil {
				break
			}
			p.Done(backoff.Success)
			n++
		}
		if err := s.Restart(); err != nil {
			t.Fatal(err)
		}
		return float64(n)
	}
	waitMembers(3, time.Second)
	three := rateWithoutRedis(ga, gb, gc)
	waitMembers(3, time.Second) // counted again, one by one
	if err := gb.Close(); err != nil {
		t.Fatal(err)
	}
	cc.Close() // c's calls fail from now on, as if it had crashed
	start := time.Now()
	waitMembers(1, 5*cfg.Heartbeat)
	gone := time.Since(start)
	one := rateWithoutRedis(ga)
	t.Logf("without Redis gate a admitted %.0f/s among 3 members, %.0f/s alone (others counted out in %v; 0.7 × 95 / 3 = %.0f, alone the whole 95)",
		three, one, gone.Round(time.Millisecond), 0.7*95/3)
	if three < 0.5*0.7*95/3 || three > 1.5*0.7*95/3+2 {
		t.Errorf("among 3 members: %.0f/s without Redis, want about %.0f (70 %% of a third of 95)", three, 0.7*95/3)
	}
	// Alone it admits at the whole pace, 95/s, as fast as one loop of
	// Acquire and Done goes (slower under -race on a loaded host): at
	// least twice its share among three.
	if one > 1.1*95 || one < 2*three {
		t.Errorf("alone: %.0f/s without Redis, want about 95 (the whole fleet pace), at least twice %.0f/s: the others' share was not released", one, three)
	}
	// go-redis redials a dead server once a second, from a goroutine of
	// its own: let it find the restarted one before goleak looks.
	admitOne(t, ga)
	time.Sleep(1100 * time.Millisecond)
}

// admitOne admits one attempt through g within 2 s.
func admitOne(t *testing.T, g *backoff.Gate) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	p, err := g.Acquire(ctx)
	if err != nil {
		t.Fatalf("no admission within 2 s: %v", err)
	}
	p.Done(backoff.Success)
}

// A warm-up against a healthy destination grows the fleet's startup pace
// towards the ceiling; a gate that reopens after an outage resets it to its fresh
// start (InitialRate), as a lone gate does, instead of adopting a pace that
// was never measured. A learned pace (a Retry-After cut it) is kept.
func TestReopenResetsAStartupPace(t *testing.T) {
	s := redistest.Start(t)
	f, _ := newFleet(t, s, "a", Config{})
	g := newGate(t, f, backoff.GateConfig{ScoutBase: time.Millisecond, ScoutMax: 50 * time.Millisecond})
	fb, _ := newFleet(t, s, "b", Config{})
	other := newGate(t, fb, backoff.GateConfig{})
	deadline := time.Now().Add(5 * time.Second)
	for g.Stats().Rate < 300 { // the warm-up: nothing rejected, startup grows
		if time.Now().After(deadline) {
			t.Fatalf("pace %v after 5 s of warm-up, want ≥ 300 (%d calls, %d failed)", g.Stats().Rate, f.calls.Load(), f.failed.Load())
		}
		admitOne(t, g)
	}
	warm := g.Stats().Rate
	reopen := func() float64 {
		t.Helper()
		// Another member books after a's last call: the store grows
		// the pace twice more, and a's version is stale (its proposal alone would
		// lose, even as a cut).
		for range 2 {
			time.Sleep(250 * time.Millisecond) // a fleet grows every 100 ms
			admitOne(t, other)
		}
		time.Sleep(500 * time.Millisecond) // the outage (a startup pace unchanged for two growth periods)
		g.Observe(backoff.Unreachable)     // found: the gate closes
		if g.State() != backoff.GateClosed {
			t.Fatalf("state %v after Observe(Unreachable), want closed", g.State())
		}
		admitOne(t, g) // the scout, answered: it reopens
		if g.State() != backoff.GateOpen {
			t.Fatalf("state %v after a scout's success, want open", g.State())
		}
		admitOne(t, g) // the first admission after: tells the fleet
		admitOne(t, g)
		return g.Stats().Rate
	}
	if got := reopen(); got > 2*backoff.DefaultInitialRate {
		t.Fatalf("after reopening, pace %v (the warm-up's was %v), want a fresh start at %v", got, warm, backoff.DefaultInitialRate)
	}
	p, err := g.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p.Done(backoff.Overload(10 * time.Millisecond)) // learned: startup ends
	time.Sleep(20 * time.Millisecond)
	learned := g.Stats().Rate
	if got := reopen(); got != learned {
		t.Fatalf("after reopening, pace %v, want the learned %v kept", got, learned)
	}
}
