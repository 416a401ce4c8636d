package backoff

import (
	"math"
	"time"
)

// Constants of the pacer.
const (
	defaultStartupPeriod = 100 * time.Millisecond
	defaultProbePeriod   = time.Second
	cruiseGain           = 0.95
	hiMemory             = 10 * time.Second
	minEpisodeOutcomes   = 16
	minEpisodeDuration   = 50 * time.Millisecond
)

// pacer is the Gate's adaptive controller: how fast to admit, when to probe
// upward, how to react to a rejection and to a Retry-After. It is a value
// with no lock, no timer and no clock of its own: every method takes now,
// as x/time/rate's reserveN(t, n) does, so a table of (now, event) rows
// drives it in tests, and the Gate (which owns the queue, the permits, the
// token bucket, the scouts, the pause and the timer, under its lock) asks it
// for the pace and tells it the outcomes.
//
// The Gate's calls: stamp when it admits an attempt (the attempt carries
// the pace, cut count and epoch it was admitted under); accepted and
// rejected when the attempt's outcome comes back; control before each
// admission decision (startup doubling, cruise probes, an episode that
// timed out) and next for when control may change the pace again; reopen
// when a closed gate reopens; paused and resumed around a push-back.
//
// Where state shared between processes enters (the fleet-wide gate): a
// fleet of processes admitting towards one destination should share
//   - the pace (p.pace, p.estimate, p.hi/p.hiAt and p.cuts): one process's
//     measurement or Retry-After cut becomes every process's, each admitting
//     at its share; accepted and rejected are where an outcome would be
//     published, and stamp/control where the fleet's pace would be read;
//   - the outcome counts behind an episode (p.ep), summed over the fleet;
//   - the pause-until and the closed state's scout lease, which the Gate
//     holds (Gate.pausedUntil, Gate.nextScout/scoutsOut): one Retry-After
//     pauses every process, one scout probes a dead destination for all.
//
// A shared store would sit behind these methods, never inside the Gate's
// admission loop: the pacer would read a cached fleet pace and publish its
// outcomes asynchronously, so that admission never waits on the store.
type pacer struct {
	// configuration, resolved by NewGate
	rate        float64 // GateConfig.Rate: > 0 a ceiling, < 0 unlimited, 0 adaptive
	initialRate float64
	minRate     float64

	pace       float64
	estimate   float64
	startup    bool
	growAt     time.Time // next startup doubling
	probeAt    time.Time // next cruise probe
	probeEvery time.Duration
	probedAt   time.Time     // last cruise probe
	cleanProbe int           // consecutive probes without rejection
	rejectedAt time.Time     // last rejection
	minRTT     time.Duration // smallest round trip seen: the path, not the queue
	probeFrom  float64       // the pace before the last probe
	epoch      uint64        // counts reopenings: older permits do not steer the pace
	paceSetAt  time.Time     // when the pace last changed
	hi         float64       // a pace that drew a Retry-After, recently
	hiAt       time.Time
	cuts       uint64        // pace cuts for a Retry-After: one per overshoot
	trustAt    time.Time     // a Retry-After forgiven at a configured Rate
	lastRA     time.Duration // the last Retry-After
	ep         episode
	okAt       []int64 // admission times (UnixNano) of accepted attempts: a ring
	okNext     int     // where the next goes once the ring is full
	counted    bool    // hi is a capacity counted at startup's first Retry-After
	// gentleStep: the pace is the step of a fleet's gentle startup below
	// the one that drew its first Retry-After (or 95 % of a count between
	// them), not yet proven or cut.
	gentleStep bool
	// fleetGrows: the gate's Fleet doubles the pace during startup (see
	// FleetRequest.Grow), so control does not. fleetHeld: the gate's Fleet
	// cannot be reached, and the pace is the last known fleet pace, held:
	// the members, each at its share, must not probe upward independently
	// (they would add up), and a rejection pauses the member but does not
	// cut (the members' random phases against the server's windows, not
	// the pace, make most of them).
	fleetGrows, fleetHeld bool
	// members is how many gates share the pace: 1 for a gate of its own,
	// the fleet's live members while its store answers. A member sees its
	// share of the fleet's outcomes (see exercised).
	members int
}

