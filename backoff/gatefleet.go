package backoff

import (
	"context"
	"math"
	"sync"
	"time"
)

// fleetFallback is how long, at most, a gate admits locally after a call to
// its FleetMember failed, before it asks the store again.
const fleetFallback = time.Second

// fleetFirstRetry is how soon a gate whose store has never answered it asks
// again after a failed call, doubling for each failure after it, for
// fleetFirstRetries failures (100, 200, 400 ms), before it falls back for
// whole fleetFallbacks: the first calls of a process pay for its connections
// to the store (a dial, the scripts' loading), and a loaded host can take
// them past the store's bound while the store is fine. Meanwhile the gate
// admits locally at its MinRate: it knows neither the fleet's pace nor how
// many share it (a process's first heartbeats count the members one by one as
// they start), and fifty processes starting together on their own initial
// paces (0.7 × 20/s each over a count of 1) drew a 503 from a registrar at
// 200/s that the fleet then took for its capacity (0.4 C).
const (
	fleetFirstRetry   = 100 * time.Millisecond
	fleetFirstRetries = 3
)

// fleetLink is a Gate's side of its FleetMember. Its fields are guarded by
// the gate's lock; calls to the member run outside it, one goroutine each,
// counted by wg so that Close can wait for them.
type fleetLink struct {
	m         FleetMember // nil: the gate is local only
	wg        sync.WaitGroup
	admitting bool          // an Admit call is in flight
	scouting  bool          // a Scout call for the lease is in flight
	slot      fleetSlot     // the slot this gate goes on next
	next      fleetSlot     // the slot booked after it
	validated bool          // slot is confirmed due within lead, no pause
	rtt       time.Duration // the smoothed round trip of Admit calls
	calledAt  time.Time     // when the last Admit call started
	downUntil time.Time     // admitting locally until then: the store failed
	answered  bool          // the store has answered a call of this gate
	firstFail int           // calls failed before the store first answered
	unknown   bool          // local until downUntil, never answered: at MinRate
	synced    FleetPace     // the fleet pace last seen or stored
	opened    uint64        // the fleet's reopenings, last seen
	closedAt  uint64        // opened when this gate last closed
	pushBack  time.Duration // a pause to tell the fleet with the next call
	reopened  bool          // the gate reopened: tell the fleet with the next call
}

// fleetSlot is a place in the fleet's queue (FleetReply.Seq, zero: none) and
// when it was last reckoned due.
type fleetSlot struct {
	seq uint64
	at  time.Time
}

// on reports whether the gate admits through its fleet at now: it has one,
// and the store has not failed within the last fleetFallback.
func (f *fleetLink) on(now time.Time) bool {
	return f.m != nil && !now.Before(f.downUntil)
}

// connected reports whether the gate has a fleet whose store answered its
// last call: false from a failed call until the next answer, through the
// retries in between.
func (f *fleetLink) connected() bool { return f.m != nil && f.downUntil.IsZero() }

// fail puts the gate on local admission after a failed call, until the
// next whole fleetFallback of the wall clock: the members that lost the
// store together rejoin together, rather than one at the full fleet pace
// while the others still admit at their shares. A gate the store has never
// answered asks again sooner (fleetFirstRetry): it holds no fleet pace to
// rejoin at.
func (f *fleetLink) fail(now time.Time) {
	f.drop()
	f.unknown = !f.answered && f.firstFail < fleetFirstRetries
	if f.unknown {
		f.downUntil = now.Add(fleetFirstRetry << f.firstFail)
		f.firstFail++
		return
	}
	f.downUntil = now.Add(fleetFallback).Truncate(fleetFallback)
}

// ok notes an answer from the store: the gate admits through its fleet.
func (f *fleetLink) ok() {
	f.downUntil, f.answered, f.unknown = time.Time{}, true, false
}

// drop forgets the gate's slots.
func (f *fleetLink) drop() {
	f.slot, f.next, f.validated = fleetSlot{}, fleetSlot{}, false
}

// fallbackShare is the part of its share a member admits at while the
// store is unreachable. Without the fleet's queue the members' admissions
// fall at random against each other: at their full shares, a server counting
// per 100 ms window sees the sum bunch over its limit in a third of its
// windows (50 members: measured 5 % rejected, 3.4 × N/C), and every
// rejection pauses and cuts a member.
const fallbackShare = 0.7

