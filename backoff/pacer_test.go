package backoff

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// pacerStep is one row of a pacer table: at a time since the pacer's
// creation, an event, and the pace expected after it.
type pacerStep struct {
	at   time.Duration
	ev   string // control, admit, accept, reject, reopen, busy
	arg  int    // control: attempts queued; admit, accept, reject: a stamp's slot; busy: accepted attempts
	n    int    // repeat the event n times (0: once)
	ra   time.Duration
	pace float64          // the pace expected after the step; 0: not checked
	also func(*pacer) any // a further check: nil, or what was wrong
}

func runPacer(t *testing.T, p *pacer, t0 time.Time, steps []pacerStep) {
	t.Helper()
	stamps := map[int]stamp{}
	for i, s := range steps {
		now := t0.Add(s.at)
		for range max(s.n, 1) {
			switch s.ev {
			case "control":
				p.control(now, s.arg)
			case "admit":
				stamps[s.arg] = p.stamp(now)
			case "accept":
				p.accepted(now, stamps[s.arg])
			case "reject":
				p.rejected(now, s.ra, stamps[s.arg])
			case "reopen":
				p.reopen(now)
			case "busy":
				busy(p, now, s.arg, time.Second)
			default:
				t.Fatalf("step %d: unknown event %q", i, s.ev)
			}
		}
		if s.pace != 0 && math.Abs(p.pace-s.pace) > 1e-9 {
			t.Fatalf("step %d (%v %s %d): pace %v, want %v", i, s.at, s.ev, s.arg, p.pace, s.pace)
		}
		if s.also != nil {
			if bad := s.also(p); bad != nil {
				t.Fatalf("step %d (%v %s %d): %v", i, s.at, s.ev, s.arg, bad)
			}
		}
	}
}

// busy records n accepted attempts admitted evenly over the d before now:
// the evidence that the pace was in use (pacer.exercised).
func busy(p *pacer, now time.Time, n int, d time.Duration) {
	for i := range n {
		p.countAccepted(now.Add(-d + time.Duration(i)*d/time.Duration(n)))
	}
}

func wantField[T comparable](name string, get func(*pacer) T, want T) func(*pacer) any {
	return func(p *pacer) any {
		if got := get(p); got != want {
			return fmt.Sprintf("%s = %v, want %v", name, got, want)
		}
		return nil
	}
}

const ms = time.Millisecond

// startupTo40 doubles an adaptive pacer from 20/s to 80/s, then a
// Retry-After at 80/s halves it to 40/s: the common prefix of the rows
// below (hi = 80 at 320 ms, one cut).
var startupTo40 = []pacerStep{
	{at: 50 * ms, ev: "control", arg: 5, pace: 20},  // before the first period
	{at: 100 * ms, ev: "control", arg: 5, pace: 40}, // doubles with demand
	{at: 200 * ms, ev: "control", arg: 0, pace: 40}, // no demand: no growth
	{at: 300 * ms, ev: "control", arg: 5, pace: 80}, // doubles again
	{at: 300 * ms, ev: "admit", arg: 0},             // admitted at 80/s
	{at: 310 * ms, ev: "admit", arg: 1},             // in flight too
	{at: 320 * ms, ev: "reject", arg: 0, ra: time.Second, pace: 40, // startup: halve
		also: wantField("hi", func(p *pacer) float64 { return p.hi }, 80)},
	{at: 330 * ms, ev: "reject", arg: 1, ra: time.Second, pace: 40, // same overshoot: no second cut
		also: wantField("cuts", func(p *pacer) uint64 { return p.cuts }, 1)},
}