// episode is a measurement of the destination's acceptance while it rejects.
type episode struct {
	active    bool
	start     time.Time
	succ, rej int
	// paused: a push-back happened during the episode, so successes per
	// second of wall time say nothing about the destination.
	paused bool
	// offered sums, over the accepted outcomes, the pace at which each was
	// admitted: offered/(succ+rej) is the rate the destination accepted.
	offered float64
}

// okRing is how many accepted attempts the pacer remembers the admission
// time of: what the destination accepted just before it first rejected.
const okRing = 1024

// countAccepted notes an accepted attempt admitted at at.
func (p *pacer) countAccepted(at time.Time) {
	if p.okAt == nil {
		p.okAt = make([]int64, 0, okRing)
	}
	if len(p.okAt) < okRing {
		p.okAt = append(p.okAt, at.UnixNano())
		return
	}
	p.okAt[p.okNext] = at.UnixNano()
	p.okNext = (p.okNext + 1) % okRing
}

// acceptedIn returns how many of the remembered accepted attempts were
// admitted in [from, to).
func (p *pacer) acceptedIn(from, to time.Time) int {
	lo, hi := from.UnixNano(), to.UnixNano()
	n := 0
	for _, at := range p.okAt {
		if at >= lo && at < hi {
			n++
		}
	}
	return n
}

// exercised reports whether the pace was put to use by now: over the last
// probe period (longer for a slow pace: four intervals, up to 10 s), the
// attempts admitted came back accepted at half the pace or more (in a
// fleet, this member's accepted attempts times the members: each holds an
// even share of the herd). A pace that drew no rejection only because
// little was asked of it (a few refreshes, or attempts that came back
// unreachable while a path was down) proves nothing about the
// destination: probing up from it inflates the pace, and at its first
// Retry-After it is cut as a pace never proven. TCP grows its window only
// while the window limits what is sent (RFC 7661) for the same reason.
func (p *pacer) exercised(now time.Time) bool {
	if !(p.pace > 0) || math.IsInf(p.pace, 1) {
		return true
	}
	members := float64(max(p.members, 1))
	share := p.pace / members
	w := min(max(defaultProbePeriod.Seconds(), 4/share), hiMemory.Seconds())
	need := math.Min(0.5*share*w, okRing/2)
	from := now.Add(-time.Duration(w * float64(time.Second)))
	return float64(p.acceptedIn(from, now)) >= need
}

// stamp is what an admitted attempt carries back to the pacer with its
// outcome: when it was admitted and under which pace, cut count and epoch.
type stamp struct {
	at    time.Time
	pace  float64
	cuts  uint64
	epoch uint64
}

// newPacer returns a pacer for a gate created at now; rate, initialRate and
// minRate are GateConfig's, already resolved and clamped.
func newPacer(rate, initialRate, minRate float64, now time.Time) pacer {
	p := pacer{rate: rate, initialRate: initialRate, minRate: minRate}
	p.reset(now)
	return p
}

// adaptive reports whether the pace adapts to outcomes (no negative Rate).
func (p *pacer) adaptive() bool { return p.rate >= 0 }

// unlimited reports whether the gate admits without a rate limit.
func (p *pacer) unlimited() bool { return math.IsInf(p.pace, 1) }

// ceiling is the highest pace: 95 % of a configured Rate, else the most a
// gate can be configured with.
func (p *pacer) ceiling() float64 {
	if p.rate > 0 {
		// Paced at 95 % of the configured rate: probes stop there too.
		return cruiseGain * p.rate
	}
	return maxConfigurableRate
}

// stamp returns what an attempt admitted at now carries.
func (p *pacer) stamp(now time.Time) stamp {
	return stamp{at: now, pace: p.pace, cuts: p.cuts, epoch: p.epoch}
}