// localPace is the pace of the gate's own token bucket: the pacer's, or,
// while the fleet's store is unreachable, this process's share of it.
func (g *Gate) localPace() float64 {
	f := &g.fleet
	if f.m == nil || f.connected() {
		return g.pacer.pace
	}
	if f.unknown {
		return math.Min(g.pacer.minRate, g.pacer.pace) // see fleetFirstRetry
	}
	n := f.m.Members()
	if n <= 1 {
		return g.pacer.pace
	}
	return fallbackShare * g.pacer.pace / float64(n)
}

// fleetMembers is how many gates share this gate's pace: the fleet's live
// members while its store answers, else 1. The herd is taken as spread
// evenly over them: the pacer weighs a probe against the fleet's remaining
// work (this gate's queue times the members), not a member's share of it,
// and counts a member's accepted attempts as its share of the fleet's.
func (g *Gate) fleetMembers() int {
	if !g.fleet.connected() {
		return 1
	}
	return g.fleet.m.Members()
}

// openLocked reports whether an attempt may go at now while the gate is
// open; if not, it returns when to look again, or zero when a call to the
// fleet will.
//
// With a fleet, an attempt goes on a place in the fleet's queue, at the time
// the store reckons it due, once a call made within lead of that time has
// confirmed it (the pace may have changed since, or another member told a
// pause: places are counted in slots, not times, so they move with the
// pace and past a pause). That call also books the next place, so a herd
// costs one round trip per admission, and the attempt goes at its slot's
// time, not a round trip late: the fleet's admissions stay evenly spaced.
// While the fleet pace doubles in startup, a place further ahead than a
// period is reckoned again every period: it comes sooner at each doubling.
func (g *Gate) openLocked(now time.Time) (time.Time, bool) {
	f := &g.fleet
	if !f.on(now) || g.pacer.unlimited() {
		at, ok := g.paceLocked(now)
		if !ok && f.m != nil && f.downUntil.After(now) && f.downUntil.Before(at) {
			at = f.downUntil // back to the fleet then, not at the next local token
		}
		return at, ok
	}
	if f.slot.seq != 0 && f.validated && now.Sub(f.slot.at) <= f.late(g.pacer.pace) {
		if now.Before(f.slot.at) {
			return f.slot.at, false
		}
		f.slot, f.next, f.validated = f.next, fleetSlot{}, false
		return time.Time{}, true
	}
	f.validated = false // confirmed too long ago, if at all
	if f.admitting {
		return time.Time{}, false
	}
	if f.slot.seq != 0 {
		at := f.slot.at.Add(-f.lead())
		if f.synced.Startup {
			at = minTime(at, f.calledAt.Add(g.pacer.startupPeriod()))
		}
		if now.Before(at) {
			return at, false
		}
	}
	g.fleetAdmitLocked(now)
	return time.Time{}, false
}

// fleetAdmitLocked starts an Admit call: it tells the fleet a pause and this
// gate's pace, reckons the slot held and books the next.
func (g *Gate) fleetAdmitLocked(now time.Time) {
	f := &g.fleet
	want := 1
	if f.slot.seq != 0 {
		want = 2
	}
	req := FleetRequest{
		Pace:     g.pacer.fleetPace(now),
		Book:     f.pushBack <= 0 && g.state == GateOpen && f.next.seq == 0 && g.queued() >= want,
		Held:     f.slot.seq,
		PushBack: f.pushBack,
		Grow:     g.pacer.fleetGrowPeriod(),
		Ceiling:  g.pacer.ceiling(),
		Gentle:   g.pacer.fleetGentleFrom(),
	}
	req.Pace.Version = f.synced.Version
	// A gate that has not heard from the fleet yet proposes nothing: its
	// pace is a fresh start, and the fleet's, if any, is learned. (A store
	// with no pace takes the first member's all the same.) A gate that
	// reopened proposes its fresh start (see FleetRequest.Reopened).
	req.Reopened = f.reopened
	req.Propose = f.reopened || f.synced.Version != 0 && !req.Pace.sameAs(f.synced)
	f.pushBack, f.reopened = 0, false
	f.admitting = true
	f.calledAt = now
	g.fleetGo(func(ctx context.Context) func(time.Time) []GateStateChange {
		start := time.Now()
		rep, err := f.m.Admit(ctx, req)
		took := time.Since(start)
		return func(now time.Time) []GateStateChange {
			f.rtt = (7*f.rtt + took) / 8
			return g.fleetAdmittedLocked(now, req, rep, err)
		}
	})
}