func TestPacerTable(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	cases := []struct {
		name                   string
		rate, initial, minRate float64
		steps                  []pacerStep
	}{
		{name: "startup doubling, Retry-After cut, one cut per overshoot", steps: startupTo40},
		{name: "Retry-After cut: unproven pace ×0.6, proven ×0.9", steps: append(startupTo40[:len(startupTo40):len(startupTo40)],
			pacerStep{at: 400 * ms, ev: "admit", arg: 2},
			pacerStep{at: 500 * ms, ev: "reject", arg: 2, ra: time.Second, pace: 24}, // 180 ms after the last cut
			pacerStep{at: 1600 * ms, ev: "admit", arg: 3},
			pacerStep{at: 1600 * ms, ev: "busy", arg: 12}, // half the pace accepted in the last second
			pacerStep{at: 1600 * ms, ev: "reject", arg: 3, ra: time.Second, pace: 21.6, // ran clean and in use 1.1 s
				also: wantField("estimate", func(p *pacer) float64 { return math.Round(p.estimate*1e6) / 1e6 }, math.Round(21.6/cruiseGain*1e6)/1e6)},
		)},
		{name: "Retry-After cut: a pace clean for a second with little asked of it is not proven, ×0.6", steps: append(startupTo40[:len(startupTo40):len(startupTo40)],
			pacerStep{at: 400 * ms, ev: "admit", arg: 2},
			pacerStep{at: 500 * ms, ev: "reject", arg: 2, ra: time.Second, pace: 24},
			pacerStep{at: 1600 * ms, ev: "admit", arg: 3},
			pacerStep{at: 1600 * ms, ev: "busy", arg: 11}, // under half the pace: a few refreshes
			pacerStep{at: 1600 * ms, ev: "reject", arg: 3, ra: time.Second, pace: 14.4},
		)},
		{name: "probeWorthIt: no probe near the end of a herd, a quarter-way probe with work queued", steps: append(startupTo40[:len(startupTo40):len(startupTo40)],
			pacerStep{at: 1000 * ms, ev: "control", arg: 1000, pace: 40}, // under 1 s since the rejection
			pacerStep{at: 2000 * ms, ev: "busy", arg: 20},
			pacerStep{at: 2000 * ms, ev: "control", arg: 10, pace: 40},   // 0.25 s of work left: not worth a pause
			pacerStep{at: 3000 * ms, ev: "control", arg: 1000, pace: 40}, // the pace was not in use in the last second
			pacerStep{at: 4000 * ms, ev: "busy", arg: 20},
			pacerStep{at: 4000 * ms, ev: "control", arg: 1000, pace: 50, // 25 s left: 40 + (80-40)/4
				also: wantField("probeFrom", func(p *pacer) float64 { return p.probeFrom }, 40)},
		)},
		{name: "a probe that overshoots: back to the pace before it, probe half as often", steps: append(startupTo40[:len(startupTo40):len(startupTo40)],
			pacerStep{at: 2000 * ms, ev: "busy", arg: 20},
			pacerStep{at: 2000 * ms, ev: "control", arg: 1000, pace: 50},
			pacerStep{at: 2100 * ms, ev: "admit", arg: 4},
			pacerStep{at: 2200 * ms, ev: "reject", arg: 4, ra: time.Second, pace: 40,
				also: func(p *pacer) any {
					if p.probeEvery != 2*time.Second || p.hi != 50 || p.cuts != 2 {
						return fmt.Sprintf("probeEvery %v hi %v cuts %d, want 2s 50 2", p.probeEvery, p.hi, p.cuts)
					}
					return nil
				}},
		)},
		{name: "configured rate: a lone Retry-After is forgiven, a second within 10 s cuts", rate: 200, steps: []pacerStep{
			{at: 0, ev: "control", arg: 100, pace: 190},
			{at: 5 * time.Second, ev: "control", arg: 100, pace: 190}, // never probes past 95 % of Rate
			{at: 5 * time.Second, ev: "admit", arg: 0},
			{at: 5 * time.Second, ev: "reject", arg: 0, ra: time.Second, pace: 190},
			{at: 7 * time.Second, ev: "admit", arg: 1},
			{at: 7 * time.Second, ev: "busy", arg: 95},
			{at: 7 * time.Second, ev: "reject", arg: 1, ra: time.Second, pace: 171}, // proven pace: ×0.9
			{at: 19 * time.Second, ev: "admit", arg: 2},
			{at: 19 * time.Second, ev: "reject", arg: 2, ra: time.Second, pace: 171}, // 14 s later: forgiven again
		}},
		{name: "an episode measures the accepted rate; a reopening keeps it and ignores older permits", steps: []pacerStep{
			{at: 100 * ms, ev: "control", arg: 5, pace: 40},
			{at: 200 * ms, ev: "control", arg: 5, pace: 80},
			{at: 200 * ms, ev: "admit", arg: 0},
			{at: 210 * ms, ev: "reject", arg: 0, pace: 40, // no Retry-After: halve and measure
				also: wantField("episode", func(p *pacer) bool { return p.ep.active }, true)},
			{at: 220 * ms, ev: "admit", arg: 1}, // at 40/s
			{at: 1210 * ms, ev: "accept", arg: 1, n: 10, pace: 40},
			{at: 1210 * ms, ev: "reject", arg: 1, n: 4, pace: 40},
			// The 16th outcome after 1 s: 10 accepted at 40/s of 16 → 25/s
			// (10 successes in 1 s is less), paced at 95 %.
			{at: 1210 * ms, ev: "reject", arg: 1, pace: 0.95 * 25,
				also: wantField("estimate", func(p *pacer) float64 { return p.estimate }, 25)},
			{at: 2 * time.Second, ev: "reopen", pace: 0.95 * 25,
				also: wantField("startup", func(p *pacer) bool { return p.startup }, false)},
			{at: 2100 * ms, ev: "reject", arg: 1, pace: 0.95 * 25, // admitted before the reopening
				also: wantField("episode", func(p *pacer) bool { return p.ep.active }, false)},
		}},
		{name: "negative InitialRate: no startup, from the floor", initial: -1, minRate: 2, steps: []pacerStep{
			{at: 100 * ms, ev: "control", arg: 5, pace: 2},
			{at: 1000 * ms, ev: "control", arg: 5, pace: 2}, // nothing accepted: no probe
			{at: 2000 * ms, ev: "busy", arg: 2},
			{at: 2000 * ms, ev: "control", arg: 5, pace: 2.2}, // a cruise probe: 1.1×
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := GateConfig{Rate: c.rate, InitialRate: c.initial, MinRate: c.minRate}.resolve()
			p := newPacer(cfg.Rate, cfg.InitialRate, cfg.MinRate, t0)
			runPacer(t, &p, t0, c.steps)
		})
	}
}