// reset sets the pace for a fresh start (creation or reopening): the
// configured rate, the measured estimate, or startup from InitialRate.
func (p *pacer) reset(now time.Time) {
	p.ep = episode{}
	p.gentleStep = false
	p.cleanProbe = 0
	switch {
	case p.rate > 0:
		// Told the rate: start every open period just below it (timing
		// jitter would otherwise overrun a server limited to exactly
		// Rate), and adapt below that only on the evidence of this period.
		p.pace = cruiseGain * p.rate
		p.startup = false
	case p.rate < 0:
		p.pace = math.Inf(1)
		p.startup = false
	case p.estimate > 0:
		p.pace = cruiseGain * p.estimate
		p.startup = false
	case p.initialRate < 0:
		// Startup turned off: from the floor, by cruise probes only.
		p.pace = p.minRate
		p.startup = false
	default:
		p.pace = p.initialRate
		p.startup = true
	}
	p.pace = math.Max(p.pace, p.minRate)
	p.growAt = now.Add(p.startupPeriod())
	if p.probeEvery == 0 {
		p.probeEvery = defaultProbePeriod
	}
	p.probeAt = now.Add(p.probeEvery)
}

// reopen starts a new open period after the gate was closed: outcomes of
// attempts admitted before it no longer steer the pace.
func (p *pacer) reopen(now time.Time) {
	p.epoch++
	p.reset(now)
}

// paused notes a push-back: an episode running through it cannot use wall
// time.
func (p *pacer) paused() { p.ep.paused = p.ep.active }

// resumed notes the end of a push-back at now: the pace that drew it has not
// run a clean period yet, so no probe before it has, and it is not proven.
func (p *pacer) resumed(now time.Time) {
	p.rejectedAt = now
	p.paceSetAt = now
}

// startupPeriod is how often startup doubles the pace: every round trip
// (so that a rejection can come back before the next doubling), at least
// 100 ms and at most 1 s. The minimum round trip is the path's; a smoothed
// one would include the queueing of the last herd.
func (p *pacer) startupPeriod() time.Duration {
	return min(max(defaultStartupPeriod, p.minRTT), time.Second)
}

// accepted feeds a success at now of an attempt admitted under s.
func (p *pacer) accepted(now time.Time, s stamp) {
	if s.epoch != p.epoch {
		return
	}
	if rtt := now.Sub(s.at); rtt >= 0 && (p.minRTT == 0 || rtt < p.minRTT) {
		p.minRTT = rtt
	}
	p.countAccepted(s.at)
	if p.ep.active {
		p.ep.succ++
		p.ep.offered += s.pace
		p.maybeEndEpisode(now)
	}
}

// rejected feeds a rejection at now of an attempt admitted under s: an
// overload (with the server's Retry-After, or zero) or an attempt that came
// back unreachable while others got through.
func (p *pacer) rejected(now time.Time, retryAfter time.Duration, s stamp) {
	if s.epoch != p.epoch {
		// Admitted before the gate last closed, at a pace that no longer
		// applies: such an outcome says nothing of today's.
		return
	}
	if retryAfter > 0 {
		p.lastRA = retryAfter
		if s.cuts != p.cuts {
			// Admitted before the pace was last cut for a Retry-After:
			// the same overshoot, answered late (the attempts in flight
			// when its first rejection came back). One cut per
			// overshoot, as TCP reduces once per window: without this,
			// a path with a 20 ms round trip cut the pace once per
			// attempt in flight, down to the floor.
			p.rejectedAt = now
			return
		}
	}
	probeOvershot := p.probeFrom > 0 && !p.probedAt.IsZero() && now.Sub(p.probedAt) < p.probeEvery
	if retryAfter > 0 && probeOvershot && !p.rejectedAt.After(p.probedAt) {
		// The last probe overshot, and the destination answered with a
		// Retry-After, which pauses everyone: against such a destination
		// probe half as often (up to every 16 s) while probes overshoot.
		p.probeEvery = min(2*p.probeEvery, 16*defaultProbePeriod)
	}
	if probeOvershot {
		// The probe overshot: back to the pace that did not, at once,
		// rather than after the episode's measurement.
		p.pace = p.probeFrom
		p.probeFrom = 0
	}
	p.rejectedAt = now
	p.cleanProbe = 0
	if !p.adaptive() || p.unlimited() || p.fleetHeld {
		return
	}
	if retryAfter > 0 {
		p.retryAfterCut(now, s, probeOvershot)
		return
	}
	if p.startup {
		// The pace just doubled past capacity: back to the last pace that
		// got no rejection, and measure.
		p.startup = false
		p.pace = math.Max(p.pace/2, p.minRate)
	}
	if !p.ep.active {
		p.ep = episode{active: true, start: now}
	}
	p.ep.rej++
	p.maybeEndEpisode(now)
}

