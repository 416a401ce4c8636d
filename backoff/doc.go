// Package backoff decides when to try again: retry-delay policies with
// jitter, and the Gate that admits recovery attempts towards one destination
// at the pace it can serve.
//
// The policies satisfy cenkalti/backoff/v4's BackOff, so they drop into
// backoff.Retry and into users' own loops:
//
//   - Exponential: min(Max, Base·Multiplier^n) with FullJitter (the default),
//     EqualJitter, Decorrelated or NoJitter — the formulas of AWS's
//     "Exponential Backoff and Jitter". It never gives up unless told
//     (cenkalti's ExponentialBackOff gives up after 15 minutes by default, a
//     trap for a component that must recover by itself). NewFactory makes a
//     fresh copy for each retry loop.
//   - FlowRecovery: RFC 5626 §4.5's wait before replacing a failed flow.
//   - Floor: raises the next delay to a server's Retry-After, plus jitter so
//     that clients told the same value do not come back together.
//
// Permanent marks an error that retrying cannot help; cenkalti's Retry stops
// on it, and so does conn.Link.
//
// In every configuration struct of the package, zero means the documented
// default and a negative value turns the field's limit or feature off.
//
// Per-client delays are not enough when thousands of clients lose the same
// server at the same moment: jitter spreads a herd over time, but nothing
// makes the herd's rate match what the server serves. The Gate does. One Gate
// guards one destination (a registrar, a server address), and every
// connection or trunk of the process that recovers towards that destination
// shares it; a backup address gets a Gate of its own:
//
//	gate := backoff.NewGate(backoff.GateConfig{Destination: "registrar.example:5060"})
//	defer gate.Close()
//	policy := &backoff.Exponential{}
//	for {
//		permit, err := gate.Acquire(ctx) // FIFO, paced, bounded in flight
//		if err != nil {
//			return err // ctx ended, or the gate was closed
//		}
//		err = reconnect(ctx)
//		switch {
//		case err == nil:
//			permit.Done(backoff.Success)
//			return nil
//		case isOverload(err): // a 503; its Retry-After pauses every client
//			permit.Done(backoff.Overload(retryAfter(err)))
//		case isTimeout(err): // the gate closes and sends one scout at a time
//			permit.Done(backoff.Unreachable)
//		default: // this client's own problem: its own policy decides
//			permit.Done(backoff.ClientFailure)
//			if !sleep(ctx, policy.NextBackOff()) {
//				return context.Cause(ctx)
//			}
//		}
//	}
//
// With no Rate configured the Gate learns the rate the destination accepts
// (see Gate); with one, it never exceeds it. Against a destination whose
// 503s carry a Retry-After, every overshoot pauses every client, so the gate
// learns from the first one as much as it can: a registrar that counts per
// fixed window aligned on the clock (Kamailio's htable counters, most
// fixed-window limiters) has told its capacity by how many it accepted in
// the window of its first 503, and the gate paces at 95 % of that count per
// window from then on (one pause instead of two or three). A paused gate
// resumes at a random point of its first pace interval after the pause,
// never before it, so that processes told the same Retry-After do not come
// back in step. Its state (GateOpen, GateClosed,
// GatePaused) is reported by State, WaitForStateChange and the OnStateChange
// callback, in the shape packages conn and sip use for their own states.
// Packages conn and sip use a Gate for every redial and re-registration.
//
// A Gate admits for one process. GateConfig.Fleet shares it with every
// process of a fleet that admits towards the same destination (package
// backoff/fleetgate keeps the shared state on Redis): one pace, one pause for
// a Retry-After, one scout for a dead destination, one learned pace that
// outlives the herd, with the ceiling the fleet last overshot and the
// destination's Retry-After, so that a process joining later (a second herd,
// a restart) starts at the learned pace and probes above it no more eagerly
// than the process that drew the Retry-After. Admission never waits on the
// shared store longer than FleetCallBound; without it each process admits at
// its share of the last known fleet pace.
//
// A fleet reacts to a rejection later than one process does (the rejection
// comes back through a member and the store, while the other members admit
// on places they already hold), so its startup grows gently near a capacity
// it does not know: it doubles every startup period up to 4 × InitialRate,
// then grows by FleetGentleGrowth (10 %) per period, and its first overshoot
// is about one step, not up to twice the capacity (a doubling to 1.6 × C
// sent a window of 1.6 × what the destination admits). The store grows the
// pace on a grid and reckons every place on the growth to come, so the
// fleet's schedule of admissions is known to every member. At its first
// Retry-After the fleet counts that schedule over the destination's windows
// (a startup period, aligned on the clock): what it admitted in the
// rejected attempt's window before it is the capacity (less 2.5 %, the
// places a loaded fleet leaves unused), if it lies between the rates of
// that window and the one before, and otherwise the rate of the window
// before, which drew no rejection; the pace is 95 % of it. Of the cuts its
// members make for one overshoot the lowest stands (the earliest rejected
// attempt's count is the closest), and the fleet steps down once more if
// that pace draws a Retry-After before it has run clean for a second. Each member forgives one lone Retry-After in 10 s at a proven pace
// (a pause, no cut): a cut the fleet made for its members' timing jitter
// would be the pace the next herd starts from.
package backoff
