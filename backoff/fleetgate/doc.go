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
// Per destination it keeps six keys, all with TTLs, in one hash slot
// (Prefix + "{destination}:"): tat (the GCRA's theoretical arrival time),
// pace (the learned pace: a hash with a version, kept PaceTTL after the last
// admission), pause (until when, server clock), lease (the scout lease, SET
// NX PX with the holder's ID), opened (the count of reopenings) and members
// (a sorted set of live members scored by their expiry).
//
// # One round trip per admission
//
// An admission is one EVALSHA of a Lua script on Redis's own clock (TIME),
// so no process's clock matters: it stores a pause told by this process,
// compares-and-sets the fleet pace if this process's controller changed it,
// reads the pause, and books the next GCRA slot at the fleet pace — a
// reservation, as x/time/rate's Reserve, so a process waits for its slot
// rather than polling for one. A process holds at most one slot ahead; the
// call that validates a due slot (the destination may have paused since it
// was booked) books the next, so a herd costs about one round trip per
// admission (1.01 measured with two processes). github.com/go-redis/redis_rate
// is a GCRA too, but one with a fixed limit per call: the pause, the fleet
// pace's compare-and-set and the booking would be three round trips, and
// its limit could not follow a pace learned at run time.
//
// # Redis is part of the outage too
//
// Every call is bounded by Config.Timeout (50 ms). A call that fails puts
// the gate on local admission until the next whole second: at its share of
// the last known fleet pace (pace ÷ live members, the count kept by
// heartbeats), with a local pause and local scouts. Then it asks again, and
// rejoins without a burst. A member that stops (Gate.Close) leaves the count
// at once; one that crashes, within three heartbeats.
package fleetgate