// retryAfterCut handles a rejection with a Retry-After of an attempt
// admitted at atPace, the first of its overshoot.
func (p *pacer) retryAfterCut(now time.Time, s stamp, probeOvershot bool) {
	atPace := s.pace
	if !probeOvershot && p.forgive(now) {
		// Pacing just under a rate told or counted: a lone rejection is
		// timing jitter at the destination (a burst across its counting
		// window), and the pause honours it. A second within 10 s means
		// the capacity is lower: cut then.
		p.trustAt = now
		p.cuts++
		return
	}
	p.counted = false
	// A destination that pauses everyone at each rejection cannot be
	// measured while it rejects: all it says is that atPace was too fast.
	// Remember that ceiling for a while (probes stay below it) and fall
	// back to the last pace that ran clean.
	if p.hi == 0 || atPace < p.hi || now.Sub(p.hiAt) > hiMemory {
		p.hi = atPace
	}
	p.hiAt = now
	gentle := p.gentleStep
	p.gentleStep = false // startupCut sets it
	switch {
	case p.startup:
		p.startup = false
		p.pace = p.startupCut(now, s)
	case !probeOvershot && p.exercised(now) && (now.Sub(p.paceSetAt) >= defaultProbePeriod ||
		p.fleetGrows && !p.trustAt.IsZero() && now.Sub(p.trustAt) <= hiMemory):
		// A pace that ran clean and in use for a probe period (or, in a
		// fleet, whose last Retry-After was forgiven as its members'
		// jitter): the capacity moved a little, or jitter again; step
		// down gently. A pace that ran clean with little asked of it is
		// not proven (exercised): it falls to the cases below.
		p.pace = 0.9 * math.Min(p.pace, atPace)
	case !probeOvershot && gentle:
		// A fleet's pace at the startup step below the one that
		// overshot, not yet proven: the overshoot was the step before
		// (the rejection came back late), one more step down.
		p.pace = math.Min(p.pace, atPace) / FleetGentleGrowth
	case !probeOvershot:
		// A pace never yet proven (just after startup or a cut): step
		// down hard, or every step costs another pause.
		p.pace = 0.6 * math.Min(p.pace, atPace)
	}
	p.paceSetAt = now
	p.cuts++
	p.pace = math.Max(p.pace, p.minRate)
	p.estimate = p.pace / cruiseGain
	p.ep = episode{}
}

// forgive reports whether a Retry-After at now is forgiven without a cut:
// the first in 10 s, at a pace within 10 % of a configured Rate, of a
// capacity counted at startup's first Retry-After, or of a ceiling overshot
// or counted in the last 10 s (the fleet's, adopted, too) under which the
// pace ran clean for a probe period (in a fleet: at once), or, in a fleet,
// of the capacity it measured (its estimate).
func (p *pacer) forgive(now time.Time) bool {
	if !p.trustAt.IsZero() && now.Sub(p.trustAt) <= hiMemory {
		return false
	}
	switch {
	case p.rate > 0:
		return p.pace >= 0.9*p.ceiling()
	case p.counted:
		return p.pace >= 0.9*p.hi
	case p.hi > 0 && now.Sub(p.hiAt) < hiMemory && p.pace >= 0.9*p.hi && p.exercised(now) &&
		(p.fleetGrows && !p.gentleStep || now.Sub(p.paceSetAt) >= defaultProbePeriod):
		// Just under a ceiling it (or its fleet) overshot or counted, and
		// not probing (a probe that overshoots is never forgiven): proven
		// clean for a probe period, or in a fleet (but for the step its
		// startup went back to, until proven), whose members' timing
		// jitter (50 processes on their places) draws lone Retry-Afters
		// at any pace close to the capacity.
		return true
	case p.fleetGrows && p.estimate > 0 &&
		(p.hi == 0 || now.Sub(p.hiAt) >= hiMemory || now.Sub(p.paceSetAt) >= defaultProbePeriod):
		// A fleet at 95 % of the capacity it measured, or at the startup
		// step below the one that overshot (up to 10 % under it) and
		// proven there for a probe period: a lone Retry-After is its
		// members' jitter too (one cut 10 s into a herd kept the next
		// herd at 0.86 C).
		return p.pace <= cruiseGain*p.estimate*1.001 && p.pace >= 0.9*cruiseGain*p.estimate
	}
	return false
}