// next tells the Gate when control may change the pace.
func TestPacerNext(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	p := newPacer(0, DefaultInitialRate, DefaultMinRate, t0)
	if at := p.next(); !at.Equal(t0.Add(defaultStartupPeriod)) {
		t.Fatalf("startup: next %v, want the first doubling", at.Sub(t0))
	}
	p.rejected(t0.Add(50*ms), 0, p.stamp(t0))
	if at := p.next(); !at.Equal(t0.Add(50*ms + 4*defaultProbePeriod)) {
		t.Fatalf("episode: next %v, want its 4 s timeout", at.Sub(t0))
	}
	u := newPacer(-1, DefaultInitialRate, DefaultMinRate, t0)
	if !u.unlimited() || !u.next().IsZero() {
		t.Fatal("a negative Rate: want unlimited, no control")
	}
}

// At startup's first Retry-After, a destination that counts per window
// aligned on the clock has told its capacity: the attempts it accepted in
// that window. The pacer paces at 95 % of that count per 100 ms, with the
// count as the ceiling, and forgives one lone Retry-After there (timing
// jitter); a second within 10 s cuts. When the count cannot be a window's
// (fewer than the window before accepted, as a token bucket's), it halves.
func TestPacerCountsCapacityAtFirstRetryAfter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) // a window's start
	herd := func(prev, cur int) (*pacer, stamp) {
		p := new(pacer)
		*p = newPacer(0, 20, 1, t0.Add(-time.Second))
		p.pace = 160
		// the window before: prev accepted at 160/s, ending at t0
		for i := range prev {
			s := p.stamp(t0.Add(-time.Duration(prev-i) * time.Second / 160))
			p.accepted(s.at.Add(time.Millisecond), s)
		}
		p.pace = 320 // doubled at t0
		for i := range cur {
			s := p.stamp(t0.Add(time.Duration(i) * time.Second / 320))
			p.accepted(s.at.Add(time.Millisecond), s)
		}
		return p, p.stamp(t0.Add(time.Duration(cur) * time.Second / 320))
	}
	p, s := herd(16, 20) // C = 200: 20 per 100 ms
	p.rejected(s.at.Add(time.Millisecond), time.Second, s)
	if p.pace != 190 || p.hi != 200 || p.startup {
		t.Fatalf("after the first 503 with 20 accepted in its window: pace %v hi %v startup %v, want 190, 200, false", p.pace, p.hi, p.startup)
	}
	now := s.at.Add(3 * time.Second)
	p.rejected(now, time.Second, p.stamp(now))
	if p.pace != 190 {
		t.Fatalf("a lone 503 at 95 %% of the counted capacity cut the pace to %v, want 190 (forgiven)", p.pace)
	}
	now = now.Add(3 * time.Second)
	p.rejected(now, time.Second, p.stamp(now))
	if p.pace >= 190 {
		t.Fatalf("a second 503 within 10 s left the pace at %v, want a cut", p.pace)
	}

	p, s = herd(16, 12) // fewer in the window than the window before: not a window's count
	p.rejected(s.at.Add(time.Millisecond), time.Second, s)
	if p.pace != 160 {
		t.Fatalf("after a 503 with 12 accepted after 16 in the window before: pace %v, want 160 (halved)", p.pace)
	}
}

