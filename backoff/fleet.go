package backoff

import (
	"context"
	"time"
)

// Fleet shares a Gate's admission with the other processes of a fleet that
// admit towards the same destination: every gateway process of a platform
// recovering towards one registrar. Set it as GateConfig.Fleet; nil keeps the
// gate local to its process. Package backoff/fleetgate implements it on
// Redis.
//
// Per destination, the members of a fleet share four things:
//   - the admission pace: each admission takes a place in the fleet's queue
//     (a GCRA on the store's clock), so the fleet admits at one combined
//     pace, evenly spaced;
//   - the pause: one Retry-After, told to any process, pauses every process;
//   - the closed state's scout lease: one scout probes a dead destination
//     for the whole fleet, and its success reopens every member's gate;
//   - the learned pace (FleetPace): what one process learns (a Retry-After
//     cut, a measured capacity, a startup growth step) becomes every process's,
//     and it outlives the herd (a TTL) for the next herd and a restarted
//     process.
//
// The store is never in the way. The Gate calls a member outside its lock,
// one call at a time, each bounded by FleetCallBound (the member should use a
// tighter bound of its own). A call that fails or times out puts the gate on
// local admission until the next whole second of the wall clock — at 70 % of
// its share of the last known fleet pace, FleetPace.Pace divided by Members
// (the members' admissions now fall at random against each other), held
// there: no probe upward, and a rejection pauses the member without a cut —
// after which it asks the store again and rejoins the fleet's queue without
// a burst (so members cut off together rejoin together). A gate the store
// has never answered asks again 100, 200 and 400 ms after its first
// failures (a process's first calls pay for its connections; it has no fleet
// pace to rejoin at), and meanwhile admits at its MinRate (nor does it know
// how many share the fleet: a fleet that starts together is counted one
// process at a time).
//
// A GateConfig.Rate given with a Fleet is the fleet's rate, not the
// process's.
type Fleet interface {
	// Join returns the member through which a Gate towards destination
	// (GateConfig.Destination) shares its admission. NewGate calls it once;
	// Gate.Close calls the member's Leave.
	Join(destination string) FleetMember
}

// FleetMember is one Gate's membership of a Fleet for one destination. Its
// methods are called by one Gate, from several goroutines, never two Admit
// calls at once; each ctx carries FleetCallBound.
type FleetMember interface {
	// Admit folds the gate's admission work into one round trip: it stores
	// the request's PushBack (a pause for every member) and its Pace (the
	// fleet pace, when the request may set it), reckons when the place the
	// gate holds is due, and, if Book is set, books the next place in the
	// fleet's queue (see FleetReply). It returns the fleet's state after the
	// request.
	Admit(ctx context.Context, req FleetRequest) (FleetReply, error)
	// Scout asks for the fleet's scout lease for lease (SET NX with a
	// TTL): granted, this member scouts for all; lease ≤ 0 releases the
	// lease if this member holds it. Reopened true tells the fleet that the
	// destination answered (and releases the lease): FleetReply.Opened and
	// FleetScout.Opened count those.
	Scout(ctx context.Context, lease time.Duration, reopened bool) (FleetScout, error)
	// Members returns the live members for this destination (at least 1),
	// as last counted: the process's share of the fleet pace when the
	// store cannot be reached is 1/Members.
	Members() int
	// Leave ends the membership: heartbeats stop and the member's share is
	// released at once.
	Leave() error
}

// FleetGentleGrowth is the factor by which a fleet's startup pace grows per
// FleetRequest.Grow period once it has reached FleetRequest.Gentle.
const FleetGentleGrowth = 1.1

// FleetCallBound bounds every call a Gate makes to a FleetMember: no
// admission waits on the fleet's store longer than this.
const FleetCallBound = 100 * time.Millisecond