// startupCut returns the pace after startup's first Retry-After, received
// at now for an attempt admitted under s, and sets the ceiling for the probes after it.
//
// Halving (back to the last pace that ran clean) leaves the pace anywhere
// between C/2 and C, and finding C from there costs a pause per overshoot.
// A registrar that counts per fixed window aligned on the clock (Kamailio's
// htable counters, a counter keyed by the current second or 100 ms) tells
// what C is by how many it accepted in the window of its first 503: count
// the accepted attempts admitted since that window began (one startup
// period, at least 100 ms, aligned on the clock, shifted by the one-way
// trip), and pace at 95 % of that count per window, with the count as the
// ceiling. The count is believed only between the clean pace and the pace
// that overshot; otherwise (a token bucket, a window of another length)
// the gate halves as before.
func (p *pacer) startupCut(now time.Time, s stamp) float64 {
	if p.fleetGrows {
		return p.fleetStartupCut(s)
	}
	clean := p.pace / 2
	period := p.startupPeriod()
	arrived := s.at.Add(p.minRTT / 2) // at the destination
	from := arrived.Truncate(period).Add(-p.minRTT / 2)
	n, before := float64(p.acceptedIn(from, s.at)), float64(p.acceptedIn(from.Add(-period), from))
	est := n / period.Seconds()
	if cruiseGain*est <= clean || est >= s.pace || n < before {
		return clean
	}
	p.hi, p.counted = est, true
	return cruiseGain * est
}

// fleetStartupCut is startupCut in a fleet. A member sees only its share of
// the fleet's admissions, so it counts the fleet's schedule instead (what
// the fleet's queue, full during a herd, admitted at the paces it followed:
// fleetAdmitted), over the destination's windows as startupCut takes them
// (one startup period, aligned on the clock, shifted by the one-way trip).
// The window of the rejected attempt ran at the rate that overshot; the
// window before it, which drew no rejection, at the clean rate. The steps of
// the schedule are as long as a window but not in phase with it: each
// window runs part of one step and part of the next, and a step set just
// before the rejected attempt had only begun (a step set 14 ms before it,
// taken for the one that overshot, sent the fleet back to the step that
// had, and a second pause).
//
// What the window counted before the rejected attempt tells the capacity
// more closely, but the schedule is not what arrived: members late on their
// places (a loaded host) bunch, and an overshoot from here costs a pause and
// a hard cut. So that count, less fleetScheduleBias, is the capacity only
// when it lies between 0.9 × the clean rate and the rate that overshot (at
// most 1.25 × the clean rate); otherwise the clean rate is. The pace is 95 %
// of the capacity, and the capacity is the ceiling (a probe towards a count
// 15 % high cost the fleet a second pause).
func (p *pacer) fleetStartupCut(s stamp) float64 {
	if step, _ := p.fleetPaceAt(s.at); step < 4*p.initialRate {
		// Not two doublings yet: nothing says the queue was full. Back
		// to the step before.
		p.hi, p.gentleStep = step, false
		return p.fleetStepBack(step)
	}
	period := p.startupPeriod()
	from := s.at.Add(p.minRTT / 2).Truncate(period).Add(-p.minRTT / 2) // as startupCut
	per := period.Seconds()
	over := p.fleetAdmitted(from, from.Add(period)) / per
	clean := p.fleetAdmitted(from.Add(-period), from) / per
	p.gentleStep = over < 1.5*clean // a gentle step, not a doubling
	capacity := clean
	if est := math.Min(p.fleetAdmitted(from, s.at)/per, 1.25*clean); est > 0.9*clean && est < over {
		capacity = fleetScheduleBias * est
	}
	p.hi = capacity // the ceiling for the probes
	return cruiseGain * capacity
}

