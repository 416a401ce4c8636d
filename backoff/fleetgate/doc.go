// Package fleetgate keeps a backoff.Gate's admission on Redis, so that every
// process of a fleet admits towards a destination at one pace: one
// Retry-After pauses them all, one scout probes a dead destination for all,
// and what one process learns of the destination's capacity is every
// process's, and outlives the herd. It is a package of its own so that only
// its users import go-redis.
//
//	rdb := redis.NewClient(&redis.Options{
//		Addr:                  "redis.internal:6379",
//		ContextTimeoutEnabled: true, // required: each call ends at its bound
//		DialTimeout:           50 * time.Millisecond,
//	})
//	fleet, err := fleetgate.New(rdb, fleetgate.Config{})
//	if err != nil {
//		return err
//	}
//	gate := backoff.NewGate(backoff.GateConfig{
//		Destination: "registrar.example:5060",
//		Fleet:       fleet, // every process with the same Destination shares it
//	})
//	defer gate.Close() // leaves the fleet: this process's share is released
//
// Per destination it keeps six keys in one hash slot (Prefix +
// "{destination}:"): queue (the fleet's queue of admissions: a virtual clock
// and the next place), pace (the learned pace: a hash with a version, the
// ceiling the fleet last overshot or counted, when, and the destination's
// last Retry-After, so that a member joining later, a second herd or a
// restarted process, neither probes near that ceiling nor probes at all
// unless the work queued is worth a pause), pause
// (until when, server clock), lease (the scout lease, SET NX PX with the
// holder's ID), opened (the count of reopenings) and members (a sorted set
// of live members scored by their expiry). queue, pace and opened expire
// PaceTTL after the last admission, pause with the pause, members three
// heartbeats after the last.
//
// # One round trip per admission
//
// An admission is one EVALSHA of a Lua script on Redis's own clock (TIME),
// so no process's clock matters. It stores a pause told by this process,
// compares-and-sets the fleet pace if this process's controller changed it
// (a cut beats a concurrent growth step, and of two cuts from the same
// version the lower stands; startup grows in the script, once per
// FleetRequest.Grow on a grid whoever calls: it doubles up to
// FleetRequest.Gentle, 4 × InitialRate, and grows by
// backoff.FleetGentleGrowth, 10 %, from there, so that the fleet's first
// overshoot of a destination's capacity is about 10 %, not up to 100 %; a
// gate that reopens after an outage resets a pace still in startup, so that
// a warm-up's growth does not greet the next herd), reckons when the place
// this process holds is due,
// and books its next place. The queue is a GCRA counted in places rather
// than times: a virtual clock runs at the fleet pace (standing still during
// a pause, never running ahead of the queue, so an idle fleet saves no
// burst) and place n is due when it reaches n; while the pace grows in
// startup the clock follows the growth to come (each step on its grid), so a
// place reckoned before a step is due where a member hearing of the step
// would put it, and a step takes effect when it is due. A place booked at
// one pace therefore moves when the pace changes and lands after a pause
// told later:
// a process confirms its place a few round trips before it is due (the call
// that also books its next), and waits on its place rather than polling for
// one. A process admits on its place at most one place's interval late
// (2 ms at least) and leaves a place it missed by more unused, so that
// processes held up together by a loaded host do not come back with their
// late places at once. Measured on loopback: 1.01 calls per admission for
// two processes, 1.05–1.45 for fifty (more while the pace grows in
// startup).
//
// github.com/go-redis/redis_rate is a GCRA too, but of fixed times at a rate
// given per call: the pause, the pace's compare-and-set and the booking would
// be three round trips, its slots would not move when a learned pace changes
// (fifty processes holding slots booked at 20/s kept the fleet at 20/s for
// seconds after the pace had doubled), and it has no notion of a pause.
//
// # Redis is part of the outage too
//
// Every call is bounded by Config.Timeout (50 ms). A call that fails puts
// the gate on local admission until the next whole second of the wall clock
// (members cut off together rejoin together): at its share of the last known
// fleet pace (pace ÷ live members, the count kept by heartbeats; a higher
// count in any answer to Admit is taken at once), with a local pause and
// local scouts. A gate Redis never answered asks again after 100, 200 and
// 400 ms first, at its MinRate meanwhile: its first calls pay for the
// connection and the scripts' loading, and it knows no pace or count yet.
// Then it asks again and rejoins the queue,
// which has no burst to give; a Redis restarted empty starts a new queue and
// takes the pace from the first member that calls. A member that stops
// (Gate.Close) leaves the count at once; one that crashes, within three
// heartbeats (and the others believe a lower count one heartbeat late, so
// that a Redis restarted empty, counting members one by one, makes no
// burst).
package fleetgate