// A new member adopting the fleet's pace adopts its ceiling and Retry-After
// too: it does not probe within 10 % of a ceiling it never drew itself, and
// with the ceiling forgotten it probes a Retry-After destination only when
// the work queued is worth the pause (before, every new member of a second
// herd probed 1.1× at its first admission, from a pace set 7 s earlier).
func TestPacerAdoptsFleetCeiling(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	run := func(f FleetPace, queued int) float64 {
		p := newPacer(0, 20, 1, t0)
		p.adopt(t0, f, t0.Add(-7*time.Second))
		for i := range 30 {
			now := t0.Add(time.Duration(i) * 100 * time.Millisecond)
			busy(&p, now, 19, 100*time.Millisecond) // the pace in use
			p.control(now, queued)
		}
		return p.pace
	}
	learned := FleetPace{Pace: 190, Estimate: 200, Ceiling: 200, CeilingAge: 2 * time.Second, RetryAfter: time.Second}
	if got := run(learned, 2000); got != 190 {
		t.Fatalf("with the fleet's ceiling 200: pace %v after 3 s, want 190 (no probe)", got)
	}
	old := learned
	old.Ceiling, old.CeilingAge = 0, 0
	if got := run(old, 200); got != 190 {
		t.Fatalf("ceiling forgotten, 1 s of work queued: pace %v, want 190 (a probe not worth a pause)", got)
	}
	if got := run(old, 20000); got <= 190 {
		t.Fatalf("ceiling forgotten, 100 s of work queued: pace %v, want a probe above 190", got)
	}
}

// Under a ceiling it (or its fleet) overshot, a pace within 10 % of it that
// ran clean for a probe period forgives one lone Retry-After in 10 s (timing
// jitter: a process late on its slot, a burst across the destination's
// window); a second within 10 s cuts.
func TestPacerForgivesJitterUnderCeiling(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := newPacer(0, 20, 1, t0)
	p.adopt(t0, FleetPace{Pace: 190, Estimate: 200, Ceiling: 210, RetryAfter: time.Second}, t0)
	now := t0.Add(2 * time.Second)
	busy(&p, now, 190, time.Second)
	p.rejected(now, time.Second, p.stamp(now))
	if p.pace != 190 {
		t.Fatalf("a lone 503 at 190 under the ceiling 210, clean for 2 s: pace %v, want 190", p.pace)
	}
	now = now.Add(3 * time.Second)
	p.rejected(now, time.Second, p.stamp(now))
	if p.pace >= 190 {
		t.Fatalf("a second 503 within 10 s: pace %v, want a cut", p.pace)
	}
}