// fleetScheduleBias is the part of the places a fleet's schedule gave that
// arrived at the destination in time: members late on their places, or
// held up past them (which they leave unused), make the schedule's count
// before a rejected attempt 0–6 %, 2 % on average, more than the
// destination counted (18 runs of 50 processes against C = 200).
const fleetScheduleBias = 0.975

// fleetGrowPeriod is how often a fleet's startup grows its pace: every
// startup period, by doubling below fleetGentleFrom and by
// FleetGentleGrowth from there.
func (p *pacer) fleetGrowPeriod() time.Duration { return p.startupPeriod() }

// fleetGentleFrom is the pace from which a fleet's startup grows by
// FleetGentleGrowth instead of doubling: 4 × InitialRate (none without a
// startup). Doubling costs little below it; above it a doubling can land
// anywhere up to 2 × the capacity, and a fleet stops only once the
// rejection has come back through a member and the store: a step to
// 1.6 × C ran a whole 100 ms window of the destination's at 1.6 × what it
// admits (peak 1.45–1.65 in three runs of 50 processes, C = 200).
func (p *pacer) fleetGentleFrom() float64 { return 4 * max(p.initialRate, 0) }

// fleetStepBack returns the fleet's startup pace before the step that set
// pace.
func (p *pacer) fleetStepBack(pace float64) float64 {
	if g := p.fleetGentleFrom(); g > 0 && pace/FleetGentleGrowth >= g*(1-1e-9) {
		return pace / FleetGentleGrowth
	}
	return pace / 2
}

// fleetStepUp returns the fleet's startup pace after the step from pace, as
// the store takes it.
func (p *pacer) fleetStepUp(pace float64) float64 {
	by := 2.0
	if g := p.fleetGentleFrom(); g > 0 && pace >= g {
		by = FleetGentleGrowth
	}
	return math.Min(pace*by, p.ceiling())
}

// fleetPaceAt returns the startup pace the fleet's admissions followed at
// at, and since when. The store grows the pace on a grid, one
// fleetGrowPeriod per step, and reckons every place on that schedule, the
// steps to come included: a step takes effect when it is due, not when the
// members hear of it. So the pace at at is the last one this pacer heard
// of, stepped up once per period since it was set (at most twice: the
// store's schedule runs three periods past its last step) or back once per
// period before it.
func (p *pacer) fleetPaceAt(at time.Time) (float64, time.Time) {
	period := p.fleetGrowPeriod()
	pace, from := p.pace, p.paceSetAt
	for range 2 {
		if from.IsZero() || at.Before(from.Add(period)) {
			break
		}
		pace, from = p.fleetStepUp(pace), from.Add(period)
	}
	for range 4 {
		if !from.After(at) {
			break
		}
		pace, from = p.fleetStepBack(pace), from.Add(-period)
	}
	return pace, from
}

// fleetAdmitted is what the fleet's queue admitted in [from, to) in
// startup: at the pace it followed at to (fleetPaceAt), and at the steps
// before it back to from.
func (p *pacer) fleetAdmitted(from, to time.Time) float64 {
	n := 0.0
	pace, start := p.fleetPaceAt(to)
	end := to
	for range 4 {
		start = laterOf(start, from)
		if end.After(start) {
			n += pace * end.Sub(start).Seconds()
			end = start
		}
		if !end.After(from) {
			break
		}
		pace, start = p.fleetStepBack(pace), start.Add(-p.fleetGrowPeriod())
	}
	return n
}

// maybeEndEpisode turns a long enough measurement into an estimate of the
// rate the destination accepts while it rejects: the larger of the successes
// per second since the first rejection (exact once the destination is
// saturated) and the admission pace times the accepted fraction (exact when
// outcomes lag the pace). Sporadic rejections (under 5 %) at a pace the
// destination otherwise keeps up with are noise: they never lower an
// estimate.
func (p *pacer) maybeEndEpisode(now time.Time) {
	e := &p.ep
	n := e.succ + e.rej
	el := now.Sub(e.start)
	if n < minEpisodeOutcomes || el < minEpisodeDuration {
		return
	}
	est := e.offered / float64(n)
	if !e.paused {
		est = math.Max(est, float64(e.succ)/el.Seconds())
	}
	if float64(e.rej) < 0.05*float64(n) && p.estimate > 0 {
		est = math.Max(est, p.estimate)
	}
	p.estimate = math.Max(est, p.minRate)
	p.pace = math.Max(math.Min(cruiseGain*p.estimate, p.ceiling()), p.minRate)
	p.ep = episode{}
	p.probeAt = now.Add(p.probeEvery)
}