// fleetAdmittedLocked takes the answer to an Admit call.
func (g *Gate) fleetAdmittedLocked(now time.Time, req FleetRequest, rep FleetReply, err error) []GateStateChange {
	f := &g.fleet
	f.admitting = false
	if err != nil {
		lost := f.connected()
		f.fail(now)
		if lost {
			// Admit locally from now on, without a burst of saved tokens,
			// the first at a random point of this gate's first interval:
			// members that lost the store together must not admit
			// together. (A retry that fails changes nothing.)
			g.bucket.resume(now, g.localPace())
			g.bucket.tokens = min(g.bucket.tokens, 0) - uniform(g.cfg.rand)
		}
		return g.dispatchLocked(now)
	}
	f.ok()
	f.opened = max(f.opened, rep.Opened)
	g.fleetPaceLocked(now, req, rep.Pace, rep.PaceAge)
	if req.Held != 0 && req.Held == f.slot.seq {
		f.slot.at = now.Add(rep.Due)
		if rep.Lost || rep.Due < -f.late(g.pacer.pace) {
			// Lost with the store's state, or overdue by more than a
			// place (nobody waited for it, or this process was held up):
			// using it now would add an admission to the fleet's pace,
			// on top of the places due now. Leave it unused.
			f.slot, f.next = f.next, fleetSlot{}
		}
	}
	if rep.Seq != 0 {
		s := fleetSlot{seq: rep.Seq, at: now.Add(rep.Wait)}
		if f.slot.seq == 0 {
			f.slot = s
		} else {
			f.next = s
		}
	}
	var ev []GateStateChange
	if rep.Paused > 0 {
		// Another member's Retry-After: a probe's price, for this pacer
		// too. The places held stay valid: the queue resumes after it.
		g.pacer.lastRA = max(g.pacer.lastRA, rep.Paused)
		ev = g.pushBackLocked(now, rep.Paused)
	}
	// Reckoned just now: the slot is confirmed if it is near enough.
	f.validated = f.slot.seq != 0 && rep.Paused <= 0 && !f.slot.at.After(now.Add(f.lead())) &&
		!f.slot.at.Before(now.Add(-f.late(g.pacer.pace)))
	if f.pushBack > 0 {
		g.fleetAdmitLocked(now)
	}
	return append(ev, g.dispatchLocked(now)...)
}

// lead is how long before its slot the gate confirms it: four smoothed
// round trips to the store plus 2 ms (a late answer admits late, and a late
// admission lands in the next 100 ms of a server counting per window), at
// most 25 ms. A pause another member tells within that lead can let one
// attempt of this gate through.
func (f *fleetLink) lead() time.Duration {
	return min(4*f.rtt+2*time.Millisecond, 25*time.Millisecond)
}

