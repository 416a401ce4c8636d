package backoff

import (
	"context"
	"sync"
	"time"
)

// fleetFallback is how long, at most, a gate admits locally after a call to
// its FleetMember failed, before it asks the store again.
const fleetFallback = time.Second

// fleetLink is a Gate's side of its FleetMember. Its fields are guarded by
// the gate's lock; calls to the member run outside it, one goroutine each,
// counted by wg so that Close can wait for them.
type fleetLink struct {
	m         FleetMember // nil: the gate is local only
	wg        sync.WaitGroup
	admitting bool          // an Admit call is in flight
	scouting  bool          // a Scout call for the lease is in flight
	booked    time.Time     // a booked fleet slot not used yet, or zero
	downUntil time.Time     // admitting locally until then: the store failed
	synced    FleetPace     // the fleet pace last seen or stored
	opened    uint64        // the fleet's reopenings, last seen
	closedAt  uint64        // opened when this gate last closed
	pushBack  time.Duration // a pause to tell the fleet with the next call
}

// on reports whether the gate admits through its fleet at now: it has one,
// and the store has not failed within the last fleetFallback.
func (f *fleetLink) on(now time.Time) bool {
	return f.m != nil && !now.Before(f.downUntil)
}

// fail puts the gate on local admission after a failed call, until the
// next whole fleetFallback of the wall clock: the members that lost the
// store together rejoin together, rather than one at the full fleet pace
// while the others still admit at their shares.
func (f *fleetLink) fail(now time.Time) {
	f.downUntil = now.Add(fleetFallback).Truncate(fleetFallback)
	f.booked = time.Time{}
}

// localPace is the pace of the gate's own token bucket: the pacer's, or,
// while the fleet's store is unreachable, this process's share of it.
func (g *Gate) localPace() float64 {
	f := &g.fleet
	if f.m == nil || f.on(time.Now()) {
		return g.pacer.pace
	}
	return g.pacer.pace / float64(max(f.m.Members(), 1))
}

// openLocked reports whether an attempt may go at now while the gate is
// open; if not, it returns when to look again, or zero when a call to the
// fleet will.
func (g *Gate) openLocked(now time.Time) (time.Time, bool) {
	f := &g.fleet
	if !f.on(now) || g.pacer.unlimited() {
		return g.paceLocked(now)
	}
	if f.admitting {
		return time.Time{}, false
	}
	if !f.booked.IsZero() && now.Before(f.booked) {
		return f.booked, false
	}
	// No slot, or a slot now due: ask the fleet, which books the next one
	// and says whether the destination was paused since the slot was
	// booked.
	g.fleetAdmitLocked(now)
	return time.Time{}, false
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

// fleetAdmitLocked starts an Admit call: it tells the fleet a pause and this
// gate's pace, validates a due slot and books the next.
func (g *Gate) fleetAdmitLocked(now time.Time) {
	f := &g.fleet
	due := !f.booked.IsZero() && !now.Before(f.booked)
	want := 1
	if due {
		want = 2
	}
	req := FleetRequest{
		Pace:     g.pacer.fleetPace(),
		Book:     f.pushBack <= 0 && g.state == GateOpen && g.queued() >= want,
		Burst:    g.bucket.burst(g.pacer.pace),
		PushBack: f.pushBack,
	}
	req.Pace.Version = f.synced.Version
	if !f.downUntil.IsZero() {
		// Rejoining after local admission: the fleet's schedule may be
		// empty (a restarted store), and the other members may still admit
		// locally. No burst.
		req.Burst = 1
	}
	req.Propose = !req.Pace.sameAs(f.synced)
	f.pushBack = 0
	f.admitting = true
	g.fleetGo(func(ctx context.Context) func(time.Time) []GateStateChange {
		rep, err := f.m.Admit(ctx, req)
		return func(now time.Time) []GateStateChange { return g.fleetAdmittedLocked(now, req, due, rep, err) }
	})
}

// fleetAdmittedLocked takes the answer to an Admit call.
func (g *Gate) fleetAdmittedLocked(now time.Time, req FleetRequest, due bool, rep FleetReply, err error) []GateStateChange {
	f := &g.fleet
	f.admitting = false
	if err != nil {
		f.fail(now)
		// Admit locally from now on, without a burst of saved tokens.
		g.bucket.resume(now, g.localPace())
		return g.dispatchLocked(now)
	}
	f.downUntil = time.Time{}
	f.opened = max(f.opened, rep.Opened)
	g.fleetPaceLocked(now, req.Pace, rep.Pace)
	if rep.Paused > 0 {
		f.booked = time.Time{}
		ev := g.pushBackLocked(now, rep.Paused)
		return append(ev, g.dispatchLocked(now)...)
	}
	if due {
		f.booked = time.Time{}
		g.admitBookedLocked(now)
	}
	if rep.Booked {
		f.booked = now.Add(rep.Wait)
		if rep.Wait <= 0 && g.admitBookedLocked(now) {
			f.booked = time.Time{}
		}
	}
	if f.pushBack > 0 {
		g.fleetAdmitLocked(now)
	}
	return g.dispatchLocked(now)
}

// admitBookedLocked admits the queue's head on a fleet slot, if the gate is
// open and the in-flight bound allows.
func (g *Gate) admitBookedLocked(now time.Time) bool {
	if g.closed || g.state != GateOpen || g.queued() == 0 ||
		(g.cfg.MaxInFlight > 0 && g.inFlight >= g.cfg.MaxInFlight) {
		return false
	}
	g.admitLocked(now)
	return true
}

// fleetPaceLocked reconciles the pacer with the fleet's pace: ours stored,
// or another member's adopted.
func (g *Gate) fleetPaceLocked(now time.Time, sent, got FleetPace) {
	f := &g.fleet
	if got.sameAs(sent) || got.Version == f.synced.Version {
		f.synced = got
		return
	}
	g.pacer.adopt(now, got)
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
	f.downUntil = time.Time{}
	f.opened = max(f.opened, rep.Opened)
	if g.state == GateClosed && f.opened > f.closedAt {
		// Another member's attempt got through: the destination answers.
		g.scoutFails = 0
		g.pacer.reopen(now)
		g.bucket.clamp(g.pacer.pace)
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
