package backoff

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakeFleet is a FleetMember whose Admit answers with admit (nil: an
// error at once) and which counts its calls.
type fakeFleet struct {
	mu      sync.Mutex
	admit   func(ctx context.Context, req FleetRequest) (FleetReply, error)
	calls   int
	members int
	left    bool
}

func (f *fakeFleet) Join(string) FleetMember { return f }

func (f *fakeFleet) Admit(ctx context.Context, req FleetRequest) (FleetReply, error) {
	f.mu.Lock()
	f.calls++
	admit := f.admit
	f.mu.Unlock()
	if admit == nil {
		return FleetReply{}, errors.New("fake: store down")
	}
	return admit(ctx, req)
}

func (f *fakeFleet) Scout(context.Context, time.Duration, bool) (FleetScout, error) {
	return FleetScout{}, errors.New("fake: store down")
}

func (f *fakeFleet) Members() int { return f.members }

func (f *fakeFleet) Leave() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.left = true
	return nil
}

// admitN admits n attempts through g one after the other, each done with
// Success, and returns how long that took.
func admitN(t *testing.T, g *Gate, n int) time.Duration {
	t.Helper()
	start := time.Now()
	for range n {
		p, err := g.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		p.Done(Success)
	}
	return time.Since(start)
}

// A store that hangs costs an admission at most FleetCallBound; then the
// gate admits locally at its share of the fleet pace (pace ÷ members) until
// the next whole second, and Close leaves the fleet.
func TestGateFleetHungStore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		answered := false
		f := &fakeFleet{members: 2}
		f.admit = func(ctx context.Context, req FleetRequest) (FleetReply, error) {
			if !answered {
				// One answer first: a gate the store never answered
				// asks again sooner (TestGateFleetFirstAnswer).
				answered = true
				return FleetReply{Pace: FleetPace{Pace: 95, Version: 1}, Seq: 1}, nil
			}
			<-ctx.Done()
			return FleetReply{}, context.Cause(ctx)
		}
		g := NewGate(GateConfig{Rate: 100, Fleet: f}) // fleet pace 95/s
		// The place booked, then the call's bound, then a random point of
		// the first interval at the share: 0.7 × 95/2 = 33/s.
		if d := admitN(t, g, 2); d > FleetCallBound+2*time.Second/33 {
			t.Fatalf("two admissions took %v with a hung store, want ≤ %v and two intervals", d, FleetCallBound)
		}
		// 20 more, within the fallback (to the next whole second): local,
		// at the share (30/s with the 100 ms guard: 3 per 100 ms).
		d := admitN(t, g, 20)
		if rate := 20 / d.Seconds(); rate < 27 || rate > 36 {
			t.Fatalf("%.1f/s while the store hangs, want 30–33 (0.7 × 95/s ÷ 2 members)", rate)
		}
		if f.calls != 2 {
			t.Fatalf("%d calls to the store, want 2: one answered, one hung, none more within the fallback second", f.calls)
		}
		g.Close()
		if !f.left {
			t.Fatal("Close did not leave the fleet")
		}
	})
}

// A gate the store has never answered asks again 100 ms after a failed
// call, then 200 and 400 ms later, not at the next whole second: a
// process's first calls pay for its connections. Meanwhile it admits at
// its MinRate, not on its initial pace over a member count that may not
// be counted yet (1 here). Once answered, it admits through the fleet.
func TestGateFleetFirstAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var calls []time.Duration
		var seq uint64
		f := &fakeFleet{members: 1}
		f.admit = func(_ context.Context, req FleetRequest) (FleetReply, error) {
			calls = append(calls, time.Since(start))
			if time.Since(start) < 250*time.Millisecond {
				return FleetReply{}, errors.New("fake: i/o timeout")
			}
			rep := FleetReply{Pace: FleetPace{Pace: 95, Version: 1}}
			if req.Book {
				seq++
				rep.Seq = seq
			}
			return rep, nil
		}
		g := NewGate(GateConfig{Fleet: f})
		defer g.Close()
		early := 0
		for range 20 {
			p, err := g.Acquire(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if time.Since(start) < 250*time.Millisecond {
				early++
			}
			p.Done(Success)
		}
		if early > 1 {
			t.Errorf("%d admitted in the 250 ms before the store first answered, want at most 1 (MinRate, 1/s)", early)
		}
		want := []time.Duration{0, 100 * time.Millisecond, 300 * time.Millisecond}
		if len(calls) < len(want) {
			t.Fatalf("calls at %v, want the first three at %v", calls, want)
		}
		for i, at := range want {
			if calls[i] != at {
				t.Fatalf("calls at %v, want the first three at %v", calls, want)
			}
		}
		if !g.fleet.connected() {
			t.Fatal("the gate does not admit through the fleet after the store answered")
		}
	})
}

// A pause the fleet reports is this gate's pause, exactly (no spread: the
// fleet's queue spreads the resumption), and the place held survives it.
func TestGateFleetPause(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var seq uint64
		paused := true
		f := &fakeFleet{members: 1}
		f.admit = func(_ context.Context, req FleetRequest) (FleetReply, error) {
			rep := FleetReply{Pace: FleetPace{Pace: 95, Version: 1}}
			if paused {
				paused = false
				rep.Paused = 300 * time.Millisecond
			}
			if req.Book {
				seq++
				rep.Seq = seq
			}
			if req.Held != 0 && rep.Paused > 0 {
				rep.Due = rep.Paused
			}
			return rep, nil
		}
		g := NewGate(GateConfig{Rate: 100, Fleet: f})
		defer g.Close()
		start := time.Now()
		admitN(t, g, 1)
		if d := time.Since(start); d != 300*time.Millisecond {
			t.Fatalf("admitted %v after the fleet's 300 ms pause began, want exactly 300 ms", d)
		}
		if f.calls > 3 {
			t.Fatalf("%d calls for one admission through a pause, want ≤ 3", f.calls)
		}
	})
}