// A fleet's startup doubles to 4 × InitialRate, then grows by 10 % per
// period on the store's grid, so that its first overshoot is at most 10 %
// above the capacity. At its first Retry-After the fleet counts its schedule
// over the destination's windows (100 ms, aligned on the clock): the window
// before the rejected attempt's ran at the clean rate, its own at the rate
// that overshot, and what it admitted before the rejected attempt is the
// capacity, less the places a loaded fleet leaves unused
// (fleetScheduleBias), when it lies between the two; the pace is 95 % of it.
// A step set just before the rejected attempt had only begun (before, a
// step set 14 ms before it was taken for the one that overshot: the fleet
// went back to a step above the capacity, and a second pause). If that pace
// draws a Retry-After before it is proven, one more step down; a lone
// Retry-After there once it is proven is its members' jitter: forgiven
// (before, a 503 at 185 with the ceiling 212.8 cut the fleet to 166.5, 10 s
// into the herd).
func TestPacerFleetStartupCutTheStepThatOvershot(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) // a window's start
	const top, g = 212.8, FleetGentleGrowth           // the last step; the growth per step
	const period = 100 * time.Millisecond
	// admitted integrates the store's schedule (a step every period, the
	// last, top, set at last) over [from, to), independently of the pacer.
	admitted := func(last, from, to time.Time) float64 {
		n := 0.0
		for t := from; t.Before(to); t = t.Add(time.Millisecond) {
			pace, set := top, last
			for set.After(t) {
				pace, set = pace/g, set.Add(-period)
			}
			n += pace / 1000
		}
		return n
	}
	cases := []struct {
		name      string
		setBefore time.Duration // the last step, before the rejected attempt
		heardLast bool          // the member heard of the last step
		at        time.Duration // the rejected attempt, into its window
		trusted   bool          // the count before it is taken
	}{
		{"last step 14 ms before, late in the window", 14 * time.Millisecond, true, 95 * time.Millisecond, true},
		{"last step not yet heard of", 14 * time.Millisecond, false, 95 * time.Millisecond, true},
		{"last step 60 ms before", 60 * time.Millisecond, true, 95 * time.Millisecond, true},
		{"early in the window: the count proves nothing", 10 * time.Millisecond, true, 30 * time.Millisecond, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPacer(0, 20, 1, t0.Add(-2*time.Second))
			p.fleetGrows = true
			at := t0.Add(c.at)
			last := at.Add(-c.setBefore)
			if c.heardLast {
				p.adopt(at, FleetPace{Pace: top, Startup: true}, last)
			} else {
				p.adopt(at, FleetPace{Pace: top / g, Startup: true}, last.Add(-period))
			}
			s := p.stamp(at)
			p.rejected(at.Add(time.Millisecond), time.Second, s)
			clean := admitted(last, t0.Add(-period), t0) / period.Seconds()
			over := admitted(last, t0, t0.Add(period)) / period.Seconds()
			want := clean
			if c.trusted {
				raw := admitted(last, t0, at) / period.Seconds()
				if !(raw > 0.9*clean && raw < over) {
					t.Fatalf("the case's count %v is not between %v and %v", raw, clean, over)
				}
				want = fleetScheduleBias * raw
			}
			if p.startup || math.Abs(p.pace-cruiseGain*want) > 0.3 || math.Abs(p.hi-want) > 0.3 {
				t.Fatalf("pace %v ceiling %v startup %v, want %v, %v, false", p.pace, p.hi, p.startup, cruiseGain*want, want)
			}
			cut := p.pace
			p.resumed(at.Add(time.Second)) // the pause's end
			q := p
			// Right after the pause, a Retry-After at that pace (not
			// proven yet): one more step down.
			now := at.Add(1100 * time.Millisecond)
			q.rejected(now, time.Second, q.stamp(now))
			if want := cut / FleetGentleGrowth; math.Abs(q.pace-want) > 0.1 {
				t.Fatalf("a 503 just after the pause at the unproven pace %v: pace %v, want %v", cut, q.pace, want)
			}
			// A lone Retry-After at that pace 8 s later (the members'
			// jitter) pauses without a cut.
			now = at.Add(8 * time.Second)
			p.rejected(now, time.Second, p.stamp(now))
			if math.Abs(p.pace-cut) > 0.1 {
				t.Fatalf("a lone 503 at the proven pace %v cut the pace to %v", cut, p.pace)
			}
		})
	}
	// Another member, which adopts that cut, steps down the same way.
	p := newPacer(0, 20, 1, t0)
	p.fleetGrows = true
	p.adopt(t0, FleetPace{Pace: 212.8, Startup: true}, t0)
	p.adopt(t0.Add(time.Second), FleetPace{Pace: 185, Estimate: 185 / cruiseGain, Ceiling: 212.8}, t0.Add(time.Second))
	p.resumed(t0.Add(2 * time.Second))
	now := t0.Add(2100 * time.Millisecond)
	p.rejected(now, time.Second, p.stamp(now))
	if want := 185 / FleetGentleGrowth; math.Abs(p.pace-want) > 0.1 {
		t.Fatalf("a member that adopted the cut, after a 503 just after the pause: pace %v, want %v", p.pace, want)
	}
	// The member that made the first cut, which another member's lower cut
	// of the same overshoot replaced, steps down the same way too (before,
	// adopting the lower cut took it for a pace never proven: a 40 % cut).
	q := newPacer(0, 20, 1, t0)
	q.fleetGrows = true
	q.adopt(t0, FleetPace{Pace: 212.8, Startup: true}, t0)
	at := t0.Add(95 * time.Millisecond)
	q.rejected(at, time.Second, q.stamp(at))
	if q.startup || !q.gentleStep {
		t.Fatalf("after its own startup cut: startup %v, gentle step %v; want false, true", q.startup, q.gentleStep)
	}
	low := 0.98 * q.pace
	q.adopt(at.Add(5*time.Millisecond), FleetPace{Pace: low, Estimate: low / cruiseGain, Ceiling: low / cruiseGain}, at)
	q.resumed(at.Add(time.Second))
	now = at.Add(1100 * time.Millisecond)
	q.rejected(now, time.Second, q.stamp(now))
	if want := low / FleetGentleGrowth; math.Abs(q.pace-want) > 0.1 {
		t.Fatalf("the first cutter, on the lower cut, after a 503 just after the pause: pace %v, want %v", q.pace, want)
	}
	if p := newPacer(0, 20, 1, t0); p.fleetGentleFrom() != 80 {
		t.Fatalf("gentle growth from %v, want 80 (4 × InitialRate)", p.fleetGentleFrom())
	}
}