// FleetPace is the pace state a fleet shares. Ceiling, CeilingAge and
// RetryAfter travel with Pace (stored when Pace is) but are not part of a
// change: a proposal is made when Pace, Estimate or Startup change. Version
// counts the changes:
// a proposal (FleetRequest.Pace with Propose) is stored only if its Version
// is the stored one, so that of two members changing the pace at once one
// wins and the other adopts the winner's (one cut per overshoot, one probe
// at a time, fleet-wide) — except that a cut (a lower pace) also replaces a
// higher stored pace that came just after the proposal's Version: a
// rejection beats a concurrent doubling or probe, and of the cuts members
// make for one overshoot the lowest stands.
type FleetPace struct {
	// Pace is the fleet's admission pace in attempts per second; zero when
	// unlimited.
	Pace float64
	// Estimate is the capacity the fleet measured, or zero.
	Estimate float64
	// Startup is true while the pace is still growing from InitialRate.
	Startup bool
	// Ceiling is a pace that drew a Retry-After within the last 10 s, or a
	// capacity counted at startup's first Retry-After: no member probes
	// within 10 % of it, and a probe towards it must be worth the pause it
	// risks. Zero: none. CeilingAge is how long ago it was set.
	Ceiling    float64
	CeilingAge time.Duration
	// RetryAfter is the last Retry-After the destination gave a member: the
	// price of a probe that overshoots, for every member. Zero: none yet.
	RetryAfter time.Duration
	// Version is the stored version; in a request, the version the
	// proposal derives from.
	Version uint64
}

// FleetRequest is one Admit call.
type FleetRequest struct {
	// Pace is the gate's pace. It is stored when Propose is set and its
	// Version is the stored one, or when the store has none.
	Pace FleetPace
	// Propose asks to store Pace: the gate's controller changed it.
	Propose bool
	// Book asks for a place in the fleet's queue of admissions.
	Book bool
	// Held, if not zero, is a place this gate holds (a FleetReply.Seq): the
	// reply says when it is due (FleetReply.Due).
	Held uint64
	// PushBack, if positive, pauses the destination fleet-wide for that
	// long (overlapping pauses end at the latest end).
	PushBack time.Duration
	// Grow is the startup's growth period: while the stored pace is in
	// startup and a place is booked, the store doubles the pace (below
	// Gentle; up to Ceiling) once it is Grow old, so that the fleet grows
	// once per period whichever member happens to call, on a grid of Grow
	// periods from the startup's first pace (after three periods without a
	// booking, from the next booking); and it reckons the places due in the
	// next periods at the steps to come. The gate's own
	// pacer does not grow while it has a fleet; the gate asks for one of
	// its startup periods (100 ms at least).
	Grow time.Duration
	// Gentle, if positive, is the pace from which startup stops doubling
	// and grows by FleetGentleGrowth (10 %) per Grow period instead. The
	// gate asks for 4 × InitialRate (80/s by default): below it a doubling
	// costs little; above it a doubling can land anywhere up to twice the
	// capacity, and a fleet stops only once the rejection has come back
	// through a member and the store (most of a window of the
	// destination's counting, and a round trip or two): a doubling to
	// 1.6 × C ran a whole 100 ms window at 1.6 × what the destination
	// admits.
	Gentle float64
	// Ceiling is the highest pace (95 % of a configured Rate).
	Ceiling float64
	// Reopened reports that the gate reopened (the destination answers
	// again after it was unreachable) and Pace is its fresh start: it
	// replaces a stored pace that is still in startup and has not changed
	// for two Grow periods, whatever its Version. A startup pace is not a
	// measurement: doubled while nothing rejected (a warm-up against a
	// healthy destination doubles it to the Ceiling), it must not greet the
	// herd of the next outage; a learned pace (not in startup) is kept,
	// and the gate adopts it.
	Reopened bool
}

// FleetReply is the fleet's state after an Admit call.
//
// The fleet's admissions are a queue: places (Seq) are numbered, and place n
// is due when a virtual clock, which runs at the fleet pace and stands
// still during a pause, reaches n; a virtual clock with no place waiting does
// not run ahead, so there is no burst. It is a GCRA counted in places rather
// than times: a place booked at one pace moves when the pace changes, and
// one booked before a pause is due after it. In startup the clock follows
// the growth to come (see FleetRequest.Grow).
type FleetReply struct {
	// Pace is the fleet pace after the request.
	Pace FleetPace
	// PaceAge is how long ago Pace was set: a member adopting it dates it
	// from then, not from when it heard of it.
	PaceAge time.Duration
	// Paused is how long the destination stays paused, fleet-wide.
	Paused time.Duration
	// Seq is the place booked, or zero; Wait is how long until it is due.
	Seq  uint64
	Wait time.Duration
	// Due is how long until the place the request held is due; negative
	// when it is overdue by that much (its gate had no attempt waiting).
	Due time.Duration
	// Lost reports that the store never gave the held place: it lost its
	// state (a restart). The gate books another.
	Lost bool
	// Opened counts the reopenings told with Scout(…, true).
	Opened uint64
}

// FleetScout is the answer to Scout.
type FleetScout struct {
	// Granted reports that this member holds the scout lease.
	Granted bool
	// Opened counts the reopenings told with Scout(…, true).
	Opened uint64
}