// control advances the controller's clock at now, with queued attempts
// waiting: startup doubling and cruise probing, only while attempts are
// queued (a gate with no demand does not inflate its pace). The Gate calls
// it only while open.
func (p *pacer) control(now time.Time, queued int) {
	if !p.adaptive() || p.unlimited() || p.fleetHeld {
		return
	}
	if p.startup {
		if p.fleetGrows || now.Before(p.growAt) {
			return
		}
		p.growAt = now.Add(p.startupPeriod())
		if queued > 0 {
			p.pace = math.Min(p.pace*2, p.ceiling())
		}
		return
	}
	if p.ep.active {
		if now.Sub(p.ep.start) > 4*defaultProbePeriod {
			// Too few outcomes to measure: fall back to halving.
			p.pace = math.Max(p.pace/2, p.minRate)
			p.ep = episode{}
		}
		return
	}
	if now.Before(p.probeAt) {
		return
	}
	p.probeAt = now.Add(p.probeEvery)
	if !p.probedAt.IsZero() && p.rejectedAt.Before(p.probedAt) {
		// The last probe went unpunished: probe more often again.
		p.probeEvery = max(p.probeEvery/2, defaultProbePeriod)
	}
	if queued == 0 || now.Sub(p.rejectedAt) < defaultProbePeriod || p.pace >= p.ceiling() || !p.exercised(now) {
		return
	}
	if target, ok := p.probeTarget(now, queued); ok {
		p.probedAt = now
		p.cleanProbe++
		p.probeFrom = p.pace
		p.pace = math.Min(target, p.ceiling())
		p.paceSetAt = now
	}
}

// probeTarget returns the pace a probe at now would try, and whether to
// probe at all. A second without rejection while attempts queue: probe
// upward, faster after consecutive clean probes (1.1×, 1.1×, 1.2×, 1.4×,
// 1.8×, then 2×): a small step first, since the destination's own burst can
// hide a small excess for a while.
func (p *pacer) probeTarget(now time.Time, queued int) (float64, bool) {
	target := p.pace * math.Min(1+0.1*math.Exp2(float64(max(p.cleanProbe-1, 0))), 2)
	if p.hi > 0 && now.Sub(p.hiAt) < hiMemory {
		// A recent pace drew a Retry-After, and every overshoot pauses
		// everyone. Step a quarter of the way to that ceiling (at least
		// 5 %, at most half-way), and only while the step is worth its
		// risk; stop within 10 % of the ceiling.
		if p.pace >= 0.9*p.hi {
			return 0, false
		}
		target = math.Min(math.Max(p.pace*1.05, p.pace+(p.hi-p.pace)/4), (p.pace+p.hi)/2)
		if !p.probeWorthIt(target, queued, (target-p.pace)/(p.hi-p.pace)) {
			return 0, false
		}
	} else if p.lastRA > 0 {
		// The ceiling is forgotten, but this destination pauses everyone
		// at an overshoot: probe by 5 %, and take it for an even bet,
		// worth it only with work enough queued (some 20 s).
		target = p.pace * 1.05
		if !p.probeWorthIt(target, queued, 0.5) {
			return 0, false
		}
	}
	return target, true
}

// probeWorthIt weighs a probe from the pace up to target against a
// destination that pauses everyone for a Retry-After at each overshoot: the
// probe fails with probability pFail and then costs a pause; if it holds,
// the queued attempts go faster. Below a remembered ceiling hi, with the
// capacity taken as equally likely anywhere between the pace and hi, pFail
// is (target-pace)/(hi-pace). Near the end of a herd, or close under the
// ceiling, a probe is not worth it.
func (p *pacer) probeWorthIt(target float64, queued int, pFail float64) bool {
	if !(target > p.pace) || !(pFail > 0) {
		return false
	}
	pFail = math.Min(1, pFail)
	remaining := float64(queued) / p.pace // seconds of work at this pace
	gain := (1 - pFail) * remaining * (1 - p.pace/target)
	return gain > pFail*p.lastRA.Seconds()
}