// late is how late after its place's time the gate still admits on it: a
// place's interval at the fleet pace (at least 2 ms, at most lead). A place
// missed by more is left unused: members held up together (a loaded host
// stalls 50 processes for tens of milliseconds) would otherwise all admit
// on their late places at once, on top of the places due then, and a
// destination counting per 100 ms window sees 21–28 where the pace puts 19
// (a Retry-After for the whole fleet each time, against Kamailio at load
// 4–16).
func (f *fleetLink) late(pace float64) time.Duration {
	d := 2 * time.Millisecond
	if pace > 0 {
		d = max(d, time.Duration(float64(time.Second)/pace))
	}
	return min(d, f.lead())
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// closedLocked reports whether a scout may go at now while the gate is
// closed; with a fleet, the scout goes only with the fleet's lease.
func (g *Gate) closedLocked(now time.Time) (time.Time, bool) {
	at, ok := g.scoutLocked(now)
	f := &g.fleet
	if !ok || !f.on(now) {
		return at, ok
	}
	if !f.scouting {
		f.scouting = true
		lease := g.cfg.ScoutMax // a scout lost in a black hole holds it that long
		g.fleetGo(func(ctx context.Context) func(time.Time) []GateStateChange {
			rep, err := f.m.Scout(ctx, lease, false)
			return func(now time.Time) []GateStateChange { return g.fleetScoutedLocked(now, rep, err) }
		})
	}
	return g.nextScout, false
}

// fleetPaceLocked reconciles the pacer with the fleet's pace: ours stored,
// or another member's adopted (after a reopening, whatever its version:
// the pacer restarted, and the fleet's pace may be a learned one).
func (g *Gate) fleetPaceLocked(now time.Time, req FleetRequest, got FleetPace, age time.Duration) {
	f := &g.fleet
	if got.sameAs(req.Pace) || !req.Reopened && got.Version == f.synced.Version {
		if got.Version != f.synced.Version {
			// Ours, stored (or the same): the fleet's schedule runs from when the
			// store set it (see pacer.fleetPaceAt).
			g.pacer.paceSetAt = now.Add(-age)
		}
		f.synced = got
		return
	}
	g.pacer.adopt(now, got, now.Add(-age))
	g.bucket.clamp(g.pacer.pace)
	f.synced = got
	f.synced.Pace, f.synced.Estimate, f.synced.Startup = g.pacer.pace, g.pacer.estimate, g.pacer.startup
}

// fleetScoutedLocked takes the answer to a request for the scout lease.
func (g *Gate) fleetScoutedLocked(now time.Time, rep FleetScout, err error) []GateStateChange {
	f := &g.fleet
	f.scouting = false
	if err != nil {
		// Scout locally at once: admission does not wait on the store.
		f.fail(now)
		g.nextScout = now
		return g.dispatchLocked(now)
	}
	f.ok()
	f.opened = max(f.opened, rep.Opened)
	if g.state == GateClosed && f.opened > f.closedAt {
		// Another member's attempt got through: the destination answers.
		g.scoutFails = 0
		g.pacer.reopen(now)
		g.bucket.clamp(g.pacer.pace)
		f.reopened = true
		ev := g.setStateLocked(now, GateOpen, time.Time{})
		return append(ev, g.dispatchLocked(now)...)
	}
	if !rep.Granted {
		return g.dispatchLocked(now)
	}
	if g.closed || g.state != GateClosed || g.queued() == 0 {
		g.fleetScoutEndLocked(false)
		return g.dispatchLocked(now)
	}
	g.admitLocked(now)
	return g.dispatchLocked(now)
}

// fleetScoutEndLocked releases the scout lease (its scout came back without
// reopening the gate), or tells the fleet the destination answered.
func (g *Gate) fleetScoutEndLocked(reopened bool) {
	f := &g.fleet
	if !f.on(time.Now()) {
		return
	}
	g.fleetGo(func(ctx context.Context) func(time.Time) []GateStateChange {
		rep, err := f.m.Scout(ctx, 0, reopened)
		return func(time.Time) []GateStateChange {
			if err == nil {
				f.opened = max(f.opened, rep.Opened)
			}
			return nil
		}
	})
}

// fleetPushBackLocked tells the fleet a pause for d, with the next call.
func (g *Gate) fleetPushBackLocked(now time.Time, d time.Duration) {
	f := &g.fleet
	if !f.on(now) {
		return
	}
	f.pushBack = max(f.pushBack, d)
	if !f.admitting {
		g.fleetAdmitLocked(now)
	}
}

// fleetGo runs call outside the gate's lock, bounded by FleetCallBound, and
// then what it returns under the lock; it emits that function's events. The
// call's context starts from context.Background: it serves the gate (a pace
// to book, a pause to share, a lease) and no caller's ctx, and it must not
// end when the Acquire that set it off gives up.
//
//nolint:contextcheck // see above
func (g *Gate) fleetGo(call func(ctx context.Context) func(now time.Time) []GateStateChange) {
	if g.closed {
		return
	}
	g.fleet.wg.Add(1)
	go func() {
		defer g.fleet.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), FleetCallBound)
		reply := call(ctx)
		cancel()
		g.mu.Lock()
		var ev []GateStateChange
		if !g.closed {
			ev = reply(time.Now())
		}
		g.mu.Unlock()
		g.emit(ev)
	}()
}

// sameAs reports whether two paces have the same values, whatever their
// versions.
func (a FleetPace) sameAs(b FleetPace) bool {
	return a.Pace == b.Pace && a.Estimate == b.Estimate && a.Startup == b.Startup
}