// next returns when control may next change the pace, or zero. The Gate
// asks it only while open.
func (p *pacer) next() time.Time {
	switch {
	case !p.adaptive() || p.unlimited():
		return time.Time{}
	case p.startup:
		return p.growAt
	case p.ep.active:
		return p.ep.start.Add(4 * defaultProbePeriod)
	}
	return p.probeAt
}

// fleetPace returns at now the pace state a fleet shares (FleetPace); Pace
// is zero when unlimited.
func (p *pacer) fleetPace(now time.Time) FleetPace {
	if p.unlimited() {
		return FleetPace{}
	}
	f := FleetPace{Pace: p.pace, Estimate: p.estimate, Startup: p.startup, RetryAfter: p.lastRA}
	if p.hi > 0 && now.Sub(p.hiAt) < hiMemory {
		f.Ceiling, f.CeilingAge = p.hi, max(now.Sub(p.hiAt), 0)
	}
	return f
}

// adopt takes at now the pace another member of the fleet set: a cut for its
// Retry-After, a measurement, a startup doubling or a probe. The pacer goes
// on from there with fresh timers, so that the fleet probes about once per
// period, not once per member. A lower pace counts as this pacer's own cut:
// the rejections of attempts admitted before it do not cut again, the pace
// it replaces is the ceiling for the next probes, and no probe comes within
// a second. A higher pace after startup counts as this pacer's own probe.
// setAt is when the fleet set the pace: its timers run from then.
func (p *pacer) adopt(now time.Time, f FleetPace, setAt time.Time) {
	if !p.adaptive() || p.unlimited() || !(f.Pace > 0) {
		return
	}
	pace := math.Max(math.Min(f.Pace, p.ceiling()), p.minRate)
	joining := p.startup && !f.Startup // a new member, onto a learned pace
	switch {
	case pace < p.pace:
		if p.probeFrom > 0 && now.Sub(p.probedAt) < p.probeEvery {
			// A probe (ours or adopted) overshot: probe half as often,
			// as rejected does for a probe of our own.
			p.probeEvery = min(2*p.probeEvery, 16*defaultProbePeriod)
		}
		p.cuts++
		p.hi, p.hiAt = p.pace, now
		p.rejectedAt = now
	case pace > p.pace && !f.Startup && !p.startup && now.Sub(setAt) < p.probeEvery:
		// Another member's probe, just now: if it overshoots, back to this
		// pace at once, as after a probe of our own. (An older pace, or
		// one found by a member still at its own startup — a new member —
		// is the fleet's knowledge, which the member joins.)
		p.probeFrom, p.probedAt = p.pace, now
	}
	if pace <= p.pace {
		p.probeFrom = 0
	}
	// A startup's first cut, by a gentle step (see fleetStartupCut), or a
	// lower cut of the same overshoot, which replaced it.
	p.gentleStep = (p.startup || p.gentleStep && pace < p.pace) && !f.Startup && f.Ceiling > 0 && f.Ceiling < 1.5*pace
	p.pace = pace
	p.estimate = f.Estimate
	p.startup = f.Startup
	if f.Ceiling > 0 {
		// The fleet's ceiling: a member that never drew a Retry-After
		// probes no closer to it than the one that did.
		p.hi, p.hiAt = f.Ceiling, now.Add(-f.CeilingAge)
	}
	p.lastRA = max(p.lastRA, f.RetryAfter)
	p.ep = episode{}
	p.paceSetAt = setAt
	p.growAt = setAt.Add(p.startupPeriod())
	p.probeAt = setAt.Add(p.probeEvery)
	if joining {
		// A learned pace, however old, runs a probe period of this herd
		// before anyone of it probes above it: otherwise every member of
		// a second herd would find a probe due at its first admission.
		p.probeAt = laterOf(p.probeAt, now.Add(p.probeEvery))
	}
}
